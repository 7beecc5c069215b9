"""The ciphertext tree on N replicas. Every mutation goes to every healthy replica; reads
come from the first (the primary) and fall back to the others when its copy fails.

A failing backup (unplugged, read-only, full, I/O errors) is dropped for the rest of the
session and reported through `on_failure`; the mount continues degraded on the others.
A primary whose drive fails (I/O error, pulled, its file system gone) is dropped the
same way while another replica remains, and the first healthy replica serves from then
on; a primary that is merely full, or refuses an entry, is an error for the caller. Paths here are ciphertext paths relative
to each replica's `tree/` directory; every access goes through the replica's Drive.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import weakref

from pqcfs.errors import NoSpace, PqcfsError
from pqcfs.store import reserve, write_behind
from pqcfs.store.drive import TEMP_PREFIX, Drive, UnsafeEntry

_PAGE = os.sysconf("SC_PAGE_SIZE")

log = logging.getLogger(__name__)
TREE_DIR = "tree"


# What a drive that is failing or gone answers; ENOSPC and ENOENT are answers about data.
DRIVE_FAILURES = {errno.EIO, errno.ENOTCONN, errno.ECONNABORTED, errno.ENODEV, errno.ENXIO, errno.EROFS,
                  errno.ESHUTDOWN}


def _no_space(e: OSError) -> OSError | NoSpace:
    return NoSpace("the primary drive is full") if e.errno == errno.ENOSPC else e


_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
FALLOC_FL_KEEP_SIZE = 0x01      # linux/falloc.h (os has posix_fallocate only, which grows the file)


def reserve_space(fd: int, offset: int, length: int) -> None:
    if _libc.fallocate(fd, FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


try:
    _libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    _sync_file_range = _libc.sync_file_range
except AttributeError:           # not Linux/glibc: the flusher and fsync write as before
    _sync_file_range = None
SYNC_FILE_RANGE_WRITE = 2        # linux/fs.h: start writeback of dirty pages, do not wait


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing [offset, offset + length) of fd's dirty pages to its drive
    (store/write_behind.py says when). Only a hint: an error is the next fsync's to report."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE)


def drive_failed(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno in DRIVE_FAILURES


class ReplicaSet:
    def __init__(self, drives: list[Drive], on_failure=None, base: str = TREE_DIR):
        self.drives = drives
        self.base = base
        self.failed: set[int] = set()
        self.on_failure = on_failure
        # Runs before every fsync this set performs: the write-intent log must be durable
        # before any data it covers is (set by the mount session).
        self.before_sync = lambda: None
        # Told every path (relative to the replica) about to change, and whether all below
        # it may change too: the change journal a missing replica is brought back with.
        self.on_change = lambda rel, subtree=False: None
        self.open_files: weakref.WeakSet[MirroredFile] = weakref.WeakSet()

    @property
    def healthy(self) -> list[int]:
        return [n for n in range(len(self.drives)) if n not in self.failed]

    def fail(self, n: int, error: BaseException) -> None:
        if n in self.failed:
            return
        self.failed.add(n)
        log.warning("replica %d failed (%s); continuing without it (degraded)", n, error)
        if self.on_failure:
            self.on_failure(n, error)

    def rel(self, rel: str) -> str:
        """rel (inside tree/) as a path inside the replica location."""
        return f"{self.base}/{rel}" if rel else self.base

    @property
    def serving(self) -> int:
        """The replica that serves reads: the primary, or after it failed the next one."""
        healthy = self.healthy
        if not healthy:
            raise OSError(errno.EIO, "every replica has failed")
        return healthy[0]

    def drive(self, replica: int | None = None) -> Drive:
        return self.drives[self.serving if replica is None else replica]

    def survives(self, n: int, error: BaseException) -> bool:
        """Drop replica n after error if the vault can go on without it: any backup, and
        the serving replica when its drive failed and another one remains."""
        if n != self.serving or (drive_failed(error) and len(self.healthy) > 1):
            self.fail(n, error)
            return True
        return False

    def each(self, fn) -> None:
        """Run fn(n) for every healthy replica; one that fails is dropped when the vault
        can go on without it (survives), else the error is the caller's."""
        for n in self.healthy:
            try:
                fn(n)
            except (OSError, NoSpace, UnsafeEntry) as e:
                # A backup holding something pqcfs never wrote there (a planted FIFO or
                # symlink) is as unusable as a failing one: the session goes on without it.
                if not self.survives(n, e):
                    raise (_no_space(e) if isinstance(e, OSError) else e) from None

    def _each_drive(self, fn, *rels: str, subtree: bool = False) -> None:
        full = [self.rel(r) for r in rels]
        for rel in full:
            self.on_change(rel, subtree)
        self.each(lambda n: fn(self.drives[n], *full))

    def attach(self, n: int, drive: Drive) -> None:
        """Replica n (an index one past the end: a new one) joins, already identical to
        the serving replica: from now on every change goes to it too, files that are open
        included. The caller makes sure nothing changes between its sync and this."""
        if n == len(self.drives):
            self.drives.append(drive)
        else:
            self.drives[n] = drive
        for f in list(self.open_files):
            try:
                f.reopen(n)
            except OSError as e:
                # An open file unlinked meanwhile has no name to open there: it goes on
                # on the others (it is gone at its last close anyway).
                log.info("an open file stays off replica %d: %s", n, e)
        self.failed.discard(n)

    def serve(self, replica: int | None, serving, fn):
        """fn(n) on the named replica, or on the serving one (serving() names it); when
        the serving replica's drive fails it is dropped and fn runs on the next."""
        while True:
            n = serving() if replica is None else replica
            try:
                return fn(n)
            except OSError as e:
                if replica is not None or not drive_failed(e) or not self.survives(n, e):
                    raise

    # Reads (the serving replica, unless one is named).
    def _read(self, replica: int | None, fn):
        try:
            return self.serve(replica, lambda: self.serving, lambda n: fn(self.drives[n]))
        except OSError as e:
            # A named backup whose drive fails is dropped here, at its first read, not
            # at the next write (the caller still gets the error for this read).
            if replica is not None and replica != self.serving and drive_failed(e):
                self.fail(replica, e)
            raise

    def on_backups(self, rel: str) -> bool:
        """Some healthy backup has rel (one whose drive fails is dropped, and has not)."""
        for n in self.healthy[1:]:
            try:
                if self.exists(rel, n):
                    return True
            except OSError as e:
                if not drive_failed(e):
                    raise
        return False

    def lstat(self, rel: str, replica: int | None = None) -> os.stat_result:
        return self._read(replica, lambda d: d.lstat(self.rel(rel)))

    def kind(self, rel: str, replica: int | None = None) -> str | None:
        return self._read(replica, lambda d: d.kind(self.rel(rel)))

    def scandir(self, rel: str, replica: int | None = None) -> list[tuple[str, str]]:
        return self._read(replica, lambda d: d.scandir(self.rel(rel)))

    def listdir(self, rel: str, replica: int | None = None) -> list[str]:
        return self._read(replica, lambda d: d.listdir(self.rel(rel)))

    def read_file(self, rel: str, size: int | None = None, replica: int | None = None,
                  cap: int = 1 << 20) -> bytes:
        """The first size bytes (headers), or the whole file up to cap bytes."""
        if size is not None:
            return self._read(replica, lambda d: d.read_at(self.rel(rel), size))
        return self._read(replica, lambda d: d.read(self.rel(rel), cap))

    def read_span(self, rel: str, offset: int, length: int, cap: int,
                  replica: int | None = None) -> tuple[bytes, int]:
        """Part of a file and the file's size (Drive.read_span: size-capped, not sparse)."""
        return self._read(replica, lambda d: d.read_span(self.rel(rel), offset, length, cap))

    def exists(self, rel: str, replica: int | None = None) -> bool:
        return self._read(replica, lambda d: d.exists(self.rel(rel)))

    # Mutations (every healthy replica).
    def write_atomic(self, rel: str, data: bytes, sync: bool = True) -> None:
        full = self.rel(rel)
        self.on_change(full)          # noted before the logs are synced, then the data
        if sync:
            self.before_sync()
        self.each(lambda n: self.drives[n].write_atomic(full, data, sync))

    def read_ahead(self, rels: list[str], length: int) -> None:
        """Ask the serving drive for the first length bytes of each file ahead of their
        reading (posix_fadvise WILLNEED: the reads start, nobody waits for them). Opened
        as any read is (a regular file, not through a link); only a hint: an entry that
        is missing, unsafe or failing is left for its real open to find."""
        drive = self.drives[self.serving]
        for rel in rels:
            try:
                fd = drive.open(self.rel(rel), os.O_RDONLY)
            except (OSError, PqcfsError):
                continue
            try:
                os.posix_fadvise(fd, 0, length, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)

    def first_good(self, read, heal=None, errors: tuple = (OSError,), among: list[int] | None = None):
        """The one healing policy for every structure that has a copy on each replica.

        read(n) returns replica n's copy, having authenticated it (and checked it is not
        older than what refers to it); a copy that fails raises one of `errors`. The
        serving replica is read first, then the others in order, and the first copy that
        passes is the answer. When it came from another replica, heal(serving, source,
        value, why) rewrites the serving replica's bad copy from it (keeping the bad one
        when it is more than a header: a caller's choice, never a deletion of the only
        copy); it is not called when the serving drive itself has failed (it is dropped,
        and the next replica serves). Returns (value, source, the serving copy's error
        or None); raises the first error when no copy passes. among: the replicas to
        try (an open file's), in order; the healthy ones by default."""
        replicas = self.healthy if among is None else among
        first, error, first_error = replicas[0] if replicas else self.serving, None, None
        for replica in replicas:
            try:
                value = read(replica)
            except errors as e:
                # Kept without its traceback: the frames would keep what the read held (a
                # drive's junk may be large) alive past this call.
                e = e.with_traceback(None)
                if replica == first:
                    first_error = e
                    if drive_failed(e):
                        self.survives(first, e)   # the serving drive is gone: the next serves
                error = error or e
                continue
            if first_error is not None and heal is not None and first not in self.failed:
                try:
                    heal(first, replica, value, first_error)
                except OSError as e:
                    # The serving drive failing as it is healed (pulled: a short read
                    # from what its page cache still held, then the write fails) is
                    # dropped like anywhere else; the good copy answers.
                    if not (drive_failed(e) and self.survives(first, e)):
                        raise
            return value, replica, first_error
        raise error if error is not None else OSError(errno.EIO, "every replica has failed")

    def write_one(self, replica: int, rel: str, data: bytes, offset: int = 0) -> None:
        fd = self.drives[replica].open(self.rel(rel), os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
        finally:
            os.close(fd)

    def copy_one(self, source: int, target: int, rel: str) -> None:
        """Replace target's copy of rel with source's (temp file and rename)."""
        self.drives[target].copy_from(self.drives[source], self.rel(rel))

    def create_file(self, rel: str, header: bytes) -> "MirroredFile":
        fds: dict[int, int] = {}
        full = self.rel(rel)
        self.on_change(full)

        def create(n: int) -> None:
            fd = self.drives[n].open(full, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            fds[n] = fd
            os.pwrite(fd, header, 0)

        try:
            self.each(create)
        except (OSError, NoSpace):
            for n, fd in fds.items():
                os.close(fd)
                try:
                    self.drives[n].unlink(full)
                except OSError:
                    pass
            raise
        return MirroredFile(self, fds, full, os.O_RDWR)

    def open_file(self, rel: str, writable: bool = True, heal_missing=None, lazy: bool = False) -> "MirroredFile":
        """Open rel on every healthy replica. A backup that lacks it while the primary has
        it holds a damaged name: heal_missing(n) may restore it before the backup is
        given up on. lazy: on the serving replica only, the others when first needed (a
        change, a heal, the serving drive failing): most files opened to be read never
        need them."""
        flags = os.O_RDWR if writable else os.O_RDONLY
        fds: dict[int, int] = {}
        full = self.rel(rel)

        def open_one(n: int) -> None:
            _open_replica(self, n, full, flags, fds, heal_missing)

        if lazy:
            self.serve(None, lambda: self.serving, open_one)
            later = [n for n in self.healthy if n not in fds]
            return MirroredFile(self, fds, full, flags, later=later, heal_missing=heal_missing)
        try:
            self.each(open_one)
        except (OSError, NoSpace):
            MirroredFile(self, fds, full, flags).close()
            raise
        return MirroredFile(self, fds, full, flags)

    def mkdir(self, rel: str) -> None:
        self._each_drive(lambda d, r: d.mkdir(r, 0o700), rel)

    def rmdir_tree(self, rel: str) -> None:
        """Remove a ciphertext directory that holds only pqcfs' own files."""
        self._each_drive(Drive.remove_tree, rel, subtree=True)

    def unlink(self, rel: str, missing_ok: bool = False) -> None:
        def remove(d: Drive, r: str) -> None:
            try:
                d.unlink(r)
            except FileNotFoundError:
                if not missing_ok:
                    raise
        self._each_drive(remove, rel)

    def rename(self, src: str, dst: str) -> None:
        # What arrives at dst may be a whole directory the other replica has elsewhere.
        self._each_drive(Drive.rename, src, dst, subtree=True)

    def exchange(self, a: str, b: str) -> None:
        # No renameat2(RENAME_EXCHANGE) in os; a three-step swap through a temp name.
        parent = a.rpartition("/")[0]
        tmp = f"{parent}/{TEMP_PREFIX}{os.urandom(6).hex()}" if parent else TEMP_PREFIX + os.urandom(6).hex()
        self._each_drive(Drive.rename, a, tmp, subtree=True)
        self._each_drive(Drive.rename, b, a, subtree=True)
        self._each_drive(Drive.rename, tmp, b, subtree=True)

    def utime(self, rel: str, ns: tuple[int, int]) -> None:
        self._each_drive(lambda d, r: d.utime(r, ns), rel)

    def fsync_dir(self, rel: str) -> None:
        self.before_sync()
        full = self.rel(rel)
        self.each(lambda n: self.drives[n].fsync_dir(full))

    def statvfs(self) -> os.statvfs_result:
        """The space of the fullest healthy replica: a write must fit on every one of them."""
        results = []
        for n in self.healthy:
            try:
                results.append(self.drives[n].statvfs())
            except OSError as e:
                # The serving drive gone (pulled) is dropped here like anywhere else: a
                # write to a file already open may ask for space before anything else
                # touches the drive.
                if n == self.serving and not self.survives(n, e):
                    raise
        if not results:
            raise OSError(errno.EIO, "every replica has failed")
        return min(results, key=lambda st: st.f_bavail * st.f_frsize)


def _open_replica(replicas: ReplicaSet, n: int, full: str, flags: int, fds: dict[int, int], heal_missing) -> None:
    try:
        fds[n] = replicas.drives[n].open(full, flags)
    except FileNotFoundError:
        if n == replicas.serving or heal_missing is None:
            raise
        heal_missing(n)
        fds[n] = replicas.drives[n].open(full, flags)


def partial_pages(offset: int, length: int) -> list[tuple[int, int]]:
    """The pages (start, length) that bytes [offset, offset + length) cover only in part:
    the ones a write must read before it can change them. Adjacent ones are one span."""
    end = offset + length
    pages = sorted({p for p, partial in ((offset - offset % _PAGE, offset % _PAGE),
                                         (end - end % _PAGE, end % _PAGE)) if partial})
    if len(pages) == 2 and pages[1] == pages[0] + _PAGE:
        return [(pages[0], 2 * _PAGE)]
    return [(p, _PAGE) for p in pages]


class MirroredFile:
    """One open ciphertext file on every healthy replica (replica index -> fd); a file
    opened lazily is open on the serving one and the rest (later) are opened on first need."""

    def __init__(self, replicas: ReplicaSet, fds: dict[int, int], rel: str = "", flags: int = os.O_RDONLY,
                 later: list[int] | None = None, heal_missing=None):
        self.replicas = replicas
        self.fds = fds
        self.later = later or []
        self._heal_missing = heal_missing
        # pqcfs' own file (a directory table): on a full drive its writes may use the
        # reserve; a user's file never does (store/reserve.py).
        self.bookkeeping = False
        self.rel = rel          # inside the replica
        self.flags = flags
        self._writes = write_behind.WriteRun()    # a sequential run's writeback starts early
        replicas.open_files.add(self)

    def reopen(self, n: int) -> None:
        """Replica n (re)joined: this file is open there too from now on."""
        if not self.fds:
            return    # closed
        old = self.fds.pop(n, None)
        if old is not None:
            try:
                os.close(old)
            except OSError:
                pass
        self.fds[n] = self.replicas.drives[n].open(self.rel, self.flags)

    def _open_later(self) -> None:
        """Open the file on the replicas a lazy open left for later (each as the replica
        set's policy says: a backup that fails is dropped, the serving one's error is the
        caller's)."""
        later, self.later = self.later, []
        if not self.fds:
            return    # closed
        for n in later:
            if n not in self.replicas.healthy or n in self.fds:
                continue
            try:
                _open_replica(self.replicas, n, self.rel, self.flags, self.fds, self._heal_missing)
            except (OSError, NoSpace) as e:
                if not self.replicas.survives(n, e):
                    raise

    def _changing(self) -> None:
        self.replicas.on_change(self.rel)

    def _each(self, fn) -> None:
        if self.later:
            self._open_later()

        def run(n: int) -> None:
            fd = self.fds.get(n)
            if fd is not None:
                if self.bookkeeping:
                    reserve.retrying(self.replicas.drives[n], lambda: fn(fd))
                else:
                    fn(fd)
        self.replicas.each(run)

    def pread(self, size: int, offset: int, replica: int | None = None) -> bytes:
        """From the named replica, or the serving one (the next, when its drive fails)."""
        if replica is None:
            # Every read of a file comes here: the primary, while it serves, without the
            # general path's closures and sorting (a cold random read pays for each).
            fd = self.fds.get(0)
            if fd is not None and 0 not in self.replicas.failed:
                try:
                    return os.pread(fd, size, offset)
                except OSError as e:
                    # As serve does: a failed drive is dropped, and the next one serves
                    # below (not asked again: a pulled stick can take seconds to say EIO).
                    if not drive_failed(e) or not self.replicas.survives(0, e):
                        raise
        return self.replicas.serve(replica, lambda: self.serving, lambda n: os.pread(self.fds[n], size, offset))

    @property
    def serving(self) -> int:
        readable = self.readable_replicas
        if not readable and self.later:
            self._open_later()     # the serving drive failed: the next one serves
            readable = self.readable_replicas
        if not readable:
            raise OSError(errno.EIO, "every replica of this file has failed")
        return readable[0]

    def pwrite(self, data: bytes, offset: int) -> None:
        self._changing()

        def write(fd: int) -> None:
            view, pos = memoryview(data), offset
            while view:
                n = os.pwrite(fd, view, pos)
                view, pos = view[n:], pos + n
        self._each(write)
        behind = self._writes.written(offset, len(data))
        if behind is not None:
            for n, fd in self.fds.items():
                if n not in self.replicas.failed:
                    start_writeback(fd, *behind)

    def will_overwrite(self, offset: int, length: int) -> None:
        """Bytes [offset, offset + length) are about to be overwritten: start reading,
        on every replica at once, the pages the write only partly covers. A ciphertext
        block straddles pages, and the kernel reads a partly written page before it
        changes it, one page and one replica after the other, each waiting for its disk;
        asked ahead, those reads overlap (a random 4 KiB write to two cold drives waits
        for one read instead of four). Only a hint: errors are the write's to find."""
        spans = partial_pages(offset, length)
        for fd in self.fds.values():
            for start, span in spans:
                try:
                    os.posix_fadvise(fd, start, span, os.POSIX_FADV_WILLNEED)
                except OSError:
                    pass

    def first_good(self, read, heal=None, errors: tuple = (OSError,)):
        """The replica set's one healing policy, over the replicas this file is open on
        (all of them: a lazy open opens the rest now)."""
        if self.later:
            self._open_later()
        return self.replicas.first_good(read, heal, errors, among=self.readable_replicas)

    def reserve(self, offset: int, length: int) -> None:
        """Space for bytes [offset, offset + length) on every replica, the file's size
        unchanged (fallocate with FALLOC_FL_KEEP_SIZE): writing there later does not run
        out of space. A full drive is NoSpace and a drive that can not reserve space is
        EOPNOTSUPP, for the caller; neither drops a replica (its data is whole)."""
        if self.later:
            self._open_later()
        for n in self.readable_replicas:
            try:
                reserve_space(self.fds[n], offset, length)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise NoSpace(f"{self.replicas.drives[n].location} is full") from None
                raise

    def pwrite_one(self, replica: int, data: bytes, offset: int) -> None:
        os.pwrite(self.fds[replica], data, offset)

    def truncate(self, length: int) -> None:
        self._changing()
        self._each(lambda fd: os.ftruncate(fd, length))

    def fsync(self, datasync: bool = False) -> None:
        self.replicas.before_sync()
        self._each(os.fdatasync if datasync else os.fsync)

    def size(self) -> int:
        return self.stat().st_size

    def stat(self) -> os.stat_result:
        return os.fstat(self.fds[self.serving])

    def utime(self, ns: tuple[int, int]) -> None:
        self._changing()
        self._each(lambda fd: os.utime(fd, ns=ns))

    @property
    def readable_replicas(self) -> list[int]:
        return sorted(n for n in self.fds if n not in self.replicas.failed)

    def close(self) -> None:
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = {}
        self.later = []
