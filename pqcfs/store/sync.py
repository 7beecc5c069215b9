"""Make one replica's ciphertext identical to another's, copying only what differs.

This works on ciphertext bytes alone (no keys), so it can run before anything is
decrypted. Which replica is the source is policy decided elsewhere (replica states);
this code never chooses.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from pqcfs.store.atomic import fsync_dir, write_atomic

CHUNK = 1 << 20
PER_REPLICA = {"pqcfs.state", "pqcfs.lock", "pqcfs.intent"}   # never copied between replicas


@dataclass
class SyncStats:
    files_checked: int = 0
    files_changed: int = 0
    bytes_written: int = 0
    removed: int = 0


def total_bytes(root: str) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:
                pass
    return total


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)


def _sync_file(src: str, dst: str, stats: SyncStats, progress) -> None:
    stats.files_checked += 1
    changed = False
    st = os.stat(src)
    flags = os.O_RDWR | os.O_CREAT
    with open(src, "rb") as s:
        fd = os.open(dst, flags, 0o600)
        try:
            offset = 0
            while True:
                chunk = s.read(CHUNK)
                if not chunk:
                    break
                if os.pread(fd, len(chunk), offset) != chunk:
                    os.pwrite(fd, chunk, offset)
                    stats.bytes_written += len(chunk)
                    changed = True
                offset += len(chunk)
                progress(len(chunk))
            if os.fstat(fd).st_size != offset:
                os.ftruncate(fd, offset)
                changed = True
            if changed:
                os.fsync(fd)
        finally:
            os.close(fd)
    # Same times on every replica: the mount shows the primary's.
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    if changed:
        stats.files_changed += 1


def sync_tree(src_root: str, dst_root: str, progress=lambda n: None) -> SyncStats:
    """dst_root becomes a copy of src_root (both are replica directories)."""
    stats = SyncStats()
    for dirpath, dirnames, filenames in os.walk(src_root):
        rel = os.path.relpath(dirpath, src_root)
        target_dir = os.path.normpath(os.path.join(dst_root, rel))
        top = rel == "."
        if not os.path.isdir(target_dir):
            if os.path.lexists(target_dir):
                _remove(target_dir)
            os.mkdir(target_dir, 0o700)
        wanted = set(dirnames) | set(filenames)
        dirty = False
        for name in os.listdir(target_dir):
            if name not in wanted and not (top and name in PER_REPLICA | {"lost+found"}):
                _remove(os.path.join(target_dir, name))
                stats.removed += 1
                dirty = True
        for name in filenames:
            if top and name in PER_REPLICA:
                continue
            src, dst = os.path.join(dirpath, name), os.path.join(target_dir, name)
            if os.path.isdir(dst):
                _remove(dst)
            if top and name == "pqcfs.vault":
                with open(src, "rb") as f:
                    data = f.read()
                if not os.path.exists(dst) or open_bytes(dst) != data:
                    write_atomic(dst, data)
                    stats.files_changed += 1
                continue
            _sync_file(src, dst, stats, progress)
        for name in dirnames:
            if os.path.lexists(os.path.join(target_dir, name)) and not os.path.isdir(os.path.join(target_dir, name)):
                _remove(os.path.join(target_dir, name))
        if top:
            dirnames[:] = [d for d in dirnames if d != "lost+found"]
        if dirty or stats.files_changed:
            fsync_dir(target_dir)
    return stats


def open_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
