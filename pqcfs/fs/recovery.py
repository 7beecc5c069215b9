"""After a crash (a replica not cleanly unmounted): make the replicas agree again without
losing anything that authenticates.

Replicas can differ after a crash in any file written when it happened, and a block
being written may be torn on one of them. For every file whose ciphertext differs
between the primary and a backup, each block of the primary that fails authentication is
replaced by the backup's copy when that one authenticates; then the backup becomes a copy
of the repaired primary. Nothing is decided by byte comparison alone, and every access
goes through the replicas' Drives (paths here are relative to tree/).
"""

from __future__ import annotations

import logging
import os

from pqcfs.crypto.content import BlockCorrupt, ContentCipher, p_size
from pqcfs.crypto.keys import NodeKeys
from pqcfs.errors import CryptoError, DamagedStructure, PqcfsError
from pqcfs.format import names, node_header
from pqcfs.format.node_header import HEADER_LEN, MAGIC_FILE, MAGIC_LINK
from pqcfs.fs.inodes import LINKS_DIR
from pqcfs.fs.tables import ALL
from pqcfs.store.drive import Drive
from pqcfs.store.replicas import TREE_DIR, ReplicaSet
from pqcfs.store.sync import copy_entry, same_file

log = logging.getLogger(__name__)
CHUNK = 1 << 20


def _t(rel: str) -> str:
    return f"{TREE_DIR}/{rel}" if rel else TREE_DIR


class KeyResolver:
    """Finds a ciphertext file's node keys by walking its path from the root. Each
    directory's listing is decrypted once (a sync may ask for every file of a directory)."""

    def __init__(self, vfs):
        self.vfs = vfs
        self._listings: dict[str, dict[str, bytes]] = {}
        self._shared: dict[str, NodeKeys] | None = None

    def _listing(self, node) -> dict[str, bytes]:
        if node.c_path not in self._listings:
            self._listings[node.c_path] = {d: p for p, d in self.vfs.listdir(node)}
        return self._listings[node.c_path]

    def keys_for(self, rel: str) -> NodeKeys | None:
        parts = rel.split("/")
        if parts[0] == LINKS_DIR:
            return self._shared_keys(parts[1]) if len(parts) == 2 else None
        # A grantee's tree starts at the shared directories, deep in tree/.
        for node in self.vfs.tops():
            prefix = node.disk_name.split("/") if node.disk_name else []   # a granted directory's c_path
            if parts[:len(prefix)] == prefix and len(parts) > len(prefix):
                parts = parts[len(prefix):]
                break
        else:
            return None
        try:
            for i, disk_name in enumerate(parts):
                if i == len(parts) - 1:
                    header = self.vfs.replicas.read_file(rel, HEADER_LEN)
                    node_id = node_header.parse_prefix(header, (MAGIC_FILE, MAGIC_LINK))
                    return self.vfs.child_keys(node, node_id)
                node = self.vfs.entry(node, self._listing(node)[disk_name], disk_name)
        except (KeyError, OSError, PqcfsError):
            return None
        return None


    def _shared_keys(self, name: str) -> NodeKeys | None:
        """A hard-linked node's keys come through its stubs (a stub's directory derives
        them, or holds an override): found by walking the tree once, on first need."""
        if self._shared is None:
            self._shared = {}
            pending = [self.vfs.inodes.root]
            while pending:
                dir_node = pending.pop()
                try:
                    entries = self._listing(dir_node)
                except (OSError, PqcfsError):
                    continue
                for disk_name, p_name in entries.items():
                    try:
                        node = self.vfs.entry(dir_node, p_name, disk_name)
                    except (OSError, PqcfsError):
                        continue
                    if node.is_dir:
                        pending.append(node)
                    elif node.hard_linked:
                        self._shared.setdefault(node.keys.node_id.hex(), node.keys)
        return self._shared.get(name)


def _valid_layout(c_len: int, p_block: int) -> bool:
    try:
        p_size(c_len, p_block)
        return True
    except CryptoError:
        return False


def _opens(cipher: ContentCipher, index: int, chunk: bytes, last: int) -> bool:
    try:
        cipher.open(index, chunk, last)
        return True
    except BlockCorrupt:
        return False


def _ends_well(fd: int, c_len: int, cipher: ContentCipher) -> bool:
    if not c_len:
        return True
    if not _valid_layout(c_len, cipher.p_block):
        return False
    last = (p_size(c_len, cipher.p_block) - 1) // cipher.p_block
    start = last * cipher.c_block
    return _opens(cipher, last, os.pread(fd, c_len - start, HEADER_LEN + start), last)


