"""Two pqcfs vaults mounted at once and used in turn: the measure of one change on a
machine whose speed drifts. Each vault's daemon gets its own value of one environment
variable (by default the worker's spin time, PQCFS_SPIN_US); rounds alternate which vault
goes first.

    .venv/bin/python benchmarks/side_by_side.py 0 200          (spin 0 us against 200 us)
    .venv/bin/python benchmarks/side_by_side.py 0 200 --tar    (tar xzf and cold tar c)
    .venv/bin/python benchmarks/side_by_side.py 0 200 --rand 3000  (random 4 KiB reads and writes)
    .venv/bin/python benchmarks/side_by_side.py 0 200 --big 512    (512 MiB dd conv=fsync, cold dd read)
    .venv/bin/python benchmarks/side_by_side.py /tmp/old . --var PQCFS_BENCH_REPO
                                         (the code of a checkout at /tmp/old against this one)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from benchmarks.bench import drop_caches, make_tree_tarball, pqcfs  # noqa: E402


def files(mnt: str, r: int, count: int, payload: bytes) -> dict[str, float]:
    d = f"{mnt}/r{r}"
    os.mkdir(d)
    start = time.perf_counter()
    for n in range(count):
        fd = os.open(f"{d}/f{n}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, payload)
        os.close(fd)
    made = time.perf_counter()
    for n in range(count):
        os.unlink(f"{d}/f{n}")
    gone = time.perf_counter()
    return {"create us/file": (made - start) / count * 1e6, "unlink us/file": (gone - made) / count * 1e6}


def tars(mnt: str, r: int, tarball: str) -> dict[str, float]:
    d = f"{mnt}/r{r}"
    os.mkdir(d)
    start = time.perf_counter()
    subprocess.run(["tar", "-xzf", tarball, "-C", d], check=True)
    untar = time.perf_counter() - start
    drop_caches()
    start = time.perf_counter()
    subprocess.run(["sh", "-c", f"tar -C {d} -cf - . | cat > /dev/null"], check=True)
    return {"tar xzf s": untar, "tar c s": time.perf_counter() - start}


def big(mnt: str, r: int, size_mb: int) -> dict[str, float]:
    path = f"{mnt}/big{r}"
    start = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={size_mb}", "conv=fsync"],
                   check=True, capture_output=True)
    wrote = time.perf_counter() - start
    drop_caches()
    start = time.perf_counter()
    subprocess.run(["dd", f"if={path}", "of=/dev/null", "bs=1M"], check=True, capture_output=True)
    read = time.perf_counter() - start
    os.unlink(path)
    return {"seq write s": wrote, "seq read s": read}


def rand(mnt: str, r: int, ops: int) -> dict[str, float]:
    """Random 4 KiB reads of a cold 256 MiB file, then as many random 4 KiB writes (fsync)."""
    path = f"{mnt}/rand{r}"
    subprocess.run(["dd", "if=/dev/zero", f"of={path}", "bs=1M", "count=256", "conv=fsync"],
                   check=True, capture_output=True)
    rng = random.Random(r)
    drop_caches()
    fd = os.open(path, os.O_RDWR)
    start = time.perf_counter()
    for _ in range(ops):
        os.pread(fd, 4096, rng.randrange(65536) * 4096)
    read = time.perf_counter() - start
    block = os.urandom(4096)
    start = time.perf_counter()
    for _ in range(ops):
        os.pwrite(fd, block, rng.randrange(65536) * 4096)
    os.fsync(fd)
    wrote = time.perf_counter() - start
    os.close(fd)
    os.unlink(path)
    return {"rand read us": read / ops * 1e6, "rand write us": wrote / ops * 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", help="the variable's value for the first vault")
    ap.add_argument("b", help="the variable's value for the second vault")
    ap.add_argument("--var", default="PQCFS_SPIN_US", help="the environment variable (default PQCFS_SPIN_US)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--tar", action="store_true", help="tar xzf of a generated tree and tar c of it")
    ap.add_argument("--rand", type=int, default=0, metavar="OPS",
                    help="random 4 KiB reads (cold) and writes of a 256 MiB file, this many each")
    ap.add_argument("--big", type=int, default=0, metavar="MiB",
                    help="a sequential write (dd conv=fsync) and cold read of a file this large")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="pqcfs-sbs-", dir="/var/tmp")
    tarball = make_tree_tarball(work, 1500)[0] if args.tar else None
    payload = os.urandom(4096)
    results: dict[str, dict[str, list[float]]] = {args.a: {}, args.b: {}}
    with contextlib.ExitStack() as stack:
        mnts = {}
        for name in (args.a, args.b):
            os.environ[args.var] = name
            sub = os.path.join(work, "v" + str(len(mnts)))
            os.mkdir(sub)
            mnts[name] = stack.enter_context(pqcfs(sub, 2))[0]
        for r in range(args.rounds):
            for name in ((args.a, args.b) if r % 2 == 0 else (args.b, args.a)):
                if args.rand:
                    got = rand(mnts[name], r, args.rand)
                elif args.big:
                    got = big(mnts[name], r, args.big)
                elif args.tar:
                    got = tars(mnts[name], r, tarball)
                else:
                    got = files(mnts[name], r, args.files, payload)
                for k, v in got.items():
                    results[name].setdefault(k, []).append(v)
    subprocess.run(["rm", "-rf", work])
    for name, got in results.items():
        for k, v in got.items():
            print(f"{args.var}={name:>5}  {k:<15} median {statistics.median(v):9.2f}   "
                  + " ".join(f"{x:.2f}" for x in v))
    return 0


if __name__ == "__main__":
    sys.exit(main())
