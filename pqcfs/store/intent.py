"""The write-intent log (pqcfs.intent): which ciphertext paths this session may change.

One line per path, relative to tree/: "F <path>" for a file whose header or contents are
written in place, "D <path>" for a directory whose entries change. A path is noted once
per session, before its first change; the log is fsynced before any data fsync, so
everything an application fsynced is covered even after a power loss, and after a daemon
crash the page cache holds both anyway. A clean unmount empties it; after an unclean one,
recovery looks only at the paths it names.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
FILE_NAME = "pqcfs.intent"
FILE, DIRECTORY = "F", "D"


class NoIntent:
    """For a file system without a session (tests, fsck): notes nothing."""

    def note(self, kind: str, rel: str) -> None:
        pass

    def sync(self) -> None:
        pass


class IntentLog(NoIntent):
    def __init__(self, locations: list[str], healthy):
        self.locations = locations
        self.healthy = healthy
        self.noted: set[tuple[str, str]] = set()
        self.dirty = False
        self._fds: dict[int, int] = {}

    def _fd(self, n: int) -> int:
        if n not in self._fds:
            self._fds[n] = os.open(os.path.join(self.locations[n], FILE_NAME),
                                   os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return self._fds[n]

    def note(self, kind: str, rel: str) -> None:
        if (kind, rel) in self.noted:
            return
        line = f"{kind} {rel}\n".encode()
        for n in self.healthy():
            try:
                os.write(self._fd(n), line)
            except OSError as e:
                if n == 0:
                    raise
                log.warning("could not write the intent log on replica %d: %s", n, e)
        self.noted.add((kind, rel))
        self.dirty = True

    def sync(self) -> None:
        if not self.dirty:
            return
        for n in self.healthy():
            if n in self._fds:
                try:
                    os.fsync(self._fds[n])
                except OSError as e:
                    if n == 0:
                        raise
                    log.warning("could not sync the intent log on replica %d: %s", n, e)
        self.dirty = False

    def clear(self) -> None:
        """Start empty (a new session, or a clean unmount after everything is synced)."""
        for n in self.healthy():
            try:
                # Present and empty: "this session changed nothing yet", which recovery
                # tells apart from "no intent log at all" (compare everything).
                os.ftruncate(self._fd(n), 0)
                os.fsync(self._fd(n))
            except OSError as e:
                if n == 0:
                    raise
                log.warning("could not clear the intent log on replica %d: %s", n, e)
        self.noted.clear()
        self.dirty = False

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}


def read(locations: list[str]) -> set[tuple[str, str]] | None:
    """The union of the intent logs; None when no replica has one (full comparison)."""
    found, any_log = set(), False
    for location in locations:
        path = os.path.join(location, FILE_NAME)
        if not os.path.exists(path):
            continue
        any_log = True
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                kind, _, rel = line.rstrip("\n").partition(" ")
                if kind in (FILE, DIRECTORY) and rel is not None and ".." not in rel.split("/"):
                    found.add((kind, rel))
    return found if any_log else None
