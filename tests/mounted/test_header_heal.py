"""One flipped byte in `pqcfs.vault` on one drive: the other drive's copy opens the vault,
check-only commands name the damaged drive and never say clean, and a command that may
write (a mount, `fsck --repair`) rewrites the bad copy from the good one, keeping the
damaged one in pqcfs.quarantine/. Real CLI, loop-device drives."""

import json
import os

import pytest

from pqcfs.cli import exitcodes
from pqcfs.store.drive import QUARANTINE_DIR
from tests.mounted import drives

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not drives.ROOT, reason="needs root and /dev/fuse")]


def flip_byte(location: str, name: str = "pqcfs.vault") -> None:
    path = os.path.join(location, name)
    with open(path, "r+b") as f:
        f.seek(40)
        byte = f.read(1)
        f.seek(40)
        f.write(bytes([byte[0] ^ 0x01]))


def cli(v, *args):
    return drives.pqcfs(*args, "--passfile", v.passfile, "--allow-fixed", check=False)


@pytest.mark.parametrize("damaged", ["primary", "backup"])
def test_a_flipped_byte_in_one_header_copy_heals_from_the_other(tmp_path, damaged):
    with drives.standin_vault(str(tmp_path), ("ext4", 32), ("ext4", 32)) as v:
        v.mount()
        with open(os.path.join(v.mountpoint, "kept.txt"), "w") as f:
            f.write("still here")
        v.umount()
        bad = v.primary if damaged == "primary" else v.backup
        flip_byte(bad)

        status = drives.pqcfs("status", v.primary, check=False)
        assert status.returncode == exitcodes.DEGRADED and "DAMAGED" in status.stdout, status.stdout + status.stderr
        assert bad in [line.split()[2].rstrip(":") for line in status.stdout.splitlines() if "DAMAGED" in line]

        # Check-only: names the drive, never clean, changes nothing. No --backup: the
        # backup is found even when the primary's own copy of the header is the bad one.
        check = cli(v, "fsck", v.primary)
        assert check.returncode == exitcodes.CRYPTO, check.stdout + check.stderr
        assert bad in check.stdout and "vault header" in check.stdout and "NOT clean" in check.stdout
        assert bad in check.stderr and "damaged" in check.stderr

        # --repair rewrites it from the good copy and keeps the damaged one.
        repair = cli(v, "fsck", v.primary, "--repair")
        assert repair.returncode == 0, repair.stdout + repair.stderr
        assert "REPAIRED" in repair.stdout and bad in repair.stderr
        assert any(n.endswith("pqcfs.vault") for n in os.listdir(os.path.join(bad, QUARANTINE_DIR)))
        assert cli(v, "fsck", v.primary).returncode == 0

        # A mount heals too (and says so), and the vault reads back.
        flip_byte(bad)
        mounted = v.mount()
        assert bad in mounted.stderr and "rewritten from the good copy" in mounted.stderr
        try:
            with open(os.path.join(v.mountpoint, "kept.txt")) as f:
                assert f.read() == "still here"
        finally:
            v.umount()
        assert cli(v, "fsck", v.primary).returncode == 0
        shown = json.loads(cli(v, "audit", "show", v.primary, "--json").stdout)["records"]
        assert sum(r["event"] == "header-healed" for r in shown) == 2


def test_every_copy_damaged_is_refused_naming_the_drive(tmp_path):
    with drives.standin_vault(str(tmp_path), ("ext4", 32), ("ext4", 32)) as v:
        for location in (v.primary, v.backup):
            flip_byte(location)
            flip_byte(location, "pqcfs.vault.spare")
        proc = cli(v, "fsck", v.primary)
        assert proc.returncode == exitcodes.DAMAGED, proc.stderr
        assert v.primary in proc.stderr and "Traceback" not in proc.stderr
