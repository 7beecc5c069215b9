"""What a push costs: a vault of N files (4 KiB each, 1,000 per directory) pushed whole, then
again after one file changed, then with nothing changed; to rclone's local backend and to
`rclone serve sftp` on 127.0.0.1. Prints seconds, objects and bytes sent for each.

    .venv/bin/python benchmarks/offsite_bench.py [--files 100000] [--backend local|sftp|both]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("PQCFS_INSECURE_FAST_KDF", "1")

from pqcfs import vault as vault_mod  # noqa: E402
from pqcfs.crypto.kdf import calibrate  # noqa: E402
from pqcfs.fs.common import Caller  # noqa: E402
from pqcfs.session.session import Session  # noqa: E402
from tests.rclone_servers import served  # noqa: E402

PASS = b"offsite benchmark passphrase"
ME = Caller(uid=0, gid=0)


def session_on(locations, work, change):
    vault = vault_mod.unlock(locations, vault_mod.Credentials(passphrase=PASS))
    session = Session(vault, os.path.join(work, "mnt"))
    session.prepare()
    vfs = session.build()
    change(vfs)
    session._finish()
    vault.close()


def write(vfs, node, data):
    vfs.open(node, True).write(0, data)
    vfs.release(node)


def cli(*args):
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pqcfs", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"pqcfs {' '.join(args)}: {proc.stderr}")
    return time.perf_counter() - t, json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--backend", choices=["local", "sftp", "both"], default="both")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="pqcfs-offsite-bench-")
    os.environ["PQCFS_STATE_DIR"] = os.path.join(work, "state")
    try:
        a, b = os.path.join(work, "a"), os.path.join(work, "b")
        os.mkdir(a), os.mkdir(b)
        vault_mod.create([a, b], passphrase=PASS, kdf=calibrate())[0].close()
        t = time.perf_counter()

        def fill(vfs):
            for d in range(0, args.files, 1000):
                folder = vfs.mkdir(vfs.inodes.root, f"d{d // 1000:04d}".encode(), stat.S_IFDIR | 0o755, ME)
                for n in range(d, min(d + 1000, args.files)):
                    write(vfs, vfs.create_file(folder, f"f{n:07d}".encode(), stat.S_IFREG | 0o644, ME),
                          os.urandom(4096))
        session_on([a, b], work, fill)
        print(f"vault of {args.files:,} files made in {time.perf_counter() - t:.1f} s")
        pw = os.path.join(work, "pw")
        with open(pw, "wb") as f:
            f.write(PASS + b"\n")
        backends = ["local", "sftp"] if args.backend == "both" else [args.backend]
        rows = []
        for backend in backends:
            with served("sftp", work, "bench") if backend == "sftp" else _nothing() as server:
                path = server.path("v") if server else os.path.join(work, "remote")
                extra = ["--rclone-config", server.config] if server else []
                name = f"r-{backend}"
                cli("remote", "add", a, path, "--name", name, *extra, "--json")
                for what in ("first push (everything)", "one file changed", "nothing changed"):
                    if what == "one file changed":
                        session_on([a, b], work, lambda vfs: write(
                            vfs, vfs.lookup(vfs.lookup(vfs.inodes.root, b"d0000"), b"f0000007"), b"changed"))
                    seconds, out = cli("push", a, "--remote", name, "--passfile", pw, "--json")
                    r = out["pushed"][0]
                    rows.append((backend, what, seconds, r["objects_sent"], r["bytes_sent"]))
                    print(f"{backend:>5}  {what:<26} {seconds:7.1f} s  {r['objects_sent']:>7,} objects  "
                          f"{r['bytes_sent'] / 2**20:9.2f} MiB", flush=True)
        print("\n| remote | push | seconds | objects sent | MiB sent |\n|---|---|---:|---:|---:|")
        for backend, what, seconds, objects, size in rows:
            print(f"| {backend} | {what} | {seconds:.1f} | {objects:,} | {size / 2**20:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


if __name__ == "__main__":
    main()
