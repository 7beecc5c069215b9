"""A grantee's tree: format 2 under a root of pqcfs' own whose entries are the granted
directories, and which holds nothing else and never changes.

The grantee holds the keys of the granted directories only: the vault's root and every
directory above a grant stay sealed. Nothing is made, removed or renamed in the root,
and nothing moves from one grant to another.
"""

from __future__ import annotations

import errno
import os
import stat

from pqcfs.crypto.keys import NodeKeys
from pqcfs.format import node_header
from pqcfs.format.dir_table import Entry
from pqcfs.format.node_header import Meta
from pqcfs.fs.common import FsError, now_ns
from pqcfs.fs.inodes import InodeTable, Node
from pqcfs.fs.tables import TabledFS
from pqcfs.fs.vaultfs import NO_XATTRS, VaultFS
from pqcfs.store.replicas import ReplicaSet

Share = tuple[bytes, NodeKeys, str]     # (label shown in the root, the directory's keys, its c_path)


class GranteeFS(TabledFS):
    def __init__(self, replicas: ReplicaSet, shares: list[Share], block_size: int, in_flux=None, **options):
        VaultFS.__init__(self, replicas, block_size, **options)
        self._init_tables(in_flux)
        self.shares = shares
        self.inodes = InodeTable(self._share_root(shares))
        root = self.inodes.root
        for label, keys, c_path in shares:
            node = Node(parent=root, p_name=label, disk_name=c_path, keys=keys,
                        meta=Meta(mode=stat.S_IFDIR | 0o700, uid=0, gid=0), lookups=1)
            self.table_of(node)     # its own attributes: its table's self record
            self.inodes.add(node)

    def reopened(self, replicas: ReplicaSet, **options) -> "GranteeFS":
        return GranteeFS(replicas, self.shares, self.block_size, **options)

    @staticmethod
    def _share_root(shares: list[Share]) -> Node:
        now = now_ns()
        mode = stat.S_IFDIR | 0o555
        # Its key opens nothing on the drives: the root is made here, not read.
        keys = NodeKeys(node_header.new_node_id(), os.urandom(32))
        root = Node(parent=None, p_name=b"", disk_name="", keys=keys,
                    meta=Meta(mode=mode, uid=os.getuid(), gid=os.getgid(), nlink=2 + len(shares)))
        root.entry = Entry(node_id=keys.node_id, mode=mode, uid=root.meta.uid, gid=root.meta.gid,
                           nlink=root.meta.nlink, atime=now, mtime=now, ctime=now, btime=now)
        root.xattrs, root.overrides, root.subdirs = NO_XATTRS, {}, len(shares)
        root.listing = [(label, c_path) for label, _, c_path in shares]
        return root

    def share_of(self, node: Node) -> Node | None:
        """The granted directory node is in (None: the grantee's root itself)."""
        while node.parent is not None and node.parent.parent is not None:
            node = node.parent
        return node if node.parent is not None else None

    # --- where the root differs from an owner's -----------------------------------

    def tops(self) -> list[Node]:
        return list(self.inodes.root.children.values())

    def tree_seq(self) -> int | None:
        return None       # each grant's table is covered by the owner's tree, not by this root

    def _has_parent_table(self, node: Node) -> bool:
        return node.parent is not None and node.parent is not self.inodes.root

    def _lookup_entry(self, dir_node: Node, p_name: bytes) -> Node:
        if dir_node is self.inodes.root:
            raise FsError(errno.ENOENT)
        return super()._lookup_entry(dir_node, p_name)

    def _check_writable(self, node: Node | None = None) -> None:
        super()._check_writable(node)
        if node is not None and node is self.inodes.root:
            raise FsError(errno.EPERM)

    def _check_namespace(self, *dirs: Node) -> None:
        root = self.inodes.root
        if any(d is root for d in dirs):
            raise FsError(errno.EPERM)
        if len({id(self.share_of(d)) for d in dirs}) > 1:
            raise FsError(errno.EXDEV)
