"""`pqcfs mount` and `pqcfs umount` as a user meets them: clear errors, exit codes, signals."""

import json
import os
import signal
import time

import pytest

from pqcfs.fs import session as session_mod
from tests.mounted import drives

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not drives.ROOT, reason="needs root and /dev/fuse")]


def mount(v, mountpoint, *extra, passfile=None):
    return drives.pqcfs("mount", v.primary, mountpoint, "--passfile", passfile or v.passfile,
                        "--allow-fixed", "--allow-same-device", *extra, check=False)


def one_line_error(proc, code):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("pqcfs: ")


def test_mount_errors_are_clear(plain_vault, tmp_path):
    vault = plain_vault
    one_line_error(mount(vault, str(tmp_path / "nowhere")), 8)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "file").write_text("x")
    one_line_error(mount(vault, str(busy)), 8)
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    one_line_error(mount(vault, vault.mountpoint, passfile=str(wrong)), 6)
    assert mount(vault, vault.mountpoint).returncode == 0
    second = tmp_path / "second"
    second.mkdir()
    one_line_error(mount(vault, str(second)), 8)          # the vault is already mounted
    one_line_error(mount(vault, vault.mountpoint), 8)     # the mountpoint is busy
    vault.umount()
    one_line_error(drives.pqcfs("umount", vault.mountpoint, check=False), 8)


def test_sigterm_unmounts_cleanly_and_read_only_mounts_refuse_writes(plain_vault):
    vault = plain_vault
    assert mount(vault, vault.mountpoint).returncode == 0
    with open(os.path.join(vault.mountpoint, "kept"), "wb") as f:
        f.write(b"written before the signal")
    with open(session_mod.runtime_file(vault.mountpoint)) as f:
        pid = json.load(f)["pid"]
    # No handle is leaked by a busy session: the daemon's descriptors stay few.
    assert len(os.listdir(f"/proc/{pid}/fd")) < 40
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not drives.is_mounted(vault.mountpoint):
            break
        time.sleep(0.1)
    assert not drives.is_mounted(vault.mountpoint)
    status = json.loads(drives.pqcfs("status", vault.primary, "--json").stdout)
    assert all(r["clean"] for r in status["replicas"])   # unmounted cleanly: no recovery needed
    assert mount(vault, vault.mountpoint, "--ro").returncode == 0
    with open(os.path.join(vault.mountpoint, "kept"), "rb") as f:
        assert f.read() == b"written before the signal"
    with pytest.raises(OSError):
        with open(os.path.join(vault.mountpoint, "new"), "wb") as f:
            f.write(b"x")
