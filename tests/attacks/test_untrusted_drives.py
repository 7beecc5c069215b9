"""The attacker holds a drive: symlinks, FIFOs and device nodes planted at every path pqcfs
opens, on either drive, then every command a user runs (mount and use, crash recovery,
sync, fsck, fsck --repair, audit verify). Nothing outside the drives may be read,
created, changed or deleted (a canary tree with recorded hashes and times proves it),
nothing may hang (every call has a timeout), and every answer is a documented exit code
in one line.

Plain directories stand in for the drives for the full matrix; real ext4 and exFAT loop
drives run every target with the planted kinds their file system can hold.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import time

import pytest

from pqcfs.cli import exitcodes
from tests.mounted import drives

pytestmark = pytest.mark.skipif(not drives.ROOT, reason="needs root and /dev/fuse")

DOCUMENTED = {v for k, v in vars(exitcodes).items() if k.isupper() and isinstance(v, int)}
STEP_TIMEOUT = 60


# --- the canary: host files an attacker would love pqcfs to touch ----------------------

def make_canary(root: str) -> None:
    os.makedirs(os.path.join(root, "dir", "sub"))
    for rel, data in (("secret.txt", b"host secret\n"), ("dir/a", b"a" * 5000), ("dir/sub/b", b"b")):
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    past = 1_000_000_000
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            os.utime(os.path.join(dirpath, name), ns=(past, past))


def snapshot(root: str) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(filenames + dirnames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            digest = ""
            if stat.S_ISREG(st.st_mode):
                # O_NOATIME: the check itself must not look like a read by pqcfs.
                fd = os.open(path, os.O_RDONLY | os.O_NOATIME)
                with os.fdopen(fd, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_atime_ns, digest)
    return out


# --- what to plant, and where -----------------------------------------------------------

def plant(path: str, kind: str, canary: str) -> None:
    was_dir = os.path.isdir(path) and not os.path.islink(path)
    if was_dir:
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
    if kind == "wrong-type":       # a directory where a file belongs, or the reverse
        if was_dir:
            with open(path, "wb") as f:
                f.write(b"not a directory")
        else:
            os.mkdir(path)
    elif kind == "garbage":
        with open(path, "wb") as f:
            f.write(os.urandom(4096))
    elif kind == "symlink-file":
        os.symlink(os.path.join(canary, "secret.txt"), path)
    elif kind == "symlink-dir":
        os.symlink(os.path.join(canary, "dir"), path)
    elif kind == "symlink-zero":
        os.symlink("/dev/zero", path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 5))   # /dev/zero
    else:
        raise ValueError(kind)


def targets(location: str) -> list[str]:
    """Every replica path pqcfs opens, by its role (resolved in the pristine vault)."""
    tree = os.path.join(location, "tree")
    found = {"vault header": "pqcfs.vault", "replica state": "pqcfs.state", "intent log": "pqcfs.intent",
             "audit log": "pqcfs.audit", "lock": "pqcfs.lock", "tree": "tree", "root d.id": "tree/d.id"}
    for name in sorted(os.listdir(tree)):
        path = os.path.join(tree, name)
        if os.path.isdir(path) and "." not in name and "dir entry" not in found:
            found["dir entry"] = f"tree/{name}"
            found["dir d.id"] = f"tree/{name}/d.id"
        elif name.endswith(".n") and "long-name sidecar" not in found:
            found["long-name sidecar"] = f"tree/{name}"
        elif name.endswith(".x") and "xattr table" not in found:
            found["xattr table"] = f"tree/{name}"
        elif "." not in name and os.path.isfile(path) and "file entry" not in found:
            found["file entry"] = f"tree/{name}"
    for dirpath, _, filenames in os.walk(tree):
        if "d.ov" in filenames:
            found["overrides"] = os.path.relpath(os.path.join(dirpath, "d.ov"), location)
            break
    assert len(found) >= 13, found
    return sorted(found.values())


# --- the pristine vault: used, then crashed, so the next mount runs crash recovery --------

def build_pristine(vault: drives.Vault) -> None:
    """A used vault whose backup missed a session and whose primary then crashed: the next
    mount syncs the stale backup and runs crash recovery, both over planted entries."""
    vault.init(*vault.mount_flags)
    vault.mount()
    mnt = vault.mountpoint
    os.makedirs(os.path.join(mnt, "docs", "deep"))
    with open(os.path.join(mnt, "docs", "deep", "f.txt"), "w") as f:
        f.write("deep file\n")
    with open(os.path.join(mnt, "x" * 200), "wb") as f:          # a long-name sidecar
        f.write(os.urandom(10_000))
    os.setxattr(os.path.join(mnt, "x" * 200), "user.tag", b"v")   # an xattr table
    os.mkdir(os.path.join(mnt, "moved-from"))
    os.rename(os.path.join(mnt, "docs", "deep"), os.path.join(mnt, "moved-from", "deep"))   # overrides
    vault.umount()
    # The backup as it is now; the next session (on both) is killed while a file is open,
    # and then the backup is put back as it was: stale, while the primary is unclean.
    snapshot_dir = os.path.join(vault.workdir, "backup-before")
    os.makedirs(snapshot_dir)
    copy_vault(vault.backup, snapshot_dir)
    vault.mount()
    fd = os.open(os.path.join(mnt, "open-at-crash"), os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"y" * 70_000)
    os.fsync(fd)
    os.kill(daemon_pid(mnt), signal.SIGKILL)
    try:
        os.close(fd)
    except OSError:
        pass
    time.sleep(0.3)
    subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
    copy_vault(snapshot_dir, vault.backup)


def daemon_pid(mountpoint: str) -> int:
    import json

    from pqcfs.session import session as session_mod
    with open(session_mod.runtime_file(mountpoint)) as f:
        return json.load(f)["pid"]


def copy_vault(src: str, dst: str) -> None:
    for name in os.listdir(dst):
        path = os.path.join(dst, name)
        if name == "lost+found":
            continue
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
    for name in os.listdir(src):
        if name == "lost+found":
            continue
        s, d = os.path.join(src, name), os.path.join(dst, name)
        shutil.copytree(s, d, symlinks=True) if os.path.isdir(s) else shutil.copy2(s, d)


# --- the commands a user runs, each bounded -------------------------------------------------

def run_step(*args) -> tuple[int, str]:
    try:
        proc = drives.pqcfs(*args, check=False, timeout=STEP_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"pqcfs {' '.join(args)} hung (over {STEP_TIMEOUT} s)")
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    assert proc.returncode in DOCUMENTED, (args, proc.returncode, proc.stderr)
    if proc.returncode and proc.stderr:   # fsck and audit verify report on stdout
        assert all(line.startswith("pqcfs: ") for line in proc.stderr.splitlines()), proc.stderr
    return proc.returncode, proc.stderr


def use_mount(vault: drives.Vault) -> None:
    code, _ = run_step("mount", vault.primary, vault.mountpoint, "--passfile", vault.passfile,
                       "--backup", vault.backup, "--allow-fixed", *vault.mount_flags)
    if code != 0:
        return
    try:
        # Read everything and write something, each bounded: a FIFO must not hang the daemon.
        read = subprocess.run(["timeout", "30", "sh", "-c", f"find {vault.mountpoint} -type f -exec cat {{}} + "
                               ">/dev/null 2>&1; ls -laR {vault.mountpoint} >/dev/null 2>&1; "
                               f"echo new > {vault.mountpoint}/written-under-attack"], capture_output=True)
        assert read.returncode != 124, "reading the mounted vault hung"
    finally:
        vault.umount()


def attack(vault: drives.Vault) -> None:
    base = ["--passfile", vault.passfile, "--backup", vault.backup]
    run_step("info", vault.primary)
    use_mount(vault)                       # mount-time sync, crash recovery, then use
    run_step("sync", vault.primary, *base)
    run_step("fsck", vault.primary, *base, "--repair")
    run_step("audit", "verify", vault.primary, *base)


def run_matrix(workdir: str, primary: str, backup: str, kinds: list[str], mount_flags: list[str],
               sides=("primary", "backup")) -> None:
    canary = os.path.join(workdir, "canary")
    make_canary(canary)
    before = snapshot(canary)
    pristine = os.path.join(workdir, "pristine")
    vault = drives.Vault(workdir, primary, backup)
    vault.mount_flags = mount_flags
    build_pristine(vault)
    os.makedirs(pristine)
    for side in ("primary", "backup"):
        shutil.copytree(getattr(vault, side), os.path.join(pristine, side), symlinks=True,
                        ignore=shutil.ignore_patterns("lost+found"))
    where = targets(primary)
    full = os.environ.get("PQCFS_ATTACK_FULL") == "1"
    cases = 0
    for side in sides:
        for n, rel in enumerate(where):
            # Every target gets a kind and every kind many targets; PQCFS_ATTACK_FULL=1 runs
            # the whole cross product (minutes per file system).
            for kind in (kinds if full else [kinds[(n + sides.index(side)) % len(kinds)]]):
                copy_vault(os.path.join(pristine, "primary"), primary)
                copy_vault(os.path.join(pristine, "backup"), backup)
                plant(os.path.join(getattr(vault, side), rel), kind, canary)
                try:
                    attack(vault)
                except BaseException as e:
                    raise AssertionError(f"{kind} as {rel} on the {side}: {e}") from e
                assert snapshot(canary) == before, f"{kind} as {rel} on the {side} touched the host"
                cases += 1
    assert cases == len(sides) * len(where) * (len(kinds) if full else 1)


def test_planted_entries_on_plain_directories():
    with drives.workdir() as work:
        a, b = os.path.join(work, "a"), os.path.join(work, "b")
        os.makedirs(a)
        os.makedirs(b)
        # The backup's side: the stand-in drives below take the primary's (PQCFS_ATTACK_FULL=1: both).
        sides = ("primary", "backup") if os.environ.get("PQCFS_ATTACK_FULL") == "1" else ("backup",)
        run_matrix(work, a, b, ["symlink-dir", "fifo", "symlink-file", "device", "symlink-zero", "wrong-type"],
                   ["--allow-same-device"], sides=sides)


@pytest.mark.parametrize("fstype", ["ext4", "exfat"])
def test_planted_entries_on_standin_drives(fstype):
    # exFAT can hold no symlinks, FIFOs or devices: there the attacker writes files and
    # directories where pqcfs expects others, and garbage.
    kinds = ["symlink-file", "fifo", "symlink-dir", "device"] if fstype == "ext4" else ["wrong-type", "garbage"]
    with drives.workdir() as work, drives.loop_drive(work, "primary", fstype, 128) as (primary, _), \
            drives.loop_drive(work, "backup", fstype, 128) as (backup, _):
        run_matrix(work, primary, backup, kinds, [], sides=("primary",))
