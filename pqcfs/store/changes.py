"""The change journal (pqcfs.changes): which ciphertext paths changed while a replica
was missing, so the sync that brings it back copies those and reads nothing else.

Written on the replicas that carry on, only while some replica is missing or failed.
One line per record, each "<kind> <arg> <mac>", the macs chained:

  S <since>   first line: the session (a lineage id) after which the changes are listed
  P <path>    the entry at path (relative to the replica) changed: file, directory or gone
  R <path>    the same, and everything below it may have changed too (a directory renamed here)
  E -         a session that wrote here ended cleanly (everything above is complete)

  mac = hex(HMAC-SHA256(changes_key, prev_mac || "\n" || kind || " " || arg))[:32]
  prev_mac = the previous line's mac ("" for the first line)

The chain makes a deleted or reordered line fail; a journal that does not end with an
"E" (a session crashed, or lines were cut off the end) is not trusted, and neither is one
whose `since` the stale replica never saw: then the sync compares everything instead.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass, field

from pqcfs.crypto.kdf import LABEL_CHANGES, hkdf
from pqcfs.store.append_file import ReplicatedAppendFile
from pqcfs.store.drive import Drive

log = logging.getLogger(__name__)
FILE_NAME = "pqcfs.changes"
MAX_FILE = 64 << 20
MAC_HEX = 32
SINCE, PATH, TREE, END = "S", "P", "R", "E"
UNKNOWN = "-"    # `since` of a journal known to be incomplete: matches no replica


def changes_key(root_key: bytes) -> bytes:
    return hkdf(root_key, LABEL_CHANGES)


def _mac(key: bytes, prev: str, kind: str, arg: str) -> str:
    msg = f"{prev}\n{kind} {arg}".encode("utf-8", "surrogateescape")
    return hmac.new(key, msg, hashlib.sha256).hexdigest()[:MAC_HEX]


@dataclass
class Journal:
    """A journal as read from a drive: usable only when complete."""
    since: str = UNKNOWN
    paths: dict[str, bool] = field(default_factory=dict)     # path -> whole subtree
    complete: bool = False
    tip: str = ""

    def covers(self, lineage: list[str]) -> bool:
        """Every change a replica with this lineage lacks is listed here."""
        return self.complete and self.since != UNKNOWN and self.since in lineage


def read(drive: Drive, key: bytes) -> Journal | None:
    """The journal on drive (None when there is none); one that fails anywhere comes
    back incomplete, never partly trusted."""
    try:
        data = drive.read(FILE_NAME, MAX_FILE)
    except FileNotFoundError:
        return None
    except OSError as e:
        log.warning("could not read %s: %s", drive.describe(FILE_NAME), e)
        return Journal()
    journal, prev = Journal(), ""
    for n, line in enumerate(data.decode("utf-8", "surrogateescape").split("\n")):
        if not line:
            continue
        kind, _, rest = line.partition(" ")
        arg, _, mac = rest.rpartition(" ")
        if not hmac.compare_digest(mac.encode("utf-8", "surrogateescape"), _mac(key, prev, kind, arg).encode()) \
                or (n == 0) != (kind == SINCE) or kind not in (SINCE, PATH, TREE, END) \
                or ".." in arg.split("/"):
            log.warning("%s fails authentication at line %d; a sync from it compares everything",
                        drive.describe(FILE_NAME), n + 1)
            return Journal()
        prev = mac
        if kind == SINCE:
            journal.since = arg
        elif kind == END:
            journal.complete = True
        else:
            journal.paths[arg] = journal.paths.get(arg, False) or kind == TREE
            journal.complete = False
    journal.tip = prev
    return journal


class ChangeJournal:
    """A mount session's side: while some replica is missing (tracking), every path the
    replica set is about to change goes to the journal on the healthy replicas, before
    the change itself (the journal is fsynced before any data fsync); an online resync
    under way (a watcher) is told every change either way."""

    def __init__(self, drives: list[Drive], healthy, key: bytes):
        self.file = ReplicatedAppendFile(drives, FILE_NAME, healthy)
        self.key = key
        self.tracking = False
        self.journal: dict[str, bool] = {}       # everything in the journal file
        self.watchers: list[dict[str, bool]] = []   # online resyncs waiting for changes
        self.since = UNKNOWN
        self._prev = ""
        self._dirty = False

    def _append(self, kind: str, arg: str) -> None:
        mac = _mac(self.key, self._prev, kind, arg)
        self.file.append(f"{kind} {arg} {mac}\n".encode("utf-8", "surrogateescape"))
        self._prev = mac
        self._dirty = True

    def note(self, rel: str, subtree: bool = False) -> None:
        for pending in self.watchers:
            pending[rel] = pending.get(rel, False) or subtree
        if self.tracking and (rel not in self.journal or self.journal[rel] < subtree):
            self._append(TREE if subtree else PATH, rel)
            self.journal[rel] = subtree

    def start(self, since: str, existing: Journal | None, earlier: dict[str, bool] | None = None) -> None:
        """Track from now on. A complete journal on the drive goes on (it still lists what
        a replica missed before); anything else starts over from `since`, or, when an
        incomplete journal was there, from nowhere (a later sync compares everything).
        earlier: what this session changed before (a replica failing mid-session may have
        lost it with its drive's cache), listed too."""
        if self.tracking:
            return
        self.tracking = True
        if existing is not None and existing.complete:
            self.journal, self._prev, self.since = dict(existing.paths), existing.tip, existing.since
        else:
            self.file.truncate(0)
            self.journal, self._prev = {}, ""
            self.since = since if existing is None else UNKNOWN
            self._append(SINCE, self.since)
        for rel, subtree in (earlier or {}).items():
            if rel not in self.journal or self.journal[rel] < subtree:
                self._append(TREE if subtree else PATH, rel)
                self.journal[rel] = subtree

    def covering(self, lineage: list[str]) -> dict[str, bool] | None:
        """What a replica with this lineage lacks, when this journal knows it all."""
        if self.tracking and self.since != UNKNOWN and self.since in lineage:
            return dict(self.journal)
        return None

    def sync(self) -> None:
        if self._dirty:
            self.file.fsync()
            self._dirty = False

    def end(self) -> None:
        """A clean end of the session: the journal is complete up to here."""
        if self.tracking:
            self._append(END, "-")
            self.sync()
        self.file.close()

    def stop(self, drives: list[Drive]) -> None:
        """No replica is missing any more: the journal has done its work."""
        self.tracking = False
        self.journal = {}
        self.file.close()
        remove(drives)


def remove(drives: list[Drive]) -> None:
    for drive in drives:
        try:
            drive.unlink(FILE_NAME)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not remove %s: %s", drive.describe(FILE_NAME), e)
