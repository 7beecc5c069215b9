"""Side-by-side benchmark: a plain directory, gocryptfs and pqcfs on the same machine.

    bash scripts/dev.sh bench            (or: .venv/bin/python benchmarks/bench.py)

Every contender lives on its own loop-mounted ext4 image of the same size on the same
disk; pqcfs is measured with one replica (like for like with gocryptfs) and with its
everyday two (primary + backup, every write goes to both). Page caches are dropped
before each read phase. Prints a table and writes docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import random
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
from tests import standin as drives  # noqa: E402

PW = "benchmark passphrase"
MARKER = "<!-- analysis: kept across runs -->"


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


@contextlib.contextmanager
def plain(work):
    with drives.loop_drive(work, "plain", "ext4", 4096) as (mnt, _):
        yield mnt


@contextlib.contextmanager
def gocryptfs(work):
    with drives.loop_drive(work, "gcfs", "ext4", 4096) as (drive, _):
        cipher, mnt = os.path.join(drive, "cipher"), os.path.join(work, "gcfs-mnt")
        os.mkdir(cipher)
        os.mkdir(mnt)
        sh("gocryptfs", "-q", "-init", "-extpass", f"echo {PW}", "-scryptn", "12", cipher)
        sh("gocryptfs", "-q", "-extpass", f"echo {PW}", cipher, mnt)
        try:
            yield mnt
        finally:
            drives.unmount(mnt)


@contextlib.contextmanager
def passthrough(work):
    """The bare pyfuse3 passthrough (benchmarks/passthrough.py): the Python ceiling."""
    with drives.loop_drive(work, "pt", "ext4", 4096) as (drive, _):
        backing, mnt = os.path.join(drive, "backing"), os.path.join(work, "pt-mnt")
        os.mkdir(backing)
        os.mkdir(mnt)
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "passthrough.py"), backing, mnt])
        try:
            deadline = time.monotonic() + 30
            while not os.path.ismount(mnt):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the passthrough did not mount")
                time.sleep(0.05)
            yield mnt
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            drives.unmount(mnt)


@contextlib.contextmanager
def pqcfs(work, replicas):
    names = ["pq-primary", "pq-backup"][:replicas]
    with contextlib.ExitStack() as stack:
        locs = [stack.enter_context(drives.loop_drive(work, n, "ext4", 4096))[0] for n in names]
        passfile, mnt = os.path.join(work, "pq-pass"), os.path.join(work, f"pq{replicas}-mnt")
        with open(passfile, "w") as f:
            f.write(PW + "\n")
        os.mkdir(mnt)
        env = {**os.environ, "PQCFS_INSECURE_FAST_KDF": "1"}
        py = [sys.executable, "-m", "pqcfs"]
        sh(*py, "init", *locs, "--passfile", passfile, "--allow-fixed", *(["--single"] if replicas == 1 else []),
           env=env, cwd=REPO)
        sh(*py, "mount", locs[0], mnt, "--passfile", passfile, "--allow-fixed", env=env, cwd=REPO)
        try:
            yield mnt
        finally:
            subprocess.run([*py, "umount", mnt], capture_output=True, cwd=REPO)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def workloads(size_mb: int, small_files: int, rand_ops: int, tarball: str, tar_files: int):
    def seq_write(d):
        def go():
            sh("dd", "if=/dev/zero", f"of={d}/big", "bs=1M", f"count={size_mb}", "conv=fsync")
        return size_mb / timed(go), "MB/s"

    def seq_read(d):
        drop_caches()
        return size_mb / timed(lambda: sh("dd", f"if={d}/big", "of=/dev/null", "bs=1M")), "MB/s"

    def rand_read(d):
        drop_caches()
        fd = os.open(f"{d}/big", os.O_RDONLY)
        rng = random.Random(1)
        blocks = size_mb * 256
        offsets = [rng.randrange(blocks) * 4096 for _ in range(rand_ops)]
        t = timed(lambda: [os.pread(fd, 4096, o) for o in offsets])
        os.close(fd)
        return rand_ops / t, "IOPS"

    def rand_write(d):
        fd = os.open(f"{d}/big", os.O_WRONLY)
        rng = random.Random(2)
        blocks = size_mb * 256
        data = os.urandom(4096)
        offsets = [rng.randrange(blocks) * 4096 for _ in range(rand_ops)]

        def go():
            for o in offsets:
                os.pwrite(fd, data, o)
            os.fsync(fd)
        t = timed(go)
        os.close(fd)
        os.unlink(f"{d}/big")
        return rand_ops / t, "IOPS"

    def create(d):
        os.mkdir(f"{d}/small")
        payload = b"x" * 1024

        def go():
            for n in range(small_files):
                with open(f"{d}/small/{n:05d}.txt", "wb") as f:
                    f.write(payload)
        return small_files / timed(go), "files/s"

    def stat_all(d):
        drop_caches()
        return small_files / timed(lambda: [os.stat(f"{d}/small/{n:05d}.txt") for n in range(small_files)]), "files/s"

    def listing(d):
        drop_caches()
        return small_files / timed(lambda: sh("ls", "-l", f"{d}/small")), "entries/s"

    def delete(d):
        return small_files / timed(lambda: shutil.rmtree(f"{d}/small")), "files/s"

    def untar(d):
        def go():
            sh("tar", "-xf", tarball, "-C", d)
            os.sync()
        return tar_files / timed(go), "files/s"

    return [("sequential write", seq_write), ("sequential read", seq_read), ("random 4 KiB read", rand_read),
            ("random 4 KiB write", rand_write), ("create small files", create), ("stat small files", stat_all),
            ("ls -l small files", listing), ("delete small files", delete), ("extract source tarball", untar)]


def make_tarball(work) -> tuple[str, int]:
    """A real source tree: this Python's standard library (thousands of files)."""
    src = sysconfig.get_paths()["stdlib"]
    path = os.path.join(work, "stdlib.tar")
    count = 0
    with tarfile.open(path, "w") as tar:
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames[:] = [n for n in dirnames if n not in ("site-packages", "__pycache__")]
            for name in filenames:
                full = os.path.join(dirpath, name)
                if os.path.isfile(full) and not os.path.islink(full):
                    tar.add(full, arcname=os.path.relpath(full, os.path.dirname(src)))
                    count += 1
    return path, count


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--small-files", type=int, default=10000)
    ap.add_argument("--rand-ops", type=int, default=20000)
    ap.add_argument("--no-write-docs", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("the benchmark needs root (loop devices, FUSE, drop_caches)", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="pqcfs-bench-", dir="/var/tmp")
    results: dict[str, dict[str, tuple[float, str]]] = {}
    contenders = [("plain", plain), ("gocryptfs", gocryptfs), ("passthrough", passthrough),
                  ("pqcfs (1 replica)", lambda w: pqcfs(w, 1)), ("pqcfs (2 replicas)", lambda w: pqcfs(w, 2))]
    try:
        tarball, tar_files = make_tarball(work)
        for name, ctx in contenders:
            sub = os.path.join(work, name.split()[0] + str(len(results)))
            os.mkdir(sub)
            with ctx(sub) as d:
                results[name] = {}
                for wl_name, fn in workloads(args.size_mb, args.small_files, args.rand_ops, tarball, tar_files):
                    results[name][wl_name] = fn(d)
                    print(f"{name:>20} {wl_name:<24} {results[name][wl_name][0]:>12.1f} {results[name][wl_name][1]}",
                          flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = render(results, args, tar_files)
    print("\n" + report)
    if not args.no_write_docs:
        # The hand-written analysis below the marker survives a re-run.
        path = os.path.join(REPO, "docs", "benchmarks.md")
        kept = ""
        if os.path.exists(path):
            with open(path) as f:
                text = f.read()
            if MARKER in text:
                kept = text[text.index(MARKER):]
        with open(path, "w") as f:
            f.write(report + ("\n" + kept if kept else ""))
    return 0


def render(results, args, tar_files) -> str:
    names = list(results)
    wls = list(results[names[0]])
    lines = [
        "# Benchmarks", "",
        f"Measured {dt.date.today().isoformat()} on {platform.node() or 'this machine'}: {os.cpu_count()} cores, "
        f"Linux {platform.release()}, Python {platform.python_version()}, gocryptfs "
        f"{sh('gocryptfs', '-version').stdout.split()[1]}.", "",
        "Command: `bash scripts/dev.sh bench` (runs `benchmarks/bench.py "
        f"--size-mb {args.size_mb} --small-files {args.small_files} --rand-ops {args.rand_ops}`).", "",
        "Each contender on its own 4 GiB loop-mounted ext4 image on the same disk; page caches dropped "
        "before read phases; sequential I/O with `dd bs=1M` (write ends with fsync); random I/O is "
        "4 KiB `pread`/`pwrite` from one process at random block offsets (writes end with fsync); "
        f"small files are 1 KiB each; the tarball is this Python's standard library ({tar_files} files). "
        "Higher is better everywhere.", "",
        "`passthrough` is a bare pyfuse3 passthrough (benchmarks/passthrough.py: no crypto, no "
        "mirror, 1 s cache timeouts), the Python ceiling.", "",
        "| workload | " + " | ".join(names)
        + " | pqcfs(1)/gocryptfs | pqcfs(2)/gocryptfs | pqcfs(1)/passthrough | pqcfs(1)/plain |",
        "|---|" + "---:|" * (len(names) + 4)]
    for wl in wls:
        cells = [f"{results[n][wl][0]:,.1f} {results[n][wl][1]}" for n in names]
        g = results["gocryptfs"][wl][0]
        p1, p2, pl = results["pqcfs (1 replica)"][wl][0], results["pqcfs (2 replicas)"][wl][0], results["plain"][wl][0]
        pt = results["passthrough"][wl][0]
        lines.append(f"| {wl} | " + " | ".join(cells)
                     + f" | {p1 / g:.2f}× | {p2 / g:.2f}× | {p1 / pt:.2f}× | {p1 / pl:.2f}× |")
    lines += ["", "Ratios are throughput ratios: above 1.00× pqcfs is faster than the other.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
