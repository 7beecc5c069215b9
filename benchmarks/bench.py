"""Side by side in one run: a plain directory, gocryptfs and pqcfs (one replica and two).

    bash scripts/dev.sh bench            (or: .venv/bin/python benchmarks/bench.py)

Every repetition gives each contender fresh loop-device ext4 images of the same size on
the same disk (made whole at mkfs: no lazy-init thread zeroing inode tables during the
workloads, which cost two-image contenders twice; loop devices with direct I/O: one page
cache in front of each drive, as a real drive has, not the loop device's and its image
file's), mounts it, runs every workload on it in a fixed order and unmounts it; the
contenders' order is shuffled in each repetition. A workload's ratio is pqcfs' time
divided by gocryptfs' time *in the same repetition*; the table shows the median over the
repetitions (and the spread), the daemon's CPU seconds for each workload and its peak
RSS. The test tree is made here (no network) and gocryptfs comes from Debian when
missing. Writes the table to docs/benchmarks.md unless --no-write-docs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gzip
import io
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
from tests import standin as drives  # noqa: E402

PW = "benchmark passphrase"
MARKER = "<!-- analysis: kept across runs -->"
PAGE = 4096

# name, what the ratio must be at most (pqcfs(2) time / gocryptfs time), unit of the count
WORKLOADS = [
    ("create", 1.5, "files"), ("stat (cold)", 1.2, "files"), ("rm -rf", 1.5, "files"),
    ("untar (tar xzf)", 1.5, "entries"), ("ls -lR (cold)", None, "entries"),
    ("tar c (cold)", 1.2, "entries"), ("sequential write", 1.0, "MiB"),
    ("sequential read (cold)", 1.0, "MiB"), ("random 4 KiB read (cold)", 1.0, "ops"),
    ("random 4 KiB write", 1.0, "ops"),
]
RSS_LIMIT_MIB = 64
# Workloads that run together, each on what the one before it left.
GROUP = {w: {"files": "files", "entries": "tree", "MiB": "big", "ops": "big"}[unit] for w, _, unit in WORKLOADS}


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


# -- contenders: each yields (mountpoint, daemon pid or None) -----------------------------

@contextlib.contextmanager
def plain(work, size_mb):
    with drives.loop_drive(work, "plain", "ext4", size_mb, settled=True) as (mnt, _):
        yield mnt, None


@contextlib.contextmanager
def gocryptfs(work, size_mb):
    with drives.loop_drive(work, "gcfs", "ext4", size_mb, settled=True) as (drive, _):
        cipher, mnt = os.path.join(drive, "cipher"), os.path.join(work, "gcfs-mnt")
        os.mkdir(cipher)
        os.mkdir(mnt)
        sh("gocryptfs", "-q", "-init", "-extpass", f"echo {PW}", "-scryptn", "12", cipher)
        sh("gocryptfs", "-q", "-extpass", f"echo {PW}", cipher, mnt)
        try:
            yield mnt, _fuse_daemon(mnt)
        finally:
            drives.unmount(mnt)


@contextlib.contextmanager
def passthrough(work, size_mb):
    """The bare pyfuse3 passthrough (benchmarks/passthrough.py): what pyfuse3 costs per request."""
    with drives.loop_drive(work, "pt", "ext4", size_mb, settled=True) as (drive, _):
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
            yield mnt, proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            drives.unmount(mnt)


@contextlib.contextmanager
def pqcfs(work, replicas, size_mb=4096):
    names = ["pq-primary", "pq-backup"][:replicas]
    with contextlib.ExitStack() as stack:
        locs = [stack.enter_context(drives.loop_drive(work, n, "ext4", size_mb, settled=True))[0] for n in names]
        passfile, mnt = os.path.join(work, "pq-pass"), os.path.join(work, f"pq{replicas}-mnt")
        with open(passfile, "w") as f:
            f.write(PW + "\n")
        os.mkdir(mnt)
        env = {**os.environ, "PQCFS_INSECURE_FAST_KDF": "1"}
        # PQCFS_BENCH_REPO: another checkout's code, PQCFS_BENCH_PYTHON: another interpreter
        # (a virtual environment with another pyfuse3 build); side_by_side.py compares two.
        py = [os.environ.get("PQCFS_BENCH_PYTHON") or sys.executable, "-m", "pqcfs"]
        code = os.environ.get("PQCFS_BENCH_REPO", REPO)
        sh(*py, "init", *locs, "--passfile", passfile, "--allow-fixed", *(["--single"] if replicas == 1 else []),
           env=env, cwd=code)
        sh(*py, "mount", locs[0], mnt, "--passfile", passfile, "--allow-fixed", env=env, cwd=code)
        try:
            from pqcfs.session.session import runtime_file
            with open(runtime_file(mnt)) as f:
                pid = json.load(f)["pid"]
            yield mnt, pid
        finally:
            subprocess.run([*py, "umount", mnt], capture_output=True, cwd=code)


def _fuse_daemon(mnt: str) -> int | None:
    """The pid of the process serving mnt (gocryptfs: the one whose arguments name it)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if args and args[0].endswith(b"gocryptfs") and mnt.encode() in args:
            return int(pid)
    return None


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


