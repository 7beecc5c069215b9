"""The pqcfs demo: a vault on two stand-in USB drives, mounted, used, shown as
ciphertext, unmounted. Everything it creates is removed at the end.

    bash scripts/dev.sh demo
"""

from __future__ import annotations

import os
import subprocess
import sys

# The stand-in drives are the test suite's (tests/standin.py), not part of the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.standin import loop_drive, workdir  # noqa: E402

PASSPHRASE = "demo passphrase - use a real one"


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def pqcfs(*args: str) -> None:
    print("$ pqcfs " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "pqcfs", *args], check=True)


def shell(command: str, cwd: str) -> None:
    print(f"$ {command}", flush=True)
    subprocess.run(command, shell=True, check=True, cwd=cwd)


def main() -> int:
    if os.geteuid() != 0:
        print("the demo needs root: it attaches loop devices and mounts FUSE", file=sys.stderr)
        return 2
    # Keep the demo quick: cheap Argon2id for this throwaway vault only.
    os.environ["PQCFS_INSECURE_FAST_KDF"] = "1"
    with workdir(prefix="pqcfs-demo-") as w, \
         loop_drive(w, "usb-primary", "ext4", 256) as (primary, _), \
         loop_drive(w, "usb-backup", "exfat", 256) as (backup, _):
        passfile, mnt = os.path.join(w, "passphrase"), os.path.join(w, "vault")
        with open(passfile, "w") as f:
            f.write(PASSPHRASE + "\n")
        os.mkdir(mnt)
        step("Two stand-in USB drives: an ext4 image and an exFAT image on loop devices")
        shell(f"df -hT {primary} {backup} | sed 's|{w}/||'", w)
        step("Create a vault on both (loop devices are not removable, hence --allow-fixed)")
        pqcfs("init", primary, backup, "--passfile", passfile, "--allow-fixed")
        pqcfs("info", primary)
        step("Mount it and use it like any directory")
        pqcfs("mount", primary, mnt, "--passfile", passfile, "--allow-fixed")
        try:
            shell("mkdir -p 'Tax returns/2026' && echo 'IBAN DE00 1234' > 'Tax returns/2026/bank.txt'", mnt)
            shell("echo 'the launch codes' > secrets.txt && ln -s secrets.txt shortcut "
                  "&& setfattr -n user.note -v private secrets.txt 2>/dev/null || true", mnt)
            shell("head -c 3000000 /dev/urandom > photo.jpg && ls -lR", mnt)
            shell("cat shortcut 'Tax returns/2026/bank.txt'", mnt)
        finally:
            step("Unmount")
            pqcfs("umount", mnt)
        for name, drive in (("primary (ext4)", primary), ("backup (exFAT)", backup)):
            step(f"What reached the {name} drive: only ciphertext")
            shell("find . -path ./lost+found -prune -o -print | head -12", drive)
            shell("f=$(find tree -type f ! -name 'd.*' | head -1); echo \"$f:\"; "
                  "head -c 160 \"$f\" | od -A d -t x1 | head -6", drive)
        step("Any plaintext on the drives? (grep for names and contents)")
        shell(f"grep -rl -e 'launch codes' -e 'IBAN' -e 'Tax returns' {primary} {backup} "
              "&& echo 'FOUND PLAINTEXT' || echo 'none found'", w)
        step("Mount again: everything is still there")
        pqcfs("mount", primary, mnt, "--passfile", passfile, "--allow-fixed")
        try:
            shell("cat secrets.txt && find . | sort", mnt)
        finally:
            pqcfs("umount", mnt)
    print("\nDemo finished; the stand-in drives are detached and removed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
