"""One directory of many small files: does it keep working, how fast is `ls`, and how
much memory does the mount daemon hold?

    .venv/bin/python benchmarks/bigdir_bench.py [--files 100000]

A vault on two 4 GiB ext4 stand-in drives (enough inodes for 100,000 files on each),
mounted through the CLI; FILES files of 100 bytes are created in one directory; then
`ls` (os.listdir) twice and `ls -l` once. The daemon's resident memory (VmRSS) is read
from /proc while it works. Prints one line per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("PQCFS_INSECURE_FAST_KDF", "1")
from pqcfs.session import session as session_mod  # noqa: E402
from tests.mounted import drives  # noqa: E402


def rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) // 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100000)
    args = ap.parse_args()
    with drives.workdir(prefix="pqcfs-bigdir-") as w, \
            drives.standin_vault(w, primary=("ext4", 4096), backup=("ext4", 4096)) as vault:
        vault.mount()
        with open(session_mod.runtime_file(vault.mountpoint)) as f:
            pid = json.load(f)["pid"]
        print(f"daemon RSS idle: {rss_mib(pid)} MiB")
        folder = os.path.join(vault.mountpoint, "big")
        os.mkdir(folder)
        start, peak = time.monotonic(), 0
        for n in range(args.files):
            with open(os.path.join(folder, f"file-{n:06d}"), "wb") as f:
                f.write(b"x" * 100)
            if n % 5000 == 0:
                peak = max(peak, rss_mib(pid))
        elapsed = time.monotonic() - start
        print(f"created {args.files} files in one directory: {elapsed:.1f} s "
              f"({args.files / elapsed:.0f} files/s), daemon RSS peak {max(peak, rss_mib(pid))} MiB")
        for label in ("first ls", "warm ls"):
            start = time.monotonic()
            count = len(os.listdir(folder))
            print(f"{label}: {count} entries in {time.monotonic() - start:.2f} s")
        start = time.monotonic()
        subprocess.run(["ls", "-l", folder], stdout=subprocess.DEVNULL, check=True)
        print(f"warm ls -l: {time.monotonic() - start:.2f} s; daemon RSS after {rss_mib(pid)} MiB")


if __name__ == "__main__":
    main()
