"""pyfuse3 Operations for `pqcfs mount --snapshot`: a snapshot's tree, read-only. A
snapshot never changes, so the kernel may cache everything for as long as it likes."""

from __future__ import annotations

import errno
import os
import stat

import pyfuse3

from pqcfs.format import names
from pqcfs.fs.common import FsError
from pqcfs.fuse.operations import POSIX_ACLS, _errors
from pqcfs.snapshots.view import SnapNode, SnapshotTree

FOREVER = 1 << 30      # seconds: nothing in a snapshot changes


class SnapshotOperations(pyfuse3.Operations):
    def __init__(self, tree: SnapshotTree):
        super().__init__()
        self.vfs = tree                       # named as Operations' own: _errors reports through it
        self._files: dict[int, object] = {}
        self._dirs: dict[int, tuple[SnapNode, list]] = {}
        self._next_fh = 1

    def _node(self, inode: int) -> SnapNode:
        node = self.vfs.by_ino.get(inode)
        if node is None:
            raise FsError(errno.ENOENT)
        return node

    def _fh(self) -> int:
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        return fh

    def attrs(self, node: SnapNode) -> pyfuse3.EntryAttributes:
        e = node.entry
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.entry_timeout = a.attr_timeout = FOREVER
        a.st_mode = e.mode
        a.st_nlink = e.nlink if not node.is_dir else 2 + sum(
            1 for c in self.vfs.manifest.dirs[node.keys.node_id].children if stat.S_ISDIR(c.entry.mode))
        a.st_uid, a.st_gid, a.st_rdev = e.uid, e.gid, e.rdev
        a.st_size = 4096 if node.is_dir else node.size
        a.st_blksize = self.vfs.block_size
        a.st_blocks = (a.st_size + 511) // 512
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = e.atime, e.mtime, e.ctime
        return a

    @_errors
    def lookup(self, parent_inode, name, ctx=None):
        try:
            return self.attrs(self.vfs.lookup(self._node(parent_inode), name))
        except FsError as e:
            if e.errno != errno.ENOENT:
                raise
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = FOREVER
            return negative

    async def forget(self, inode_list):
        pass      # the tree is small and fixed: every node it made stays known

    @_errors
    def getattr(self, inode, ctx=None):
        return self.attrs(self._node(inode))

    @_errors
    def readlink(self, inode, ctx):
        node = self._node(inode)
        if not stat.S_ISLNK(node.entry.mode):
            raise FsError(errno.EINVAL)
        return self.vfs.read_all(node)

    @_errors
    def statfs(self, ctx):
        st = os.statvfs(self.vfs.drives[0].location)
        out = pyfuse3.StatvfsData()
        out.f_bsize, out.f_frsize = st.f_bsize, st.f_frsize
        out.f_blocks, out.f_bfree, out.f_bavail = st.f_blocks, 0, 0
        out.f_files, out.f_ffree, out.f_favail = st.f_files, 0, 0
        out.f_namemax = names.MAX_P_NAME
        return out

    @_errors
    def open(self, inode, flags, ctx):
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise FsError(errno.EROFS)
        node = self._node(inode)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        fh = self._fh()
        self._files[fh] = self.vfs.open(node)
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @_errors
    def read(self, fh, off, size):
        return self._files[fh].read(off, size)

    async def release(self, fh):
        self._files.pop(fh, None)

    @_errors
    def opendir(self, inode, ctx):
        node = self._node(inode)
        fh = self._fh()
        self._dirs[fh] = (node, self.vfs.listdir(node))
        return fh

    @_errors
    def readdir(self, fh, start_id, token):
        node, entries = self._dirs[fh]
        for offset, name, target in ((0, b".", node), (1, b"..", node.parent or node)):
            if start_id <= offset and not pyfuse3.readdir_reply(token, name, self.attrs(target), offset + 1):
                return
        for index in range(max(start_id - 2, 0), len(entries)):
            p_name, _ = entries[index]
            child = self.vfs.lookup(node, p_name)
            if not pyfuse3.readdir_reply(token, p_name, self.attrs(child), index + 3):
                break

    async def releasedir(self, fh):
        self._dirs.pop(fh, None)

    @_errors
    def getxattr(self, inode, name, ctx):
        value = None if name in POSIX_ACLS else self.vfs.xattrs(self._node(inode)).get(name)
        if value is None:
            raise FsError(pyfuse3.ENOATTR)
        return value

    @_errors
    def listxattr(self, inode, ctx):
        return [name for name in self.vfs.xattrs(self._node(inode)) if name not in POSIX_ACLS]
