"""One append-only file per replica (the audit and intent logs), written to every healthy
replica through descriptors kept open for the session and opened through each replica's
Drive (a planted symlink or FIFO is refused, never written through). A backup that fails
is logged and skipped (the replica set fails it on its next write); a failing primary
raises."""

from __future__ import annotations

import logging
import os

from pqcfs.errors import PqcfsError
from pqcfs.store import reserve
from pqcfs.store.drive import Drive
from pqcfs.store.replicas import drive_failed

log = logging.getLogger(__name__)


class ReplicatedAppendFile:
    def __init__(self, drives: list[Drive], name: str, healthy):
        self.drives = drives
        self.name = name
        self.healthy = healthy
        self._fds: dict[int, int] = {}

    def _fd(self, n: int) -> int:
        # Kept open: an open and close per record would cost more than the record.
        if n not in self._fds:
            self._fds[n] = self.drives[n].open(self.name, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return self._fds[n]

    def _each(self, what: str, fn) -> None:
        healthy = self.healthy()
        for n in healthy:
            try:
                reserve.retrying(self.drives[n], lambda: fn(n))
            except (OSError, PqcfsError) as e:
                # The serving replica's failure is the caller's, unless its drive failed
                # and another one carries on (the replica set drops it on its next write).
                if n == healthy[0] and not (drive_failed(e) and len(healthy) > 1):
                    raise
                log.warning("could not %s %s on replica %d: %s", what, self.name, n, e)

    def append(self, data: bytes) -> None:
        self._each("append to", lambda n: os.write(self._fd(n), data))

    def append_each(self, data_for) -> None:
        """Append data_for(n) to replica n's file (a record that differs per drive)."""
        self._each("append to", lambda n: os.write(self._fd(n), data_for(n)))

    def fsync(self) -> None:
        self._each("sync", lambda n: os.fsync(self._fd(n)))

    def truncate(self, length: int) -> None:
        self._each("truncate", lambda n: os.ftruncate(self._fd(n), length))

    def forget(self, n: int) -> None:
        """Replica n's drive was replaced (it rejoined): open the file anew there."""
        fd = self._fds.pop(n, None)
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def close(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = {}
