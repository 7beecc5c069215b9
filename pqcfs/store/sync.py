"""Make one replica's ciphertext identical to another's, copying only what differs.

This works on ciphertext bytes; the caller may pass `vet(rel)`, which authenticates the
source's copy of a file before it replaces the target's (False: the source copy is
damaged, so the target keeps what it has and the file counts as damaged). Which replica
is the source is policy decided elsewhere (replica states); this code never chooses. It touches only what the vault owns on a drive (the header, the
audit log, `tree/` and the snapshots), never the other files a user keeps on the same stick, and only
regular files and directories: a symlink, FIFO or device on either side is damage, left
unfollowed (and moved out of the way into the quarantine on the target).
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass

from pqcfs.errors import NoSpace
from pqcfs.format import names
from pqcfs.format.dir_table import NAME as TABLE_NAME
from pqcfs.format.node_header import HEADER_LEN   # which node, and what kind, an entry file holds
from pqcfs.store.drive import Drive

log = logging.getLogger(__name__)
CHUNK = 1 << 20
TREE = "tree"
AUDIT_FILE = "pqcfs.audit"
COPIED_FILES = ("pqcfs.vault", "pqcfs.vault.spare", AUDIT_FILE)   # per-replica files (state, lock, intent, changes) are never copied
SNAPSHOTS = "pqcfs.snapshots"     # snapshots/store.py: an index, then files written once under names of their own
TAIL_CHECK = 64 << 10


@dataclass
class SyncStats:
    files_checked: int = 0
    files_changed: int = 0
    bytes_written: int = 0
    removed: int = 0
    damaged: int = 0


def totals(drive: Drive, rel: str = TREE) -> tuple[int, int]:
    """Bytes and files under rel (what a sync reads, for its progress bar)."""
    size, files, stack = 0, 0, [rel]
    while stack:
        here = stack.pop()
        for name, kind in drive.scandir(here):
            if kind == "dir":
                stack.append(f"{here}/{name}")
            elif kind == "file":
                try:
                    size += drive.lstat(f"{here}/{name}").st_size
                    files += 1
                except FileNotFoundError:
                    pass
    return size, files


def path_totals(drive: Drive, paths: dict[str, bool]) -> tuple[int, int]:
    """Bytes and files among the listed paths (whole subtrees where marked)."""
    size, files = 0, 0
    for rel, subtree in paths.items():
        kind = drive.kind(rel)
        if kind == "file":
            size += drive.lstat(rel).st_size
            files += 1
        elif kind == "dir" and subtree:
            more_size, more_files = totals(drive, rel)
            size, files = size + more_size, files + more_files
    return size, files


def _remove(drive: Drive, rel: str, stats: SyncStats) -> None:
    if drive.remove(rel, "not a file or directory (found by sync)") == "other":
        stats.damaged += 1
    else:
        stats.removed += 1


def _vetted(vet, src: Drive, rel: str, stats: SyncStats) -> bool:
    if vet is None or vet(rel):
        return True
    log.error("%s fails authentication: not copied over the other replica's copy", src.describe(rel))
    stats.damaged += 1
    return False


def _sync_file(src: Drive, dst: Drive, rel: str, stats: SyncStats, progress, vet=None) -> None:
    """An existing regular file is brought up to date in place, chunk by chunk (only what
    differs is written: a sync after small changes to big files stays small); a new one
    is copied to a temp file and renamed. Either way only after vet() passed."""
    stats.files_checked += 1
    progress(0, files=1)
    if dst.kind(rel) != "file":
        if not _vetted(vet, src, rel, stats):
            return
        if dst.exists(rel):
            _remove(dst, rel, stats)
        stats.bytes_written += dst.copy_from(src, rel)
        progress(src.lstat(rel).st_size)
        stats.files_changed += 1
        return
    s, d = src.open(rel), dst.open(rel, os.O_RDWR)
    try:
        changed, offset = False, 0
        vetted = os.fstat(s).st_size != os.fstat(d).st_size   # differs: vet before any write
        if vetted and not _vetted(vet, src, rel, stats):
            return
        while True:
            chunk = os.pread(s, CHUNK, offset)
            if not chunk:
                break
            if os.pread(d, len(chunk), offset) != chunk:
                if not vetted:
                    if not _vetted(vet, src, rel, stats):
                        return
                    vetted = True
                os.pwrite(d, chunk, offset)
                stats.bytes_written += len(chunk)
                changed = True
            offset += len(chunk)
            progress(len(chunk))
        if os.fstat(d).st_size != offset:
            os.ftruncate(d, offset)
            changed = True
        if changed:
            os.fsync(d)
        st = os.fstat(s)
        # Same times on every replica: the mount shows the primary's.
        os.utime(d, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        os.close(s)
        os.close(d)
    if changed:
        stats.files_changed += 1


def _sync_dir(src: Drive, dst: Drive, top: str, stats: SyncStats, progress, vet=None) -> None:
    for _ in _walk_dir(src, dst, top, stats, progress, vet):
        pass


def _walk_dir(src: Drive, dst: Drive, top: str, stats: SyncStats, progress, vet=None):
    """dst's directory top (and everything below) becomes src's (a loop, not recursion:
    trees may be thousands of levels deep). A generator that yields after every file, so
    a mounted session can serve between them (online resync); an entry that vanished
    from src meanwhile is skipped (its removal is journaled and synced after)."""
    pending = [top]
    while pending:
        rel = pending.pop()
        try:
            wanted = dict(src.scandir(rel))
        except FileNotFoundError:
            continue
        if dst.kind(rel) != "dir":
            if dst.exists(rel):
                _remove(dst, rel, stats)
            dst.mkdir(rel, 0o700)
        dirty = False
        for name, kind in dst.scandir(rel):
            if wanted.get(name) == "other":
                continue   # damage on the source never removes a copy on the target
            if name not in wanted or kind != wanted[name]:
                _remove(dst, f"{rel}/{name}", stats)
                dirty = True
        changed_before = stats.files_changed
        for name, kind in sorted(wanted.items()):
            child = f"{rel}/{name}"
            if kind == "file":
                _sync_present_file(src, dst, child, stats, progress, vet)
                yield
            elif kind == "dir":
                pending.append(child)
            else:
                log.error("%s is not a file or directory; not copied", src.describe(child))
                stats.damaged += 1
        if dirty or stats.files_changed != changed_before:
            dst.fsync_dir(rel)


def _sync_present_file(src: Drive, dst: Drive, rel: str, stats: SyncStats, progress, vet) -> None:
    try:
        _sync_file(src, dst, rel, stats, progress, vet)
    except FileNotFoundError:
        if src.kind(rel) is not None:
            raise


def sync_tree(src: Drive, dst: Drive, progress=lambda n, files=0: None, vet=None) -> SyncStats:
    """dst (a replica) becomes a copy of src's vault: tree/, the header and the audit log.
    A full target is NoSpace naming the drive."""
    try:
        return _sync_tree(src, dst, progress, vet)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise NoSpace(f"no space left on {dst.location}: it can not hold a copy of {src.location}") from None
        raise


def _sync_tree(src: Drive, dst: Drive, progress, vet) -> SyncStats:
    stats = SyncStats()
    _sync_dir(src, dst, TREE, stats, progress, vet)
    sync_own_files(src, dst, stats)
    return stats


def sync_paths(src: Drive, dst: Drive, paths: dict[str, bool], progress=lambda n, files=0: None,
               vet=None) -> SyncStats:
    """Like sync_tree, but only for the entries a change journal lists (path -> whole
    subtree): the rest of the target is known to be equal already and is never read."""
    try:
        stats = SyncStats()
        for _ in path_steps(src, dst, paths, stats, progress, vet):
            pass
        sync_own_files(src, dst, stats)
        return stats
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise NoSpace(f"no space left on {dst.location}: it can not hold a copy of {src.location}") from None
        raise


def path_steps(src: Drive, dst: Drive, paths: dict[str, bool], stats: SyncStats, progress, vet=None):
    """sync_paths' work on tree/, as a generator that yields after every file."""
    parents: set[str] = set()
    for rel in sorted(paths):          # a directory before what is in it
        if rel == TREE or rel.startswith(TREE + "/"):
            yield from _path_steps(src, dst, rel, paths[rel], stats, progress, vet)
            parents.add(rel.rpartition("/")[0] or TREE)
    for rel in sorted(parents, reverse=True):
        if dst.kind(rel) == "dir":
            dst.fsync_dir(rel)


