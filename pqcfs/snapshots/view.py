"""A snapshot as a read-only tree: what `mount --snapshot`, `restore` and `diff` read.

Its nodes answer the same calls a tree's do for a copy (lookup, listdir, open, read,
xattrs, times: fs/copier.py reads either). A file's version is read block by block from
its chain (store.needed): the kept blocks of that version and of later ones, in order,
then a whole kept copy, else the live file, whose blocks the live tree has not changed
since (every change keeps a block a snapshot holds before it writes it). A whole copy is
used only when its authenticated header names the node and the counter of its name; the
live file when it names the node and a counter at least the snapshot's. Blocks read from
the live file are checked against the kept blocks again afterwards: a change racing the
read (the vault is mounted meanwhile) kept the block first, so the kept one is used.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from dataclasses import dataclass, field

from pqcfs.crypto.content import OVERHEAD as CONTENT_OVERHEAD
from pqcfs.crypto.content import BlockCorrupt, ContentCipher
from pqcfs.crypto.keys import NodeKeys
from pqcfs.errors import CryptoError, DamagedStructure, PqcfsError
from pqcfs.format import node_header
from pqcfs.format.dir_table import FLAG_LINKED, Entry
from pqcfs.format.node_header import HEADER_LEN, MAGIC_FILE, Meta
from pqcfs.fs.common import FsError
from pqcfs.fs.inodes import inode_number, link_path
from pqcfs.snapshots.manifest import Manifest
from pqcfs.snapshots.store import DATA, SMALL, chains_on, data_rel, delta_index, delta_rel, needed
from pqcfs.store.replicas import TREE_DIR

log = logging.getLogger(__name__)
ATTEMPTS = 3
STAMP_SETTLED_NS = 100_000_000


@dataclass(eq=False)
class SnapNode:
    entry: Entry                    # its attributes (a directory's: its record's own)
    keys: NodeKeys
    parent: "SnapNode | None"
    p_name: bytes
    c_dir: str                      # where its directory was on the drives (tree-relative)
    xattrs: dict = field(default_factory=dict)
    ino: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.entry.mode)

    @property
    def hard_linked(self) -> bool:
        return bool(self.entry.flags & FLAG_LINKED)

    @property
    def meta(self) -> Meta:
        e = self.entry
        return Meta(mode=e.mode, uid=e.uid, gid=e.gid, rdev=e.rdev, nlink=e.nlink, counter=e.counter)

    @property
    def size(self) -> int:
        return 0 if self.is_dir else self.entry.size

    @property
    def live_path(self) -> str:
        if self.hard_linked:
            return link_path(self.keys.node_id)
        return f"{self.c_dir}/{self.entry.disk_name}" if self.c_dir else self.entry.disk_name


def names_node(drive, rel: str, node: SnapNode, counter: int, at_least: bool) -> bool:
    """rel on drive is the node at write counter `counter` (or later, at_least)."""
    try:
        header = drive.read_at(rel, HEADER_LEN)
        if node_header.parse_prefix(header, MAGIC_FILE) != node.keys.node_id:
            return False
        found = node_header.open_meta(node.keys.meta_key, header).counter
        return found >= counter if at_least else found == counter
    except (FileNotFoundError, NotADirectoryError):
        return False
    except (CryptoError, DamagedStructure, OSError, PqcfsError) as e:
        log.warning("%s is not the file a snapshot holds: %s", drive.describe(rel), e)
        return False


class SnapContent:
    """One file's plaintext as the snapshot holds it."""

    def __init__(self, tree: "SnapshotTree", node: SnapNode):
        self.tree, self.node = tree, node
        self.size = node.entry.size
        self.cipher = ContentCipher(node.keys.content_key, node.keys.node_id, tree.block_size)

    def read(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        B = self.cipher.p_block
        first, last = offset // B, (end - 1) // B
        eof_index = (self.size - 1) // B
        c_data = self.tree.read_blocks(self.node, first, last)
        try:
            plain = self.cipher.open(first, c_data, eof_index)
        except BlockCorrupt as e:
            raise DamagedStructure(f"snapshot data of a file is damaged ({e})") from None
        return bytes(memoryview(plain)[offset - first * B: end - first * B])


class SnapshotTree:
    """A snapshot's tree over the vault's drives (read only)."""

    def __init__(self, manifest: Manifest, drives: list, block_size: int, top_name: bytes = b""):
        self.manifest = manifest
        self.drives = drives
        self.block_size = block_size
        self.read_only = True
        self.on_event = lambda event, **details: None     # told of damage found while reading
        rec = manifest.dirs[manifest.top]
        self.root = SnapNode(entry=rec.self_attrs, keys=manifest.dir_keys[manifest.top], parent=None, p_name=top_name,
                             c_dir=rec.c_path, xattrs=rec.xattrs, ino=1)
        self._live: dict[bytes, str] | None = None     # node id -> tree path, once the live tree was searched
        self._chains: dict | None = None                # node id -> its kept files (store.chains_on)
        self._chains_stamp: tuple = (None, 0)           # (the mtime of their directory, when listed)
        self._deltas: dict = {}                          # (drive, kept blocks file) -> (its size, its index)
        self.by_ino: dict[int, SnapNode] = {1: self.root}

    # --- the tree -------------------------------------------------------------------------

    def _children(self, node: SnapNode) -> dict[bytes, SnapNode]:
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        rec = self.manifest.dirs[node.keys.node_id]
        out = {}
        for child in rec.children:
            e = child.entry
            keys = NodeKeys(e.node_id, child.key)
            if stat.S_ISDIR(e.mode):
                sub = self.manifest.dirs[e.node_id]
                kid = SnapNode(entry=sub.self_attrs, keys=keys, parent=node, p_name=e.p_name, c_dir=sub.c_path,
                               xattrs=sub.xattrs)
            else:
                kid = SnapNode(entry=e, keys=keys, parent=node, p_name=e.p_name, c_dir=rec.c_path,
                               xattrs=child.xattrs)
            kid.ino = inode_number(e.node_id)
            out[e.p_name] = kid
        return out

    def listdir(self, node: SnapNode) -> list[tuple[bytes, str]]:
        rec = self.manifest.dirs.get(node.keys.node_id)
        if rec is None or not node.is_dir:
            raise FsError(errno.ENOTDIR)
        return sorted((c.entry.p_name, c.entry.disk_name) for c in rec.children)

    def lookup(self, node: SnapNode, p_name: bytes) -> SnapNode:
        kid = self._children(node).get(p_name)
        if kid is None:
            raise FsError(errno.ENOENT)
        self.by_ino.setdefault(kid.ino, kid)
        return kid

    def resolve(self, p_path: str) -> SnapNode:
        node = self.root
        for part in [p for p in p_path.split("/") if p and p != "."]:
            if part == "..":
                raise PqcfsError(f"{p_path}: '..' is not allowed in a vault path")
            try:
                node = self.lookup(node, part.encode())
            except FsError:
                raise PqcfsError(f"{p_path}: not in this snapshot") from None
        return node

    def walk(self, node: SnapNode | None = None, prefix: bytes = b""):
        """(plaintext path, node) of everything below node, parents first."""
        pending = [(node or self.root, prefix)]
        while pending:
            here, path = pending.pop()
            for name, kid in sorted(self._children(here).items(), reverse=True):
                kid_path = path + b"/" + name if path else name
                yield kid_path, kid
                if kid.is_dir:
                    pending.append((kid, kid_path))

    def times(self, node: SnapNode) -> tuple[int, int, int]:
        e = node.entry
        return e.atime, e.mtime, e.ctime

    def xattrs(self, node: SnapNode) -> dict[bytes, bytes]:
        return node.xattrs

    def size_of(self, node: SnapNode) -> int:
        return node.size

    def open(self, node: SnapNode, writable: bool = False) -> SnapContent:
        if writable:
            raise FsError(errno.EROFS)
        return SnapContent(self, node)

    def release(self, node: SnapNode) -> None:
        pass

    def read_all(self, node: SnapNode) -> bytes:
        return self.open(node).read(0, node.size)

    # --- where a version's ciphertext is ----------------------------------------------------

    def _chain(self, node_id: bytes, refresh: bool) -> list[tuple[int, bool]]:
        """A node's kept files, listed again when asked and the kept files' directory
        changed (a new file changes its mtime; an append to kept blocks does not, and
        _delta sees that by the file's size)."""
        if self._chains is None or refresh:
            try:
                stamp = self.drives[0].lstat(DATA).st_mtime_ns
            except OSError:
                stamp = None
            # A stamp is trusted only once it is older than the listing by more than the
            # clock's tick: a file made in the same tick as the listing leaves it unchanged.
            if self._chains is None or stamp is None or stamp != self._chains_stamp[0] \
                    or self._chains_stamp[1] - stamp < STAMP_SETTLED_NS:
                self._chains, self._chains_stamp = chains_on(self.drives[0]), (stamp, time.time_ns())
        return self._chains.get(node_id, [])

    def _delta(self, drive, rel: str) -> dict[int, tuple[int, int]]:
        try:
            size = drive.lstat(rel).st_size
        except FileNotFoundError:
            return {}
        cached = self._deltas.get((drive.location, rel))
        if cached is None or cached[0] != size:
            cached = (size, delta_index(drive, rel))
            self._deltas[(drive.location, rel)] = cached
        return cached[1]

    def _from_deltas(self, node: SnapNode, deltas: list[int], need: list[int], got: dict[int, bytes]) -> None:
        for k in deltas:
            rel = delta_rel(node.keys.node_id, k)
            for drive in self.drives:
                try:
                    index = self._delta(drive, rel)
                except (OSError, PqcfsError) as e:
                    log.warning("%s: %s", drive.describe(rel), e)
                    continue
                if index:
                    found = [i for i in need if i not in got and i in index]
                    if found:
                        fd = drive.open(rel)
                        try:
                            for i in found:
                                off, n = index[i]
                                got[i] = os.pread(fd, n, off)
                        finally:
                            os.close(fd)
                    break
            else:
                # Listed but readable on no drive: the blocks it held changed in the live file
                # since, so the live file must not stand in for them.
                raise DamagedStructure(f"{rel}: kept blocks of a snapshot's file are damaged on every drive")

    def _range(self, drive, rel: str, need: list[int], got: dict[int, bytes], lengths) -> None:
        lo, hi = min(need), max(need)
        C = self.block_size + CONTENT_OVERHEAD
        data = drive.read_at(rel, (hi - lo + 1) * C, HEADER_LEN + lo * C)
        for i in need:
            got[i] = data[(i - lo) * C:(i - lo) * C + lengths(i)]

    def _from_live(self, node: SnapNode, attempt: int, need: list[int], got: dict[int, bytes], lengths) -> list[int]:
        """need's blocks from the live file (what is left to find: all of need when it is
        not that node any more, or not found)."""
        c = node.entry.counter
        for drive in self.drives[:1] if attempt < ATTEMPTS - 1 else self.drives:
            for rel in self._live_paths(node, attempt):
                # A small version was kept whole before its first change: only an unchanged
                # live file is it. A large one's changed blocks are in its kept blocks.
                if not names_node(drive, rel, node, c, at_least=node.entry.size > SMALL):
                    continue
                live: dict[int, bytes] = {}
                self._range(drive, rel, need, live, lengths)
                # A change racing this read kept each block it changed before writing it:
                # the kept one wins.
                kept: dict[int, bytes] = {}
                later = [k for k, delta in needed(self._chain(node.keys.node_id, refresh=True), c) if delta]
                self._from_deltas(node, later, need, kept)
                for i in need:
                    got[i] = kept.get(i, live[i])
                return []
        return need

    def read_blocks(self, node: SnapNode, first: int, last: int) -> bytes:
        """The ciphertext of blocks first..last of the version the snapshot holds."""
        size, B, c = node.entry.size, self.block_size, node.entry.counter
        last_index = (size - 1) // B

        def lengths(i: int) -> int:
            return B + CONTENT_OVERHEAD if i < last_index else size - last_index * B + CONTENT_OVERHEAD
        for attempt in range(ATTEMPTS):
            chain = needed(self._chain(node.keys.node_id, refresh=attempt > 0), c)
            deltas = [k for k, delta in chain if delta]
            whole = [k for k, delta in chain if not delta]
            got: dict[int, bytes] = {}
            wanted = list(range(first, last + 1))
            self._from_deltas(node, deltas, wanted, got)
            need = [i for i in wanted if i not in got]
            if need and whole:
                # The chain ends in a whole copy: the live file is past this version.
                rel = data_rel(node.keys.node_id, whole[0])
                for drive in self.drives:
                    if names_node(drive, rel, node, whole[0], at_least=False):
                        self._range(drive, rel, need, got, lengths)
                        need = []
                        break
            elif need:
                need = self._from_live(node, attempt, need, got, lengths)
            if not need and all(i in got for i in wanted):
                return b"".join(got[i] for i in wanted)
        raise DamagedStructure(f"a file of the snapshot ({node.p_name.decode(errors='replace')}) is on no "
                               "drive: neither its kept versions nor the live file hold that version")

    def _live_paths(self, node: SnapNode, attempt: int) -> list[str]:
        """Where the live file may be: where it was, else (after a miss) where a search of
        the drive found it; the last attempt searches again (it may have moved meanwhile)."""
        paths = [f"{TREE_DIR}/{node.live_path}"]
        if attempt and not node.hard_linked:
            if self._live is None or attempt == ATTEMPTS - 1:
                self._live = self._index_live()
            moved = self._live.get(node.keys.node_id)
            if moved is not None:
                paths.append(f"{TREE_DIR}/{moved}")
        return paths

    def _index_live(self) -> dict[bytes, str]:
        """node id -> tree path of every file on the first drive (a file a snapshot holds
        was moved since, or its directory was): its header's unauthenticated prefix names
        it, and _names_node authenticates whatever is found."""
        drive, found, pending = self.drives[0], {}, [""]
        while pending:
            here = pending.pop()
            rel = f"{TREE_DIR}/{here}" if here else TREE_DIR
            try:
                listing = drive.scandir(rel)
            except OSError:
                continue
            for name, kind in listing:
                path = f"{here}/{name}" if here else name
                if kind == "dir" and name != "h.links":
                    pending.append(path)
                elif kind == "file" and "." not in name.removeprefix("l."):
                    try:
                        node_id = node_header.parse_prefix(drive.read_at(f"{TREE_DIR}/{path}", HEADER_LEN), MAGIC_FILE)
                    except (OSError, PqcfsError):
                        continue
                    found.setdefault(node_id, path)
        return found
