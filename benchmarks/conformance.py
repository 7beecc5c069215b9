"""POSIX conformance: pjdfstest's suite run on ext4, gocryptfs and pqcfs, side by side.

    .venv/bin/python benchmarks/conformance.py --pjdfstest DIR [--only NAME ...] [--tests PATH ...]

DIR is a built pjdfstest checkout (upstream: `autoreconf -ifs && ./configure && make
pjdfstest`; it is not packaged for Debian 12, so the set-up does not build it). Each
contender lives on fresh loop-device images; pqcfs runs with its two replicas, on ext4
and on exFAT (exfat-fuse) drives. Prints, per contender, the subtests run and failed
and the test files with failures (`--verbose` lists them), for docs/posix.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
from tests import standin as drives  # noqa: E402

PW = "conformance passphrase"
SIZE_MB = 1024     # each drive image (--size-mb)


def sh(*cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


@contextlib.contextmanager
def ext4(work):
    with drives.loop_drive(work, "plain", "ext4", SIZE_MB) as (mnt, _):
        yield mnt


@contextlib.contextmanager
def gocryptfs(work):
    with drives.loop_drive(work, "gcfs", "ext4", SIZE_MB) as (drive, _):
        cipher, mnt = os.path.join(drive, "cipher"), os.path.join(work, "gcfs-mnt")
        os.mkdir(cipher)
        os.mkdir(mnt)
        sh("gocryptfs", "-q", "-init", "-extpass", f"echo {PW}", "-scryptn", "12", cipher)
        sh("gocryptfs", "-q", "-allow_other", "-extpass", f"echo {PW}", cipher, mnt)
        try:
            yield mnt
        finally:
            drives.unmount(mnt)


def pqcfs_on(fstype: str):
    @contextlib.contextmanager
    def contender(work):
        with drives.loop_drive(work, "pq-primary", fstype, SIZE_MB) as (primary, _), \
             drives.loop_drive(work, "pq-backup", fstype, SIZE_MB) as (backup, _):
            passfile, mnt = os.path.join(work, "pq-pass"), os.path.join(work, "pq-mnt")
            with open(passfile, "w") as f:
                f.write(PW + "\n")
            os.mkdir(mnt)
            env = {**os.environ, "PQCFS_INSECURE_FAST_KDF": "1"}
            py = [sys.executable, "-m", "pqcfs"]
            sh(*py, "init", primary, backup, "--passfile", passfile, "--allow-fixed", env=env, cwd=REPO)
            sh(*py, "mount", primary, mnt, "--backup", backup, "--passfile", passfile, "--allow-fixed",
               "-o", "allow_other", env=env, cwd=REPO)
            try:
                yield mnt
            finally:
                subprocess.run([*py, "umount", mnt], capture_output=True, cwd=REPO, env=env)
    return contender


CONTENDERS = {"ext4": ext4, "gocryptfs": gocryptfs, "pqcfs-ext4": pqcfs_on("ext4"), "pqcfs-exfat": pqcfs_on("exfat")}


def run_suite(mnt: str, suite: str, tests: list[str], raw: bool) -> tuple[int, int, list[str]]:
    """(subtests run, subtests failed, files with failures) of pjdfstest in mnt."""
    work = os.path.join(mnt, "pjd")
    os.mkdir(work)
    paths = [os.path.join(suite, "tests", t) for t in tests] or [os.path.join(suite, "tests")]
    proc = subprocess.run(["prove", "-r", *paths], cwd=work, capture_output=True, text=True)
    out = proc.stdout + proc.stderr
    if raw:
        print(out)
    total = int(re.search(r"Tests=(\d+)", out).group(1))
    failed, files = 0, []
    for path, count in re.findall(r"^(\S+\.t)\s+\(Wstat: .*?Tests: \d+ Failed: (\d+)\)", out, re.M):
        if not int(count):
            continue      # listed for its TODO tests that passed
        failed += int(count)
        files.append(f"{os.path.relpath(path, os.path.join(suite, 'tests'))} ({count})")
    return total, failed, files


def main() -> int:
    global SIZE_MB
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pjdfstest", required=True, help="a built pjdfstest checkout")
    parser.add_argument("--only", nargs="*", choices=sorted(CONTENDERS), help="run these contenders only")
    parser.add_argument("--tests", nargs="*", default=[], help="only these test files or directories (e.g. open/25.t)")
    parser.add_argument("--size-mb", type=int, default=SIZE_MB, help="size of each drive image")
    parser.add_argument("--verbose", action="store_true", help="list the test files with failures")
    parser.add_argument("--raw", action="store_true", help="print prove's own output")
    args = parser.parse_args()
    SIZE_MB = args.size_mb
    suite = os.path.abspath(args.pjdfstest)
    if not os.access(os.path.join(suite, "pjdfstest"), os.X_OK):
        parser.error(f"{suite}/pjdfstest is not built")
    print("| contender | subtests | failed |\n|---|---|---|")
    for name in args.only or list(CONTENDERS):
        with tempfile.TemporaryDirectory(prefix=f"pqcfs-conf-{name}-") as work, CONTENDERS[name](work) as mnt:
            total, failed, files = run_suite(mnt, suite, args.tests, args.raw)
        print(f"| {name} | {total} | {failed} |", flush=True)
        if args.verbose:
            for f in files:
                print(f"    {f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
