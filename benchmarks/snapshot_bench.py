"""What a snapshot costs: a vault of N files (4 KiB each, 1,000 per directory, plus one 64 MiB
file) mounted on two fresh ext4 stand-in drives; `pqcfs snapshot create` while mounted
(wall time, as a user waits for it, and the manifest's bytes; nothing is copied); then the
time of one round of writes (every 10th small file rewritten, 16 MiB written at random
places in the big file, 1,000 new files; each part made durable) with no snapshot, and
with 10 snapshots kept (each taken after a round, the newest just before the measured
one: the first round after a snapshot, the one that keeps what it changes), alternated.

    .venv/bin/python benchmarks/snapshot_bench.py [--files 10000] [--repetitions 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import stat
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("PQCFS_INSECURE_FAST_KDF", "1")

from pqcfs import vault as vault_mod  # noqa: E402
from pqcfs.crypto.kdf import calibrate  # noqa: E402
from pqcfs.fs.common import Caller  # noqa: E402
from pqcfs.session.session import Session  # noqa: E402
from tests.standin import loop_drive, unmount, workdir  # noqa: E402

PASS = b"snapshot benchmark passphrase"
ME = Caller(uid=0, gid=0)
BIG = 64 << 20


def cli(*args, check=True):
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pqcfs", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise SystemExit(f"pqcfs {' '.join(args)}: {proc.stderr}")
    return time.perf_counter() - t, proc.stdout


def fill(locations, work, files):
    vault = vault_mod.unlock(locations, vault_mod.Credentials(passphrase=PASS))
    session = Session(vault, os.path.join(work, "mnt"))
    session.prepare()
    vfs = session.build()
    for d in range(0, files, 1000):
        folder = vfs.mkdir(vfs.inodes.root, f"d{d // 1000:04d}".encode(), stat.S_IFDIR | 0o755, ME)
        for n in range(d, min(d + 1000, files)):
            node = vfs.create_file(folder, f"f{n:07d}".encode(), stat.S_IFREG | 0o644, ME)
            vfs.open(node, True).write(0, os.urandom(4096))
            vfs.release(node)
    node = vfs.create_file(vfs.inodes.root, b"big", stat.S_IFREG | 0o644, ME)
    content = vfs.open(node, True)
    for off in range(0, BIG, 1 << 20):
        content.write(off, os.urandom(1 << 20))
    vfs.release(node)
    session._finish()
    vault.close()


def round_of_writes(mnt: str, files: int, rng: random.Random, tag: int) -> tuple[float, float, float]:
    """(seconds rewriting every 10th small file, writing 16 MiB into the big one, creating
    1,000 new files), each with what it wrote made durable."""
    t0 = time.perf_counter()
    for n in range(tag % 10, files, 10):
        with open(os.path.join(mnt, f"d{n // 1000:04d}/f{n:07d}"), "wb") as f:
            f.write(os.urandom(4096))
    os.sync()
    t1 = time.perf_counter()
    with open(os.path.join(mnt, "big"), "r+b") as f:
        for _ in range(16):
            f.seek(rng.randrange(BIG - (1 << 20)))
            f.write(os.urandom(1 << 20))
        f.flush()
        os.fsync(f.fileno())
    t2 = time.perf_counter()
    os.makedirs(os.path.join(mnt, f"new{tag}"))
    for n in range(1000):
        with open(os.path.join(mnt, f"new{tag}/n{n}"), "wb") as f:
            f.write(b"x" * 100)
    os.sync()
    return t1 - t0, t2 - t1, time.perf_counter() - t2


def kept_bytes(location: str) -> int:
    data = os.path.join(location, "pqcfs.snapshots", "data")
    return sum(os.path.getsize(os.path.join(data, n)) for n in os.listdir(data)) if os.path.isdir(data) else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10000)
    ap.add_argument("--repetitions", type=int, default=3)
    args = ap.parse_args()
    rng = random.Random(1)
    with workdir("pqcfs-snapbench-", "/var/tmp") as work:
        os.environ["PQCFS_STATE_DIR"] = os.path.join(work, "state")
        os.environ["PQCFS_HISTORY_INTERVAL"] = "0"
        size = 1024 + args.files * 24 // 1000 * 4
        with loop_drive(work, "a", "ext4", size, settled=True) as (a, _), \
                loop_drive(work, "b", "ext4", size, settled=True) as (b, _):
            a, b = os.path.join(a, "v"), os.path.join(b, "v")
            os.mkdir(a), os.mkdir(b)
            vault_mod.create([a, b], passphrase=PASS, kdf=calibrate())[0].close()
            fill([a, b], work, args.files)
            pw, mnt = os.path.join(work, "pw"), os.path.join(work, "mnt")
            with open(pw, "wb") as f:
                f.write(PASS + b"\n")
            os.makedirs(mnt, exist_ok=True)
            unlock = ["--passfile", pw, "--backup", b]
            cli("mount", a, mnt, *unlock, "--allow-fixed")
            try:
                creates, sizes = [], []
                for _ in range(args.repetitions):
                    seconds, out = cli("snapshot", "create", a, "--json", *unlock)
                    creates.append(seconds)
                    sizes.append(json.loads(out)["snapshot"]["size"])
                    cli("snapshot", "delete", a, json.loads(out)["snapshot"]["id"], *unlock)
                print(f"snapshot of {args.files:,} files + 1 of 64 MiB while mounted: "
                      f"{statistics.median(creates):.2f} s (median of {len(creates)}, `pqcfs snapshot create` "
                      f"wall time incl. its unlock), manifest {statistics.median(sizes) / 1024:.0f} KiB, "
                      f"kept data after it: {kept_bytes(a)} bytes")
                without, with10, tag = [], [], 0
                for rep in range(args.repetitions):
                    tag += 1
                    without.append(round_of_writes(mnt, args.files, rng, tag))
                    for _ in range(10):
                        tag += 1
                        round_of_writes(mnt, args.files, rng, tag)
                        cli("snapshot", "create", a, *unlock)
                    tag += 1
                    with10.append(round_of_writes(mnt, args.files, rng, tag))
                    kept = kept_bytes(a)
                    _, out = cli("snapshot", "list", a, "--json", *unlock)
                    ids = [s["id"] for s in json.loads(out)["snapshots"]]
                    t = time.perf_counter()
                    cli("snapshot", "delete", a, *ids, *unlock)
                    deleting = time.perf_counter() - t
                    print(f"round {rep + 1}: no snapshot {sum(without[-1]):.2f} s, 10 kept {sum(with10[-1]):.2f} s; "
                          f"kept data {kept / 2**20:.1f} MiB; deleting all 10 {deleting:.2f} s "
                          f"(kept data after: {kept_bytes(a)} bytes)", flush=True)
                parts = ("1,000 small files rewritten", "16 MiB into the 64 MiB file", "1,000 files created")
                print("\nthe first round of writes after a snapshot (medians):")
                print("| part | no snapshot (s) | 10 snapshots kept (s) | ratio |\n|---|---:|---:|---:|")
                for i, part in enumerate(parts):
                    a_, b_ = statistics.median(w[i] for w in without), statistics.median(w[i] for w in with10)
                    print(f"| {part} | {a_:.2f} | {b_:.2f} | {b_ / a_:.2f} |")
                total_a = statistics.median(sum(w) for w in without)
                total_b = statistics.median(sum(w) for w in with10)
                print(f"| all | {total_a:.2f} | {total_b:.2f} | {total_b / total_a:.2f} |")
            finally:
                cli("umount", mnt, check=False)
                unmount(mnt)


if __name__ == "__main__":
    main()
