"""What the file system core and its operation families share."""

from __future__ import annotations

import errno
import os
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


def full_c_name(dir_node: Node, p_name: bytes) -> str:
    try:
        return names.encrypt_name(dir_node.keys, p_name)
    except names.InvalidName:
        raise FsError(errno.ENAMETOOLONG if len(p_name) > names.MAX_P_NAME else errno.EINVAL) from None