def _path_steps(src: Drive, dst: Drive, rel: str, subtree: bool, stats: SyncStats, progress, vet):
    """dst's entry at rel becomes src's: gone, a file brought up to date, or a
    directory whose own entries match (with subtree: everything below it too)."""
    kind = src.kind(rel)
    if kind is None:
        if dst.exists(rel):
            _remove(dst, rel, stats)
        return
    parent = _missing_parent(src, dst, rel)
    if parent is not None:
        # Everything in it is new to dst (or src lacks it too, and there is nothing to do).
        yield from _walk_dir(src, dst, parent, stats, progress, vet)
        return
    if kind == "file":
        if not (rel.endswith("/" + TABLE_NAME) and dst.kind(rel) == "file" and _table_tail(src, dst, rel, stats)):
            _sync_present_file(src, dst, rel, stats, progress, vet)
        yield
    elif kind == "dir":
        if subtree or dst.kind(rel) != "dir":
            yield from _walk_dir(src, dst, rel, stats, progress, vet)
        else:
            yield from _entry_steps(src, dst, rel, stats, progress, vet)
    else:
        log.error("%s is not a file or directory; not copied", src.describe(rel))
        stats.damaged += 1


def _missing_parent(src: Drive, dst: Drive, rel: str) -> str | None:
    """The highest directory above rel that dst lacks."""
    parts = rel.split("/")
    for depth in range(1, len(parts)):
        here = "/".join(parts[:depth])
        if dst.kind(here) != "dir":
            return here
    return None


