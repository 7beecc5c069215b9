"""The kernel's mount table (/proc/self/mountinfo), parsed in one place with one escape
rule: every reader of it in mounttool and pqcfs goes through here."""

from __future__ import annotations

import re
from dataclasses import dataclass

_ESCAPE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    mount_id: str
    device: str          # "major:minor" of the file system
    root: str            # the directory of the file system mounted here
    mountpoint: str
    fstype: str
    source: str
    super_options: str   # the file system's own options (FUSE's user_id= among them)


def unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo (octal)."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse(text: str) -> list[Mount]:
    mounts = []
    for line in text.splitlines():
        before, sep, after = line.partition(" - ")
        fields, tail = before.split(" "), after.split(" ")
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        mounts.append(Mount(fields[0], fields[2], unescape(fields[3]), unescape(fields[4]), tail[0],
                            unescape(tail[1]), tail[2] if len(tail) > 2 else ""))
    return mounts


def read(path: str = "/proc/self/mountinfo") -> list[Mount]:
    """Every mount this process sees (none when the table can not be read)."""
    try:
        with open(path) as f:
            return parse(f.read())
    except OSError:
        return []
