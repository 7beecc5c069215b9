"""Attacks that need a running mount: commands racing the daemon, and plaintext paths up to
PATH_MAX whose ciphertext paths are many times longer."""

import os
import subprocess

import pytest

from pqcfs.cli import exitcodes
from pqcfs.store.drive import Drive
from tests.mounted import drives

pytestmark = pytest.mark.skipif(not drives.ROOT, reason="needs root and /dev/fuse")


def test_writing_commands_refuse_or_go_through_the_daemon_while_mounted_and_the_audit_chain_holds(plain_vault):
    v = plain_vault
    v.mount()
    base = ["--passfile", v.passfile, "--backup", v.backup]
    identity = os.path.join(v.workdir, "id.json")
    drives.pqcfs("identity", "new", "--file", identity, "--passfile", v.passfile)
    for args in (["keys", "add", v.primary, *base, "--recovery-code"],
                 ["keys", "remove", v.primary, *base, "2"],
                 ["passwd", v.primary, *base, "--new-passfile", v.passfile],
                 ["audit", "checkpoint", v.primary, "--identity", identity, "--passfile", v.passfile,
                  "--backup", v.backup],
                 ["fsck", v.primary, *base]):
        proc = drives.pqcfs(*args, check=False)
        # Said at once (before any secret is asked for), with where the vault is mounted.
        assert proc.returncode == exitcodes.MOUNT and f"mounted at {v.mountpoint}" in proc.stderr, (args, proc.stderr)
    # sync is the one that goes through: to the daemon, which holds the lock and the key.
    sync = drives.pqcfs("sync", v.primary, *base, check=False)
    assert sync.returncode == 0 and "has all its replicas" in sync.stdout, sync.stderr
    with open(os.path.join(v.mountpoint, "after"), "w") as f:
        f.write("written while the commands were refused\n")
    v.umount()
    verify = drives.pqcfs("audit", "verify", v.primary, *base, check=False)
    assert verify.returncode == 0, verify.stdout


def test_plaintext_paths_up_to_path_max(plain_vault):
    """4,000-byte plaintext paths become ~70 KB ciphertext paths: every replica access
    walks them one directory descriptor at a time."""
    v = plain_vault
    try:
        deep_paths(v)
    finally:
        v.umount()
        for location in (v.primary, v.backup):   # too deep for shutil.rmtree's recursion
            with Drive(location) as drive:
                if drive.kind("tree") == "dir":
                    drive.remove_tree("tree")


def deep_paths(v):
    v.mount()
    depth, name = 1300, "ab"
    fd = os.open(v.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        out = os.open("deep.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, b"at the bottom\n")
        os.close(out)
    finally:
        os.close(fd)
    p_path = "/".join([name] * depth) + "/deep.txt"
    assert len(p_path) > 3900
    # The ciphertext path on the drive is far beyond PATH_MAX.
    c_depth, here = 0, os.path.join(v.primary, "tree")
    fd = os.open(here, os.O_RDONLY | os.O_DIRECTORY)
    c_len = 0
    while True:
        subdirs = [e for e in os.listdir(fd) if "." not in e and
                   os.stat(e, dir_fd=fd, follow_symlinks=False).st_mode & 0o40000]
        if not subdirs:
            break
        c_len += len(subdirs[0]) + 1
        child = os.open(subdirs[0], os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd, c_depth = child, c_depth + 1
    os.close(fd)
    assert c_depth == depth and c_len > 16 * 4096
    v.umount()
    v.mount()
    read = subprocess.run(["sh", "-c", f"cd {v.mountpoint} && for i in $(seq {depth}); do cd {name} || exit 1; "
                           "done; cat deep.txt"], capture_output=True, text=True, timeout=120)
    assert read.stdout == "at the bottom\n", read.stderr
    v.umount()
    fsck = drives.pqcfs("fsck", v.primary, "--passfile", v.passfile, "--backup", v.backup, check=False)
    assert fsck.returncode == 0, fsck.stdout
