"""`mount -t fuse.pqcfs`, an /etc/fstab line and `umount`, through mount(8), Debian's
mount.fuse3 and pqcfs' helpers where the set-up links them (/usr/bin, /usr/sbin)."""

import json
import os
import subprocess

import pytest

from tests.mounted import drives

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not drives.ROOT, reason="needs root and /dev/fuse")]


@pytest.fixture(autouse=True)
def helpers_installed():
    for path in ("/usr/bin/pqcfs", "/usr/sbin/mount.pqcfs", "/usr/sbin/umount.fuse.pqcfs"):
        assert os.path.exists(path), f"{path} is missing: `bash scripts/dev.sh test` links it"


def options(v, *extra):
    return ",".join([f"passfile={v.passfile}", f"backup={v.backup}", "allow_fixed", "allow_same_device", *extra])


def run(*cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def clean(v) -> bool:
    status = json.loads(drives.pqcfs("status", v.primary, "--json", check=False).stdout)
    return all(r["clean"] for r in status["replicas"])


def test_mount_t_fuse_pqcfs_then_umount_writes_everything_out(plain_vault):
    v = plain_vault
    proc = run("mount", "-t", "fuse.pqcfs", v.primary, v.mountpoint,
               "-o", options(v, "nofail", "_netdev", "noauto", "x-systemd.automount", "allow_other"))
    assert proc.returncode == 0, proc.stderr
    assert drives.is_mounted(v.mountpoint)
    with open(os.path.join(v.mountpoint, "via-mount"), "w") as f:
        f.write("mounted by mount(8)")
    # umount(8) runs umount.fuse.pqcfs, which waits until the daemon has written both
    # drives out and marked them clean: the drives can be pulled when it returns.
    proc = run("umount", v.mountpoint)
    assert proc.returncode == 0, proc.stderr
    assert not drives.is_mounted(v.mountpoint) and clean(v)
    v.mount()
    with open(os.path.join(v.mountpoint, "via-mount")) as f:
        assert f.read() == "mounted by mount(8)"


def test_an_fstab_line_mounts_and_unmounts(plain_vault, tmp_path):
    v = plain_vault
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# pqcfs vault\n{v.primary} {v.mountpoint} fuse.pqcfs "
                     f"{options(v, 'noauto', 'nofail', 'x-systemd.automount', 'ro')} 0 0\n")
    proc = run("mount", "--fstab", str(fstab), v.mountpoint)
    assert proc.returncode == 0, proc.stderr
    try:
        assert drives.is_mounted(v.mountpoint)
        with pytest.raises(OSError):       # `ro` in the line: a read-only mount
            open(os.path.join(v.mountpoint, "x"), "w").close()
    finally:
        assert run("umount", v.mountpoint).returncode == 0


def test_bad_options_are_refused_with_a_clear_error(plain_vault):
    v = plain_vault
    for opt, words in ((options(v, "password=hunter2"), "passfile"), (options(v, "bogus"), "bogus")):
        proc = run("mount", "-t", "fuse.pqcfs", v.primary, v.mountpoint, "-o", opt)
        assert proc.returncode != 0 and words in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
        assert not drives.is_mounted(v.mountpoint)
