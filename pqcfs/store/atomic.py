"""Crash-safe whole-file replacement of host-side files (runtime state, identities),
through the same code as on a drive: temp file, fsync, rename, fsync of the directory."""

from __future__ import annotations

import os

from pqcfs.store.drive import Drive


def write_atomic(path: str, data: bytes, sync: bool = True) -> None:
    directory, name = os.path.split(os.path.abspath(path))
    with Drive(directory, host=True) as drive:
        drive.write_atomic(name, data, sync)
