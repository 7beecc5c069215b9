"""pqcfs vaults on stand-in drives, mounted through the CLI, always cleaned up."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

from pqcfs import hygiene
from tests.standin import loop_drive, run, unmount, workdir  # noqa: F401

ROOT = os.geteuid() == 0 and os.path.exists("/dev/fuse")
PASSPHRASE = "mounted test passphrase"
PQCFS = [sys.executable, "-m", "pqcfs"]      # the CLI, for a test that starts it in the background


def pqcfs(*args, check=True, timeout=120):
    proc = subprocess.run([sys.executable, "-m", "pqcfs", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=timeout)
    # Every command warns while the test-only KDF switch is on; the rest is what it said.
    proc.stderr = proc.stderr.replace(hygiene.WARNING + "\n", "")
    if check and proc.returncode != 0:
        raise AssertionError(f"pqcfs {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


class Vault:
    """A vault on two stand-in drives, created through the CLI like a user would."""

    def __init__(self, work: str, primary: str, backup: str):
        self.workdir, self.primary, self.backup = work, primary, backup
        self.passfile = os.path.join(work, "passphrase")
        with open(self.passfile, "w") as f:
            f.write(PASSPHRASE + "\n")
        self.mountpoint = os.path.join(work, "mnt")
        self.mount_flags: list[str] = []   # e.g. --allow-same-device for plain directories
        os.makedirs(self.mountpoint, exist_ok=True)

    def init(self, *extra):
        return pqcfs("init", self.primary, self.backup, "--passfile", self.passfile, "--allow-fixed", *extra)

    def mount(self, *extra, timeout=120):
        return pqcfs("mount", self.primary, self.mountpoint, "--passfile", self.passfile,
                     "--backup", self.backup, "--allow-fixed", *self.mount_flags, *extra, timeout=timeout)

    def umount(self):
        """Unmount, even a mount whose daemon died (stat on it fails with ENOTCONN)."""
        if not is_mounted(self.mountpoint):
            return
        if pqcfs("umount", self.mountpoint, check=False).returncode != 0 or is_mounted(self.mountpoint):
            subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], capture_output=True)
            time.sleep(0.2)


def fill_outside(location: str) -> list[str]:
    """Files of the user's own beside the vault take every last block of the drive (root's
    too: pqcfs runs as root, and root may use the blocks ext4 keeps for it)."""
    big, small = os.path.join(location, "holiday-video.mkv"), os.path.join(location, "crumbs")
    subprocess.run(["dd", "if=/dev/zero", f"of={big}", "bs=1M"], capture_output=True)
    subprocess.run(["dd", "if=/dev/zero", f"of={small}", "bs=4k"], capture_output=True)
    os.sync()
    return [big, small]


def is_mounted(path: str) -> bool:
    real = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
    with open("/proc/mounts") as f:
        return any(line.split()[1] == real for line in f)


@contextlib.contextmanager
def mounted_vault(work: str, fstype: str, size_mb: int = 512):
    with loop_drive(work, "primary", fstype, size_mb) as (primary, pimg), \
         loop_drive(work, "backup", fstype, size_mb) as (backup, bimg):
        vault = Vault(work, primary, backup)
        vault.images = (pimg, bimg)
        vault.fstype = fstype
        vault.init()
        vault.mount("-o", "allow_other")
        try:
            yield vault
        finally:
            vault.umount()


@contextlib.contextmanager
def standin_vault(work: str, primary=("ext4", 256), backup=("ext4", 256)):
    """A vault made on two stand-in drives of the given (file system, MiB); unmounted at
    the end whatever happened."""
    with loop_drive(work, "primary", *primary) as (p, pimg), loop_drive(work, "backup", *backup) as (b, bimg):
        vault = Vault(work, p, b)
        vault.images = (pimg, bimg)
        vault.init()
        try:
            yield vault
        finally:
            vault.umount()