# -- the test tree -------------------------------------------------------------------------

def make_tree_tarball(work: str, entries: int, seed: int = 7) -> tuple[str, int]:
    """A source-like tree as a .tar.gz: directories of 5-40 files whose sizes follow a
    log-normal law (median about 3 KiB, a few of 100 KiB and more), text-like contents."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz_") for _ in range(rng.randint(2, 10)))
             for _ in range(2000)]
    path = os.path.join(work, "tree.tar.gz")
    made = 0
    dirs = ["src"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        def add_dir(name):
            nonlocal made
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 1_700_000_000
            tar.addfile(info)
            made += 1
        add_dir("src")
        while made < entries:
            parent = rng.choice(dirs[-50:])
            d = f"{parent}/d{made}"
            add_dir(d)
            dirs.append(d)
            for i in range(min(rng.randint(5, 40), entries - made)):
                size = min(int(rng.lognormvariate(8.0, 1.3)), 2 << 20)
                line = b" ".join(rng.choices(words, k=12)) + b"\n"
                data = (line * (size // len(line) + 1))[:size]
                info = tarfile.TarInfo(f"{d}/f{i}.c")
                info.size, info.mode, info.mtime = len(data), 0o644, 1_700_000_000
                tar.addfile(info, io.BytesIO(data))
                made += 1
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(buf.getvalue())
    return path, made


# -- workloads: each returns seconds; they run in this order on one fresh mount -----------

DISK_PACE = "disk write (O_DIRECT)"


def run_workloads(d: str, pid: int | None, args, tarball: str, disk_pace: bool = False) -> dict[str, tuple[float, float]]:
    """{workload: (seconds, daemon CPU seconds)}. With --only, the workloads asked for and
    the ones they stand on (a group runs whole: create before stat and rm -rf, the tree's
    untar before ls -lR and tar c, the big file's write before its reads and rewrites).
    disk_pace (the plain directory): also the disk's own pace, DISK_PACE, a write of the
    big file's size that bypasses the page cache."""
    out = {}
    wanted = set(args.only or (w for w, _, _ in WORKLOADS))
    groups = {GROUP[w] for w in wanted}

    def measure(name, fn, cold=False):
        if cold:
            drop_caches()
        cpu = cpu_seconds(pid)
        start = time.perf_counter()
        fn()
        out[name] = (time.perf_counter() - start, cpu_seconds(pid) - cpu)

    payload = os.urandom(4096)
    small = os.path.join(d, "small")
    per_dir = 1000
    paths = [os.path.join(small, f"d{n // per_dir:02d}", f"f{n:05d}") for n in range(args.files)]

    def create():
        os.mkdir(small)
        for n, p in enumerate(paths):
            if n % per_dir == 0:
                os.mkdir(os.path.dirname(p))
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, payload)
            os.close(fd)
        os.sync()

    if "files" in groups:
        measure("create", create)
        measure("stat (cold)", lambda: [os.stat(p) for p in paths], cold=True)
        measure("rm -rf", lambda: (sh("rm", "-rf", small), os.sync()))
    if "tree" in groups:
        measure("untar (tar xzf)", lambda: (sh("tar", "-xzf", tarball, "-C", d), os.sync()))
        measure("ls -lR (cold)", lambda: sh("sh", "-c", f"ls -lR {d}/src > /dev/null"), cold=True)
        # GNU tar skips reading data when the archive is /dev/null: give it a pipe.
        measure("tar c (cold)", lambda: sh("sh", "-c", f"tar -C {d} -cf - src | cat > /dev/null"), cold=True)
        sh("rm", "-rf", os.path.join(d, "src"))
    if "big" not in groups:
        return {w: v for w, v in out.items() if w in wanted}

    big = os.path.join(d, "big")
    measure("sequential write",
            lambda: sh("dd", "if=/dev/zero", f"of={big}", "bs=1M",
                       f"count={args.size_mb}", "conv=fsync"))
    measure("sequential read (cold)", lambda: sh("dd", f"if={big}", "of=/dev/null", "bs=1M"), cold=True)
    rng = random.Random(1)
    blocks = args.size_mb * (1 << 20) // PAGE
    reads = [rng.randrange(blocks) * PAGE for _ in range(args.rand_ops)]
    writes = [rng.randrange(blocks) * PAGE for _ in range(args.rand_ops)]

    def rand_read():
        fd = os.open(big, os.O_RDONLY)
        for o in reads:
            os.pread(fd, PAGE, o)
        os.close(fd)

    def rand_write():
        fd = os.open(big, os.O_WRONLY)
        for o in writes:
            os.pwrite(fd, payload, o)
        os.fsync(fd)
        os.close(fd)

    measure("random 4 KiB read (cold)", rand_read, cold=True)
    measure("random 4 KiB write", rand_write)
    os.unlink(big)
    if disk_pace:
        # What the disk itself takes for the big file, with no page cache to fill first:
        # the floor under a sequential write of two copies (pqcfs-2's two images share
        # this one disk with --images disk).
        measure(DISK_PACE, lambda: sh("dd", "if=/dev/zero", f"of={big}", "bs=1M", f"count={args.size_mb}",
                                      "oflag=direct", "conv=fsync"))
        os.unlink(big)
        wanted.add(DISK_PACE)
    return {w: v for w, v in out.items() if w in wanted}


