"""After a crash (a replica not cleanly unmounted): make the replicas agree again without
losing anything that authenticates.

Replicas can differ after a crash in any file written when it happened, and a block
being written may be torn on one of them. For every file whose ciphertext differs
between the primary and a backup, each block of the primary that fails authentication is
replaced by the backup's copy when that one authenticates; then the backup becomes a copy
of the repaired primary. Nothing is decided by byte comparison alone.
"""

from __future__ import annotations

import logging
import os
import shutil

from pqcfs.crypto.content import BlockCorrupt, ContentCipher, p_size
from pqcfs.crypto.keys import NodeKeys
from pqcfs.errors import CryptoError, DamagedStructure
from pqcfs.format import names, node_header
from pqcfs.format.node_header import HEADER_LEN, MAGIC_FILE, MAGIC_LINK

log = logging.getLogger(__name__)


class KeyResolver:
    """Finds a ciphertext file's node keys by walking its path from the root."""

    def __init__(self, vfs):
        self.vfs = vfs

    def keys_for(self, rel: str) -> NodeKeys | None:
        parts = rel.split("/")
        if parts[0] == "h.links":
            return None  # a shared node's key comes through one of its stubs
        node = self.vfs.inodes.root
        try:
            for i, disk_name in enumerate(parts):
                if i == len(parts) - 1:
                    header = self.vfs.replicas.read_file(rel, HEADER_LEN)
                    node_id = node_header.parse_prefix(header, (MAGIC_FILE, MAGIC_LINK))
                    return self.vfs._child_keys(node, node_id)
                listing = dict((d, p) for p, d in self.vfs.listdir(node))
                node = self.vfs.entry(node, listing[disk_name], disk_name)
        except (KeyError, OSError, CryptoError, DamagedStructure):
            return None
        return None


def _header_and_body(path: str) -> tuple[bytes, bytes]:
    with open(path, "rb") as f:
        data = f.read()
    return data[:HEADER_LEN], data[HEADER_LEN:]


def _valid_layout(c_body: bytes, p_block: int) -> bool:
    try:
        p_size(len(c_body), p_block)
        return True
    except CryptoError:
        return False


def merge_file(primary: str, backup: str, keys: NodeKeys, block_size: int) -> int:
    """Repair primary's ciphertext file in place from backup; returns blocks repaired."""
    cipher = ContentCipher(keys.content_key, keys.node_id, block_size)
    p_head, p_body = _header_and_body(primary)
    b_head, b_body = _header_and_body(backup)
    repaired = 0
    head = p_head
    try:
        node_header.open_meta(keys.meta_key, p_head)
    except (CryptoError, DamagedStructure):
        try:
            node_header.open_meta(keys.meta_key, b_head)
            head, repaired = b_head, repaired + 1
        except (CryptoError, DamagedStructure):
            pass
    # Which length holds: the primary's when its last block authenticates as last.
    body = p_body
    if not _ends_well(p_body, cipher) and _ends_well(b_body, cipher):
        body = b_body
    C = cipher.c_block
    last = (p_size(len(body), block_size) - 1) // block_size if _valid_layout(body, block_size) and body else -1
    out = bytearray(body)
    for index in range(last + 1):
        chunk = body[index * C:(index + 1) * C]
        if _opens(cipher, index, chunk, last):
            continue
        other = (b_body if body is p_body else p_body)[index * C:(index + 1) * C]
        if len(other) == len(chunk) and _opens(cipher, index, other, last):
            out[index * C:index * C + len(chunk)] = other
            repaired += 1
    with open(primary, "r+b") as f:
        f.write(head + bytes(out))
        f.truncate(HEADER_LEN + len(out))
        f.flush()
        os.fsync(f.fileno())
    return repaired


def _opens(cipher: ContentCipher, index: int, chunk: bytes, last: int) -> bool:
    try:
        cipher.open(index, chunk, last)
        return True
    except BlockCorrupt:
        return False


def _ends_well(body: bytes, cipher: ContentCipher) -> bool:
    if not body:
        return True
    if not _valid_layout(body, cipher.p_block):
        return False
    last = (p_size(len(body), cipher.p_block) - 1) // cipher.p_block
    return _opens(cipher, last, body[last * cipher.c_block:], last)


def differing_files(primary_tree: str, backup_tree: str) -> list[str]:
    """Relative paths of regular files (not pqcfs' own small structures) that differ."""
    out = []
    for dirpath, _, filenames in os.walk(primary_tree):
        for name in filenames:
            if not names.is_entry(name) and os.path.basename(dirpath) != "h.links":
                continue
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, primary_tree)
            b = os.path.join(backup_tree, rel)
            if not os.path.isfile(b) or not _same(p, b):
                out.append(rel)
    return out


def _same(a: str, b: str) -> bool:
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def recover(vfs, primary_tree: str, backup_trees: list[str], block_size: int) -> int:
    """Authenticated merge of every differing file into the primary; returns blocks repaired."""
    resolver = KeyResolver(vfs)
    repaired = 0
    for backup_tree in backup_trees:
        for rel in differing_files(primary_tree, backup_tree):
            b = os.path.join(backup_tree, rel)
            if not os.path.isfile(b):
                continue  # created on the primary only: the primary's copy is all there is
            keys = resolver.keys_for(rel)
            if keys is None:
                log.warning("no key for a differing file; the primary's copy is kept")
                continue
            repaired += merge_file(os.path.join(primary_tree, rel), b, keys, block_size)
    return repaired


def _copy_if_different(src: str, dst: str) -> bool:
    if os.path.isfile(dst) and _same(src, dst):
        return False
    shutil.copy2(src, dst)
    return True


def _sync_dir_shallow(src: str, dst: str) -> None:
    """dst's entries become src's: missing subtrees copied, extra entries removed, files
    that differ copied (their blocks were already merged if they had a file intent)."""
    if not os.path.isdir(dst):
        if os.path.lexists(dst):
            os.unlink(dst)
        shutil.copytree(src, dst)
        return
    wanted = set(os.listdir(src))
    for name in os.listdir(dst):
        if name not in wanted:
            path = os.path.join(dst, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
    for name in wanted:
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if os.path.isdir(s):
            if not os.path.isdir(d):
                if os.path.lexists(d):
                    os.unlink(d)
                shutil.copytree(s, d)
        else:
            if os.path.isdir(d):
                shutil.rmtree(d)
            _copy_if_different(s, d)


def recover_intents(vfs, primary_tree: str, backup_trees: list[str], intents, block_size: int) -> int:
    """Repair only what the session's intent log says it may have changed: files by an
    authenticated block merge, then the backup copies them; directories' entries from the
    primary. Returns blocks repaired on the primary."""
    resolver = KeyResolver(vfs)
    repaired = 0
    files = sorted(rel for kind, rel in intents if kind == "F")
    dirs = sorted((rel for kind, rel in intents if kind == "D"), key=lambda r: (r.count("/"), r))
    for backup_tree in backup_trees:
        for rel in files:
            p, b = os.path.join(primary_tree, rel), os.path.join(backup_tree, rel)
            if not (os.path.isfile(p) and os.path.isfile(b)) or _same(p, b):
                continue
            keys = resolver.keys_for(rel)
            if keys is not None:
                repaired += merge_file(p, b, keys, block_size)
            _copy_if_different(p, b)
        for rel in dirs:
            p, b = os.path.join(primary_tree, rel), os.path.join(backup_tree, rel)
            if os.path.isdir(p):
                _sync_dir_shallow(p, b)
            elif os.path.isdir(b) and not rel == "":
                shutil.rmtree(b)
    return repaired
