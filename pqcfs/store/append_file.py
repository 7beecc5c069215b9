"""One append-only file per replica (the audit and intent logs), written to every healthy
replica through descriptors kept open for the session. A backup that fails is logged and
skipped (the replica set fails it on its next write); a failing primary raises."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


class ReplicatedAppendFile:
    def __init__(self, locations: list[str], name: str, healthy):
        self.locations = locations
        self.name = name
        self.healthy = healthy
        self._fds: dict[int, int] = {}

    def path(self, n: int) -> str:
        return os.path.join(self.locations[n], self.name)

    def _fd(self, n: int) -> int:
        # Kept open: an open and close per record would cost more than the record.
        if n not in self._fds:
            self._fds[n] = os.open(self.path(n), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return self._fds[n]

    def _each(self, what: str, fn) -> None:
        for n in self.healthy():
            try:
                fn(n)
            except OSError as e:
                if n == 0:
                    raise
                log.warning("could not %s %s on replica %d: %s", what, self.name, n, e)

    def append(self, data: bytes) -> None:
        self._each("append to", lambda n: os.write(self._fd(n), data))

    def fsync(self) -> None:
        self._each("sync", lambda n: os.fsync(self._fd(n)))

    def truncate(self, length: int) -> None:
        self._each("truncate", lambda n: os.ftruncate(self._fd(n), length))

    def close(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = {}