# -- the run -------------------------------------------------------------------------------

def ensure_gocryptfs() -> None:
    if shutil.which("gocryptfs") is None:
        subprocess.run(["apt-get", "install", "-y", "-q", "gocryptfs"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repetitions", type=int, default=3)
    ap.add_argument("--files", type=int, default=10000, help="4 KiB files created, stat'ed and removed")
    ap.add_argument("--tree-entries", type=int, default=9910, help="entries of the generated source tree")
    ap.add_argument("--size-mb", type=int, default=512, help="the big file of sequential and random I/O")
    ap.add_argument("--rand-ops", type=int, default=10000)
    ap.add_argument("--image-mb", type=int, default=4096)
    ap.add_argument("--images", choices=["ram", "disk"], default="ram",
                    help="where the loop devices' image files live: a tmpfs of the script's own "
                         "(default: every replica gets its own bandwidth, as two USB sticks do) or "
                         "/var/tmp on this machine's one disk (a second replica then halves it)")
    ap.add_argument("--passthrough", action="store_true", help="also the bare pyfuse3 passthrough")
    ap.add_argument("--only", nargs="*", choices=[w for w, _, _ in WORKLOADS], metavar="WORKLOAD",
                    help="workloads to report (default all; those they stand on run too); "
                         "the report is printed, not written to docs/benchmarks.md")
    ap.add_argument("--no-write-docs", action="store_true")
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("the benchmark needs root (loop devices, FUSE, drop_caches)", file=sys.stderr)
        return 2
    ensure_gocryptfs()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    order_rng = random.Random(seed)
    contenders = {"plain": lambda w: plain(w, args.image_mb), "gocryptfs": lambda w: gocryptfs(w, args.image_mb),
                  "pqcfs-1": lambda w: pqcfs(w, 1, args.image_mb), "pqcfs-2": lambda w: pqcfs(w, 2, args.image_mb)}
    if args.passthrough:
        contenders["passthrough"] = lambda w: passthrough(w, args.image_mb)
    work = tempfile.mkdtemp(prefix="pqcfs-bench-", dir="/var/tmp")
    runs: list[dict[str, dict]] = []   # per repetition: {contender: {workload: (s, cpu)}, "_rss": ...}
    started = time.monotonic()
    ram = False
    try:
        if args.images == "ram":
            # Images are sparse: a tmpfs holds only what the file systems wrote.
            sh("mount", "-t", "tmpfs", "-o", f"size={3 * args.image_mb}m,mode=0755", "pqcfs-bench", work)
            ram = True
        tarball, entries = make_tree_tarball(work, args.tree_entries)
        print(f"seed {seed}; tree of {entries} entries; {args.repetitions} repetitions", flush=True)
        for rep in range(args.repetitions):
            order = list(contenders)
            order_rng.shuffle(order)
            results: dict[str, dict] = {"_rss": {}}
            for name in order:
                sub = os.path.join(work, f"{name}-{rep}")
                os.mkdir(sub)
                with contenders[name](sub) as (mnt, pid):
                    results[name] = run_workloads(mnt, pid, args, tarball, disk_pace=name == "plain")
                    results["_rss"][name] = peak_rss_mib(pid)
                shutil.rmtree(sub, ignore_errors=True)
                print(f"rep {rep + 1}: {name:<11} "
                      + "  ".join(f"{w.split()[0]} {s:.2f}s" for w, (s, _) in results[name].items()), flush=True)
            runs.append(results)
    finally:
        if ram:
            # A loop device lets go of its image a moment after it is detached.
            for _ in range(50):
                if subprocess.run(["umount", work], capture_output=True).returncode == 0:
                    break
                time.sleep(0.2)
            else:
                sh("umount", "-l", work)
        shutil.rmtree(work, ignore_errors=True)
    report = render(runs, list(contenders), args, entries, seed, time.monotonic() - started)
    print("\n" + report)
    if not args.no_write_docs and not args.only:
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


def _count(w: str, args, entries: int) -> float:
    unit = dict((n, u) for n, _, u in WORKLOADS)[w]
    return {"files": args.files, "entries": entries, "MiB": args.size_mb, "ops": args.rand_ops}[unit]


def _disk_floor(runs, args) -> list[str]:
    """With both of pqcfs-2's images on one disk, its sequential write can not beat the
    disk's time for two copies; say where that floor lies against gocryptfs' one copy."""
    w = "sequential write"
    if args.images != "disk" or DISK_PACE not in runs[0].get("plain", {}) or w not in runs[0]["gocryptfs"]:
        return []
    pace = statistics.median(r["plain"][DISK_PACE][0] for r in runs)
    floor = [2 * r["plain"][DISK_PACE][0] / r["gocryptfs"][w][0] for r in runs]
    m = statistics.median(floor)
    return ["", f"The disk's own pace (`dd oflag=direct` of {args.size_mb} MiB on the plain image): "
            f"{args.size_mb / pace:.0f} MiB/s, {pace:.2f} s. pqcfs-2's two copies on this one disk need "
            f"at least twice that: {m:.2f} ({min(floor):.2f}–{max(floor):.2f}) of gocryptfs' time for its one "
            + ("copy, so the sequential-write target is out of reach on this disk this run."
               if m > 1.0 else "copy, within the target.")]


def render(runs, names, args, entries, seed, took) -> str:
    workloads = [w for w, _, _ in WORKLOADS if w in runs[0][names[0]]]
    med = {n: {w: statistics.median(r[n][w][0] for r in runs) for w in workloads} for n in names}
    cpu = {n: {w: statistics.median(r[n][w][1] for r in runs) for w in workloads} for n in names}
    # The bare pass-through is pyfuse3's floor: a target it misses itself asks pqcfs to
    # beat what its request loop does with no work at all.
    floor = "passthrough" in names
    lines = [
        "# Benchmarks", "",
        f"Measured {dt.date.today().isoformat()}: {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}, gocryptfs {sh('gocryptfs', '-version').stdout.split()[1].rstrip(';')}; "
        f"{len(runs)} repetitions in {took / 60:.0f} min (contender order shuffled, seed {seed}).", "",
        f"Command: `.venv/bin/python benchmarks/bench.py --repetitions {args.repetitions} --files {args.files} "
        f"--tree-entries {args.tree_entries} --size-mb {args.size_mb} --rand-ops {args.rand_ops} --images {args.images}"
        f"{' --passthrough' if args.passthrough else ''}`", "",
        "Every repetition mounts each contender on fresh loop-device ext4 images (made whole at mkfs: "
        "`-E lazy_itable_init=0,lazy_journal_init=0`, as on a drive formatted long ago; loop devices with "
        "`--direct-io=on`, so that one page cache sits in front of each drive, as with a real one) "
        + ("in a tmpfs (so that a second replica has a device of its own, as a second USB stick does, instead of "
           "sharing this machine's one disk; cold reads then come from memory through the loop device) "
           if args.images == "ram" else "on this machine's one disk (a second replica shares its bandwidth) ")
        + "and runs, in this order: "
        f"create {args.files:,} files of 4 KiB (in directories of 1,000, then `sync`), `stat` them after "
        f"dropping the caches, `rm -rf` them, `tar xzf` a generated {entries:,}-entry source tree "
        "(then `sync`), `ls -lR` and `tar c` of it (cold), a sequential write of "
        f"{args.size_mb} MiB (`dd bs=1M conv=fsync`) and read (cold), then {args.rand_ops:,} random "
        "4 KiB `pread`s (cold) and `pwrite`s (ending with `fsync`). gocryptfs writes one copy; "
        "pqcfs-2 writes every byte to two drives (its everyday set-up), pqcfs-1 to one."
        + (" passthrough is a bare pyfuse3 pass-through file system (`benchmarks/passthrough.py`, no "
           "encryption, one image) served by pqcfs' own request loop: what pyfuse3 and Python cost per "
           "request, before any work of pqcfs'." if args.passthrough else ""), "",
        "**Time ratios** (pqcfs time ÷ gocryptfs time in the same repetition; median, with the "
        "range over repetitions; below 1.00 pqcfs is faster):", "",
        "| workload | target (pqcfs-2) | pqcfs-2 ÷ gocryptfs | met | pqcfs-1 ÷ gocryptfs | pqcfs-2 ÷ plain |"
        + (" passthrough ÷ gocryptfs |" if floor else ""),
        "|---|---:|---:|:---:|---:|---:|" + ("---:|" if floor else "")]
    verdicts, below_floor = [], []
    for w, target, _ in WORKLOADS:
        if w not in workloads:
            continue
        r2 = [r["pqcfs-2"][w][0] / r["gocryptfs"][w][0] for r in runs]
        r1 = [r["pqcfs-1"][w][0] / r["gocryptfs"][w][0] for r in runs]
        rp = [r["pqcfs-2"][w][0] / r["plain"][w][0] for r in runs]
        m2 = statistics.median(r2)
        ok = "" if target is None else ("yes" if m2 <= target else "**no**")
        if target is not None:
            verdicts.append(m2 <= target)
        row = (f"| {w} | {'' if target is None else f'≤ {target:.1f}'} | {m2:.2f} ({min(r2):.2f}–{max(r2):.2f}) "
               f"| {ok} | {statistics.median(r1):.2f} | {statistics.median(rp):.1f} |")
        if floor:
            mf = statistics.median(r["passthrough"][w][0] / r["gocryptfs"][w][0] for r in runs)
            row += f" {mf:.2f} |"
            if target is not None and mf > target:
                below_floor.append(w)
        lines.append(row)
    if below_floor:
        lines += ["", "pyfuse3's own floor misses the target for " + ", ".join(below_floor)
                  + ": the bare pass-through, with no encryption and one copy, is itself past the "
                  "target there in this run."]
    lines += _disk_floor(runs, args)
    rss = {n: max((r["_rss"].get(n) or 0) for r in runs) for n in names}
    rss_ok = rss["pqcfs-2"] < RSS_LIMIT_MIB
    verdicts.append(rss_ok)
    lines += ["", "Daemon peak RSS (VmHWM, largest over repetitions): "
              + ", ".join(f"{n} {rss[n]:.0f} MiB" for n in names if rss[n])
              + f"; target for pqcfs-2 under {RSS_LIMIT_MIB} MiB: {'met' if rss_ok else '**not met**'}.", "",
              f"**Verdict: {sum(verdicts)} of {len(verdicts)} targets met.**", "",
              "Medians in seconds, and the FUSE daemon's CPU seconds for the same step "
              "(user + system, from /proc; the plain directory has no daemon):", "",
              "| workload | count | " + " | ".join(names) + " | " + " | ".join(f"{n} CPU" for n in names if n != "plain") + " |",
              "|---|---:|" + "---:|" * (2 * len(names) - 1)]
    for w in workloads:
        lines.append(f"| {w} | {_count(w, args, entries):,.0f} | " + " | ".join(f"{med[n][w]:.2f}" for n in names)
                     + " | " + " | ".join(f"{cpu[n][w]:.2f}" for n in names if n != "plain") + " |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
