"""Which drive a location lives on, and whether it is removable (psutil + sysfs)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import psutil

from mounttool import mountinfo
from pqcfs.errors import DriveError, NotAVault


@dataclass(frozen=True)
class DriveInfo:
    path: str
    st_dev: int
    device: str | None
    mountpoint: str | None
    fstype: str | None
    removable: bool
    fs_uuid: str | None


def _mount_of(path: str):
    best = None
    for part in psutil.disk_partitions(all=True):
        mp = part.mountpoint
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and (best is None or len(mp) > len(best.mountpoint)):
            best = part
    return best


def _sysfs_removable(device: str) -> bool:
    name = os.path.basename(os.path.realpath(device))
    node = f"/sys/class/block/{name}"
    if not os.path.exists(node):
        return False
    real = os.path.realpath(node)
    # A partition's removable flag lives on its parent disk; USB bridges often report 0
    # for sticks and SSDs alike, so a USB path counts as removable too.
    disk = real if os.path.exists(os.path.join(real, "removable")) else os.path.dirname(real)
    try:
        with open(os.path.join(disk, "removable")) as f:
            if f.read().strip() == "1":
                return True
    except OSError:
        pass
    return "/usb" in real


def _fs_uuid(device: str | None) -> str | None:
    if not device or not device.startswith("/dev/"):
        return None
    by_uuid = "/dev/disk/by-uuid"
    real = os.path.realpath(device)
    if os.path.isdir(by_uuid):
        for uuid in os.listdir(by_uuid):
            if os.path.realpath(os.path.join(by_uuid, uuid)) == real:
                return uuid
    try:
        out = subprocess.run(["blkid", "-s", "UUID", "-o", "value", real],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def inspect(path: str) -> DriveInfo:
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        # The same error (and exit code) as any command given a location that is not there.
        raise NotAVault(f"{path}: no such directory (is the drive plugged in and mounted?)")
    part = _mount_of(real)
    device = part.device if part else None
    if part and part.fstype == "fuseblk" or (device and not device.startswith("/dev/")):
        device = device if device and device.startswith("/dev/") else None
    removable = bool(device) and _sysfs_removable(device)
    return DriveInfo(real, os.stat(real).st_dev, device, part.mountpoint if part else None,
                     part.fstype if part else None, removable, _fs_uuid(device))


def check_locations(paths: list[str], allow_fixed: bool, allow_same_device: bool) -> list[DriveInfo]:
    """Refuse fixed disks (unless allowed) and two locations on one drive."""
    infos = [inspect(p) for p in paths]
    for a in range(len(infos)):
        for b in range(a + 1, len(infos)):
            pa, pb = infos[a].path, infos[b].path
            if pa == pb or pa.startswith(pb + "/") or pb.startswith(pa + "/"):
                raise DriveError(f"{paths[a]} and {paths[b]} are the same location")
            if infos[a].st_dev == infos[b].st_dev and not allow_same_device:
                raise DriveError(f"{paths[a]} and {paths[b]} are on the same drive; mirroring to one "
                                 "drive protects nothing (--allow-same-device overrides)")
    if not allow_fixed:
        for p, info in zip(paths, infos):
            if not info.removable:
                raise DriveError(f"{p} is not on a removable drive ({info.device or 'no block device'}); "
                                 "use --allow-fixed to mirror to a fixed disk")
    return infos


def mountpoints() -> list[str]:
    """Mountpoints of the block-device file systems (drives), without pseudo file systems."""
    return [p.mountpoint for p in psutil.disk_partitions(all=True) if p.device.startswith("/dev/")]


def find_by_uuid(fs_uuid: str) -> list[str]:
    """Mountpoints of the file systems with this UUID (a plugged-in drive, wherever it
    was mounted this time)."""
    found = []
    for part in psutil.disk_partitions(all=True):
        if part.device.startswith("/dev/") and _fs_uuid(part.device) == fs_uuid:
            found.append(part.mountpoint)
    return found


def mount_identity(fd: int, location: str) -> str:
    """Which mounting of which boot the file system holding fd is: "<boot id>:<mount id>".
    It stays the same while the page cache of that file system survives (a daemon
    crash), and changes when it may not have (a reboot, a power loss, a drive pulled and
    mounted again). "" when it can not be told."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        st = os.fstat(fd)
        wanted = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
        here = os.path.realpath(location)
        best, best_len = "", -1
        for mount in mountinfo.read():
            inside = here == mount.mountpoint or here.startswith(mount.mountpoint.rstrip("/") + "/")
            if mount.device == wanted and inside and len(mount.mountpoint) > best_len:
                best, best_len = mount.mount_id, len(mount.mountpoint)
        return f"{boot}:{best}" if best else ""
    except (OSError, IndexError):
        return ""


NO_SPARSE_FILES = {"exfat", "vfat", "msdos", "fuseblk", "fuse.exfat"}   # fuseblk: exfat-fuse (or ntfs-3g)


def holds_sparse_files(location: str) -> bool:
    """Whether a file there may be larger than the drive (holes take no space)."""
    part = _mount_of(os.path.realpath(location))
    return part is None or part.fstype not in NO_SPARSE_FILES
