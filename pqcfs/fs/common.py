"""What the file system core and its operation families share."""

from __future__ import annotations

import errno
import os
import stat
import time
from dataclasses import dataclass

from pqcfs.errors import PqcfsError
from pqcfs.format import names
from pqcfs.fs.inodes import Node


class FsError(PqcfsError):
    def __init__(self, err: int, message: str = ""):
        super().__init__(message or os.strerror(err))
        self.errno = err


def now_ns() -> int:
    return time.time_ns()


@dataclass
class Caller:
    uid: int = 0
    gid: int = 0
    umask: int = 0o022


def without_setid(mode: int) -> int:
    """The mode after a write, truncation or chown that drops privileges: Linux clears
    the set-user-ID bit, and the set-group-ID bit where the group may execute (without
    group execute it marks mandatory locking, not a privilege, and stays)."""
    if mode & stat.S_IXGRP:
        return mode & ~(stat.S_ISUID | stat.S_ISGID)
    return mode & ~stat.S_ISUID


def full_c_name(dir_node: Node, p_name: bytes) -> str:
    try:
        return names.encrypt_name(dir_node.keys, p_name)
    except names.InvalidName:
        raise FsError(errno.ENAMETOOLONG if len(p_name) > names.MAX_P_NAME else errno.EINVAL) from None
