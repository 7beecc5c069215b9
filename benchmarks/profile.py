"""Where the daemon's time goes: py-spy samples the mount daemon (one ext4 stand-in)
while a workload runs, and the functions with the most samples (own time, then with
what they call) are printed.

    .venv/bin/pip install py-spy
    .venv/bin/python benchmarks/profile.py create      (or: stat, statcold, rm, readall, untar, randwrite, randread, coldwrite)

PQCFS_PROFILE_REPLICAS=1 profiles a one-drive vault (default two), PQCFS_PROFILE_GIL=1
samples only while the daemon holds the GIL (its Python work, not its waits),
PQCFS_PROFILE_IDLE=1 also while it waits (a disk read inside a write shows).
"""

from __future__ import annotations

import collections
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from benchmarks.bench import drop_caches, make_tree_tarball, pqcfs  # noqa: E402


def create(mnt):
    d = os.path.join(mnt, "many")
    os.mkdir(d)
    for n in range(5000):
        with open(os.path.join(d, f"f{n:05d}"), "wb") as f:
            f.write(b"x" * 1024)


def stat(mnt):
    create(mnt)
    drop_caches()
    for n in range(5000):
        os.stat(os.path.join(mnt, "many", f"f{n:05d}"))


def randwrite(mnt):
    p = os.path.join(mnt, "big")
    with open(p, "wb") as f:
        f.truncate(64 << 20)
    fd = os.open(p, os.O_WRONLY)
    rng = random.Random(1)
    for _ in range(10000):
        os.pwrite(fd, b"y" * 4096, rng.randrange(0, 16384) * 4096)
    os.close(fd)


def bigfile(mnt):
    subprocess.run(["dd", "if=/dev/zero", f"of={mnt}/big", "bs=1M", "count=256", "conv=fsync"],
                   check=True, capture_output=True)


def randread(mnt):
    fd = os.open(os.path.join(mnt, "big"), os.O_RDONLY)
    rng = random.Random(1)
    for _ in range(10000):
        os.pread(fd, 4096, rng.randrange(0, 65536) * 4096)
    os.close(fd)


def coldwrite(mnt):
    fd = os.open(os.path.join(mnt, "big"), os.O_WRONLY)
    rng = random.Random(1)
    for _ in range(5000):
        os.pwrite(fd, b"y" * 4096, rng.randrange(0, 65536) * 4096)
    os.close(fd)


def statcold(mnt):
    for n in range(5000):
        os.stat(os.path.join(mnt, "many", f"f{n:05d}"))


def untar(mnt):
    tarball, _ = make_tree_tarball(os.path.dirname(mnt), 5000)
    subprocess.run(["tar", "-xzf", tarball, "-C", mnt], check=True)


def rm(mnt):
    subprocess.run(["rm", "-rf", os.path.join(mnt, "many")], check=True)


def readall(mnt):
    subprocess.run(["sh", "-c", f"tar -C {mnt} -cf - many | cat > /dev/null"], check=True)


# What runs before the profiler starts, for the workloads that need something to work on.
PREPARE = {"rm": create, "readall": create, "statcold": create, "randread": bigfile, "coldwrite": bigfile}


def main(which: str) -> None:
    work = tempfile.mkdtemp(prefix="pqcfs-prof-", dir="/var/tmp")
    with pqcfs(work, int(os.environ.get("PQCFS_PROFILE_REPLICAS", "2"))) as (mnt, pid):
        if which in PREPARE:
            PREPARE[which](mnt)
            drop_caches()
        raw = os.path.join(work, "samples.txt")
        spy = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "py-spy"), "record", "-p", str(pid), "-r", "500", "-f", "raw", "-o", raw,
                                "--nonblocking", *(["--gil"] if os.environ.get("PQCFS_PROFILE_GIL") else []),
                                *(["--idle"] if os.environ.get("PQCFS_PROFILE_IDLE") else [])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        start = time.perf_counter()
        globals()[which](mnt)
        took = time.perf_counter() - start
        spy.send_signal(2)
        spy.wait()
    own, total, samples = collections.Counter(), collections.Counter(), 0
    if os.environ.get("PQCFS_PROFILE_KEEP"):
        shutil.copy(raw, os.environ["PQCFS_PROFILE_KEEP"])
    with open(raw) as f:
        lines = f.readlines()
    shutil.rmtree(work, ignore_errors=True)
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        frames = [fr.split(" (")[0] + " (" + fr.split(" (")[1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  for fr in stack.split(";") if " (" in fr]
        if not frames:
            continue
        n = int(count)
        samples += n
        own[frames[-1]] += n
        for fr in set(frames):
            total[fr] += n
    print(f"{which}: {took:.2f} s, {samples} samples")
    print("own time:")
    for fr, n in own.most_common(30):
        print(f"  {100 * n / samples:5.1f} %  {fr}")
    print("with callees:")
    for fr, n in total.most_common(45):
        print(f"  {100 * n / samples:5.1f} %  {fr}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "create")
