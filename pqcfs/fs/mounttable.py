"""Which pqcfs mounts the kernel has, and whether their daemons still live.

The kernel's mount table is the truth: a daemon that crashed or was killed leaves its
mount behind (every access fails with ENOTCONN) and its runtime file too. `status`,
`umount` and `mount` all look here, so a dead mount is named as such and cleaned up
instead of being called "not mounted" or "does not exist".
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass

from pqcfs.fs import session as session_mod

FSTYPE = "fuse.pqcfs"


@dataclass
class Mount:
    mountpoint: str
    info: dict | None      # the daemon's runtime file, when it has one
    alive: bool            # the daemon still runs

    @property
    def dead(self) -> bool:
        return not self.alive


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def kernel_mounts() -> list[str]:
    found = []
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                before, _, after = line.partition(" - ")
                if after.split(" ", 1)[0] == FSTYPE:
                    found.append(_unescape(before.split(" ")[4]))
    except OSError:
        pass
    return found


def _alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def runtime_info(mountpoint: str) -> dict | None:
    try:
        with open(session_mod.runtime_file(mountpoint)) as f:
            info = json.load(f)
        return info if isinstance(info, dict) else None
    except (OSError, ValueError):
        return None


def listing() -> list[Mount]:
    out = []
    for mountpoint in kernel_mounts():
        info = runtime_info(mountpoint)
        out.append(Mount(mountpoint, info, bool(info) and _alive(info.get("pid"))))
    return out


def find(path: str) -> Mount | None:
    """The pqcfs mount at path (compared without touching path itself: stat on a dead
    FUSE mount fails, on a live one it asks the daemon)."""
    wanted = session_mod.canonical_mountpoint(path)
    return next((m for m in listing() if m.mountpoint == wanted), None)


def clean_dead(mount: Mount) -> None:
    """Detach a mount whose daemon is gone, and forget its runtime file."""
    subprocess.run(["fusermount3", "-u", "-z", mount.mountpoint], capture_output=True)
    try:
        os.unlink(session_mod.runtime_file(mount.mountpoint))
    except OSError:
        pass
