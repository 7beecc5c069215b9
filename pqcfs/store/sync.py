"""Make one replica's ciphertext identical to another's, copying only what differs.

This works on ciphertext bytes; the caller may pass `vet(rel)`, which authenticates the
source's copy of a file before it replaces the target's (False: the source copy is
damaged, so the target keeps what it has and the file counts as damaged). Which replica
is the source is policy decided elsewhere (replica states); this code never chooses. It touches only what the vault owns on a drive (the header, the
audit log and `tree/`), never the other files a user keeps on the same stick, and only
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
from pqcfs.store.drive import Drive

log = logging.getLogger(__name__)
CHUNK = 1 << 20
TREE = "tree"
COPIED_FILES = ("pqcfs.vault", "pqcfs.audit")   # per-replica files (state, lock, intent) are never copied


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
    """dst's directory top (and everything below) becomes src's (a loop, not recursion:
    trees may be thousands of levels deep)."""
    pending = [top]
    while pending:
        rel = pending.pop()
        if dst.kind(rel) != "dir":
            if dst.exists(rel):
                _remove(dst, rel, stats)
            dst.mkdir(rel, 0o700)
        wanted = dict(src.scandir(rel))
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
                _sync_file(src, dst, child, stats, progress, vet)
            elif kind == "dir":
                pending.append(child)
            else:
                log.error("%s is not a file or directory; not copied", src.describe(child))
                stats.damaged += 1
        if dirty or stats.files_changed != changed_before:
            dst.fsync_dir(rel)


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
    for name in COPIED_FILES:
        kind = src.kind(name)
        if kind == "file":
            if same_file(src, dst, name):
                continue
            if dst.kind(name) not in (None, "file"):
                _remove(dst, name, stats)
            dst.copy_from(src, name)
            stats.files_changed += 1
        elif kind == "other":
            log.error("%s is not a regular file; not copied", src.describe(name))
            stats.damaged += 1
    return stats


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
