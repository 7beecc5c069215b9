"""A bare pyfuse3 passthrough (no crypto, no mirror, 1 s cache timeouts): the Python
ceiling the benchmark holds pqcfs against. Every request goes straight to the backing
directory; nothing is cached beyond what the kernel does.

    python benchmarks/passthrough.py BACKING_DIR MOUNTPOINT     (foreground; SIGTERM unmounts)
"""

from __future__ import annotations

import errno
import os
import signal
import sys

import pyfuse3
import trio

TIMEOUT = 1.0


def _fuse_errors(fn):
    async def wrapper(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
    wrapper.__name__ = fn.__name__
    return wrapper


class Passthrough(pyfuse3.Operations):
    def __init__(self, root: str):
        super().__init__()
        self.root = os.path.realpath(root)
        self.root_ino = os.lstat(self.root).st_ino
        self.paths: dict[int, str] = {pyfuse3.ROOT_INODE: self.root}

    def _path(self, inode: int) -> str:
        try:
            return self.paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _ino(self, st_ino: int) -> int:
        return pyfuse3.ROOT_INODE if st_ino == self.root_ino else st_ino

    def _attrs(self, path: str, st: os.stat_result | None = None) -> pyfuse3.EntryAttributes:
        st = st or os.lstat(path)
        a = pyfuse3.EntryAttributes()
        a.st_ino = self._ino(st.st_ino)
        a.entry_timeout = a.attr_timeout = TIMEOUT
        a.st_mode, a.st_nlink, a.st_uid, a.st_gid = st.st_mode, st.st_nlink, st.st_uid, st.st_gid
        a.st_rdev, a.st_size, a.st_blksize, a.st_blocks = st.st_rdev, st.st_size, st.st_blksize, st.st_blocks
        a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
        self.paths[a.st_ino] = path
        return a

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self._path(parent), os.fsdecode(name))

    @_fuse_errors
    async def lookup(self, parent_inode, name, ctx=None):
        return self._attrs(self._child(parent_inode, name))

    @_fuse_errors
    async def getattr(self, inode, ctx=None):
        return self._attrs(self._path(inode))

    @_fuse_errors
    async def setattr(self, inode, attr, fields, fh, ctx):
        path = self._path(inode)
        if fields.update_size:
            os.truncate(fh if fh is not None else path, attr.st_size)
        if fields.update_mode:
            os.chmod(path, attr.st_mode & 0o7777)
        if fields.update_uid or fields.update_gid:
            os.chown(path, attr.st_uid if fields.update_uid else -1, attr.st_gid if fields.update_gid else -1,
                     follow_symlinks=False)
        if fields.update_atime or fields.update_mtime:
            st = os.lstat(path)
            os.utime(path, ns=(attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                               attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns),
                     follow_symlinks=False)
        return self._attrs(path)

    @_fuse_errors
    async def readlink(self, inode, ctx):
        return os.fsencode(os.readlink(self._path(inode)))

    @_fuse_errors
    async def mkdir(self, parent_inode, name, mode, ctx):
        path = self._child(parent_inode, name)
        os.mkdir(path, mode)
        os.chown(path, ctx.uid, ctx.gid)
        return self._attrs(path)

    @_fuse_errors
    async def symlink(self, parent_inode, name, target, ctx):
        path = self._child(parent_inode, name)
        os.symlink(os.fsdecode(target), path)
        os.chown(path, ctx.uid, ctx.gid, follow_symlinks=False)
        return self._attrs(path)

    @_fuse_errors
    async def link(self, inode, new_parent_inode, new_name, ctx):
        path = self._child(new_parent_inode, new_name)
        os.link(self._path(inode), path)
        return self._attrs(path)

    @_fuse_errors
    async def unlink(self, parent_inode, name, ctx):
        os.unlink(self._child(parent_inode, name))

    @_fuse_errors
    async def rmdir(self, parent_inode, name, ctx):
        os.rmdir(self._child(parent_inode, name))

    @_fuse_errors
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        if flags:
            raise pyfuse3.FUSEError(errno.EINVAL)
        old, new = self._child(parent_inode_old, name_old), self._child(parent_inode_new, name_new)
        os.rename(old, new)
        self._attrs(new)

    @_fuse_errors
    async def open(self, inode, flags, ctx):
        fd = os.open(self._path(inode), flags & ~os.O_CREAT)
        return pyfuse3.FileInfo(fh=fd)

    @_fuse_errors
    async def create(self, parent_inode, name, mode, flags, ctx):
        path = self._child(parent_inode, name)
        fd = os.open(path, flags | os.O_CREAT | os.O_TRUNC, mode)
        os.fchown(fd, ctx.uid, ctx.gid)
        return pyfuse3.FileInfo(fh=fd), self._attrs(path, os.fstat(fd))

    @_fuse_errors
    async def read(self, fh, off, size):
        return os.pread(fh, size, off)

    @_fuse_errors
    async def write(self, fh, off, buf):
        return os.pwrite(fh, buf, off)

    async def flush(self, fh):
        pass

    @_fuse_errors
    async def fsync(self, fh, datasync):
        (os.fdatasync if datasync else os.fsync)(fh)

    @_fuse_errors
    async def release(self, fh):
        os.close(fh)

    @_fuse_errors
    async def opendir(self, inode, ctx):
        return inode

    @_fuse_errors
    async def readdir(self, fh, start_id, token):
        path = self._path(fh)
        entries = sorted(os.scandir(path), key=lambda e: e.name)
        for index in range(start_id, len(entries)):
            entry = entries[index]
            attrs = self._attrs(entry.path, entry.stat(follow_symlinks=False))
            if not pyfuse3.readdir_reply(token, os.fsencode(entry.name), attrs, index + 1):
                break

    async def releasedir(self, fh):
        pass

    @_fuse_errors
    async def statfs(self, ctx):
        st = os.statvfs(self.root)
        out = pyfuse3.StatvfsData()
        for name in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree", "f_favail",
                     "f_namemax"):
            setattr(out, name, getattr(st, name))
        return out

    async def forget(self, inode_list):
        pass   # inode numbers are the backing ones; the path map is kept


async def _serve() -> None:
    async with trio.open_nursery() as nursery:
        async def stop_on_signal():
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _ in signals:
                    pyfuse3.terminate()
                    return
        nursery.start_soon(stop_on_signal)
        # The same request loop as pqcfs' daemon (the patched pyfuse3's wait and spin):
        # this file system then shows what pyfuse3 costs per request, and no more.
        from pqcfs.session.serving import _main_options
        await pyfuse3.main(min_tasks=1, max_tasks=1, **_main_options())
        nursery.cancel_scope.cancel()


def main() -> None:
    backing, mountpoint = sys.argv[1], sys.argv[2]
    options = set(pyfuse3.default_options) | {"fsname=passthrough"}
    pyfuse3.init(Passthrough(backing), mountpoint, options)
    try:
        trio.run(_serve)
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
