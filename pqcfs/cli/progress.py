"""A progress bar on standard error (drawn only on a terminal; scripts get no noise)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int, unit: str = "MiB", scale: int = 1 << 20):
        self.label, self.total, self.unit, self.scale = label, max(total, 1), unit, scale
        self.done = 0
        self._drawn = 0.0
        self.enabled = sys.stderr.isatty()

    def __call__(self, amount: int) -> None:
        self.done += amount
        now = time.monotonic()
        if self.enabled and (now - self._drawn > 0.1 or self.done >= self.total):
            self._drawn = now
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            sys.stderr.write(f"\r{self.label} [{bar:<30}] {frac:4.0%} "
                             f"{self.done / self.scale:.1f}/{self.total / self.scale:.1f} {self.unit}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
