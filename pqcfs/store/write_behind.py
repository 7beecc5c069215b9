"""Sequential write runs through one open backing file: when their writeback is due.

A drive's page cache holds what pqcfs wrote until the kernel's flusher gets to it (a
tenth of the memory dirty, or 30 s old) or an fsync asks. A large file copied to two
drives then waited at its fsync for all of it, one drive after the other, while the disks
had sat idle during the copy. Starting the writeback of each finished MiB of a
sequential run (sync_file_range SYNC_FILE_RANGE_WRITE: start, do not wait) keeps the
drives busy while the copy goes on, and keeps little unwritten data in memory, which a
USB stick pulled without an unmount would lose. Durability does not change: an fsync
still waits for every byte on every drive, and reports its errors as before (this call
starts I/O; it does not collect errors). A run counts once it is contiguous and a MiB
long. Writes out of any run (random ones) add up instead: once a MiB of them waits, the
whole file's writeback starts (each of them dirties pages all over the file, and an fsync
after many had to write all of them on both drives, one drive after the other). A file
written in less than a MiB is left to the kernel.

Bookkeeping only; the storage layer makes the call (replicas.start_writeback).
"""

from __future__ import annotations

WRITE_BEHIND = 1 << 20       # bytes of a sequential write run before its writeback starts

# A write that starts at most this far before a run's end continues the run: an append
# that did not end on a block boundary (tar writes 10 KiB records) reseals the run's last
# block next time (a block is 4 KiB, its ciphertext a little more).
TAIL = 64 << 10


WHOLE_FILE = (0, 0)            # sync_file_range's (offset, nbytes) for all of a file


class WriteRun:
    """Back-to-back writes: written() answers the span whose writeback is due, if any.
    The block an append rewrites at the run's end goes with the next span again; a write
    anywhere else begins a new run. Writes outside any run (random ones) add up: once a
    MiB of them is in memory, the whole file's writeback is due (WHOLE_FILE)."""

    __slots__ = ("low", "end", "scattered")

    def __init__(self) -> None:
        self.low = self.end = -1     # the run's part not handed to writeback yet
        self.scattered = 0           # bytes written off runs since the last WHOLE_FILE

    def written(self, offset: int, length: int) -> tuple[int, int] | None:
        if self.end >= 0 and self.end - TAIL <= offset <= self.end:
            self.low, self.end = min(self.low, offset), max(self.end, offset + length)
        else:
            if self.end > self.low:
                self.scattered += self.end - self.low
            self.low, self.end = offset, offset + length
        if self.end - self.low < WRITE_BEHIND:
            if self.scattered < WRITE_BEHIND:
                return None
            self.scattered = 0
            return WHOLE_FILE
        span = (self.low, self.end - self.low)
        self.low = self.end
        return span
