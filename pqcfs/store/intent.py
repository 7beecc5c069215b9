"""The write-intent log (pqcfs.intent): which ciphertext paths this session may change.

One line per path, relative to tree/: "F <path> <mac>" for a file whose header or
contents are written in place, "D <path> <mac>" for a directory whose entries change,
where mac = hex(HMAC-SHA256(intent_key, "F <path>"))[:32] and intent_key comes from the
root key: the log steers crash recovery, so a line a drive's holder wrote (or edited)
never authenticates and is never acted on. A path is noted once per session, before its
first change; the log is fsynced before any data fsync, so everything an application
fsynced is covered even after a power loss. A clean unmount empties it; after an unclean
one, recovery looks only at the paths it names.

What was never fsynced is covered only while the page cache that holds it survives, so
each session starts every drive's log with "B <identity> <mac>": which boot and which
mounting of that drive's file system it was written under (devices.mount_identity).
After a daemon crash the identity is unchanged, and the cache held the log and the data
alike; after a power loss, a reboot or a drive pulled and mounted again it differs, a
change the log never received may have reached a drive, and recovery compares the
replicas in full instead.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from pqcfs.crypto.kdf import LABEL_INTENT, hkdf
from pqcfs.store import devices
from pqcfs.store.append_file import ReplicatedAppendFile
from pqcfs.store.drive import Drive

log = logging.getLogger(__name__)
FILE_NAME = "pqcfs.intent"
FILE, DIRECTORY, BOOT = "F", "D", "B"
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
    def __init__(self, drives: list[Drive], healthy, key: bytes, name: str = FILE_NAME):
        self.file = ReplicatedAppendFile(drives, name, healthy)
        self.name = name
        self.drives = drives
        self.key = key
        # What was noted, as short digests: the paths themselves are in the log on the
        # drives (a session that writes 100,000 files would otherwise hold them all).
        self._seen: set[bytes] = set()
        self.dirty = False

    def note(self, kind: str, rel: str) -> None:
        digest = hashlib.blake2b(f"{kind} {rel}".encode("utf-8", "surrogateescape"), digest_size=16).digest()
        if digest in self._seen:
            return
        self.file.append(f"{kind} {rel} {_mac(self.key, kind, rel)}\n".encode())
        self._seen.add(digest)
        self.dirty = True

    def noted_on(self, drive: Drive) -> set[tuple[str, str]]:
        """The (kind, path) records this session noted, read back from a drive's log."""
        data = drive.read(self.name, MAX_FILE)
        return {(kind, rel) for kind, rel, authentic in _lines(data, self.key)
                if authentic and kind in (FILE, DIRECTORY)}

    def sync(self) -> None:
        if self.dirty:
            self.file.fsync()
            self.dirty = False

    def clear(self) -> None:
        """Start empty (a new session, or a clean unmount after everything is synced).
        Present and empty means "this session changed nothing yet", which recovery tells
        apart from "no intent log at all" (compare everything)."""
        self.file.truncate(0)
        self.file.append_each(lambda n: _boot_line(self.key, self.drives[n]))
        self.file.fsync()
        self._seen.clear()
        self.dirty = False

    def close(self) -> None:
        self.file.close()


def _boot_line(key: bytes, drive: Drive) -> bytes:
    identity = devices.mount_identity(drive.root_fd, drive.location) or "-"
    return f"{BOOT} {identity} {_mac(key, BOOT, identity)}\n".encode()


def _lines(data: bytes, key: bytes):
    """(kind, path, authentic) of every non-empty line of a log, one at a time (a log of
    junk costs one MAC before its reader gives up, not one per line and a copy of it all)."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        raw, start = data[start:end], end + 1
        if not raw:
            continue
        line = raw.decode("utf-8", "surrogateescape")
        kind, _, rest = line.partition(" ")
        rel, _, mac = rest.rpartition(" ")
        yield kind, rel, hmac.compare_digest(mac.encode("utf-8", "surrogateescape"), _mac(key, kind, rel).encode())


class Untrusted(Exception):
    """A log that can not be acted on (the message says why)."""


def read_strict(drive: Drive, key: bytes, name: str, cap: int) -> set[tuple[str, str]]:
    """A log written by a less trusted party (a grantee): its records, when every line
    authenticates and the log starts with its session line. Untrusted when it is too big
    (checked before reading), empty, or has any line that does not authenticate: such a
    log is reported and set aside by the caller, never acted on."""
    data = drive.read(name, cap)
    found, first = set(), True
    for kind, rel, authentic in _lines(data, key):
        if not authentic:
            raise Untrusted("a line fails authentication")
        if kind == BOOT:
            pass
        elif first:
            raise Untrusted("it does not start with its session line")
        elif kind in (FILE, DIRECTORY) and ".." not in rel.split("/"):
            found.add((kind, rel))
        else:
            raise Untrusted("it holds a record of unknown kind")
        first = False
    if first:
        raise Untrusted("it is empty")
    return found


def read(drives: list[Drive], key: bytes, name: str = FILE_NAME) -> set[tuple[str, str]] | None:
    """The union of the intent logs' authenticated records; None (recovery compares
    everything instead) when no replica has a log, when a line fails to authenticate
    (the log can not be trusted to be complete), or when no drive's log was written
    under the page cache its drive has now (a power loss, a reboot, or drives pulled
    and mounted again: writes the log never received may have reached the drives)."""
    found, any_log, forged, live = set(), False, 0, False
    for drive in drives:
        try:
            data = drive.read(name, MAX_FILE)
        except FileNotFoundError:
            continue
        any_log = True
        identity = devices.mount_identity(drive.root_fd, drive.location)
        for kind, rel, authentic in _lines(data, key):
            if not authentic:
                forged += 1
                break          # the log is not trusted as a whole: no need to read on
            elif kind == BOOT:
                live |= bool(identity) and rel == identity
            elif kind in (FILE, DIRECTORY) and ".." not in rel.split("/"):
                found.add((kind, rel))
            else:
                forged += 1
    if forged:
        log.warning("an intent log holds a record that fails authentication; comparing the replicas in full")
        return None
    if any_log and not live:
        log.warning("the intent logs were written before the drives were last mounted (a power loss, a "
                    "reboot or a pulled drive); comparing the replicas in full")
        return None
    return found if any_log else None
