"""Crash-safe whole-file replacement of host-side files (runtime state, identities): temp
file, fsync, rename, fsync of the directory. Replicas on drives go through store/drive.py."""

from __future__ import annotations

import errno
import os

from pqcfs.errors import NoSpace
from pqcfs.store.drive import fsync_dir_fd

TEMP_PREFIX = "t."  # contains a dot, so it can never be mistaken for an encrypted name


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync_dir_fd(fd)
    finally:
        os.close(fd)


def write_atomic(path: str, data: bytes, sync: bool = True) -> None:
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, TEMP_PREFIX + os.urandom(6).hex())
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if e.errno == errno.ENOSPC:
            raise NoSpace(f"no space left on the drive holding {directory}") from None
        raise
    if sync:
        fsync_dir(directory or ".")
