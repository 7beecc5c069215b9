"""The vault as a file system: names, nodes, metadata and contents over the replica set.

Plain Python (no pyfuse3 requests, no trio): the Operations class translates kernel
requests into these calls, and tests call them directly. Errors are FsError(errno).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from dataclasses import dataclass

from pqcfs.crypto import content as content_layout
from pqcfs.crypto.keys import NodeKeys
from pqcfs.errors import CryptoError, DamagedStructure, PqcfsError
from pqcfs.format import names, node_header, sealed_table
from pqcfs.format.node_header import HEADER_LEN, MAGIC_DIR, MAGIC_FILE, MAGIC_LINK, Meta
from pqcfs.fs.content import FileContent
from pqcfs.fs.inodes import SHARED_DIR, InodeTable, Node, shared_path
from pqcfs.store.replicas import ReplicaSet

log = logging.getLogger(__name__)
XATTR_AD = b"pqcfs xattr v1"
OVERRIDES_AD = b"pqcfs overrides v1"


class FsError(PqcfsError):
    def __init__(self, err: int, message: str = ""):
        super().__init__(message or os.strerror(err))
        self.errno = err


@dataclass
class Caller:
    uid: int = 0
    gid: int = 0
    umask: int = 0o022


def _full_c_name(dir_node: Node, p_name: bytes) -> str:
    try:
        return names.encrypt_name(dir_node.keys, p_name)
    except names.InvalidName:
        raise FsError(errno.ENAMETOOLONG if len(p_name) > names.MAX_P_NAME else errno.EINVAL) from None


class VaultFS:
    def __init__(self, replicas: ReplicaSet, root_keys: NodeKeys, block_size: int, read_only: bool = False,
                 on_event=None):
        self.replicas = replicas
        self.on_event = on_event or (lambda event, **details: None)
        self.block_size = block_size
        self.read_only = read_only
        data = replicas.read_file(names.DIR_ID_NAME)
        meta = node_header.open_meta(root_keys.meta_key, data)
        root = Node(ino=0, parent=None, p_name=b"", disk_name="", keys=root_keys, meta=meta)
        self.inodes = InodeTable(root)
        self.heal_events = 0

    # --- paths and metadata files ---------------------------------------------------

    @staticmethod
    def _join(*parts: str) -> str:
        return "/".join(p for p in parts if p)

    def _meta_path(self, node: Node) -> str:
        """The file holding the node header: the file itself, or a directory's d.id."""
        return self._join(node.c_path, names.DIR_ID_NAME) if node.is_dir else node.data_path

    def _xattr_path(self, node: Node) -> str:
        if node.is_dir:
            return self._join(node.c_path, "d" + names.XATTR_SUFFIX)
        return node.data_path + names.XATTR_SUFFIX

    def _entry_rel(self, dir_node: Node, p_name: bytes) -> str:
        """The backing entry of the name p_name in dir_node (for a hard-linked node, each
        of its names has its own stub entry; node.c_path names only one of them)."""
        return self._join(dir_node.c_path, names.on_disk_name(_full_c_name(dir_node, p_name)))

    def _check_writable(self) -> None:
        if self.read_only:
            raise FsError(errno.EROFS)

    # --- overrides: keys of nodes moved here from another parent ----------------------

    def _overrides(self, dir_node: Node) -> dict[bytes, bytes]:
        if dir_node.overrides is None:
            path = self._join(dir_node.c_path, names.OVERRIDES_NAME)
            table: dict[bytes, bytes] = {}
            if self.replicas.exists(path):
                table = sealed_table.decode(dir_node.keys.meta_key, OVERRIDES_AD + dir_node.keys.node_id,
                                            self.replicas.read_file(path))
            dir_node.overrides = table
        return dir_node.overrides

    def _save_overrides(self, dir_node: Node) -> None:
        path = self._join(dir_node.c_path, names.OVERRIDES_NAME)
        table = dir_node.overrides or {}
        if not table:
            self.replicas.unlink(path, missing_ok=True)
            return
        self.replicas.write_atomic(path, sealed_table.encode(dir_node.keys.meta_key,
                                                             OVERRIDES_AD + dir_node.keys.node_id, table))

    def _child_keys(self, dir_node: Node, node_id: bytes) -> NodeKeys:
        wrapped = self._overrides(dir_node).get(node_id)
        if wrapped is not None:
            return dir_node.keys.unwrap_override(node_id, wrapped)
        return dir_node.keys.child(node_id)

    # --- lookup and listing ---------------------------------------------------------

    def lookup(self, dir_node: Node, p_name: bytes) -> Node:
        if not dir_node.is_dir:
            raise FsError(errno.ENOTDIR)
        cached = dir_node.children.get(p_name)
        if cached is not None:
            return cached
        disk_name = names.on_disk_name(_full_c_name(dir_node, p_name))
        return self._load(dir_node, p_name, disk_name)

    def _load(self, dir_node: Node, p_name: bytes, disk_name: str) -> Node:
        rel = self._join(dir_node.c_path, disk_name)
        try:
            st = self.replicas.lstat(rel)
        except FileNotFoundError:
            # Replicas agree while mounted, so a name only a backup has is damage here:
            # healing the listing brings it back.
            if not any(os.path.lexists(self.replicas.path(rel, n)) for n in self.replicas.healthy[1:]):
                raise FsError(errno.ENOENT) from None
            self.listdir(dir_node)
            try:
                st = self.replicas.lstat(rel)
            except FileNotFoundError:
                raise FsError(errno.ENOENT) from None
        is_dir = stat.S_ISDIR(st.st_mode)
        header_rel = self._join(rel, names.DIR_ID_NAME) if is_dir else rel
        header, node_id, keys, meta = self._read_header(dir_node, header_rel, MAGIC_DIR if is_dir else (MAGIC_FILE, MAGIC_LINK))
        shared = header[:4] == MAGIC_LINK
        if shared:
            known = self.inodes.shared.get(node_id)
            if known is not None:
                return self._add_name(known, dir_node, p_name)
            # A stub: the header, metadata and contents are in the shared store.
            st = self.replicas.lstat(shared_path(node_id))
            header, shared_id, keys, meta = self._read_header(dir_node, shared_path(node_id), MAGIC_FILE)
            if shared_id != node_id:
                raise DamagedStructure("hard-link stub and shared node disagree")
        if stat.S_ISDIR(meta.mode) != is_dir:
            raise DamagedStructure("node type does not match its ciphertext entry")
        node = Node(ino=self.inodes.new_ino(), parent=dir_node, p_name=p_name, disk_name=disk_name,
                    keys=keys, meta=meta, stat=st, shared=shared)
        if not is_dir:
            node.size = content_layout.p_size(st.st_size - HEADER_LEN, self.block_size)
        if shared:
            self.inodes.shared[node_id] = node
            node.names.add((dir_node, p_name))
        return self.inodes.add(node)

    def _add_name(self, node: Node, dir_node: Node, p_name: bytes) -> Node:
        dir_node.children[p_name] = node
        node.names.add((dir_node, p_name))
        return node

    def _read_header(self, dir_node: Node, rel: str, magic) -> tuple[bytes, bytes, NodeKeys, Meta]:
        """Header, node id, keys and metadata of a node; a header that fails on the primary
        is read from another replica and the primary's copy repaired (self-healing)."""
        error: Exception | None = None
        for replica in self.replicas.healthy:
            try:
                header = self.replicas.read_file(rel, HEADER_LEN, replica)
                node_id = node_header.parse_prefix(header, magic)
                keys = self._child_keys(dir_node, node_id)
                if header[:4] == MAGIC_LINK:
                    meta = Meta(0, 0, 0)
                    node_header.open_meta(keys.meta_key, header)
                else:
                    meta = node_header.open_meta(keys.meta_key, header)
            except (CryptoError, DamagedStructure, OSError) as e:
                error = error or e
                continue
            if replica != 0:
                self.replicas.write_one(0, rel, header)
                self.heal_events += 1
                self.on_event("self-heal", what="node header", c_path=rel, source=replica)
                log.warning("healed a node header on the primary from replica %d", replica)
            return header, node_id, keys, meta
        raise error

    def listdir(self, dir_node: Node) -> list[tuple[bytes, str]]:
        """(p_name, disk_name) of every entry, in a stable order. Entries whose names fail
        on the primary are healed from another replica where they authenticate."""
        out, bad = self._listdir_on(dir_node, 0)
        if bad:
            for source in self.replicas.healthy[1:]:
                self._heal_dir(dir_node, target=0, source=source)
                out, bad = self._listdir_on(dir_node, 0)
                if not bad:
                    break
        return out

    def _heal_dir(self, dir_node: Node, target: int, source: int) -> None:
        """Entries that authenticate on source and are missing on target are copied over;
        entries on target that fail and are no authentic entry on source are removed."""
        good, _ = self._listdir_on(dir_node, source)
        have, bad = self._listdir_on(dir_node, target)
        have_disk = {d for _, d in have}
        copied = 0
        for _, disk_name in good:
            if disk_name in have_disk:
                continue
            src = self.replicas.path(self._join(dir_node.c_path, disk_name), source)
            dst = self.replicas.path(self._join(dir_node.c_path, disk_name), target)
            (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, dst)
            for suffix in (names.LONG_SUFFIX, names.XATTR_SUFFIX):
                if os.path.exists(src + suffix):
                    shutil.copy2(src + suffix, dst + suffix)
            copied += 1
        for disk_name in bad:
            junk = self.replicas.path(self._join(dir_node.c_path, disk_name), target)
            (shutil.rmtree if os.path.isdir(junk) else os.unlink)(junk)
        if copied or bad:
            self.heal_events += 1
            self.on_event("self-heal", what="entry names", c_path=dir_node.c_path or ".",
                          copied=copied, removed=len(bad), target=target, source=source)
            log.warning("healed %d damaged entry name(s) on replica %d from replica %d", copied, target, source)

    def _listdir_on(self, dir_node: Node, replica: int) -> tuple[list[tuple[bytes, str]], list[str]]:
        out, bad = [], []
        for disk_name in sorted(os.listdir(self.replicas.path(dir_node.c_path, replica))):
            if not names.is_entry(disk_name):
                continue
            full = disk_name
            if names.is_long(disk_name):
                try:
                    full = self.replicas.read_file(self._join(dir_node.c_path, disk_name + names.LONG_SUFFIX),
                                                   replica=replica).decode()
                except (OSError, UnicodeDecodeError):
                    log.error("long name file of an entry is missing; entry skipped")
                    bad.append(disk_name)
                    continue
                if not names.long_name_matches(disk_name, full):
                    log.error("long name file does not match its entry; entry skipped")
                    bad.append(disk_name)
                    continue
            try:
                out.append((names.decrypt_name(dir_node.keys, full), disk_name))
            except (CryptoError, DamagedStructure, names.InvalidName):
                log.error("an entry name failed authentication; entry skipped")
                bad.append(disk_name)
        return out, bad

    def entry(self, dir_node: Node, p_name: bytes, disk_name: str) -> Node:
        return dir_node.children.get(p_name) or self._load(dir_node, p_name, disk_name)

    # --- attributes -----------------------------------------------------------------

    def backing_stat(self, node: Node) -> os.stat_result:
        # A lookup's own stat is used once (the reply right after it), then never again.
        st, node.stat = node.stat, None
        if st is not None:
            return st
        # Through the open descriptor when there is one: an unlinked file has no path.
        if node.handle is not None:
            return node.handle.handle.stat()
        return self.replicas.lstat(node.data_path)

    def _write_meta(self, node: Node) -> None:
        prefix = node_header.build(MAGIC_DIR if node.is_dir else MAGIC_FILE, node.keys.node_id,
                                   node.keys.meta_key, node.meta)
        if node.handle is not None:
            node.handle.handle.pwrite(prefix, 0)
            return
        mf = self.replicas.open_file(self._meta_path(node))
        try:
            mf.pwrite(prefix, 0)
        finally:
            mf.close()

    def set_mode(self, node: Node, mode: int) -> None:
        self._check_writable()
        node.meta.mode = stat.S_IFMT(node.meta.mode) | stat.S_IMODE(mode)
        self._write_meta(node)

    def set_owner(self, node: Node, uid: int | None, gid: int | None) -> None:
        self._check_writable()
        if uid is not None:
            node.meta.uid = uid
        if gid is not None:
            node.meta.gid = gid
        self._write_meta(node)

    def set_times(self, node: Node, atime_ns: int | None, mtime_ns: int | None) -> None:
        self._check_writable()
        st = self.backing_stat(node)
        ns = (atime_ns if atime_ns is not None else st.st_atime_ns,
              mtime_ns if mtime_ns is not None else st.st_mtime_ns)
        if node.handle is not None:
            node.handle.handle.utime(ns)
        else:
            self.replicas.utime(node.data_path, ns)

    # --- creating -------------------------------------------------------------------

    def _new_meta(self, dir_node: Node, mode: int, caller: Caller, rdev: int = 0) -> Meta:
        gid = caller.gid
        if dir_node.meta.mode & stat.S_ISGID:
            gid = dir_node.meta.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return Meta(mode=mode, uid=caller.uid, gid=gid, rdev=rdev)

    def _prepare_name(self, dir_node: Node, p_name: bytes) -> str:
        self._check_writable()
        if not dir_node.is_dir:
            raise FsError(errno.ENOTDIR)
        full = _full_c_name(dir_node, p_name)
        disk_name = names.on_disk_name(full)
        if p_name in dir_node.children or self.replicas.exists(self._join(dir_node.c_path, disk_name)):
            raise FsError(errno.EEXIST)
        if disk_name != full:
            self.replicas.write_atomic(self._join(dir_node.c_path, disk_name + names.LONG_SUFFIX),
                                       full.encode(), sync=False)
        return disk_name

    def create_file(self, dir_node: Node, p_name: bytes, mode: int, caller: Caller, rdev: int = 0,
                    content: bytes = b"") -> Node:
        """Regular files, symlinks (content = target), FIFOs, sockets and devices."""
        disk_name = self._prepare_name(dir_node, p_name)
        node_id = node_header.new_node_id()
        keys = self._child_keys(dir_node, node_id)
        meta = self._new_meta(dir_node, mode, caller, rdev)
        rel = self._join(dir_node.c_path, disk_name)
        handle = self.replicas.create_file(rel, node_header.build(MAGIC_FILE, node_id, keys.meta_key, meta))
        node = Node(ino=self.inodes.new_ino(), parent=dir_node, p_name=p_name, disk_name=disk_name,
                    keys=keys, meta=meta)
        try:
            if content:
                FileContent(node.cipher(self.block_size), handle, 0).write(0, content)
                node.size = len(content)
        finally:
            handle.close()
        return self.inodes.add(node)

    def mkdir(self, dir_node: Node, p_name: bytes, mode: int, caller: Caller) -> Node:
        disk_name = self._prepare_name(dir_node, p_name)
        node_id = node_header.new_node_id()
        keys = self._child_keys(dir_node, node_id)
        meta = self._new_meta(dir_node, stat.S_IFDIR | stat.S_IMODE(mode), caller)
        rel = self._join(dir_node.c_path, disk_name)
        self.replicas.mkdir(rel)
        # The id file is written once, atomically: a directory without one is refused.
        self.replicas.write_atomic(self._join(rel, names.DIR_ID_NAME),
                                   node_header.build(MAGIC_DIR, node_id, keys.meta_key, meta), sync=False)
        node = Node(ino=self.inodes.new_ino(), parent=dir_node, p_name=p_name, disk_name=disk_name,
                    keys=keys, meta=meta, overrides={})
        return self.inodes.add(node)

    def link(self, node: Node, dir_node: Node, p_name: bytes) -> Node:
        """A new name for a file-like node. The first extra name moves the node's data into
        the shared store (h.links/<node id>) and leaves a stub at every name, so hard links
        work on file systems without them (exFAT)."""
        if node.is_dir:
            raise FsError(errno.EPERM)
        if node.unlinked:
            raise FsError(errno.ENOENT)
        disk_name = self._prepare_name(dir_node, p_name)
        if not node.shared:
            self._share(node)
        self._adopt(dir_node, node)
        stub = node_header.build(MAGIC_LINK, node.keys.node_id, node.keys.meta_key, Meta(0, 0, 0))
        self.replicas.write_atomic(self._join(dir_node.c_path, disk_name), stub, sync=False)
        node.meta.nlink += 1
        self._write_meta(node)
        node.unlinked = False
        return self._add_name(node, dir_node, p_name)

    def _share(self, node: Node) -> None:
        if not self.replicas.exists(SHARED_DIR):
            self.replicas.mkdir(SHARED_DIR)
        entry = node.c_path
        stub = node_header.build(MAGIC_LINK, node.keys.node_id, node.keys.meta_key, Meta(0, 0, 0))
        # Data first, then the stub at the old name: a crash in between leaves the data in
        # the shared store (recoverable) and never two copies that could diverge.
        self.replicas.rename(entry, shared_path(node.keys.node_id))
        if self.replicas.exists(entry + names.XATTR_SUFFIX):
            self.replicas.rename(entry + names.XATTR_SUFFIX, shared_path(node.keys.node_id) + names.XATTR_SUFFIX)
        self.replicas.write_atomic(entry, stub, sync=False)
        node.shared = True
        node.names.add((node.parent, node.p_name))
        self.inodes.shared[node.keys.node_id] = node

    # --- removing -------------------------------------------------------------------

    def _drop_sidecars(self, parent: Node, disk_name: str, with_xattrs: bool) -> None:
        if names.is_long(disk_name):
            self.replicas.unlink(self._join(parent.c_path, disk_name + names.LONG_SUFFIX), missing_ok=True)
        if with_xattrs:
            self.replicas.unlink(self._join(parent.c_path, disk_name + names.XATTR_SUFFIX), missing_ok=True)

    def _forget_override(self, parent: Node, node: Node) -> None:
        if node.keys.node_id in self._overrides(parent):
            del parent.overrides[node.keys.node_id]
            self._save_overrides(parent)

    def unlink(self, dir_node: Node, p_name: bytes) -> None:
        self._check_writable()
        node = self.lookup(dir_node, p_name)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        rel = self._entry_rel(dir_node, p_name)
        self.replicas.unlink(rel)
        if node.shared:
            # Overrides stay: another name of this node may live in the same directory,
            # and a leftover override is harmless.
            self._drop_sidecars(dir_node, rel.rsplit("/", 1)[-1], with_xattrs=False)
            node.names.discard((dir_node, p_name))
            node.meta.nlink -= 1
            if node.meta.nlink == 0:
                self.replicas.unlink(node.data_path)
                self.replicas.unlink(node.data_path + names.XATTR_SUFFIX, missing_ok=True)
            else:
                self._write_meta(node)
            self.inodes.detach(node, dir_node, p_name)
            return
        self._drop_sidecars(dir_node, node.disk_name, with_xattrs=True)
        self._forget_override(dir_node, node)
        self.inodes.detach(node)

    def rmdir(self, dir_node: Node, p_name: bytes) -> None:
        self._check_writable()
        node = self.lookup(dir_node, p_name)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        if self.listdir(node):
            raise FsError(errno.ENOTEMPTY)
        self.replicas.rmdir_tree(node.c_path)
        self._drop_sidecars(dir_node, node.disk_name, with_xattrs=False)
        self._forget_override(dir_node, node)
        self.inodes.detach(node)

    # --- rename ---------------------------------------------------------------------

    def _adopt(self, new_parent: Node, node: Node) -> None:
        """Make new_parent hand out node's key (the node keeps its key across moves)."""
        table = self._overrides(new_parent)
        if new_parent.keys.child(node.keys.node_id).key == node.keys.key:
            if table.pop(node.keys.node_id, None) is not None:
                self._save_overrides(new_parent)
            return
        table[node.keys.node_id] = new_parent.keys.wrap_override(node.keys)
        self._save_overrides(new_parent)

    def rename(self, old_dir: Node, old_name: bytes, new_dir: Node, new_name: bytes,
               noreplace: bool = False, exchange: bool = False) -> None:
        self._check_writable()
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
        if exchange:
            if target is None:
                raise FsError(errno.ENOENT)
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
        new_full = _full_c_name(new_dir, new_name)
        new_disk = names.on_disk_name(new_full)
        new_rel = self._join(new_dir.c_path, new_disk)
        old_rel = self._entry_rel(old_dir, old_name)
        old_disk = old_rel.rsplit("/", 1)[-1]
        # Write order keeps a crash harmless: the override and long-name file first, then
        # the rename, then the stale override (a leftover one is never used).
        if new_dir is not old_dir:
            self._adopt(new_dir, node)
        if new_disk != new_full:
            self.replicas.write_atomic(new_rel + names.LONG_SUFFIX, new_full.encode(), sync=False)
        if target is not None and target.is_dir:
            self.replicas.rmdir_tree(new_rel)
        self.replicas.rename(old_rel, new_rel)
        # A plain file's xattrs sit beside its entry and move with it; a shared node's sit
        # beside its data, which does not move.
        if not node.is_dir and not node.shared and self.replicas.exists(old_rel + names.XATTR_SUFFIX):
            self.replicas.rename(old_rel + names.XATTR_SUFFIX, new_rel + names.XATTR_SUFFIX)
        elif target is not None and not target.is_dir and not target.shared:
            self.replicas.unlink(new_rel + names.XATTR_SUFFIX, missing_ok=True)
        if names.is_long(old_disk) and old_rel != new_rel:
            self.replicas.unlink(old_rel + names.LONG_SUFFIX, missing_ok=True)
        if target is not None:
            self._lose_name(target, new_dir, new_name)
        if new_dir is not old_dir and not node.shared:
            self._forget_override(old_dir, node)
        self._move_name(node, old_dir, old_name, new_dir, new_name, new_disk)

    def _lose_name(self, node: Node, dir_node: Node, p_name: bytes) -> None:
        """Bookkeeping after rename replaced the entry p_name that named node."""
        if node.shared:
            node.names.discard((dir_node, p_name))
            node.meta.nlink -= 1
            if node.meta.nlink == 0:
                self.replicas.unlink(node.data_path)
                self.replicas.unlink(node.data_path + names.XATTR_SUFFIX, missing_ok=True)
            else:
                self._write_meta(node)
        else:
            self._forget_override(dir_node, node)
        self.inodes.detach(node, dir_node, p_name)

    def _move_name(self, node: Node, old_dir: Node, old_name: bytes, new_dir: Node, new_name: bytes,
                   new_disk: str) -> None:
        if old_dir.children.get(old_name) is node:
            del old_dir.children[old_name]
        if node.shared:
            node.names.discard((old_dir, old_name))
            node.names.add((new_dir, new_name))
        node.parent, node.p_name, node.disk_name = new_dir, new_name, new_disk
        new_dir.children[new_name] = node

    def _exchange(self, dir_a: Node, a_name: bytes, a: Node, dir_b: Node, b_name: bytes, b: Node) -> None:
        # Each entry name stays valid for its (directory, plaintext name) slot, so only the
        # contents swap places; keys follow their nodes through overrides.
        if dir_a is not dir_b:
            self._adopt(dir_b, a)
            self._adopt(dir_a, b)
        a_rel, b_rel = self._entry_rel(dir_a, a_name), self._entry_rel(dir_b, b_name)
        xa = None if a.is_dir or a.shared else a_rel + names.XATTR_SUFFIX
        xb = None if b.is_dir or b.shared else b_rel + names.XATTR_SUFFIX
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
            node.names.discard((old_dir, old_name))
        self._move_name(a, dir_b, b_name, dir_b, b_name, b_disk)
        self._move_name(b, dir_a, a_name, dir_a, a_name, a_disk)
        if dir_a is not dir_b:
            if not a.shared:
                self._forget_override(dir_a, a)
            if not b.shared:
                self._forget_override(dir_b, b)

    # --- contents -------------------------------------------------------------------

    def open(self, node: Node, writable: bool) -> FileContent:
        if node.handle is None:
            # An entry a backup lacks while the primary has it is a damaged name there:
            # heal it rather than drop the whole backup.
            for n in self.replicas.healthy[1:]:
                if not node.is_dir and not node.shared and node.parent is not None \
                        and not os.path.lexists(self.replicas.path(node.data_path, n)):
                    self._heal_dir(node.parent, target=n, source=0)
            handle = self.replicas.open_file(node.data_path, writable=not self.read_only)
            node.handle = FileContent(node.cipher(self.block_size), handle, node.size, on_heal=self._healed)
        node.opens += 1
        return node.handle

    def release(self, node: Node) -> None:
        node.opens -= 1
        if node.opens == 0 and node.handle is not None:
            node.size = node.handle.size
            node.handle.handle.close()
            node.handle = None
            self.inodes.maybe_drop(node)

    def _healed(self, first: int, last: int, replica: int) -> None:
        self.heal_events += 1
        self.on_event("self-heal", what="content blocks", first=first, last=last, source=replica)

    def content(self, node: Node) -> tuple[FileContent, bool]:
        """The node's content view; the bool says whether the caller must release it."""
        if node.handle is not None:
            return node.handle, False
        return self.open(node, True), True

    def read_all(self, node: Node) -> bytes:
        content, temporary = self.content(node)
        try:
            return content.read(0, content.size)
        finally:
            if temporary:
                self.release(node)

    def truncate(self, node: Node, size: int) -> None:
        self._check_writable()
        if node.is_dir:
            raise FsError(errno.EISDIR)
        content, temporary = self.content(node)
        try:
            content.truncate(size)
            node.size = content.size
        finally:
            if temporary:
                self.release(node)

    def size_of(self, node: Node) -> int:
        return node.handle.size if node.handle is not None else node.size

    # --- extended attributes --------------------------------------------------------

    def xattrs(self, node: Node) -> dict[bytes, bytes]:
        if node.xattrs is None:
            path = self._xattr_path(node)
            table: dict[bytes, bytes] = {}
            if self.replicas.exists(path):
                table = sealed_table.decode(node.keys.meta_key, XATTR_AD + node.keys.node_id,
                                            self.replicas.read_file(path))
            node.xattrs = table
        return node.xattrs

    def set_xattr(self, node: Node, name: bytes, value: bytes | None) -> None:
        self._check_writable()
        table = dict(self.xattrs(node))
        if value is None:
            if name not in table:
                raise FsError(errno.ENODATA)
            del table[name]
        else:
            table[name] = value
        path = self._xattr_path(node)
        if table:
            self.replicas.write_atomic(path, sealed_table.encode(node.keys.meta_key, XATTR_AD + node.keys.node_id,
                                                                 table))
        else:
            self.replicas.unlink(path, missing_ok=True)
        node.xattrs = table
