"""Reading and writing a file's plaintext through its ciphertext blocks.

Layout: node header (HEADER_LEN bytes), then blocks of c_block bytes; only the last block
may be short, and it alone carries the end-of-file flag. Every function here runs without
a trio checkpoint, so a read-modify-write of a block is atomic with respect to other
requests on the same node.
"""

from __future__ import annotations

import logging

from pqcfs.crypto.content import BlockCorrupt, ContentCipher, c_size
from pqcfs.errors import NoSpace
from pqcfs.format.node_header import HEADER_LEN
from pqcfs.store.replicas import MirroredFile

log = logging.getLogger(__name__)


class FileContent:
    """Plaintext view of one node's ciphertext (shared by all its open handles)."""

    def __init__(self, cipher: ContentCipher, file: MirroredFile, size: int, on_heal=None, on_change=None,
                 on_blocks=None):
        self.cipher = cipher
        self.file = file
        self.size = size
        self.on_heal = on_heal
        self.on_change = on_change or (lambda: None)   # before every change (times, write counter)
        # Before blocks first..last change on the drives, once they are read for this change
        # (a snapshot's version keeps them: snapshots/history.py); None: nothing to tell.
        self.on_blocks = on_blocks
        self.B = cipher.p_block
        self.C = cipher.c_block

    def _c_off(self, index: int) -> int:
        return HEADER_LEN + index * self.C

    def _last_index(self, size: int | None = None) -> int:
        size = self.size if size is None else size
        return (size - 1) // self.B if size else -1

    def _read_blocks(self, first: int, last: int) -> bytes | bytearray:
        """Plaintext of blocks first..last (inclusive); blocks that fail on the serving
        replica come from the first replica where they authenticate, and are healed there
        (the replica set's one healing policy)."""
        length, offset = (last - first + 1) * self.C, self._c_off(first)
        eof_index = self._last_index()
        try:
            # The common case: one replica read, nothing made for the healing policy.
            return self.cipher.open(first, self.file.pread(length, offset), eof_index)
        except BlockCorrupt:
            return self._heal_blocks(first, last, length, offset, eof_index)

    def _heal_blocks(self, first: int, last: int, length: int, offset: int, eof_index: int) -> bytes | bytearray:
        def read(replica: int) -> tuple[bytes, bytes]:
            c_data = self.file.pread(length, offset, replica)
            return self.cipher.open(first, c_data, eof_index), c_data

        def heal(serving: int, source: int, found: tuple[bytes, bytes], why: Exception) -> None:
            self.file.pwrite_one(serving, found[1], offset)
            log.warning("healed blocks %d-%d of a file from replica %d", first, last, source)
            if self.on_heal:
                self.on_heal(first, last, source)
        return self.file.first_good(read, heal, (BlockCorrupt,))[0][0]

    # The ciphertext file's own operations the tree needs: its header, times and sync.

    def write_header(self, header: bytes) -> None:
        self.file.pwrite(header, 0)

    def backing_stat(self):
        return self.file.stat()

    def set_backing_times(self, ns: tuple[int, int]) -> None:
        self.file.utime(ns)

    def reserve(self, offset: int, length: int) -> None:
        """Drive space for plaintext bytes [offset, offset + length): the ciphertext of
        every block the range touches, reserved on each replica without changing the size."""
        if length <= 0:
            return
        first, last = offset // self.B, (offset + length - 1) // self.B
        self.file.reserve(self._c_off(first), self._c_off(last + 1) - self._c_off(first))

    def fsync(self, datasync: bool) -> None:
        self.file.fsync(datasync)

    def close(self) -> None:
        self.file.close()

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.read_view(offset, length))

    def read_view(self, offset: int, length: int) -> memoryview:
        """As read, without the copy into bytes (a FUSE reply takes any buffer)."""
        end = min(offset + length, self.size)
        if offset >= end:
            return memoryview(b"")
        first, last = offset // self.B, (end - 1) // self.B
        plain = self._read_blocks(first, last)
        base = first * self.B
        return memoryview(plain)[offset - base : end - base]

    def write(self, offset: int, data: bytes | memoryview) -> int:
        if not data:
            return 0
        self.on_change()
        B = self.B
        end = offset + len(data)
        old_size, new_size = self.size, max(self.size, end)
        old_last = self._last_index(old_size)
        first, last = offset // B, (end - 1) // B
        blocks: dict[int, bytes] = {}
        if first <= old_last:
            self.file.will_overwrite(self._c_off(first), self._c_off(last + 1) - self._c_off(first))

        def block(index: int) -> bytes:
            if index not in blocks:
                blocks[index] = self._read_blocks(index, index)
            return blocks[index]

        # Partial blocks at either end keep the bytes this write does not cover; a gap
        # between the old end of file and offset inside the same block reads as zeros.
        lead = offset % B
        head = block(first)[:lead].ljust(lead, b"\0") if lead and first <= old_last else bytes(lead)
        tail = block(last)[end % B :] if end % B and end < old_size else b""
        plain = b"".join((head, bytes(data), tail)) if head or tail else data
        new_last = self._last_index(new_size)
        c_data = self.cipher.seal(first, plain, eof_at_end=(last == new_last))
        resealed = None
        if 0 <= old_last < first:
            # The old last block loses its end-of-file flag (and grows to a full block)
            # when the file now extends past it and this write does not rewrite it.
            resealed = self.cipher.seal(old_last, block(old_last).ljust(B, b"\0"), eof_at_end=False)
        if self.on_blocks is not None:
            self.on_blocks(first, last)
            if resealed is not None:
                self.on_blocks(old_last, old_last)
        try:
            self.file.pwrite(c_data, self._c_off(first))
        except NoSpace:
            # A full drive: give back what the failed write allocated, so the file on the
            # drive is exactly what it was (and its old last block was never touched).
            self.file.truncate(HEADER_LEN + c_size(old_size, B))
            raise
        if resealed is not None:
            self.file.pwrite(resealed, self._c_off(old_last))
        self.size = new_size
        return len(data)

    def truncate(self, new_size: int) -> None:
        old_size = self.size
        if new_size == old_size:
            return
        self.on_change()
        if new_size > old_size:
            # Only the new last block is written; whole blocks between stay holes.
            start = max(old_size, self._last_index(new_size) * self.B)
            self.write(start, bytes(new_size - start))
            return
        if self.on_blocks is not None:
            self.on_blocks(self._last_index(new_size) if new_size else 0, self._last_index(old_size))
        if new_size == 0:
            self.file.truncate(HEADER_LEN)
            self.size = 0
            return
        last = self._last_index(new_size)
        keep = self._read_blocks(last, last)[: new_size - last * self.B]
        self.file.truncate(self._c_off(last))
        self.size = new_size
        self.file.pwrite(self.cipher.seal(last, keep, eof_at_end=True), self._c_off(last))
