"""The ciphertext tree on N replicas. Every mutation goes to every replica; reads come
from the first (the primary) and fall back to the others when the primary's copy fails.

Paths here are relative to each replica's `tree/` directory and are ciphertext paths.
"""

from __future__ import annotations

import errno
import os
import shutil

from pqcfs.errors import NoSpace
from pqcfs.store import atomic


def _no_space(e: OSError) -> OSError | NoSpace:
    return NoSpace("a drive is full") if e.errno == errno.ENOSPC else e


class MirroredFile:
    """One open ciphertext file on every replica."""

    def __init__(self, fds: list[int]):
        self.fds = fds

    def pread(self, size: int, offset: int, replica: int = 0) -> bytes:
        return os.pread(self.fds[replica], size, offset)

    def pwrite(self, data: bytes, offset: int) -> None:
        try:
            for fd in self.fds:
                view = memoryview(data)
                pos = offset
                while view:
                    n = os.pwrite(fd, view, pos)
                    view, pos = view[n:], pos + n
        except OSError as e:
            raise _no_space(e) from None

    def pwrite_one(self, replica: int, data: bytes, offset: int) -> None:
        os.pwrite(self.fds[replica], data, offset)

    def truncate(self, length: int) -> None:
        try:
            for fd in self.fds:
                os.ftruncate(fd, length)
        except OSError as e:
            raise _no_space(e) from None

    def fsync(self, datasync: bool = False) -> None:
        for fd in self.fds:
            (os.fdatasync if datasync else os.fsync)(fd)

    def size(self) -> int:
        return os.fstat(self.fds[0]).st_size

    def stat(self) -> os.stat_result:
        return os.fstat(self.fds[0])

    def utime(self, ns: tuple[int, int]) -> None:
        for fd in self.fds:
            os.utime(fd, ns=ns)

    @property
    def replicas(self) -> int:
        return len(self.fds)

    def close(self) -> None:
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = []


class ReplicaSet:
    def __init__(self, tree_roots: list[str]):
        self.roots = tree_roots

    def path(self, rel: str, replica: int = 0) -> str:
        return os.path.join(self.roots[replica], rel) if rel else self.roots[replica]

    def _each(self, fn, *rels: str) -> None:
        try:
            for n in range(len(self.roots)):
                fn(*(self.path(r, n) for r in rels))
        except OSError as e:
            raise _no_space(e) from None

    # Reads (primary first).
    def lstat(self, rel: str) -> os.stat_result:
        return os.lstat(self.path(rel))

    def listdir(self, rel: str) -> list[str]:
        return os.listdir(self.path(rel))

    def read_file(self, rel: str, size: int | None = None, replica: int = 0) -> bytes:
        if size is not None:  # headers: three syscalls, no buffered file object
            fd = os.open(self.path(rel, replica), os.O_RDONLY)
            try:
                return os.pread(fd, size, 0)
            finally:
                os.close(fd)
        with open(self.path(rel, replica), "rb") as f:
            return f.read()

    def exists(self, rel: str) -> bool:
        return os.path.lexists(self.path(rel))

    # Mutations (every replica).
    def write_atomic(self, rel: str, data: bytes, sync: bool = True) -> None:
        for n in range(len(self.roots)):
            atomic.write_atomic(self.path(rel, n), data, sync)

    def create_file(self, rel: str, header: bytes) -> MirroredFile:
        fds = []
        try:
            for n in range(len(self.roots)):
                fd = os.open(self.path(rel, n), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                fds.append(fd)
                os.pwrite(fd, header, 0)
        except OSError as e:
            MirroredFile(fds).close()
            for n in range(len(fds)):
                try:
                    os.unlink(self.path(rel, n))
                except OSError:
                    pass
            raise _no_space(e) from None
        return MirroredFile(fds)

    def open_file(self, rel: str, writable: bool = True) -> MirroredFile:
        flags = os.O_RDWR if writable else os.O_RDONLY
        fds = []
        try:
            for n in range(len(self.roots)):
                fds.append(os.open(self.path(rel, n), flags))
        except OSError:
            MirroredFile(fds).close()
            raise
        return MirroredFile(fds)

    def mkdir(self, rel: str) -> None:
        self._each(lambda p: os.mkdir(p, 0o700), rel)

    def rmdir_tree(self, rel: str) -> None:
        """Remove a ciphertext directory that holds only pqcfs' own files."""
        self._each(shutil.rmtree, rel)

    def unlink(self, rel: str, missing_ok: bool = False) -> None:
        for n in range(len(self.roots)):
            try:
                os.unlink(self.path(rel, n))
            except FileNotFoundError:
                if not missing_ok:
                    raise

    def rename(self, src: str, dst: str) -> None:
        self._each(os.replace, src, dst)

    def exchange(self, a: str, b: str) -> None:
        # No renameat2(RENAME_EXCHANGE) in os; a three-step swap through a temp name.
        tmp = os.path.join(os.path.dirname(a), atomic.TEMP_PREFIX + os.urandom(6).hex())
        self._each(os.rename, a, tmp)
        self._each(os.rename, b, a)
        self._each(os.rename, tmp, b)

    def utime(self, rel: str, ns: tuple[int, int]) -> None:
        self._each(lambda p: os.utime(p, ns=ns, follow_symlinks=False), rel)

    def fsync_dir(self, rel: str) -> None:
        for n in range(len(self.roots)):
            atomic.fsync_dir(self.path(rel, n))

    def statvfs(self) -> os.statvfs_result:
        return os.statvfs(self.roots[0])
