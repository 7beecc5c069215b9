"""A stick whose vault header was written to reach root's udev rule and systemd units.

The header is unauthenticated until unlock and `pqcfs automount enable` runs without one,
so everything it writes into a rule or a unit comes from the kernel's view of the drives,
and every value passes a strict grammar first. These tests forge the header as a holder
of the drive can (the checksum is unkeyed) and run the real CLI on stand-in drives."""

import os

import pytest

from mounttool import units
from pqcfs.cli import exitcodes
from tests.attacks.forge import forge_header
from pqcfs import install
from tests.mounted import drives

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not drives.ROOT, reason="needs root and loop devices")]

INJECT_RULE = 'x", RUN+="/bin/sh -c /run/pqcfs/drives/evil.sh", ENV{X}="'
INJECT_UNIT = "vault\nEnvironment=PYTHONPATH=/run/pqcfs/drives/evil"


def _replica(body, role):
    return next(r for r in body["replicas"] if r["role"] == role)


def _enable(v, root):
    drives.pqcfs("system", "install", "--root", str(root))      # the program the units run
    return drives.pqcfs("automount", "enable", v.primary, "--at", v.mountpoint, "--root", str(root),
                        "--unlock", "passfile", "--passfile", v.passfile, check=False)


def _written(root) -> list[str]:
    """What automount wrote (not what `system install` put there for it)."""
    installed = {os.path.join(str(root), rel) for rel in [*install.PROGRAMS, *install.DOCS, install.MANIFEST]}
    return [p for d, _, files in os.walk(root) for f in files if (p := os.path.join(d, f)) not in installed]


def test_a_crafted_replica_field_is_refused_and_nothing_is_written(tmp_path):
    with drives.standin_vault(str(tmp_path), ("ext4", 32), ("ext4", 32)) as v:
        path = os.path.join(v.primary, "pqcfs.vault")
        with open(path, "rb") as f:
            pristine = f.read()
        for role in ("primary", "backup"):
            for field, value in (("fs_uuid", INJECT_RULE), ("subpath", INJECT_UNIT),
                                 ("path_hint", "/mnt/x\nExecStartPre=/bin/sh")):
                forge_header(v.primary, lambda body: _replica(body, role).__setitem__(field, value))
                root = tmp_path / f"root-{role}-{field}"
                proc = _enable(v, root)
                assert proc.returncode == exitcodes.DAMAGED, (role, field, proc.stderr)
                assert "impossible" in proc.stderr and "Traceback" not in proc.stderr
                assert _written(root) == []
                with open(path, "wb") as f:
                    f.write(pristine)


def test_header_values_that_pass_the_grammar_still_do_not_steer_the_units(tmp_path):
    """A header that lies within the grammar: the primary's path inside its drive points
    at a folder the attacker made, and the backup names the UUID of a drive that does not
    hold the vault. The units name the location the kernel shows, and the lie about the
    backup is refused."""
    with drives.standin_vault(str(tmp_path), ("ext4", 32), ("ext4", 32)) as v:
        os.makedirs(os.path.join(v.primary, "evil"))
        forge_header(v.primary, lambda body: _replica(body, "primary").__setitem__("subpath", "evil"))
        proc = _enable(v, tmp_path / "root")
        assert proc.returncode == 0, proc.stderr
        service = next(f for f in _written(tmp_path / "root") if f.endswith(".service"))
        with open(service) as f:
            text = f.read()
        assert "evil" not in text
        assert "Environment" not in text
        drives.pqcfs("automount", "disable", _vault_id(text), "--root", str(tmp_path / "root"))

        forge_header(v.primary, lambda body: _replica(body, "backup").__setitem__(
            "fs_uuid", "0b1e5e5d-0000-4000-8000-000000000000"))
        proc = _enable(v, tmp_path / "root2")
        assert proc.returncode != 0 and "not the 0b1e5e5d" in proc.stderr, proc.stderr
        assert _written(tmp_path / "root2") == []


def test_a_header_naming_another_drive_as_primary_is_refused(tmp_path):
    """The location given must be on the drive the header calls primary: automount of the
    backup's location (or of a stick whose header claims another drive's UUID) is refused."""
    with drives.standin_vault(str(tmp_path), ("ext4", 32), ("ext4", 32)) as v:
        proc = drives.pqcfs("automount", "enable", v.backup, "--at", v.mountpoint, "--root",
                            str(tmp_path / "root"), check=False)
        assert proc.returncode != 0 and "not the vault's primary drive" in proc.stderr, proc.stderr
        assert _written(tmp_path / "root") == []


def _vault_id(service_text: str) -> str:
    return service_text.split("--vault-id ")[1].split()[0]


@pytest.mark.parametrize("field,value", [
    ("mountpoint", "/mnt/v\nExecStartPre=/bin/sh"), ("mountpoint", "relative"), ("vault_id", "../../x"),
    ("user", "root\nUser=0"), ("passfile", "/root/p\x7f"), ("fuse_options", ["allow_other\nX=1"])])
def test_units_refuse_every_value_outside_its_grammar(field, value):
    spec = units.AutomountSpec("0" * 32, "/mnt/v", [units.DriveSpec("primary", "1234-ABCD")])
    setattr(spec, field, value)
    with pytest.raises(units.UnsafeValue):
        units.files(spec)
    bad_drive = units.AutomountSpec("0" * 32, "/mnt/v", [units.DriveSpec("primary", 'a"b')])
    with pytest.raises(units.UnsafeValue):
        units.files(bad_drive)