def authentic_file(drive: Drive, rel: str, keys: NodeKeys, block_size: int) -> bool:
    """True when the file's header and every block authenticate (a hard-link stub has
    no blocks; its header is checked like any other)."""
    cipher = ContentCipher(keys.content_key, keys.node_id, block_size)
    fd = drive.open(rel)
    try:
        node_header.open_meta(keys.meta_key, os.pread(fd, HEADER_LEN, 0))
        length = max(0, os.fstat(fd).st_size - HEADER_LEN)
        if length and not _valid_layout(length, block_size):
            return False
        last = (p_size(length, block_size) - 1) // block_size if length else -1
        C = cipher.c_block
        for first in range(0, last + 1, CHUNK // C):
            upto = min(last, first + CHUNK // C - 1)
            chunk = os.pread(fd, (upto - first + 1) * C, HEADER_LEN + first * C)
            cipher.open(first, chunk, last)
        return True
    except (CryptoError, DamagedStructure, BlockCorrupt):
        return False
    finally:
        os.close(fd)


def merge_file(primary: Drive, backup: Drive, rel: str, keys: NodeKeys, block_size: int) -> int:
    """Repair the primary's ciphertext file rel (a drive path) in place from the backup's,
    block by block, keeping whichever copy authenticates; returns the pieces repaired."""
    cipher = ContentCipher(keys.content_key, keys.node_id, block_size)
    p_fd, b_fd = primary.open(rel, os.O_RDWR), backup.open(rel)
    try:
        repaired = 0
        p_head, b_head = os.pread(p_fd, HEADER_LEN, 0), os.pread(b_fd, HEADER_LEN, 0)
        try:
            node_header.open_meta(keys.meta_key, p_head)
        except (CryptoError, DamagedStructure):
            try:
                node_header.open_meta(keys.meta_key, b_head)
                os.pwrite(p_fd, b_head, 0)
                repaired += 1
            except (CryptoError, DamagedStructure):
                pass
        p_len = max(0, os.fstat(p_fd).st_size - HEADER_LEN)
        b_len = max(0, os.fstat(b_fd).st_size - HEADER_LEN)
        # Which length holds: the primary's when its last block authenticates as last.
        length = p_len
        if not _ends_well(p_fd, p_len, cipher) and _ends_well(b_fd, b_len, cipher):
            length = b_len
        C = cipher.c_block
        last = (p_size(length, block_size) - 1) // block_size if length and _valid_layout(length, block_size) else -1
        for index in range(last + 1):
            off = HEADER_LEN + index * C
            size = min(C, length - index * C)
            mine = os.pread(p_fd, size, off)
            if len(mine) == size and _opens(cipher, index, mine, last):
                continue
            other = os.pread(b_fd, size, off)
            if len(other) == size and _opens(cipher, index, other, last):
                os.pwrite(p_fd, other, off)
                repaired += 1
                continue
            # A crash while the file grew may have left its old last block, sealed as
            # final, in the middle (on both replicas alike): reseal it as a middle block.
            fixed = None if index == last else (cipher.reseal_stale_final(index, mine)
                                                or cipher.reseal_stale_final(index, other))
            if fixed is not None:
                os.pwrite(p_fd, fixed, off)
                repaired += 1
            elif len(mine) < size:
                os.pwrite(p_fd, other.ljust(size, b"\0"), off)   # keep the length that holds
        os.ftruncate(p_fd, HEADER_LEN + length)
        os.fsync(p_fd)
        return repaired
    finally:
        os.close(p_fd)
        os.close(b_fd)


def differing_files(primary: Drive, backup: Drive) -> list[str]:
    """Paths (relative to tree/) of entry files and hard-linked nodes that differ."""
    out, stack = [], [""]
    while stack:
        rel_dir = stack.pop()
        for name, kind in primary.scandir(_t(rel_dir)):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if kind == "dir":
                stack.append(rel)
            elif kind == "file" and (names.is_entry(name) or rel_dir == LINKS_DIR):
                if not same_file(primary, backup, _t(rel)):
                    out.append(rel)
    return out


def recover(vfs, primary: Drive, backups: list[Drive], block_size: int) -> int:
    """Authenticated merge of every differing file into the primary; returns blocks repaired."""
    resolver = KeyResolver(vfs)
    repaired = 0
    for backup in backups:
        for rel in differing_files(primary, backup):
            if backup.kind(_t(rel)) != "file":
                continue  # created on the primary only: the primary's copy is all there is
            keys = resolver.keys_for(rel)
            if keys is None:
                log.warning("no key for a differing file; the primary's copy is kept")
                continue
            repaired += merge_file(primary, backup, _t(rel), keys, block_size)
    settle_tables(vfs, [primary, *backups], ALL)
    return repaired


def _sync_dir_shallow(src: Drive, dst: Drive, rel: str) -> None:
    """dst's entries of directory rel become src's: missing subtrees copied, extra entries
    removed, files that differ copied (their blocks were already merged if they had a
    file intent). Only files and directories are copied; nothing is followed."""
    if dst.kind(rel) != "dir":
        dst.remove(rel, "not a file or directory")
        copy_entry(src, dst, rel)
        return
    wanted = dict(src.scandir(rel))
    for name, _ in dst.scandir(rel):
        if name not in wanted:
            dst.remove(f"{rel}/{name}", "not a file or directory")
    for name, kind in wanted.items():
        child = f"{rel}/{name}"
        if kind == "dir":
            if dst.kind(child) != "dir":
                dst.remove(child, "not a file or directory")
                copy_entry(src, dst, child)
        elif kind == "file":
            if dst.kind(child) == "dir":
                dst.remove_tree(child)
            if not same_file(src, dst, child):
                dst.copy_from(src, child)


def dirs_in_flux(intents) -> set[str]:
    """Directories whose tables a crashed session may have left behind their entries:
    those it changed, and the parents of files it wrote (size, times, write counter)."""
    out = set()
    for kind, rel in intents:
        if kind == "D":
            out.add(rel)
        elif kind == "F" and not rel.startswith(LINKS_DIR + "/"):
            out.add(rel.rsplit("/", 1)[0] if "/" in rel else "")
    return out


def settle_tables(vfs, drives: list[Drive], in_flux) -> int:
    """Format 2: the tables of the directories in flux become what the (repaired)
    primary holds, written to every replica. Returns how many were settled."""
    settled = vfs.settle_on(ReplicaSet(drives), in_flux)
    log.info("rebuilt %d directory table(s) from the drives", settled)
    return settled


def recover_intents(vfs, primary: Drive, backups: list[Drive], intents, block_size: int) -> int:
    """Repair only what the session's (authenticated) intent log says it may have changed:
    files by an authenticated block merge; then directory tables rebuilt on the repaired
    primary; then the backups copy the files, and directories' entries, from the primary.
    Returns blocks repaired on the primary."""
    resolver = KeyResolver(vfs)
    repaired = []
    files = sorted(rel for kind, rel in intents if kind == "F")
    dirs = sorted((rel for kind, rel in intents if kind == "D"), key=lambda r: (r.count("/"), r))

    def merge(backup: Drive, rel: str, path: str) -> None:
        # Identical copies are merged too: a crash can leave both with the same torn
        # state (a stale final block), which only the merge repairs.
        keys = resolver.keys_for(rel)
        if keys is not None:
            repaired.append(merge_file(primary, backup, path, keys, block_size))

    def copy(backup: Drive, rel: str, path: str) -> None:
        if not same_file(primary, backup, path):
            backup.copy_from(primary, path)

    for backup in backups:
        _on_files_of_both(primary, backup, files, merge)
    settle_tables(vfs, [primary, *backups], dirs_in_flux(intents))
    for backup in backups:
        _on_files_of_both(primary, backup, files, copy)
        for rel in dirs:
            path = _t(rel)
            try:
                if primary.kind(path) == "dir":
                    _sync_dir_shallow(primary, backup, path)
                elif rel and backup.kind(path) == "dir":
                    backup.remove_tree(path)
            except (OSError, PqcfsError) as e:
                log.error("recovery of %s failed: %s", path, e)
    return sum(repaired)


def _on_files_of_both(primary: Drive, backup: Drive, files: list[str], action) -> None:
    """action(backup, rel, path) for each file both replicas hold; a failure is logged
    and recovery goes on with the next."""
    for rel in files:
        path = _t(rel)
        try:
            if primary.kind(path) == "file" and backup.kind(path) == "file":
                action(backup, rel, path)
        except (OSError, PqcfsError) as e:
            log.error("recovery of %s failed: %s", path, e)
