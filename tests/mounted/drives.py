"""Stand-in USB drives (loop-mounted images) and pqcfs mounts, always cleaned up."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import subprocess
import sys
import time

ROOT = os.geteuid() == 0 and os.path.exists("/dev/fuse")
PASSPHRASE = "mounted test passphrase"


def run(*cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


@contextlib.contextmanager
def workdir():
    """A directory other users can traverse (permission checks run as nobody)."""
    path = tempfile.mkdtemp(prefix="pqcfs-test-", dir="/tmp")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def loop_drive(workdir: str, name: str, fstype: str, size_mb: int = 512):
    """A file system image on a loop device, mounted at workdir/name."""
    image = os.path.join(workdir, f"{name}.img")
    mnt = os.path.join(workdir, name)
    os.makedirs(mnt, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(size_mb * 1024 * 1024)
    loop = run("losetup", "--find", "--show", image).stdout.strip()
    mounted = False
    try:
        if fstype == "ext4":
            run("mkfs.ext4", "-q", "-F", loop)
            run("mount", loop, mnt)
        elif fstype == "exfat":
            run("mkfs.exfat", loop)
            run("mount.exfat-fuse", loop, mnt)
        else:
            raise ValueError(fstype)
        mounted = True
        yield mnt, image
    finally:
        if mounted:
            unmount(mnt)
        run("losetup", "-d", loop, check=False)


def unmount(path: str) -> None:
    for cmd in (["umount", path], ["fusermount3", "-u", path], ["umount", "-l", path]):
        if subprocess.run(cmd, capture_output=True).returncode == 0:
            return


def pqcfs(*args, check=True, timeout=120):
    proc = subprocess.run([sys.executable, "-m", "pqcfs", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"pqcfs {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


class Vault:
    """A vault on two stand-in drives, created through the CLI like a user would."""

    def __init__(self, workdir: str, primary: str, backup: str):
        self.workdir, self.primary, self.backup = workdir, primary, backup
        self.passfile = os.path.join(workdir, "passphrase")
        with open(self.passfile, "w") as f:
            f.write(PASSPHRASE + "\n")
        self.mountpoint = os.path.join(workdir, "mnt")
        os.makedirs(self.mountpoint, exist_ok=True)

    def init(self, *extra):
        return pqcfs("init", self.primary, self.backup, "--passfile", self.passfile, "--allow-fixed", *extra)

    def mount(self, *extra):
        return pqcfs("mount", self.primary, self.mountpoint, "--passfile", self.passfile,
                     "--backup", self.backup, *extra)

    def umount(self):
        if os.path.ismount(self.mountpoint):
            proc = pqcfs("umount", self.mountpoint, check=False)
            if proc.returncode != 0:
                unmount(self.mountpoint)
                time.sleep(0.5)


@contextlib.contextmanager
def mounted_vault(workdir: str, fstype: str, size_mb: int = 512):
    with loop_drive(workdir, "primary", fstype, size_mb) as (primary, pimg), \
         loop_drive(workdir, "backup", fstype, size_mb) as (backup, bimg):
        vault = Vault(workdir, primary, backup)
        vault.images = (pimg, bimg)
        vault.fstype = fstype
        vault.init()
        vault.mount("-o", "allow_other")
        try:
            yield vault
        finally:
            vault.umount()
