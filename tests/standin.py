"""Stand-in USB drives: file system images on loop devices, always cleaned up."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile


def run(*cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


@contextlib.contextmanager
def workdir(prefix: str = "pqcfs-test-", base: str = "/tmp"):
    """A directory other users can traverse (permission checks run as nobody)."""
    path = tempfile.mkdtemp(prefix=prefix, dir=base)
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def unmount(path: str) -> None:
    for cmd in (["umount", path], ["fusermount3", "-u", path], ["umount", "-l", path]):
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            return


@contextlib.contextmanager
def loop_drive(workdir: str, name: str, fstype: str, size_mb: int = 512, settled: bool = False):
    """A file system image (ext4, or exFAT through exfat-fuse) on a loop device, mounted
    at workdir/name; yields (mountpoint, image path). settled: an ext4 made whole at mkfs
    (its inode tables and journal zeroed then), as a drive formatted long ago is, instead of
    by the kernel's lazy-init thread writing for seconds after the first mount), on a loop
    device with direct I/O (a real drive has one page cache in front of it, not the loop
    device's and its image file's)."""
    image = os.path.join(workdir, f"{name}.img")
    mnt = os.path.join(workdir, name)
    os.makedirs(mnt, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    loop = run("losetup", "--find", "--show", *(["--direct-io=on"] if settled else []), image).stdout.strip()
    mounted = False
    try:
        if fstype == "ext4":
            run("mkfs.ext4", "-q", "-F", *(["-E", "lazy_itable_init=0,lazy_journal_init=0"] if settled else []), loop)
            run("mount", loop, mnt)
        elif fstype == "exfat":
            run("mkfs.exfat", loop)
            run("mount.exfat-fuse", loop, mnt)
        else:
            raise ValueError(f"unknown stand-in file system {fstype}")
        mounted = True
        yield mnt, image
    finally:
        if mounted:
            unmount(mnt)
        run("losetup", "-d", loop, check=False)
