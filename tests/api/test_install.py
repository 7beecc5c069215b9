"""`pqcfs system install|uninstall` and `pqcfs doctor`, into a scratch root: real files
(launchers naming an interpreter, never links into a work tree), exactly what was written
taken away again, nothing overwritten that pqcfs did not write, and each broken piece
named by doctor with its fix."""

import json
import os
import stat
import subprocess
import sys

from pqcfs import __version__, install
from pqcfs.cli import exitcodes
from tests.api.test_cli import pqcfs


def everything(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def doctor(root):
    proc = pqcfs("doctor", "--root", str(root), "--json")
    checks = {c["what"]: c for c in json.loads(proc.stdout)["checks"]}
    return proc.returncode, checks


def test_install_writes_real_files_that_run_this_installation_and_uninstall_leaves_nothing(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    first = pqcfs("system", "install", "--root", str(root), "--json")
    assert first.returncode == 0, first.stderr
    written = json.loads(first.stdout)["written"]
    assert sorted(os.path.relpath(p, root) for p in written) == sorted([*install.PROGRAMS, *install.DOCS])
    for rel in install.PROGRAMS:
        path = root / rel
        assert path.is_file() and not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) == 0o755
        assert install.parse_launcher(path.read_bytes()).python == sys.executable
    ran = subprocess.run([str(root / "usr/bin/pqcfs"), "--version"], capture_output=True, text=True, cwd=tmp_path)
    assert ran.stdout.strip() == f"pqcfs {__version__}"
    assert "EXIT STATUS" in (root / "usr/local/share/man/man1/pqcfs.1").read_text().upper()
    again = json.loads(pqcfs("system", "install", "--root", str(root), "--json").stdout)
    assert again["written"] == [] and len(again["unchanged"]) == len(written)    # idempotent
    code, checks = doctor(root)
    assert all(checks[str(root / rel)]["ok"] for rel in [*install.PROGRAMS, *install.DOCS]), checks
    assert pqcfs("system", "uninstall", "--root", str(root)).returncode == 0
    assert everything(root) == [] and os.listdir(root) == []


def test_a_launcher_runs_nothing_from_the_current_directory(tmp_path):
    """Root runs mount.pqcfs from wherever mount(8) was started: a pqcfs/ there is not imported."""
    root = tmp_path / "root"
    root.mkdir()
    pqcfs("system", "install", "--root", str(root))
    trap = tmp_path / "cwd" / "pqcfs"
    trap.mkdir(parents=True)
    (trap / "__init__.py").write_text("raise SystemExit('imported from the current directory')\n")
    (trap / "__main__.py").write_text("raise SystemExit('imported from the current directory')\n")
    ran = subprocess.run([str(root / "usr/bin/pqcfs"), "--version"], capture_output=True, text=True,
                         cwd=tmp_path / "cwd", env={**os.environ, "PYTHONPATH": str(tmp_path / "cwd")})
    assert ran.returncode == 0 and ran.stdout.strip() == f"pqcfs {__version__}", ran.stderr


def test_a_file_pqcfs_did_not_write_is_never_overwritten(tmp_path):
    root = tmp_path / "root"
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/mount.pqcfs").write_text("#!/bin/sh\necho someone else's\n")
    proc = pqcfs("system", "install", "--root", str(root))
    assert proc.returncode == exitcodes.SETUP and "mount.pqcfs" in proc.stderr, proc.stderr
    assert everything(root) == ["usr/sbin/mount.pqcfs"]      # nothing written at all
    assert (root / "usr/sbin/mount.pqcfs").read_text() == "#!/bin/sh\necho someone else's\n"


def test_an_old_developer_link_is_replaced_and_a_changed_file_is_kept_at_uninstall(tmp_path):
    root = tmp_path / "root"
    (root / "usr/bin").mkdir(parents=True)
    os.symlink("/gone/checkout/.venv/bin/pqcfs", root / "usr/bin/pqcfs")
    code, checks = doctor(root)
    assert code == exitcodes.SETUP and "gone" in checks[str(root / "usr/bin/pqcfs")]["detail"]
    assert pqcfs("system", "install", "--root", str(root)).returncode == 0
    assert not (root / "usr/bin/pqcfs").is_symlink()
    with open(root / "usr/local/share/man/man1/pqcfs.1", "a") as f:
        f.write(".\\\" a local note\n")
    proc = pqcfs("system", "uninstall", "--root", str(root))
    assert "kept" in proc.stdout and everything(root) == ["usr/local/share/man/man1/pqcfs.1"]


def test_doctor_names_a_launcher_whose_installation_is_gone_or_of_another_version(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    pqcfs("system", "install", "--root", str(root))
    gone = root / "usr/sbin/mount.pqcfs"
    gone.write_text(install.launcher(str(tmp_path / "removed-venv/bin/python3"), __version__, "mounttool",
                                     ["mount.pqcfs"]))
    other = root / "usr/sbin/umount.fuse.pqcfs"
    other.write_text(install.launcher(sys.executable, "0.0.1", "mounttool", ["umount.fuse.pqcfs"]))
    code, checks = doctor(root)
    assert code == exitcodes.SETUP
    assert not checks[str(gone)]["ok"] and "gone" in checks[str(gone)]["detail"]
    assert "system install" in checks[str(gone)]["fix"]
    assert not checks[str(other)]["ok"] and "this is pqcfs" in checks[str(other)]["detail"]
    text = pqcfs("doctor", "--root", str(root)).stdout
    assert f"FAIL {gone}" in text and "fix:" in text


def test_the_host_keys_held_are_told_by_the_store_alone(tmp_path, monkeypatch):
    from pqcfs.store import hostkeys
    monkeypatch.setenv("PQCFS_STATE_DIR", str(tmp_path / "state"))
    vault_id = "ab" * 16
    assert hostkeys.held(vault_id) == []
    os.makedirs(hostkeys.directory())
    for name in (f"{vault_id}-{'1' * 16}.key", f"{vault_id}-{'2' * 16}.cred", f"{'cd' * 16}-{'3' * 16}.key",
                 f"{vault_id}-short.key", f"{vault_id}-{'4' * 16}.txt"):
        (tmp_path / "state" / "host-keys" / name).write_bytes(b"x")
    assert hostkeys.held(vault_id) == ["1" * 16, "2" * 16]
