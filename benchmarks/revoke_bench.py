"""How fast does a revoke re-encrypt a shared directory?

    .venv/bin/python benchmarks/revoke_bench.py [--mib 256] [--fs ext4|exfat]

A vault on two stand-in drives of the given file system, mounted through the CLI; a
directory is filled with MIB MiB (three quarters in 4 MiB files, a quarter in 16 KiB
files), shared with a fresh identity, and revoked with `pqcfs revoke --json`. Prints the
re-key's files, bytes, seconds (from the start of its session to the last sync of both
drives; the unlock before it is not counted, and uses the test-only fast KDF) and MB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
os.environ.setdefault("PQCFS_INSECURE_FAST_KDF", "1")
from tests.mounted import drives  # noqa: E402


def fill(root: str, mib: int) -> None:
    big, small = mib * 3 // 4, mib - mib * 3 // 4
    os.makedirs(f"{root}/shared/big")
    for n in range(big // 4):
        with open(f"{root}/shared/big/f{n:04d}", "wb") as f:
            f.write(os.urandom(4 << 20))
    for n in range(small * 64):
        if n % 500 == 0:
            os.makedirs(f"{root}/shared/small/{n // 500}")
        with open(f"{root}/shared/small/{n // 500}/s{n:05d}", "wb") as f:
            f.write(os.urandom(16 << 10))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--fs", default="ext4", choices=["ext4", "exfat"])
    args = ap.parse_args()
    size = max(256, args.mib * 3)
    with drives.workdir(prefix="pqcfs-revoke-") as w, \
            drives.standin_vault(w, primary=(args.fs, size), backup=(args.fs, size)) as vault:
        vault.mount()
        fill(vault.mountpoint, args.mib)
        vault.umount()
        ident = os.path.join(w, "bob.id")
        passfile = os.path.join(w, "bob.pass")
        with open(passfile, "w") as f:
            f.write("benchmark identity\n")
        drives.pqcfs("identity", "new", "--file", ident, "--passfile", passfile)
        drives.pqcfs("identity", "export", "--file", ident, "-o", ident + ".pub")
        common = ["--passfile", vault.passfile, "--backup", vault.backup]
        grant = drives.pqcfs("share", vault.primary, "shared", "--to", ident + ".pub", *common).stdout.strip()
        drives.run("sync")
        drives.run("sh", "-c", "echo 3 > /proc/sys/vm/drop_caches")
        out = json.loads(drives.pqcfs("revoke", vault.primary, grant, "--json", "--allow-fixed", *common,
                                      timeout=3600).stdout)
        rate = out["bytes"] / out["seconds"] / 1e6
        print(f"revoke on two {args.fs} stand-ins: re-keyed {out['files']} files, {out['bytes'] / 1e6:.1f} MB "
              f"in {out['seconds']:.2f} s: {rate:.1f} MB/s (both drives written, cold caches)")


if __name__ == "__main__":
    main()
