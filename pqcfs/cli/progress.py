"""A progress bar on standard error (drawn only on a terminal; scripts get no noise):
bytes, and files when a total is known, with an estimate of the time left."""

from __future__ import annotations

import logging
import sys
import time


class Progress:
    shown: "Progress | None" = None     # the bar on the screen now, if one is
    def __init__(self, label: str, total: int, unit: str = "MiB", scale: int = 1 << 20, files: int = 0):
        self.label, self.total, self.unit, self.scale = label, max(total, 1), unit, scale
        self.files_total = files
        self.done = self.files_done = 0
        self._drawn = 0.0
        self._start = time.monotonic()
        self.enabled = sys.stderr.isatty()

    def __call__(self, amount: int, files: int = 0) -> None:
        self.done += amount
        self.files_done += files
        now = time.monotonic()
        if self.enabled and (now - self._drawn > 0.1 or self.done >= self.total):
            self._drawn = now
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            counts = f" {self.files_done}/{self.files_total} files" if self.files_total else ""
            sys.stderr.write(f"\rpqcfs: {self.label} [{bar:<30}] {frac:4.0%} "
                             f"{self.done / self.scale:.1f}/{self.total / self.scale:.1f} {self.unit}"
                             f"{counts} {self._eta(frac, now)}\x1b[K")
            sys.stderr.flush()
            Progress.shown = self

    @classmethod
    def clear_line(cls) -> None:
        """Before any other line is written: the bar's line is wiped (it is drawn again at its
        next step), so a warning never lands at the end of a half-drawn bar."""
        if cls.shown is not None:
            sys.stderr.write("\r\x1b[K")
            cls.shown._drawn = 0.0
            cls.shown = None

    def _eta(self, frac: float, now: float) -> str:
        elapsed = now - self._start
        if frac <= 0 or elapsed < 1:
            return ""
        left = int(elapsed / frac * (1 - frac))
        return f"ETA {left // 60}:{left % 60:02d}"

    def finish(self) -> None:
        """The work is done: the bar ends at 100 % even when the total was an estimate
        (fsck's total counts ciphertext, its steps plaintext), then the line ends."""
        if self.done < self.total:
            self._drawn = 0.0
            self(self.total - self.done)
        self.close()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
        if Progress.shown is self:
            Progress.shown = None


class LineHandler(logging.StreamHandler):
    """Warnings from inside a command, each on a line of its own, also while a bar is drawn."""

    def emit(self, record: logging.LogRecord) -> None:
        Progress.clear_line()
        super().emit(record)
