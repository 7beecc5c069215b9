"""pqcfs as an ordinary user, end to end: a real unprivileged account (made for the test,
removed after) creates a vault, mounts it through fusermount3, sees it in `status`,
unmounts it; its runtime and state files live under its own XDG directories; a root
command on its vault leaves every file the user's; and without /dev/fuse the mount says
why before asking for anything, and leaves the vault clean."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import pwd
import stat
import subprocess
import sys

import pytest

from tests.mounted import drives

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not drives.ROOT, reason="needs root and /dev/fuse")]

REPO = str(pathlib.Path(__file__).resolve().parents[2])
# The project's interpreter may live where an ordinary user can not run it (pyenv under
# /root); Debian's python3 is the same minor version and reads the same packages.
SYSTEM_PYTHON = "/usr/bin/python3"
SITE = next(p for p in sys.path if p.endswith("site-packages") and p.startswith(sys.prefix))
USER = "pqcfs-t-carol"


@contextlib.contextmanager
def ordinary_user(home: str):
    subprocess.run(["userdel", USER], capture_output=True)       # left over by a killed run
    drives.run("useradd", "--home-dir", home, "--create-home", "--shell", "/bin/sh", USER)
    entry = pwd.getpwnam(USER)
    opened = []                # directories on the way to the code, made traversable for the test only
    try:
        for top in (REPO, SITE):
            path = os.path.dirname(top)
            while path != "/":
                mode = stat.S_IMODE(os.stat(path).st_mode)
                if not mode & stat.S_IXOTH:
                    os.chmod(path, mode | stat.S_IXOTH)
                    opened.append((path, mode))
                path = os.path.dirname(path)
        yield entry
    finally:
        for path, mode in reversed(opened):
            os.chmod(path, mode)
        subprocess.run(["userdel", "--remove", USER], capture_output=True)


def as_user(user, home: str, *args, check=True, extra_env=None):
    env = {"HOME": home, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONPATH": f"{REPO}:{SITE}",
           "XDG_RUNTIME_DIR": os.path.join(home, "run"), "PQCFS_INSECURE_FAST_KDF": "1", **(extra_env or {})}
    proc = subprocess.run([SYSTEM_PYTHON, "-m", "pqcfs", *args], user=user.pw_uid, group=user.pw_gid,
                          extra_groups=[], env=env, capture_output=True, text=True, timeout=120, cwd=home,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"pqcfs {' '.join(args)} as {user.pw_name} failed ({proc.returncode}): {proc.stderr}")
    return proc


def owners(path: str) -> set[int]:
    found = {os.lstat(path).st_uid}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            found.add(os.lstat(os.path.join(root, name)).st_uid)
    return found


def test_an_ordinary_user_mounts_their_vault_and_root_leaves_it_theirs():
    with drives.workdir() as w, ordinary_user(os.path.join(w, "home")) as carol:
        home = carol.pw_dir
        run = os.path.join(home, "run")
        os.mkdir(run, 0o700)
        os.chown(run, carol.pw_uid, carol.pw_gid)
        for name in ("a", "b", "mnt"):
            os.mkdir(os.path.join(home, name))
            os.chown(os.path.join(home, name), carol.pw_uid, carol.pw_gid)
        a, b, mnt = (os.path.join(home, n) for n in ("a", "b", "mnt"))
        pw = os.path.join(home, "pw")
        with open(pw, "w") as f:
            f.write("carol's long and unguessable vault phrase\n")
        os.chown(pw, carol.pw_uid, carol.pw_gid)
        common = ["--passfile", pw]
        try:
            as_user(carol, home, "init", a, b, *common, "--allow-fixed", "--allow-same-device")
            as_user(carol, home, "mount", a, mnt, *common, "--allow-same-device")
            mine = subprocess.run(["sh", "-c", f"echo hello > {mnt}/f && cat {mnt}/f"], user=carol.pw_uid,
                                  group=carol.pw_gid, capture_output=True, text=True)
            assert mine.stdout == "hello\n", mine.stderr
            status = json.loads(as_user(carol, home, "status", "--json").stdout)
            assert [m["mountpoint"] for m in status["mounts"]] == [mnt]
            assert status["mounts"][0]["health"] == "healthy"
            log = status["mounts"][0]["log"]
            assert log.startswith(os.path.join(run, "pqcfs") + "/") and os.stat(log).st_uid == carol.pw_uid
            # root sees carol's mount as hers, not as a dead one to clean up.
            seen_by_root = drives.pqcfs("status", mnt, "--json", check=False)
            assert seen_by_root.returncode == 0, seen_by_root.stdout
            assert json.loads(seen_by_root.stdout)["mounts"][0]["health"] == "foreign"
            runtime = os.listdir(os.path.join(run, "pqcfs"))
            assert any(n.endswith(".json") for n in runtime) and any(n.endswith(".sock") for n in runtime)
            # The vault is in use: said at once, with where, before any passphrase.
            busy = as_user(carol, home, "fsck", a, "--extpass", "false", check=False)
            assert busy.returncode == 8 and f"mounted at {mnt}" in busy.stderr, busy.stderr
            as_user(carol, home, "umount", mnt)
            assert not drives.is_mounted(mnt)
            assert os.path.isdir(os.path.join(home, ".local", "state", "pqcfs"))

            # root works on carol's vault (a sync, an fsck): what it writes stays carol's.
            assert owners(a) == owners(b) == {carol.pw_uid}
            assert drives.pqcfs("fsck", a, *common).returncode == 0
            assert drives.pqcfs("sync", a, *common).returncode == 0
            assert owners(a) == owners(b) == {carol.pw_uid}
            as_user(carol, home, "mount", a, mnt, *common, "--allow-same-device")
            as_user(carol, home, "umount", mnt)

            # Without /dev/fuse: one line that says why and what to do, before any prompt,
            # and the vault left clean.
            mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
            os.chmod("/dev/fuse", 0o600)
            try:
                refused = as_user(carol, home, "mount", a, mnt, "--extpass", "false", "--allow-same-device",
                                  check=False)
            finally:
                os.chmod("/dev/fuse", mode)
            assert refused.returncode == 8 and "/dev/fuse" in refused.stderr and "chmod" in refused.stderr
            replicas = json.loads(as_user(carol, home, "status", a, "--json").stdout)["replicas"]
            assert all(r["clean"] for r in replicas)
        finally:
            if drives.is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
