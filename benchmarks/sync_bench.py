"""How long bringing a backup up to date takes after one file changed, and how much it
reads from the drives: incremental (from the change journal) against a full comparison.

    .venv/bin/python benchmarks/sync_bench.py [--files 10000] [--mib 1024]

Two ext4 stand-in drives; a vault of FILES files holding MIB MiB in all is written
through a real mount. Then a session runs without the backup (its drive unmounted, as
if unplugged) and changes one file; the drive comes back and `pqcfs sync` runs with
cold caches. Bytes read are the kernel's count of sectors read from the two drives'
loop devices (/sys/block/loopN/stat), so Python's own start-up is not counted. The same again with the journal removed gives
the full comparison. Prints one table (markdown) to paste into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from tests import standin as drives  # noqa: E402

PW = "benchmark passphrase"


def pqcfs(*args):
    env = dict(os.environ, PQCFS_INSECURE_FAST_KDF="1", PQCFS_REJOIN_INTERVAL="0")
    return subprocess.run([sys.executable, "-m", "pqcfs", *args], check=True, capture_output=True,
                          text=True, env=env)


def sectors_read(mountpoints: list[str]) -> int:
    total = 0
    for mp in mountpoints:
        device = drives.run("findmnt", "-n", "-o", "SOURCE", mp).stdout.strip()
        with open(f"/sys/block/{os.path.basename(device)}/stat") as f:
            total += int(f.read().split()[2])
    return total


def timed_sync(primary: str, backup: str, passfile: str) -> tuple[float, int, str]:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    before = sectors_read([primary, backup])
    start = time.monotonic()
    out = pqcfs("sync", primary, "--backup", backup, "--passfile", passfile).stdout.strip()
    elapsed = time.monotonic() - start
    return elapsed, (sectors_read([primary, backup]) - before) * 512, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--mib", type=int, default=1024)
    args = ap.parse_args()
    size = args.mib * 2**20 // args.files
    image_mib = args.mib * 3 // 2 + 256
    with drives.workdir(prefix="pqcfs-syncbench-") as w, \
            drives.loop_drive(w, "primary", "ext4", image_mib) as (p, _), \
            drives.loop_drive(w, "backup", "ext4", image_mib) as (b, bimg):
        passfile, mnt = os.path.join(w, "pw"), os.path.join(w, "mnt")
        with open(passfile, "w") as f:
            f.write(PW + "\n")
        os.mkdir(mnt)
        pqcfs("init", p, b, "--passfile", passfile, "--allow-fixed")
        try:
            rows, fill = measure(args, p, b, passfile, mnt, size)
        finally:
            if os.path.ismount(mnt):
                subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
            if not os.path.ismount(b):
                drives.run("mount", drives.run("losetup", "-j", bimg).stdout.split(":")[0], b, check=False)
        print(f"vault: {args.files} files, {args.mib} MiB (written through the mount in {fill:.0f} s)\n")
        print("| sync after one changed file | time | read from the drives | pqcfs said |")
        print("|---|---|---|---|")
        for how, elapsed, read, out in rows:
            print(f"| {how} | {elapsed:.2f} s | {read / 2**20:.1f} MiB | {out} |")


def measure(args, p: str, b: str, passfile: str, mnt: str, size: int):
    mount = ("mount", p, mnt, "--passfile", passfile, "--allow-fixed")
    pqcfs(*mount, "--backup", b)
    t0 = time.monotonic()
    for n in range(args.files):
        folder = os.path.join(mnt, f"d{n // 500:03d}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"f{n:05d}"), "wb") as f:
            f.write(os.urandom(size))
    pqcfs("umount", mnt)
    fill = time.monotonic() - t0
    loop = drives.run("findmnt", "-n", "-o", "SOURCE", b).stdout.strip()
    rows = []
    for how in ("incremental", "full comparison"):
        drives.unmount(b)                                  # the backup unplugged
        pqcfs(*mount)
        n = args.files // 3
        with open(os.path.join(mnt, f"d{n // 500:03d}", f"f{n:05d}"), "r+b") as f:
            f.seek(size // 2)
            f.write(b"one changed file")
        pqcfs("umount", mnt)
        drives.run("mount", loop, b)                       # and plugged back in
        if how != "incremental":
            os.unlink(os.path.join(p, "pqcfs.changes"))
        elapsed, read, out = timed_sync(p, b, passfile)
        rows.append((how, elapsed, read, out))
    return rows, fill


if __name__ == "__main__":
    main()
