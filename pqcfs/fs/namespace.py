"""Operations that change the namespace: create, mkdir, link, unlink, rmdir, rename.

A mixin of VaultFS (it uses the core's paths, overrides, lookups and replica set, and
tells the format what changed through the hooks VaultFS declares); kept apart so each
family of operations reads on its own, like gocryptfs' node_dir_ops.go.
"""

from __future__ import annotations

import errno
import stat

from pqcfs.format import link_attrs, names, node_header
from pqcfs.format.node_header import MAGIC_DIR, MAGIC_FILE, MAGIC_LINK, Meta
from pqcfs.fs.common import Caller, FsError, full_c_name
from pqcfs.fs.content import FileContent
from pqcfs.fs.inodes import LINKS_DIR, Node, link_path
from pqcfs.store.intent import DIRECTORY, FILE


class NamespaceOps:
    # --- creating -------------------------------------------------------------------

    def _new_meta(self, dir_node: Node, mode: int, caller: Caller, rdev: int = 0) -> Meta:
        gid = caller.gid
        if dir_node.meta.mode & stat.S_ISGID:
            gid = dir_node.meta.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return Meta(mode=mode, uid=caller.uid, gid=gid, rdev=rdev)

    def _touch(self, *dirs: Node) -> None:
        """Note the directories an operation changes (and the link store, which links,
        unlinks and renames of hard-linked files may change) before changing them."""
        self._check_namespace(*dirs)
        for d in dirs:
            self.intent.note(DIRECTORY, d.c_path)
            d.listing = None
        self.intent.note(DIRECTORY, LINKS_DIR)

    def _prepare_name(self, dir_node: Node, p_name: bytes) -> str:
        self._check_writable()
        self.check_room_to_create()
        self._touch(dir_node)
        if not dir_node.is_dir:
            raise FsError(errno.ENOTDIR)
        full = full_c_name(dir_node, p_name)
        disk_name = names.on_disk_name(full)
        if p_name in dir_node.children or self._name_taken(dir_node, p_name, disk_name):
            raise FsError(errno.EEXIST)
        if disk_name != full:
            self.replicas.write_atomic(self._join(dir_node.c_path, disk_name + names.LONG_SUFFIX),
                                       full.encode(), sync=False)
        return disk_name

    def create(self, dir_node: Node, p_name: bytes, mode: int, caller: Caller) -> Node:
        """A regular file made and opened by one request (open(2) with O_CREAT): the
        descriptors that made it are its open handle, and its table entry waits for the
        directory's next record (TabledFS.put_unsaved)."""
        return self._make_file(dir_node, p_name, mode, caller, keep_open=True)

    def create_file(self, dir_node: Node, p_name: bytes, mode: int, caller: Caller, rdev: int = 0,
                    content: bytes = b"") -> Node:
        """Files made closed: symlinks (content = target), FIFOs, sockets, devices, and
        regular files by mknod."""
        return self._make_file(dir_node, p_name, mode, caller, rdev, content)

    def _make_file(self, dir_node: Node, p_name: bytes, mode: int, caller: Caller, rdev: int = 0,
                   content: bytes = b"", keep_open: bool = False) -> Node:
        disk_name = self._prepare_name(dir_node, p_name)
        node_id = node_header.new_node_id()
        keys = self.child_keys(dir_node, node_id)
        meta = self._new_meta(dir_node, mode, caller, rdev)
        meta.counter = self.NEW_FILE_COUNTER
        rel = self._join(dir_node.c_path, disk_name)
        self.intent.note(FILE, rel)
        handle = self.replicas.create_file(rel, node_header.build(MAGIC_FILE, node_id, keys.meta_key, meta))
        node = Node(parent=dir_node, p_name=p_name, disk_name=disk_name,
                    keys=keys, meta=meta)
        if keep_open:
            node.content = self._file_content(node, handle)
            node.opens, node.bumped = 1, True     # its write counter is new: nothing to raise
        else:
            try:
                if content:
                    FileContent(node.cipher(self.block_size), handle, 0).write(0, content)
                    node.size = len(content)
            finally:
                handle.close()
        try:
            self._file_made(dir_node, node, keep_open)
        except BaseException:
            if node.content is not None:
                node.content.close()    # the node never reached the inode table: nobody would
            raise
        return self.inodes.add(node)

    def mkdir(self, dir_node: Node, p_name: bytes, mode: int, caller: Caller) -> Node:
        disk_name = self._prepare_name(dir_node, p_name)
        node_id = node_header.new_node_id()
        keys = self.child_keys(dir_node, node_id)
        meta = self._new_meta(dir_node, stat.S_IFDIR | stat.S_IMODE(mode), caller)
        rel = self._join(dir_node.c_path, disk_name)
        self.intent.note(DIRECTORY, rel)
        self.replicas.mkdir(rel)
        # The id file is written once, atomically: a directory without one is refused.
        self.replicas.write_atomic(self._join(rel, names.DIR_ID_NAME),
                                   node_header.build(MAGIC_DIR, node_id, keys.meta_key, meta), sync=False)
        node = Node(parent=dir_node, p_name=p_name, disk_name=disk_name,
                    keys=keys, meta=meta, overrides={}, subdirs=0)
        self._dir_made(dir_node, node)
        if dir_node.subdirs is not None:
            dir_node.subdirs += 1
        return self.inodes.add(node)

    def link(self, node: Node, dir_node: Node, p_name: bytes) -> Node:
        """A new name for a file-like node. The first extra name moves the node's data into
        the link store (h.links/<node id>) and leaves a stub at every name, so hard links
        work on file systems without them (exFAT)."""
        if node.is_dir:
            raise FsError(errno.EPERM)
        if node.unlinked:
            raise FsError(errno.ENOENT)
        self._check_namespace(node.parent or dir_node, dir_node)
        if node.parent is not None:
            self._check_lineage(node.parent, dir_node)
        disk_name = self._prepare_name(dir_node, p_name)
        if not node.hard_linked:
            self._share(node)
        self._adopt(dir_node, node)
        stub = node_header.build(MAGIC_LINK, node.keys.node_id, node.keys.meta_key, Meta(0, 0, 0))
        self.replicas.write_atomic(self._join(dir_node.c_path, disk_name), stub, sync=False)
        self._link_made(dir_node, node, p_name, disk_name)
        node.meta.nlink += 1
        self._save_meta(node)
        node.unlinked = False
        return self._add_name(node, dir_node, p_name)

    def _share(self, node: Node) -> None:
        self._touch(node.parent)
        if not self.replicas.exists(LINKS_DIR):
            self.replicas.mkdir(LINKS_DIR)
        entry = node.c_path
        stub = node_header.build(MAGIC_LINK, node.keys.node_id, node.keys.meta_key, Meta(0, 0, 0))
        # Data first, then the stub at the old name: a crash in between leaves the data in
        # the link store (recoverable) and never two copies that could diverge.
        self.replicas.rename(entry, link_path(node.keys.node_id))
        if self.replicas.exists(entry + names.XATTR_SUFFIX):
            self.replicas.rename(entry + names.XATTR_SUFFIX, link_path(node.keys.node_id) + names.XATTR_SUFFIX)
        self.replicas.write_atomic(entry, stub, sync=False)
        node.hard_linked = True
        self._now_hard_linked(node)
        node.name_set().add((node.parent, node.p_name))
        self.inodes.hard_linked[node.keys.node_id] = node

    # --- removing -------------------------------------------------------------------

    def _drop_sidecars(self, parent: Node, disk_name: str, with_xattrs: bool) -> None:
        if names.is_long(disk_name):
            self.replicas.unlink(self._join(parent.c_path, disk_name + names.LONG_SUFFIX), missing_ok=True)
        if with_xattrs:
            self.replicas.unlink(self._join(parent.c_path, disk_name + names.XATTR_SUFFIX), missing_ok=True)

    def _forget_override(self, parent: Node, node: Node) -> None:
        if node.keys.node_id in self.overrides_of(parent):
            del parent.overrides[node.keys.node_id]
            self._save_overrides(parent)

    def unlink(self, dir_node: Node, p_name: bytes) -> None:
        self._check_writable()
        self._room_tried = 0.0     # space is freed: a full drive's reserve may be whole again
        self._touch(dir_node)
        node = self.lookup(dir_node, p_name)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        rel = self._entry_rel(dir_node, p_name, node)
        if node.hard_linked or not self._kept_instead(node, rel):
            self.replicas.unlink(rel)
        # A plain file's xattrs sit beside its entry; a hard-linked node's beside its data.
        self._drop_sidecars(dir_node, rel.rsplit("/", 1)[-1],
                            with_xattrs=not node.hard_linked and self._may_have_xattr_file(node))
        self._lose_name(node, dir_node, p_name)
        self._entry_gone(dir_node, rel.rsplit("/", 1)[-1])

    def rmdir(self, dir_node: Node, p_name: bytes) -> None:
        self._check_writable()
        self._room_tried = 0.0
        self._touch(dir_node)
        node = self.lookup(dir_node, p_name)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        if self.listdir(node):
            raise FsError(errno.ENOTEMPTY)
        self._dir_leaving(node)
        self.replicas.rmdir_tree(node.c_path)
        dir_node.subdirs = None
        self._drop_sidecars(dir_node, node.disk_name, with_xattrs=False)
        self._forget_override(dir_node, node)
        self.inodes.detach(node)
        self._entry_gone(dir_node, node.disk_name)

    # --- key lineage: nothing leaves a granted directory with its key ----------------

    def _grant_roots_above(self, dir_node: Node) -> set[bytes]:
        found, walk = set(), dir_node
        while walk is not None:
            if walk.keys.node_id in self.grant_roots:
                found.add(walk.keys.node_id)
            walk = walk.parent
        return found

    def _check_lineage(self, old_dir: Node, new_dir: Node) -> None:
        """A node under a granted directory has a key its recipients can derive, and a move
        keeps a node's key: moved (or linked) to a place outside that directory, it would
        stay readable to them, and a revoke (which re-keys the directory) would not reach
        it. Such a move is EXDEV: `mv` then copies, and the copy gets keys of its new place."""
        if self.grant_roots and old_dir is not new_dir and \
                not self._grant_roots_above(old_dir) <= self._grant_roots_above(new_dir):
            raise FsError(errno.EXDEV)

    # --- rename ---------------------------------------------------------------------

    def _adopt(self, new_parent: Node, node: Node) -> None:
        """Make new_parent hand out node's key (the node keeps its key across moves)."""
        table = self.overrides_of(new_parent)
        if new_parent.keys.child(node.keys.node_id).key == node.keys.key:
            if table.pop(node.keys.node_id, None) is not None:
                self._save_overrides(new_parent)
            return
        table[node.keys.node_id] = new_parent.keys.wrap_override(node.keys)
        self._save_overrides(new_parent)

    def rename(self, old_dir: Node, old_name: bytes, new_dir: Node, new_name: bytes,
               noreplace: bool = False, exchange: bool = False) -> None:
        self._check_writable()
        self._touch(old_dir, new_dir)
        node = self.lookup(old_dir, old_name)
        if not new_dir.is_dir:
            raise FsError(errno.ENOTDIR)
        # Moving a directory into itself or its own subtree is refused, as POSIX says.
        walk = new_dir
        while walk is not None:
            if walk is node:
                raise FsError(errno.EINVAL)
            walk = walk.parent
        try:
            target = self.lookup(new_dir, new_name)
        except FsError as e:
            if e.errno != errno.ENOENT:
                raise
            target = None
        if target is node:
            return
        self._check_lineage(old_dir, new_dir)
        if exchange:
            if target is None:
                raise FsError(errno.ENOENT)
            self._check_lineage(new_dir, old_dir)
            return self._exchange(old_dir, old_name, node, new_dir, new_name, target)
        if target is not None:
            if noreplace:
                raise FsError(errno.EEXIST)
            if node.is_dir and not target.is_dir:
                raise FsError(errno.ENOTDIR)
            if not node.is_dir and target.is_dir:
                raise FsError(errno.EISDIR)
            if target.is_dir and self.listdir(target):
                raise FsError(errno.ENOTEMPTY)
        new_full = full_c_name(new_dir, new_name)
        new_disk = names.on_disk_name(new_full)
        new_rel = self._join(new_dir.c_path, new_disk)
        old_rel = self._entry_rel(old_dir, old_name, node)
        old_disk = old_rel.rsplit("/", 1)[-1]
        # Write order keeps a crash harmless: the override and long-name file first, then
        # the rename, then the stale override (a leftover one is never used).
        if new_dir is not old_dir:
            self._adopt(new_dir, node)
        if new_disk != new_full:
            self.replicas.write_atomic(new_rel + names.LONG_SUFFIX, new_full.encode(), sync=False)
        if target is not None and target.is_dir:
            self._dir_leaving(target)
            self.replicas.rmdir_tree(new_rel)
        elif target is not None and not target.hard_linked:
            self._kept_instead(target, new_rel)      # a snapshot's version leaves before the rename replaces it
        self.replicas.rename(old_rel, new_rel)
        # A plain file's xattrs sit beside its entry and move with it; a hard-linked node's sit
        # beside its data, which does not move.
        if not node.is_dir and not node.hard_linked and self._may_have_xattr_file(node) \
                and self.replicas.exists(old_rel + names.XATTR_SUFFIX):
            self.replicas.rename(old_rel + names.XATTR_SUFFIX, new_rel + names.XATTR_SUFFIX)
        elif target is not None and not target.is_dir and not target.hard_linked and self._may_have_xattr_file(target):
            self.replicas.unlink(new_rel + names.XATTR_SUFFIX, missing_ok=True)
        if names.is_long(old_disk) and old_rel != new_rel:
            self.replicas.unlink(old_rel + names.LONG_SUFFIX, missing_ok=True)
        if target is not None:
            self._lose_name(target, new_dir, new_name)
        if new_dir is not old_dir and not node.hard_linked:
            self._forget_override(old_dir, node)
        if node.is_dir or (target is not None and target.is_dir):
            old_dir.subdirs = new_dir.subdirs = None    # counted again on demand
        self._move_name(node, old_dir, old_name, new_dir, new_name, new_disk)
        self._entries_renamed(node, old_dir, old_disk, new_dir, new_disk, new_name)

    def _kept_instead(self, node: Node, rel: str) -> bool:
        """A file about to leave the drives: True when a snapshot holds it and it went to
        the snapshots' data instead (snapshots/history.py)."""
        if self.history is None:
            return False
        counter = node.entry.counter if node.entry is not None else node.meta.counter
        return self.history.before_remove(node.keys.node_id, counter, rel)

    def _lose_name(self, node: Node, dir_node: Node, p_name: bytes) -> None:
        """Bookkeeping once the entry p_name that named node is gone (unlink, or replaced
        by a rename). A hard-linked node's overrides stay: another of its names may live in the
        same directory, and a leftover override is harmless."""
        if node.hard_linked:
            node.name_set().discard((dir_node, p_name))
            node.meta.nlink -= 1
            if node.meta.nlink == 0:
                if not self._kept_instead(node, node.data_path):
                    self.replicas.unlink(node.data_path)
                self.replicas.unlink(node.data_path + names.XATTR_SUFFIX, missing_ok=True)
                self.replicas.unlink(node.data_path + link_attrs.SUFFIX, missing_ok=True)
            else:
                self._save_meta(node)
        else:
            self._forget_override(dir_node, node)
        self.inodes.detach(node, dir_node, p_name)

    def _move_name(self, node: Node, old_dir: Node, old_name: bytes, new_dir: Node, new_name: bytes,
                   new_disk: str) -> None:
        if old_dir.children.get(old_name) is node:
            del old_dir.children[old_name]
        if node.hard_linked:
            node.name_set().discard((old_dir, old_name))
            node.name_set().add((new_dir, new_name))
        node.parent, node.p_name, node.disk_name = new_dir, new_name, new_disk
        new_dir.children[new_name] = node

    def _exchange(self, dir_a: Node, a_name: bytes, a: Node, dir_b: Node, b_name: bytes, b: Node) -> None:
        # Each entry name stays valid for its (directory, plaintext name) slot, so only the
        # contents swap places; keys follow their nodes through overrides.
        if dir_a is not dir_b:
            self._adopt(dir_b, a)
            self._adopt(dir_a, b)
        a_rel, b_rel = self._entry_rel(dir_a, a_name), self._entry_rel(dir_b, b_name)
        xa = None if a.is_dir or a.hard_linked else a_rel + names.XATTR_SUFFIX
        xb = None if b.is_dir or b.hard_linked else b_rel + names.XATTR_SUFFIX
        has_a, has_b = bool(xa) and self.replicas.exists(xa), bool(xb) and self.replicas.exists(xb)
        self.replicas.exchange(a_rel, b_rel)
        # A file's xattr sidecar sits beside it, so it follows its file to the other slot.
        if has_a and has_b:
            self.replicas.exchange(xa, xb)
        elif has_a:
            self.replicas.rename(xa, b_rel + names.XATTR_SUFFIX)
        elif has_b:
            self.replicas.rename(xb, a_rel + names.XATTR_SUFFIX)
        a_disk, b_disk = a_rel.rsplit("/", 1)[-1], b_rel.rsplit("/", 1)[-1]
        for node, old_dir, old_name in ((a, dir_a, a_name), (b, dir_b, b_name)):
            if old_dir.children.get(old_name) is node:
                del old_dir.children[old_name]
            if node.names:
                node.names.discard((old_dir, old_name))
        self._entries_exchanged(a, dir_a, a_disk, a_name, b, dir_b, b_disk, b_name)
        self._move_name(a, dir_b, b_name, dir_b, b_name, b_disk)
        self._move_name(b, dir_a, a_name, dir_a, a_name, a_disk)
        if dir_a is not dir_b:
            if not a.hard_linked:
                self._forget_override(dir_a, a)
            if not b.hard_linked:
                self._forget_override(dir_b, b)
