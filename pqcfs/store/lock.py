"""The vault lock: flock on pqcfs.lock in every replica, opened through the Drive (a
planted symlink or FIFO is refused). One writer at a time: mount, sync, fsck, key and
audit commands; readers (info, status, audit show/verify) take none."""

from __future__ import annotations

import errno
import fcntl
import os

from pqcfs.errors import MountError

LOCK_NAME = "pqcfs.lock"


class VaultLock:

    def __init__(self, drives: list):
        self.drives = drives
        self._fds: list[int] = []

    def acquire(self) -> None:
        for drive in self.drives:
            try:
                fd = drive.open(LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
            except OSError as e:
                if e.errno != errno.EROFS:
                    raise
                # Read-only media: nobody can write this replica, so a lock that exists is
                # taken for reading (flock works on any descriptor) and a missing one is
                # not needed.
                try:
                    fd = drive.open(LOCK_NAME, os.O_RDONLY)
                except FileNotFoundError:
                    continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self.release()
                raise MountError(f"the vault on {drive.location} is in use (mounted, or a sync or fsck "
                                 "is running)") from None
            self._fds.append(fd)

    def covers(self, drive) -> bool:
        """This lock is held on drive's lock file already (flock conflicts even with
        the same process's other descriptors, so a drive coming back is not locked twice)."""
        try:
            st = drive.lstat(LOCK_NAME)
        except OSError:
            return False
        for fd in self._fds:
            try:
                held = os.fstat(fd)
            except OSError:
                continue
            if (held.st_dev, held.st_ino) == (st.st_dev, st.st_ino):
                return True
        return False

    def release(self) -> None:
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass    # a drive that is gone releases its lock by itself
        self._fds = []
