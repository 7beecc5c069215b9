"""pyfuse3 Operations: translate kernel requests into VaultFS calls, and domain errors
into errno, in one place (`_errors`). No handler awaits between reading and updating
state, so each request is atomic with respect to the others on the single trio thread.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat

import pyfuse3

from pqcfs.crypto.content import BlockCorrupt
from pqcfs.errors import CryptoError, DamagedStructure, NoSpace, PqcfsError
from pqcfs.format import names
from pqcfs.fs.inodes import Node
from pqcfs.fs.vaultfs import Caller, FsError, VaultFS

log = logging.getLogger(__name__)
# pqcfs owns its replicas while mounted, so the kernel may cache names and attributes for
# long: every change reaches the kernel through this mount anyway.
ENTRY_TIMEOUT = 300
ATTR_TIMEOUT = 300


def _errno_of(exc: BaseException) -> int:
    if isinstance(exc, FsError):
        return exc.errno
    if isinstance(exc, NoSpace):
        return errno.ENOSPC
    if isinstance(exc, (BlockCorrupt, CryptoError, DamagedStructure)):
        return errno.EIO
    if isinstance(exc, names.InvalidName):
        return errno.EINVAL
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def _errors(fn):
    """A handler as pyfuse3 calls it: a coroutine around a plain function, which thus can
    not await (each request is atomic, above), and costs no coroutine of its own."""
    @functools.wraps(fn)
    async def wrapper(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except (PqcfsError, OSError, names.InvalidName) as e:
            err = _errno_of(e)
            if err == errno.EIO:
                log.error("%s failed: %s", fn.__name__, e)
                self.vfs.on_event("integrity-failure", operation=fn.__name__, error=str(e))
            else:
                log.debug("%s: %s (%s)", fn.__name__, os.strerror(err), e)
            raise pyfuse3.FUSEError(err) from None
        except Exception:
            log.exception("%s failed unexpectedly", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
    return wrapper


# POSIX ACLs are refused, not stored: stored as opaque values they changed nothing (the
# kernel does not enforce them here), and `cp -p` believed it had set the mode through
# them. Refused, every tool falls back to chmod. (Older vaults may hold such values:
# they are hidden.)
POSIX_ACLS = {b"system.posix_acl_access", b"system.posix_acl_default"}


def _refuse_acl(name: bytes) -> None:
    if name in POSIX_ACLS:
        raise FsError(errno.EOPNOTSUPP)


def _caller(ctx) -> Caller:
    return Caller(uid=ctx.uid, gid=ctx.gid, umask=getattr(ctx, "umask", 0o022))


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    # Off: with the kernel caching writes, a full drive surfaced only at close (or never),
    # and a file looked larger than the drives held. docs/benchmarks.md has what it cost.
    enable_writeback_cache = False
    enable_acl = False
    # With pyfuse3 built from patches/: the kernel stops asking for security.capability
    # before every write(2) (a request of its own, and a wake-up of the writer, per
    # write), and pqcfs clears set-ID bits where the kernel would have (write, open and
    # setattr below, VaultFS.set_owner).
    handle_killpriv_v2 = True

    def __init__(self, vfs: VaultFS, audit_files: bool = False):
        super().__init__()
        self.vfs = vfs
        self.audit_files = audit_files
        self._open_dirs: dict[int, tuple[Node, list[tuple[bytes, str]]]] = {}
        self._next_fh = 1

    # --- helpers --------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        node = self.vfs.inodes.get(inode)
        if node is None:
            raise FsError(errno.ENOENT)
        return node

    def attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        times = self.vfs.times(node)    # pqcfs' own (format 2), else the backing file's
        st = self.vfs.backing_stat(node) if times is None and not node.unlinked else None
        a = pyfuse3.EntryAttributes()
        a.st_ino = node.ino
        a.generation = 0
        a.entry_timeout = ENTRY_TIMEOUT
        a.attr_timeout = ATTR_TIMEOUT
        a.st_mode = node.meta.mode
        a.st_nlink = self.vfs.nlink(node)
        a.st_uid, a.st_gid, a.st_rdev = node.meta.uid, node.meta.gid, node.meta.rdev
        a.st_size = 4096 if node.is_dir else self.vfs.size_of(node)
        a.st_blksize = self.vfs.block_size
        if times is not None:
            a.st_blocks = (a.st_size + 511) // 512
            a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = times
        elif st is not None:
            a.st_blocks = st.st_blocks
            a.st_atime_ns, a.st_mtime_ns, a.st_ctime_ns = st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns
        else:
            a.st_blocks = (a.st_size + 511) // 512
        return a

    def _file_event(self, event: str, parent: Node, name: bytes, **details) -> None:
        """Per-file audit records (off unless mounted with --audit-files; encrypted in the log)."""
        if self.audit_files:
            parts, node = [name], parent
            while node is not None and node.parent is not None:
                parts.append(node.p_name)
                node = node.parent
            path = "/" + b"/".join(reversed(parts)).decode("utf-8", "surrogateescape")
            self.vfs.on_event(event, path=path, **details)

    def _entry(self, node: Node) -> pyfuse3.EntryAttributes:
        self.vfs.inodes.remember(node)
        return self.attrs(node)

    # --- lookup counts --------------------------------------------------------------

    @_errors
    def lookup(self, parent_inode, name, ctx=None):
        try:
            node = self.vfs.lookup(self._node(parent_inode), name)
        except FsError as e:
            if e.errno != errno.ENOENT:
                raise
            # A negative entry (inode 0) lets the kernel cache "does not exist" too; it
            # drops it itself when this mount creates the name.
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = ENTRY_TIMEOUT
            return negative
        return self._entry(node)

    async def forget(self, inode_list):
        for inode, nlookup in inode_list:
            self.vfs.inodes.forget(inode, nlookup)

    # --- attributes -----------------------------------------------------------------

    @_errors
    def getattr(self, inode, ctx=None):
        return self.attrs(self._node(inode))

    @_errors
    def setattr(self, inode, attr, fields, fh, ctx):
        node = self._node(inode)
        if not (fields.update_size or fields.update_mode or fields.update_uid or fields.update_gid
                or fields.update_atime or fields.update_mtime or fields.update_ctime):
            # Nothing to set: the kernel's own request to drop set-ID bits (a fallocate, or
            # a write it did not mark, by a caller without CAP_FSETID), whose mode FUSE
            # leaves to the file system under FUSE_HANDLE_KILLPRIV_V2.
            if not node.is_dir:
                self.vfs.drop_setid(node)
            return self.attrs(node)
        if fields.update_size:
            self.vfs.truncate(node, attr.st_size)
            if getattr(fields, "kill_suidgid", False):
                self.vfs.drop_setid(node)
        if fields.update_mode:
            self.vfs.set_mode(node, attr.st_mode)
        if fields.update_uid or fields.update_gid:
            self.vfs.set_owner(node, attr.st_uid if fields.update_uid else None,
                               attr.st_gid if fields.update_gid else None)
        if fields.update_atime or fields.update_mtime:
            self.vfs.set_times(node, attr.st_atime_ns if fields.update_atime else None,
                               attr.st_mtime_ns if fields.update_mtime else None)
        return self.attrs(node)

    @_errors
    def readlink(self, inode, ctx):
        node = self._node(inode)
        if not stat.S_ISLNK(node.meta.mode):
            raise FsError(errno.EINVAL)
        return self.vfs.read_all(node)

    @_errors
    def statfs(self, ctx):
        st = self.vfs.replicas.statvfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize, out.f_frsize = st.f_bsize, st.f_frsize
        out.f_blocks, out.f_bfree, out.f_bavail = st.f_blocks, st.f_bfree, st.f_bavail
        out.f_files, out.f_ffree, out.f_favail = st.f_files, st.f_ffree, st.f_favail
        out.f_namemax = names.MAX_P_NAME
        return out

    # --- creating and removing ------------------------------------------------------

    @_errors
    def mknod(self, parent_inode, name, mode, rdev, ctx):
        node = self.vfs.create_file(self._node(parent_inode), name, mode, _caller(ctx), rdev)
        return self._entry(node)

    @_errors
    def mkdir(self, parent_inode, name, mode, ctx):
        self._file_event("mkdir", self._node(parent_inode), name)
        return self._entry(self.vfs.mkdir(self._node(parent_inode), name, mode, _caller(ctx)))

    @_errors
    def symlink(self, parent_inode, name, target, ctx):
        node = self.vfs.create_file(self._node(parent_inode), name, stat.S_IFLNK | 0o777, _caller(ctx),
                                    content=target)
        return self._entry(node)

    @_errors
    def link(self, inode, new_parent_inode, new_name, ctx):
        return self._entry(self.vfs.link(self._node(inode), self._node(new_parent_inode), new_name))

    @_errors
    def unlink(self, parent_inode, name, ctx):
        self._file_event("unlink", self._node(parent_inode), name)
        self.vfs.unlink(self._node(parent_inode), name)

    @_errors
    def rmdir(self, parent_inode, name, ctx):
        self._file_event("rmdir", self._node(parent_inode), name)
        self.vfs.rmdir(self._node(parent_inode), name)

    @_errors
    def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        self._file_event("rename", self._node(parent_inode_old), name_old,
                         to=name_new.decode("utf-8", "surrogateescape"))
        self.vfs.rename(self._node(parent_inode_old), name_old, self._node(parent_inode_new), name_new,
                        noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE),
                        exchange=bool(flags & pyfuse3.RENAME_EXCHANGE))

    # --- files ----------------------------------------------------------------------

    def _file_info(self, node: Node) -> pyfuse3.FileInfo:
        fi = pyfuse3.FileInfo()
        fi.fh = node.ino
        fi.keep_cache = True   # nobody else changes the ciphertext while we are mounted
        return fi

    @_errors
    def open(self, inode, flags, ctx, kill_suidgid=False):
        node = self._node(inode)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        writable = flags & (os.O_WRONLY | os.O_RDWR)
        if writable and self.vfs.read_only:
            self.vfs.refuse_write()
        self.vfs.open(node, bool(writable))
        if flags & os.O_ACCMODE != os.O_WRONLY:
            # The kernel serves cached pages without asking: an open for reading is the
            # one request every read is sure to make.
            self.vfs.accessed(node)
        if node.parent is not None:
            self._file_event("open", node.parent, node.p_name, write=bool(writable))
        if flags & os.O_TRUNC and writable:
            self.vfs.truncate(node, 0)
            if kill_suidgid:
                self.vfs.drop_setid(node)
        return self._file_info(node)

    @_errors
    def create(self, parent_inode, name, mode, flags, ctx):
        node = self.vfs.create(self._node(parent_inode), name, mode, _caller(ctx))
        self._file_event("create", self._node(parent_inode), name)
        return self._file_info(node), self._entry(node)

    @_errors
    def read(self, fh, off, size):
        return self.vfs.read(self._node(fh), off, size)

    @_errors
    def write(self, fh, off, buf, kill_suidgid=False):
        node = self._node(fh)
        if kill_suidgid:
            self.vfs.drop_setid(node)
        return self.vfs.write(node, off, buf)

    @_errors
    def fallocate(self, fh, mode, offset, length):
        # Reached only through pyfuse3 with patches/ applied (scripts/dev.sh builds it);
        # a stock pyfuse3 never asks, and the kernel says EOPNOTSUPP itself.
        self.vfs.fallocate(self._node(fh), mode, offset, length)

    async def flush(self, fh):
        # Every write reached the drives before it returned (no writeback cache), so a
        # close has nothing to report. ENOSYS tells the kernel to stop asking: one
        # request fewer for every close(2).
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_errors
    def fsync(self, fh, datasync):
        self.vfs.fsync(self._node(fh), bool(datasync))

    @_errors
    def release(self, fh):
        self.vfs.release(self._node(fh))

    # --- directories ----------------------------------------------------------------

    @_errors
    def opendir(self, inode, ctx):
        node = self._node(inode)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        fh = self._next_fh
        self._next_fh += 1
        # A snapshot, so offsets stay stable while entries come and go during a listing.
        self._open_dirs[fh] = (node, self.vfs.listdir(node))
        return fh

    @_errors
    def readdir(self, fh, start_id, token):
        node, entries = self._open_dirs[fh]
        # Offsets 0 and 1 are "." and ".." (the root is its own parent), as ext4 lists them.
        # The kernel takes no reference for either (fuse_direntplus_link skips them), so
        # neither counts as a lookup here.
        for offset, name, target in ((0, b".", node), (1, b"..", node.parent or node)):
            if start_id <= offset and not pyfuse3.readdir_reply(token, name, self.attrs(target), offset + 1):
                return
        for index in range(max(start_id - 2, 0), len(entries)):
            p_name, disk_name = entries[index]
            try:
                child = self.vfs.entry(node, p_name, disk_name)
            except FsError:
                continue  # removed since the snapshot
            except (CryptoError, DamagedStructure, OSError) as e:
                # One damaged entry is that entry's problem (its lookup fails with EIO),
                # not its siblings': the rest of the listing goes on.
                log.error("readdir: an entry fails (%s); left out of the listing", e)
                self.vfs.on_event("integrity-failure", operation="readdir", error=str(e))
                continue
            if not pyfuse3.readdir_reply(token, p_name, self.attrs(child), index + 3):
                self.vfs.inodes.maybe_drop(child)
                break
            self.vfs.inodes.remember(child)

    async def releasedir(self, fh):
        self._open_dirs.pop(fh, None)

    @_errors
    def fsyncdir(self, fh, datasync):
        node, _ = self._open_dirs[fh]
        self.vfs.replicas.fsync_dir(node.c_path)

    # --- extended attributes --------------------------------------------------------

    @_errors
    def getxattr(self, inode, name, ctx):
        _refuse_acl(name)
        value = self.vfs.xattrs(self._node(inode)).get(name)
        if value is None:
            # The kernel asks for security.capability before every write(2) to a file:
            # the common answer goes straight out, without a domain error and its log.
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @_errors
    def setxattr(self, inode, name, value, ctx):
        _refuse_acl(name)
        self.vfs.set_xattr(self._node(inode), name, value)

    @_errors
    def listxattr(self, inode, ctx):
        return [name for name in self.vfs.xattrs(self._node(inode)) if name not in POSIX_ACLS]

    @_errors
    def removexattr(self, inode, name, ctx):
        _refuse_acl(name)
        try:
            self.vfs.set_xattr(self._node(inode), name, None)
        except FsError as e:
            raise FsError(pyfuse3.ENOATTR) if e.errno == errno.ENODATA else e
