"""pqcfs as an ordinary user, end to end: a real unprivileged account (made for the test,
removed after) creates a vault, mounts it through fusermount3, sees it in `status`,
unmounts it; its runtime and state files live under its own XDG directories; a root
command on its vault leaves every file the user's; and without /dev/fuse the mount says
why before asking for anything, and leaves the vault clean."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess

import pytest

from tests.mounted import drives, users

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not drives.ROOT, reason="needs root and /dev/fuse")]

USER = "pqcfs-t-carol"


def as_user(user, home: str, *args, check=True):
    return users.pqcfs_as(user, *args, check=check, runtime=os.path.join(home, "run"), cwd=home)


def owners(path: str) -> set[int]:
    found = {os.lstat(path).st_uid}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            found.add(os.lstat(os.path.join(root, name)).st_uid)
    return found


def test_an_ordinary_user_mounts_their_vault_and_root_leaves_it_theirs():
    with drives.workdir() as w, users.made_users(USER, home_base=w) as (carol,):
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


def test_a_mount_root_makes_for_a_user_is_theirs_to_see_and_unmount():
    """`pqcfs mount --user` (automount for a desktop user), without a login session's
    runtime directory: the user's own `status` finds the mount and their `umount` ends it
    cleanly; root's top directory is given to them once."""
    with drives.workdir() as w, users.made_users("pqcfs-t-dave") as (dave,):
        a, b = os.path.join(w, "a"), os.path.join(w, "b")
        os.mkdir(a), os.mkdir(b)
        v = drives.Vault(w, a, b)
        v.init("--allow-same-device")
        mnt = os.path.join(w, "dave-vault")                      # made by the mount, for dave
        drives.pqcfs("mount", a, mnt, "--passfile", v.passfile, "--allow-same-device", "--user", dave.pw_name)
        try:
            assert drives.is_mounted(mnt)
            made = subprocess.run(["sh", "-c", f"echo mine > {mnt}/note && stat -c %u {mnt}"], user=dave.pw_uid,
                                  group=dave.pw_gid, capture_output=True, text=True)
            assert made.stdout.strip() == str(dave.pw_uid), made.stderr
            status = json.loads(users.pqcfs_as(dave, "status", "--json").stdout)["mounts"]
            assert [(m["mountpoint"], m["health"], m["user"]) for m in status] == [(mnt, "healthy", dave.pw_name)]
            users.pqcfs_as(dave, "umount", mnt)
            assert not drives.is_mounted(mnt)
        finally:
            if drives.is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
            shutil.rmtree(os.path.join("/run/pqcfs/users", str(dave.pw_uid)), ignore_errors=True)
        replicas = json.loads(drives.pqcfs("status", a, "--json").stdout)["replicas"]
        assert all(r["clean"] for r in replicas)
        shown = drives.pqcfs("audit", "show", a, "--passfile", v.passfile).stdout
        assert "top-directory-given" in shown and dave.pw_name in shown