def _entry_steps(src: Drive, dst: Drive, rel: str, stats: SyncStats, progress, vet):
    """One directory's own entries: what src lacks goes, what dst lacks is copied, pqcfs'
    own small files (id file, tables, sidecars) are compared whole, and an entry file on
    both sides only by its size and header (a different node or kind now has that name):
    changes to a file's contents have their own records."""
    wanted = dict(src.scandir(rel))
    for name, kind in dst.scandir(rel):
        if wanted.get(name) == "other":
            continue
        if name not in wanted or kind != wanted[name]:
            _remove(dst, f"{rel}/{name}", stats)
    present = dict(dst.scandir(rel))
    for name, kind in sorted(wanted.items()):
        child = f"{rel}/{name}"
        if kind == "file" and name == TABLE_NAME and present.get(name) == "file" and _table_tail(src, dst, child,
                                                                                                   stats):
            continue
        if kind == "file":
            if name not in present or not names.is_entry(name) or _head_differs(src, dst, child):
                _sync_present_file(src, dst, child, stats, progress, vet)
                yield
        elif kind == "dir" and name not in present:
            yield from _walk_dir(src, dst, child, stats, progress, vet)


def _table_tail(src: Drive, dst: Drive, rel: str, stats: SyncStats) -> bool:
    """A directory table only grows between compactions: the target gets the source's new
    records appended. False when the target's copy is not a prefix (a compacted table is
    rewritten whole): then it is copied like any file."""
    grew = src.lstat(rel).st_size != dst.lstat(rel).st_size
    if not _append_tail(src, dst, rel):
        return False
    stats.files_changed += grew
    return True


def _head_differs(src: Drive, dst: Drive, rel: str) -> bool:
    try:
        a, b = src.lstat(rel), dst.lstat(rel)
        return a.st_size != b.st_size or src.read_at(rel, HEADER_LEN) != dst.read_at(rel, HEADER_LEN)
    except FileNotFoundError:
        return True


def sync_own_files(src: Drive, dst: Drive, stats: SyncStats) -> None:
    """The header (small: compared whole) and the audit log (append-only: only its new
    tail is read and appended when the target's copy is a prefix of the source's)."""
    for name in COPIED_FILES:
        kind = src.kind(name)
        if kind == "file":
            if dst.kind(name) == "file" and (_append_tail(src, dst, name) if name == AUDIT_FILE
                                             else same_file(src, dst, name)):
                continue
            if dst.kind(name) not in (None, "file"):
                _remove(dst, name, stats)
            dst.copy_from(src, name)
            stats.files_changed += 1
        elif kind == "other":
            log.error("%s is not a regular file; not copied", src.describe(name))
            stats.damaged += 1
    sync_snapshots(src, dst, stats)


