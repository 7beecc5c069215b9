"""The write-intent log (pqcfs.intent): which ciphertext paths this session may change.

One line per path, relative to tree/: "F <path> <mac>" for a file whose header or
contents are written in place, "D <path> <mac>" for a directory whose entries change,
where mac = hex(HMAC-SHA256(intent_key, "F <path>"))[:32] and intent_key comes from the
root key: the log steers crash recovery, so a line a drive's holder wrote (or edited)
never authenticates and is never acted on. A path is noted once per session, before its
first change; the log is fsynced before any data fsync, so everything an application
fsynced is covered even after a power loss, and after a daemon crash the page cache
holds both anyway. A clean unmount empties it; after an unclean one, recovery looks only
at the paths it names.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from pqcfs.crypto.kdf import LABEL_INTENT, hkdf
from pqcfs.store.append_file import ReplicatedAppendFile
from pqcfs.store.drive import Drive

log = logging.getLogger(__name__)
FILE_NAME = "pqcfs.intent"
FILE, DIRECTORY = "F", "D"
MAX_FILE = 64 << 20        # cap on the bytes read from a drive
MAC_HEX = 32


def intent_key(root_key: bytes) -> bytes:
    return hkdf(root_key, LABEL_INTENT)


def _mac(key: bytes, kind: str, rel: str) -> str:
    return hmac.new(key, f"{kind} {rel}".encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()[:MAC_HEX]


class NoIntent:
    """For a file system without a session (tests, fsck): notes nothing."""

    def note(self, kind: str, rel: str) -> None:
        pass

    def sync(self) -> None:
        pass


class IntentLog(NoIntent):
    def __init__(self, drives: list[Drive], healthy, key: bytes):
        self.file = ReplicatedAppendFile(drives, FILE_NAME, healthy)
        self.key = key
        self.noted: set[tuple[str, str]] = set()
        self.dirty = False

    def note(self, kind: str, rel: str) -> None:
        if (kind, rel) in self.noted:
            return
        self.file.append(f"{kind} {rel} {_mac(self.key, kind, rel)}\n".encode())
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


def read(drives: list[Drive], key: bytes) -> set[tuple[str, str]] | None:
    """The union of the intent logs' authenticated records; None when no replica has a
    log, or when a line fails to authenticate (the log can not be trusted to be
    complete, so recovery compares everything instead)."""
    found, any_log, forged = set(), False, 0
    for drive in drives:
        try:
            data = drive.read(FILE_NAME, MAX_FILE)
        except FileNotFoundError:
            continue
        any_log = True
        for line in data.decode("utf-8", "surrogateescape").splitlines():
            kind, _, rest = line.partition(" ")
            rel, _, mac = rest.rpartition(" ")
            if (kind in (FILE, DIRECTORY) and ".." not in rel.split("/")
                    and hmac.compare_digest(mac.encode("utf-8", "surrogateescape"), _mac(key, kind, rel).encode())):
                found.add((kind, rel))
            elif line:
                forged += 1
    if forged:
        log.warning("%d intent record(s) fail authentication; comparing the replicas in full", forged)
        return None
    return found if any_log else None
