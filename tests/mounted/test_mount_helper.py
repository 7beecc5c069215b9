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
    for path in ("/usr/bin/pqcfs", "/usr/sbin/mount.pqcfs", "/usr/sbin/umount.fuse.pqcfs", "/usr/sbin/umount.fuse"):
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
    with open(os.path.join(v.mountpoint, "bulk"), "wb") as f:   # something to write out at the end
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    # umount(8) knows the mount only as "fuse" and runs umount.fuse, which finds it is
    # pqcfs' and waits until the daemon has written both drives out and marked them
    # clean: the drives can be pulled the moment it returns.
    proc = run("umount", v.mountpoint)
    assert proc.returncode == 0, proc.stderr
    assert not drives.is_mounted(v.mountpoint) and clean(v)
    v.mount()
    with open(os.path.join(v.mountpoint, "via-mount")) as f:
        assert f.read() == "mounted by mount(8)"


HELLO_FS = """
import pyfuse3, trio, sys
pyfuse3.init(pyfuse3.Operations(), sys.argv[1], {"fsname=not-pqcfs"})
print("ready", flush=True)
trio.run(pyfuse3.main)
"""


def test_umount_fuse_leaves_other_fuse_file_systems_to_umount(tmp_path):
    """The umount.fuse helper runs for every FUSE mount: one that is not pqcfs' is
    unmounted as umount(8) would without it."""
    import sys
    mnt = tmp_path / "other-fuse"
    mnt.mkdir()
    daemon = subprocess.Popen([sys.executable, "-c", HELLO_FS, str(mnt)], stdout=subprocess.PIPE, text=True)
    try:
        assert daemon.stdout.readline().strip() == "ready"
        proc = run("umount", str(mnt))
        assert proc.returncode == 0, proc.stderr
        assert not drives.is_mounted(str(mnt))
        daemon.wait(timeout=30)
    finally:
        if drives.is_mounted(str(mnt)):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        daemon.stdout.close()


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