def sync_snapshots(src: Drive, dst: Drive, stats: SyncStats) -> None:
    """The snapshots' directory: the index compared whole; manifests and kept file
    versions are written once under names that say what they are, so one of the same
    name and size is the same (only their presence is compared, not every byte)."""
    kind = src.kind(SNAPSHOTS)
    if kind != "dir":
        if kind == "other":
            log.error("%s is not a directory; not copied", src.describe(SNAPSHOTS))
            stats.damaged += 1
        elif dst.kind(SNAPSHOTS) is not None:
            _remove(dst, SNAPSHOTS, stats)
        return
    for rel in (SNAPSHOTS, f"{SNAPSHOTS}/data"):
        if src.kind(rel) != "dir":
            continue
        if dst.kind(rel) != "dir":
            if dst.exists(rel):
                _remove(dst, rel, stats)
            dst.mkdir(rel, 0o700)
        wanted, have = dict(src.scandir(rel)), dict(dst.scandir(rel))
        for name, kind in have.items():
            if name not in wanted or kind != wanted[name]:
                _remove(dst, f"{rel}/{name}", stats)
        for name, kind in sorted(wanted.items()):
            child = f"{rel}/{name}"
            if kind != "file":
                continue
            stats.files_checked += 1
            if have.get(name) == "file" and (same_file(src, dst, child) if name == "index"
                                             else src.lstat(child).st_size == dst.lstat(child).st_size):
                continue
            stats.bytes_written += dst.copy_from(src, child)
            stats.files_changed += 1
        dst.fsync_dir(rel)


def _append_tail(src: Drive, dst: Drive, rel: str) -> bool:
    """Bring an append-only file up to date by appending what src has beyond dst's end,
    after checking that dst's last bytes are where src has them; False when dst is not a
    prefix of src (then it is copied whole)."""
    s, d = src.open(rel), dst.open(rel, os.O_RDWR)
    try:
        s_size, d_size = os.fstat(s).st_size, os.fstat(d).st_size
        if d_size > s_size:
            return False
        probe = min(d_size, TAIL_CHECK)
        if os.pread(s, probe, d_size - probe) != os.pread(d, probe, d_size - probe):
            return False
        if s_size == d_size:
            return True
        offset = d_size
        while offset < s_size:
            chunk = os.pread(s, min(CHUNK, s_size - offset), offset)
            if not chunk:
                break
            os.pwrite(d, chunk, offset)
            offset += len(chunk)
        os.fsync(d)
        return True
    finally:
        os.close(s)
        os.close(d)


def same_file(a: Drive, b: Drive, rel: str) -> bool:
    """True when rel is a regular file on both drives with the same bytes."""
    if a.kind(rel) != "file" or b.kind(rel) != "file":
        return False
    fa, fb = a.open(rel), b.open(rel)
    try:
        if os.fstat(fa).st_size != os.fstat(fb).st_size:
            return False
        offset = 0
        while True:
            x, y = os.pread(fa, CHUNK, offset), os.pread(fb, CHUNK, offset)
            if x != y:
                return False
            if not x:
                return True
            offset += len(x)
    finally:
        os.close(fa)
        os.close(fb)


def copy_entry(source: Drive, target: Drive, rel: str) -> None:
    """Copy one ciphertext entry (a file with its sidecars, or a directory tree) from
    source to target. Only regular files and directories are copied; anything else on
    the source is damage and stays where it is."""
    kind = source.kind(rel)
    if kind == "file":
        target.copy_from(source, rel)
        for suffix in (names.LONG_SUFFIX, names.XATTR_SUFFIX):
            if source.kind(rel + suffix) == "file":
                target.copy_from(source, rel + suffix)
        return
    if kind != "dir":
        log.error("%s is not a file or directory; not copied", source.describe(rel))
        return
    if names.is_long(rel.rsplit("/", 1)[-1]) and source.kind(rel + names.LONG_SUFFIX) == "file":
        target.copy_from(source, rel + names.LONG_SUFFIX)
    pending = [rel]
    while pending:
        here = pending.pop()
        if target.kind(here) != "dir":
            if target.exists(here):
                target.quarantine(here, "a file where the other replica has a directory")
            target.mkdir(here)
        for name, child_kind in source.scandir(here):
            child = f"{here}/{name}"
            if child_kind == "file":
                target.copy_from(source, child)
            elif child_kind == "dir":
                pending.append(child)
            else:
                log.error("%s is not a file or directory; not copied", source.describe(child))
