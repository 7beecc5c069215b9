"""Inodes and their lookup counts.

Lifecycle (pyfuse3's rules): every reply that hands an entry to the kernel (lookup,
create, mkdir, mknod, symlink, and each readdir_reply that returns True) counts one
lookup through `InodeTable.remember`; `forget` subtracts what the kernel says. A node is
dropped when it has no lookups and no open handles; the root is never dropped.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Mapping
from types import MappingProxyType
from dataclasses import dataclass, field

from pqcfs.crypto.content import ContentCipher
from pqcfs.crypto.keys import NodeKeys
from pqcfs.format.node_header import Meta


log = logging.getLogger(__name__)
NO_CHILDREN: Mapping[bytes, "Node"] = MappingProxyType({})
ROOT_INODE = 1           # FUSE_ROOT_ID: the inode the kernel knows a mount's root by
SPILL = 1 << 63          # inode numbers from here up are this mount's own (see InodeTable.add)
LINKS_DIR = "h.links"   # in the tree root; the dot keeps it out of every listing


def inode_number(node_id: bytes) -> int:
    """A node's inode number: 63 bits of its node id, which is random, authenticated
    wherever it is stored (the header's metadata key is derived from it, table entries
    are sealed), the same on every replica, and kept for the node's life: across renames,
    hard links, cache eviction and remounts. Never 0 or the root's 1."""
    ino = int.from_bytes(node_id[:8], "big") >> 1
    return ino if ino > ROOT_INODE else ino + 2


def link_path(node_id: bytes) -> str:
    return f"{LINKS_DIR}/{node_id.hex()}"


@dataclass(eq=False, slots=True, weakref_slot=True)
class Node:
    parent: "Node | None"
    p_name: bytes
    disk_name: str          # the entry name in the parent's ciphertext directory
    keys: NodeKeys
    meta: Meta
    ino: int = 0            # its inode number, given by InodeTable.add (inode_number)
    size: int = 0           # plaintext size of file-like nodes (we own the replica: cache it)
    lookups: int = 0
    opens: int = 0
    unlinked: bool = False
    children: dict[bytes, "Node"] = field(default_factory=dict)
    overrides: dict[bytes, bytes] | None = None   # dirs: node id -> wrapped key (d.ov)
    _cipher: ContentCipher | None = None
    content: object = None  # the FileContent all its open handles share, while any is open
    xattrs: dict[bytes, bytes] | None = None
    stat: object = None     # the backing stat taken by lookup, consumed by the reply
    hard_linked: bool = False    # hard-linked: data in h.links/, every name is a stub
    names: set | None = None  # hard-linked nodes: the (parent, p_name) known to the kernel (made when shared)
    subdirs: int | None = None   # dirs: how many subdirectories (st_nlink = 2 + this), counted on demand
    listing: list | None = None  # dirs: (p_name, disk_name) of every entry, until the directory changes
    table: object = None    # format 2, dirs: the directory's table (DirTable)
    entry: object = None    # format 2: the table Entry holding this node's attributes (a dir's own)
    dirty: bool = False     # format 2: attributes changed in memory, not yet in the table
    bumped: bool = False    # format 2: the write counter rose in this open session
    link_times: object = None    # format 2, hard-linked files: their times (link_attrs.Times), once read

    def __post_init__(self) -> None:
        # Only directories have children: the others share one empty, read-only map
        # (a cached file's own empty dict was 64 bytes of every 1.3 KiB it costs).
        if not stat.S_ISDIR(self.meta.mode):
            self.children = NO_CHILDREN

    def name_set(self) -> set:
        if self.names is None:
            self.names = set()
        return self.names

    def cipher(self, block_size: int) -> ContentCipher:
        # Made on first use: a stat needs no content key.
        if self._cipher is None:
            self._cipher = ContentCipher(self.keys.content_key, self.keys.node_id, block_size)
        return self._cipher

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.meta.mode)

    @property
    def data_path(self) -> str:
        """Where the node's header and contents live (its entry, or the link store)."""
        if self.hard_linked:
            return link_path(self.keys.node_id)
        return self.c_path

    @property
    def c_path(self) -> str:
        """Path of this node's backing entry relative to the ciphertext tree root."""
        parts = []
        node = self
        while node.parent is not None:
            parts.append(node.disk_name)
            node = node.parent
        return "/".join(reversed(parts))


class InodeTable:
    def __init__(self, root: Node):
        root.ino = ROOT_INODE
        root.lookups = 1
        self._nodes: dict[int, Node] = {root.ino: root}
        self.hard_linked: dict[bytes, Node] = {}   # node id -> the one Node of a hard-linked file
        self._spilled = SPILL
        self.collisions = 0      # nodes that got a number of this mount's own (see add)
        self.root = root

    def add(self, node: Node) -> Node:
        """Known from now on by its inode number (inode_number), or, when another node
        the kernel holds has that number, by one of this mount's own: two distinct files
        whose random node ids share 63 bits (for n files a probability of about n²/2⁶⁴,
        5·10⁻⁸ for a million; ids are not checked against every node of the vault, only
        against those held). The same file reached again through a fresh Node (its directory's
        node was made anew) is the Node already held, which its open handles use."""
        ino = inode_number(node.keys.node_id)
        taken = self._nodes.get(ino)
        if taken is not None and taken is not node:
            if taken.keys.node_id == node.keys.node_id and not taken.unlinked and not taken.hard_linked:
                taken.parent, taken.p_name, taken.disk_name = node.parent, node.p_name, node.disk_name
                node = taken
            else:
                self._spilled += 1
                self.collisions += 1
                log.error("two nodes share an inode number; one is served under a number of this mount's own")
                ino = self._spilled
        node.ino = ino
        self._nodes[ino] = node
        if node.parent is not None:
            node.parent.children[node.p_name] = node
        return node

    def __getitem__(self, ino: int) -> Node:
        return self._nodes[ino]

    def get(self, ino: int) -> Node | None:
        return self._nodes.get(ino)

    def __len__(self) -> int:
        return len(self._nodes)

    def nodes(self) -> list[Node]:
        return list(self._nodes.values())

    def remember(self, node: Node) -> None:
        node.lookups += 1

    def forget(self, ino: int, count: int) -> None:
        node = self._nodes.get(ino)
        if node is None or node is self.root:
            return
        node.lookups = max(0, node.lookups - count)
        self.maybe_drop(node)

    def detach(self, node: Node, parent: Node | None = None, p_name: bytes | None = None) -> None:
        """A name is gone (unlink, rmdir, replaced by rename); the last one unlinks the node."""
        parent = node.parent if parent is None else parent
        p_name = node.p_name if p_name is None else p_name
        if parent is not None and parent.children.get(p_name) is node:
            del parent.children[p_name]
        if not node.hard_linked or node.meta.nlink == 0:
            node.unlinked = True
        self.maybe_drop(node)

    def maybe_drop(self, node: Node) -> None:
        if node.lookups or node.opens or node is self.root:
            return
        self._nodes.pop(node.ino, None)
        if node.hard_linked:
            self.hard_linked.pop(node.keys.node_id, None)
            for parent, p_name in list(node.names or ()):
                if parent.children.get(p_name) is node:
                    del parent.children[p_name]
        if node.parent is not None and node.parent.children.get(node.p_name) is node:
            del node.parent.children[node.p_name]
