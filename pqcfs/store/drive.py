"""The one way pqcfs touches a replica: everything under a location, walked relative to
directory descriptors, never following a symlink, opening only regular files and
directories, with a size cap on every whole-file read.

A drive is written by whoever held it last, so what is on it is hostile input: a symlink
planted as `pqcfs.audit` or `tree/<dir>` must not make a root daemon write a host file, a
FIFO must not hang it, and `/dev/zero` behind a name must not be read without end. The
location itself (the path the user or the header gave, where the drive is mounted) is
the host's side and is resolved once, when the drive is opened; every path below it is
relative ("tree/ab/cd") and walked one component at a time with O_NOFOLLOW, which is also
what lets ciphertext paths grow past PATH_MAX (gocryptfs' syscallcompat does the same).

Directory descriptors are cached by relative path (pqcfs holds the vault lock, so nobody
else renames under it); every rename and removal here drops the cached entries below it.
The cache is trimmed only when the outermost operation ends, never in the middle of one:
a descriptor an operation holds is never closed under it (its number could be reused by
the next open and name another directory).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections import OrderedDict

from pqcfs.errors import DamagedStructure, NoSpace
from pqcfs.store import reserve

log = logging.getLogger(__name__)

TEMP_PREFIX = "t."            # contains a dot: never mistaken for an encrypted name
QUARANTINE_DIR = "pqcfs.quarantine"
DIR_CACHE = 8           # per drive: the directories in use right now; a walk starts at the deepest one
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | _NOFOLLOW


class UnsafeEntry(DamagedStructure):
    """Something on a drive that pqcfs never writes there: a symlink, FIFO, socket or
    device, a file where a directory belongs (or the reverse), or an oversized file."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "an unknown file type"


def _split(rel: str) -> tuple[str, str]:
    parent, _, name = rel.rpartition("/")
    if not name or name in (".", "..") or ".." in parent.split("/"):
        raise DamagedStructure(f"not a path inside a replica: {rel!r}")
    return parent, name


def _operation(fn):
    @functools.wraps(fn)
    def run(self, *args, **kwargs):
        self._depth += 1
        try:
            return fn(self, *args, **kwargs)
        finally:
            self._depth -= 1
            if not self._depth and len(self._dirs) > DIR_CACHE:
                self._trim()
    return run


