"""A local user against root's `pqcfs mount --user` (automount for a desktop): the user
can write the directory the mountpoint lives in (/media/NAME), so every component of the
mountpoint is walked without following links and the mount is made through a descriptor
of the directory that walk found."""

import os

import pytest

from pqcfs.cli import exitcodes
from tests.mounted import drives, users

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not drives.ROOT, reason="needs root and /dev/fuse")]


@pytest.mark.parametrize("where", ["mountpoint", "parent"])
def test_a_symlinked_mountpoint_never_lands_a_mount_elsewhere(where):
    with drives.workdir() as w, users.made_users("pqcfs-t-mallory") as (mallory,):
        a, b = os.path.join(w, "a"), os.path.join(w, "b")
        os.mkdir(a), os.mkdir(b)
        v = drives.Vault(w, a, b)
        v.init("--allow-same-device")
        media = os.path.join(w, "media-mallory")            # /media/mallory: hers to write
        os.mkdir(media)
        os.chown(media, mallory.pw_uid, mallory.pw_gid)
        victim = os.path.join(w, "victim")                   # any empty directory of the machine
        os.mkdir(victim, 0o755)
        if where == "mountpoint":
            os.symlink(victim, os.path.join(media, "Vault"))
            target = os.path.join(media, "Vault")
        else:
            os.symlink(victim, os.path.join(media, "link"))
            target = os.path.join(media, "link", "Vault")   # missing: the mount would make it
        proc = drives.pqcfs("mount", a, target, "--passfile", v.passfile, "--allow-same-device",
                            "--user", mallory.pw_name, check=False)
        try:
            assert proc.returncode == exitcodes.MOUNT, proc.stderr
            assert "symbolic link" in proc.stderr and "Traceback" not in proc.stderr
            assert not drives.is_mounted(victim)
            assert os.listdir(victim) == []                 # nothing made through the link
        finally:
            for path in (victim, target):
                if drives.is_mounted(path):
                    drives.run("umount", "-l", path)
        replicas = drives.pqcfs("status", a, "--json").stdout
        assert '"clean": false' not in replicas
