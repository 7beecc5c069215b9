"""The write-intent log (pqcfs.intent): which ciphertext paths this session may change.

One line per path, relative to tree/: "F <path>" for a file whose header or contents are
written in place, "D <path>" for a directory whose entries change. A path is noted once
per session, before its first change; the log is fsynced before any data fsync, so
everything an application fsynced is covered even after a power loss, and after a daemon
crash the page cache holds both anyway. A clean unmount empties it; after an unclean one,
recovery looks only at the paths it names.
"""

from __future__ import annotations

import os

from pqcfs.store.append_file import ReplicatedAppendFile

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
        self.file = ReplicatedAppendFile(locations, FILE_NAME, healthy)
        self.noted: set[tuple[str, str]] = set()
        self.dirty = False

    def note(self, kind: str, rel: str) -> None:
        if (kind, rel) in self.noted:
            return
        self.file.append(f"{kind} {rel}\n".encode())
        self.noted.add((kind, rel))
        self.dirty = True

    def sync(self) -> None:
        if self.dirty:
            self.file.fsync()
            self.dirty = False

    def clear(self) -> None:
        """Start empty (a new session, or a clean unmount after everything is synced).
        Present and empty means "this session changed nothing yet", which recovery tells
        apart from "no intent log at all" (compare everything)."""
        self.file.truncate(0)
        self.file.fsync()
        self.noted.clear()
        self.dirty = False

    def close(self) -> None:
        self.file.close()


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