class Drive:
    """One replica location. Paths are relative to it and use '/' ('' is the location)."""

    def __init__(self, location: str, host: bool = False):
        """host: a directory of this machine's own (store/atomic.py), not a replica."""
        self.location = location
        self.reserve_in_use = False   # store/reserve.py: the drive's reserve was given back
        self.root_fd = os.open(location, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self._plenty_until = 0.0      # has_room: plenty of space was seen, trusted until then
        self._dirs: OrderedDict[str, int] = OrderedDict()
        self._depth = 0
        # root working on a user's vault (a sync, fsck or automount): what it creates is
        # given to the owner of the vault's directory, or the user could no longer write
        # their own vault (a root-owned 0600 pqcfs.state, lock file or table).
        st = os.fstat(self.root_fd)
        self.owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 and st.st_uid != 0 and not host else None

    def _give(self, fd: int | None = None, name: str | None = None, dir_fd: int | None = None) -> None:
        if self.owner is None:
            return
        try:
            if fd is not None:
                os.fchown(fd, *self.owner)
            else:
                os.chown(name, *self.owner, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            pass     # a file system without owners (exFAT): nothing to give

    def __repr__(self) -> str:
        return f"Drive({self.location!r})"

    def __enter__(self) -> "Drive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        dirs = getattr(self, "_dirs", {})
        for fd in dirs.values():
            os.close(fd)
        dirs.clear()
        if getattr(self, "root_fd", -1) >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    def describe(self, rel: str) -> str:
        return f"{self.location}/{rel}" if rel else self.location

    # --- walking --------------------------------------------------------------------

    def _dir_fd(self, rel: str) -> int:
        """A descriptor of the directory rel, walked component by component."""
        if not rel:
            return self.root_fd
        fd = self._dirs.get(rel)
        if fd is not None:
            self._dirs.move_to_end(rel)
            return fd
        parts = rel.split("/")
        # Start from the deepest cached ancestor: deep trees walk one component, not all.
        start, fd = 0, self.root_fd
        for i in range(len(parts) - 1, 0, -1):
            cached = self._dirs.get("/".join(parts[:i]))
            if cached is not None:
                start, fd = i, cached
                break
        for i in range(start, len(parts)):
            name = parts[i]
            if name in ("", ".", ".."):
                raise DamagedStructure(f"not a path inside a replica: {rel!r}")
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    self._refuse("/".join(parts[:i + 1]), "a directory")
                raise
            self._remember("/".join(parts[:i + 1]), fd)
        return fd

    def _remember(self, rel: str, fd: int) -> None:
        old = self._dirs.pop(rel, None)
        if old is not None and old != fd:
            os.close(old)
        self._dirs[rel] = fd

    def _trim(self) -> None:
        while len(self._dirs) > DIR_CACHE:
            _, evicted = self._dirs.popitem(last=False)
            os.close(evicted)

    def _forget(self, rel: str) -> None:
        """Drop cached descriptors of rel and everything below it (renamed or removed)."""
        prefix = rel + "/"
        for key in [k for k in self._dirs if k == rel or k.startswith(prefix) or not rel]:
            os.close(self._dirs.pop(key))

    def _at(self, rel: str) -> tuple[int, str]:
        parent, name = _split(rel)
        return self._dir_fd(parent), name

    def _refuse(self, rel: str, wanted: str, mode: int | None = None):
        if mode is None:
            try:
                mode = self.lstat(rel).st_mode
            except OSError:
                mode = 0
        raise UnsafeEntry(f"{self.describe(rel)} is {_kind(mode)}, not {wanted} (refused: the drive "
                          "holds something pqcfs never writes there)")

    # --- reading --------------------------------------------------------------------

    @_operation
    def lstat(self, rel: str) -> os.stat_result:
        if not rel:
            return os.fstat(self.root_fd)
        fd, name = self._at(rel)
        return os.stat(name, dir_fd=fd, follow_symlinks=False)

    @_operation
    def kind(self, rel: str) -> str | None:
        """'file', 'dir', 'other' (damage) or None when nothing is there."""
        try:
            mode = self.lstat(rel).st_mode
        except FileNotFoundError:
            return None
        except UnsafeEntry:
            return "other"
        except NotADirectoryError:
            return None
        return "file" if stat.S_ISREG(mode) else "dir" if stat.S_ISDIR(mode) else "other"

    @_operation
    def exists(self, rel: str) -> bool:
        try:
            self.lstat(rel)
            return True
        except (FileNotFoundError, NotADirectoryError):
            return False

    @_operation
    def listdir(self, rel: str) -> list[str]:
        return os.listdir(self._dir_fd(rel))

    @_operation
    def scandir(self, rel: str) -> list[tuple[str, str]]:
        """(name, kind) of each entry; kind as in kind(), without following anything."""
        out = []
        with os.scandir(self._dir_fd(rel)) as it:
            for entry in it:
                if entry.is_symlink():
                    out.append((entry.name, "other"))
                elif entry.is_dir(follow_symlinks=False):
                    out.append((entry.name, "dir"))
                elif entry.is_file(follow_symlinks=False):
                    out.append((entry.name, "file"))
                else:
                    out.append((entry.name, "other"))
        return out

    @_operation
    def open(self, rel: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
        """A descriptor of the regular file rel. With O_CREAT a new file may be made;
        anything but a regular file is refused before it is opened (a FIFO would block,
        a device would be read or written)."""
        fd, name = self._at(rel)
        exclusive = flags & os.O_CREAT and flags & os.O_EXCL
        if not exclusive:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not flags & os.O_CREAT:
                    raise
            else:
                if not stat.S_ISREG(st.st_mode):
                    self._refuse(rel, "a regular file", st.st_mode)
        # O_CREAT | O_EXCL opens nothing that exists (not even through a symlink): the
        # file is the new regular file this call made, and needs no look before or after.
        try:
            file_fd = os.open(name, flags | os.O_NONBLOCK | _NOFOLLOW, mode, dir_fd=fd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                self._refuse(rel, "a regular file")
            if e.errno == errno.ENOSPC:
                raise NoSpace(f"no space left on {self.location}") from None
            raise
        if exclusive:
            self._give(file_fd)
            return file_fd
        # Checked again on the descriptor: the entry may have changed between the two calls.
        st_now = os.fstat(file_fd)
        if not stat.S_ISREG(st_now.st_mode):
            os.close(file_fd)
            self._refuse(rel, "a regular file", st_now.st_mode)
        if flags & os.O_CREAT and self.owner is not None and st_now.st_uid != self.owner[0]:
            self._give(file_fd)
        return file_fd

    @_operation
    def read(self, rel: str, cap: int) -> bytes:
        """The whole regular file rel, refused when larger than cap bytes or sparse (a
        file whose size is mostly holes costs a drive nothing and a reader its size)."""
        return self.read_span(rel, 0, cap + 1, cap=cap)[0]

    @_operation
    def read_span(self, rel: str, offset: int, length: int, cap: int) -> tuple[bytes, int]:
        """(up to length bytes from offset, the file's size), from a regular file of at
        most cap bytes that is not sparse; both are checked with fstat before a byte is read."""
        fd = self.open(rel)
        try:
            st = os.fstat(fd)
            if st.st_size > cap:
                raise UnsafeEntry(f"{self.describe(rel)} is {st.st_size} bytes, more than the {cap} such a "
                                  "file can hold (refused)")
            if is_sparse(st):
                raise UnsafeEntry(f"{self.describe(rel)} is a sparse file of {st.st_size} bytes (refused)")
            # One buffer of the size fstat gave, filled in place: no chunks joined into a
            # second copy. A file that grows while read is refused; one that shrinks ends early.
            want = max(0, min(length, st.st_size - offset))
            buf = bytearray(want + (1 if offset + want == st.st_size else 0))
            view, got = memoryview(buf), 0
            while got < len(buf):
                n = os.preadv(fd, [view[got:got + (1 << 20)]], offset + got)
                if not n:
                    break
                got += n
            view.release()
            if got > want:
                raise UnsafeEntry(f"{self.describe(rel)} grows while read (refused)")
            del buf[got:]
            return bytes(buf), st.st_size
        finally:
            os.close(fd)

    @_operation
    def read_at(self, rel: str, size: int, offset: int = 0) -> bytes:
        fd = self.open(rel)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    # --- writing --------------------------------------------------------------------

    @_operation
    def write_atomic(self, rel: str, data: bytes, sync: bool = True) -> None:
        """Replace rel with data: temp file, fsync, rename, fsync of the directory. pqcfs'
        own write: on a full drive the reserve is given back and the write done again."""
        reserve.retrying(self, lambda: self._write_atomic(rel, data, sync))

    def _write_atomic(self, rel: str, data: bytes, sync: bool) -> None:
        fd, name = self._at(rel)
        tmp = TEMP_PREFIX + os.urandom(6).hex()
        try:
            file_fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600, dir_fd=fd)
            try:
                self._give(file_fd)
                view = memoryview(data)
                while view:
                    view = view[os.write(file_fd, view):]
                if sync:
                    os.fsync(file_fd)
            finally:
                os.close(file_fd)
            os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except OSError as e:
            try:
                os.unlink(tmp, dir_fd=fd)
            except OSError:
                pass
            if e.errno == errno.ENOSPC:
                raise NoSpace(f"no space left on {self.location}") from None
            if e.errno in (errno.EISDIR, errno.ENOTEMPTY):
                self._refuse(rel, "a regular file")
            raise
        if sync:
            fsync_dir_fd(fd)

    @_operation
    def copy_from(self, source: "Drive", rel: str, sync: bool = True, to: str | None = None,
                  use_reserve: bool = True) -> int:
        """Make rel here (or `to`) a copy of source's regular file rel (temp file and
        rename, so a failure leaves the old copy whole); returns the bytes copied. A heal
        or a sync is pqcfs' own write: it may use the reserve (history may not: it yields)."""
        if not use_reserve:
            return self._copy_from(source, rel, sync, to or rel)
        return reserve.retrying(self, lambda: self._copy_from(source, rel, sync, to or rel))

    def _copy_from(self, source: "Drive", rel: str, sync: bool, to: str) -> int:
        src_fd = source.open(rel)
        try:
            st = os.fstat(src_fd)
            fd, name = self._at(to)
            tmp = TEMP_PREFIX + os.urandom(6).hex()
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600, dir_fd=fd)
            try:
                self._give(out)
                offset = 0
                while True:
                    chunk = os.pread(src_fd, 1 << 20, offset)
                    if not chunk:
                        break
                    view = memoryview(chunk)
                    while view:
                        view = view[os.pwrite(out, view, offset + len(chunk) - len(view)):]
                    offset += len(chunk)
                if sync:
                    os.fsync(out)
                os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
                os.close(out)
                out = -1
                if self.kind(to) == "dir":
                    self.quarantine(to, "a directory where the other replica has a file")
                os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
            except BaseException as e:
                if out >= 0:
                    os.close(out)
                try:
                    os.unlink(tmp, dir_fd=fd)
                except OSError:
                    pass
                if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                    raise NoSpace(f"no space left on {self.location}") from None
                raise
            return offset
        finally:
            os.close(src_fd)

    @_operation
    def write_at(self, rel: str, data: bytes, offset: int, sync: bool = True) -> None:
        """Write data at offset into the regular file rel (made when missing), which ends
        right after it (a torn tail past offset is cut off first); fsync'd when sync. Not a
        replacement: for files that only grow (a snapshot's kept blocks)."""
        fd = self.open(rel, os.O_RDWR | os.O_CREAT)
        try:
            if os.fstat(fd).st_size != offset:
                os.ftruncate(fd, offset)
            view = memoryview(data)
            done = 0
            while done < len(view):
                done += os.pwrite(fd, view[done:], offset + done)
            if sync:
                os.fsync(fd)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise NoSpace(f"no space left on {self.location}") from None
            raise
        finally:
            os.close(fd)

    @_operation
    def mkdir(self, rel: str, mode: int = 0o700) -> None:
        fd, name = self._at(rel)
        os.mkdir(name, mode, dir_fd=fd)
        self._give(name=name, dir_fd=fd)

    @_operation
    def unlink(self, rel: str) -> None:
        """Remove a regular file (unlinking never follows: a planted symlink goes, its
        target stays; a directory is refused)."""
        fd, name = self._at(rel)
        os.unlink(name, dir_fd=fd)

    @_operation
    def rmdir(self, rel: str) -> None:
        fd, name = self._at(rel)
        os.rmdir(name, dir_fd=fd)
        self._forget(rel)

    @_operation
    def remove_tree(self, rel: str) -> None:
        """Remove a directory of pqcfs' own files. Regular files and directories go;
        anything else found inside is damage and is quarantined, never followed. (A loop,
        not recursion: trees may be thousands of levels deep.)"""
        pending, emptied = [rel], []
        while pending:
            here = pending.pop()
            emptied.append(here)
            for name, kind in self.scandir(here):
                child = f"{here}/{name}" if here else name
                if kind == "dir":
                    pending.append(child)
                elif kind == "file":
                    self.unlink(child)
                else:
                    self.quarantine(child, "found inside a directory being removed")
        for here in reversed(emptied):
            self.rmdir(here)

    @_operation
    def remove(self, rel: str, why: str) -> str | None:
        """Remove whatever pqcfs would have put at rel (a file, or a directory of its own
        files); anything else is quarantined. Returns the kind that was there."""
        kind = self.kind(rel)
        if kind == "dir":
            self.remove_tree(rel)
        elif kind == "file":
            self.unlink(rel)
        elif kind == "other":
            self.quarantine(rel, why)
        return kind

    @_operation
    def rename(self, src: str, dst: str) -> None:
        sfd, sname = self._at(src)
        dfd, dname = self._at(dst)
        os.rename(sname, dname, src_dir_fd=sfd, dst_dir_fd=dfd)
        self._forget(src)
        self._forget(dst)

    @_operation
    def utime(self, rel: str, ns: tuple[int, int]) -> None:
        fd, name = self._at(rel)
        os.utime(name, ns=ns, dir_fd=fd, follow_symlinks=False)

    @_operation
    def fsync_dir(self, rel: str) -> None:
        fsync_dir_fd(self._dir_fd(rel))

    @_operation
    def statvfs(self) -> os.statvfs_result:
        return os.fstatvfs(self.root_fd)

    # With this much free, nothing pqcfs writes fills the drive within PLENTY_FOR seconds
    # (a stick takes 100-200 MB/s), so a create need not ask the drive again before then.
    PLENTY, PLENTY_FOR = 256 << 20, 0.5

    def has_room(self, need: int) -> bool:
        """At least need bytes free, asked of the drive unless it had plenty moments ago
        (one fstatvfs per created file and drive was a tenth of a create's system time)."""
        now = time.monotonic()
        if now < self._plenty_until:
            return True
        st = os.fstatvfs(self.root_fd)
        free = st.f_bavail * st.f_frsize
        self._plenty_until = now + self.PLENTY_FOR if free >= self.PLENTY else 0.0
        return free >= need

    @property
    def read_only(self) -> bool:
        """Mounted read-only (a write-protected stick, or a file system that gave up)."""
        return bool(os.fstatvfs(self.root_fd).f_flag & os.ST_RDONLY)

    @_operation
    def quarantine(self, rel: str, why: str) -> str:
        """Move rel out of the vault's way into pqcfs.quarantine/ (never deleted: it may be
        the only copy of something, or evidence). Returns where it went."""
        if not self.exists(QUARANTINE_DIR):
            self.mkdir(QUARANTINE_DIR)
        elif self.kind(QUARANTINE_DIR) != "dir":
            self._refuse(QUARANTINE_DIR, "a directory")
        name = rel.rsplit("/", 1)[-1][:200]
        target = f"{QUARANTINE_DIR}/{time.strftime('%Y%m%dT%H%M%S')}-{os.urandom(3).hex()}-{name}"
        self.rename(rel, target)
        log.warning("quarantined %s (%s) as %s", self.describe(rel), why, target)
        return target


SPARSE_FLOOR = 1 << 20


def is_sparse(st: os.stat_result) -> bool:
    """More than half holes, for a file above 1 MiB: ext4, exFAT (exfat-fuse) and tmpfs
    count allocated blocks in st_blocks; what pqcfs writes whole is never sparse."""
    return st.st_size > SPARSE_FLOOR and st.st_blocks * 512 < st.st_size // 2


def fsync_dir_fd(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as e:
        # Some FUSE file systems (exfat-fuse) refuse fsync on directories; rename there is
        # already synchronous with the next fsync of any file, so this is not a hole.
        if e.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
