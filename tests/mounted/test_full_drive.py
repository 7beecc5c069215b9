"""A full drive never strands the vault: the vault's own records (tables, replica state,
logs) have a reserve on every drive that writers through the mount never take, so a change
that was acknowledged is on the drives, `umount` leaves them clean, and the next mount
works, full or not. Real CLI, loop-device drives, the drive filled from outside the vault
(a user's own files beside it) down to its last 4 KiB."""

import errno
import json
import os
import stat

import pytest

from pqcfs.store import reserve
from tests.mounted import drives

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not drives.ROOT, reason="needs root and /dev/fuse")]


def replicas_clean(v) -> bool:
    doc = json.loads(drives.pqcfs("status", v.primary, "--json", check=False).stdout)
    return all(r["present"] and r["clean"] for r in doc["replicas"])


def test_a_full_primary_keeps_every_acknowledged_change_and_unmounts_clean(tmp_path):
    with drives.standin_vault(str(tmp_path), ("ext4", 48), ("ext4", 48)) as v:
        v.mount()
        try:
            for n in range(30):
                with open(os.path.join(v.mountpoint, f"small{n}"), "w") as f:
                    f.write(f"note {n}")
            assert os.path.getsize(os.path.join(v.primary, reserve.FILE_NAME)) >= reserve.LEAST
            fillers = drives.fill_outside(v.primary)
            for n in range(30):        # each one a table record on a drive with 4 KiB left
                os.chmod(os.path.join(v.mountpoint, f"small{n}"), 0o600)
            # A writer gets "no space" and never takes the reserve.
            with pytest.raises(OSError) as e:
                with open(os.path.join(v.mountpoint, "big"), "wb") as f:
                    f.write(os.urandom(1 << 20))
                    f.flush()
                    os.fsync(f.fileno())
            assert e.value.errno == errno.ENOSPC
        finally:
            v.umount()
        assert replicas_clean(v)

        # Still full: the next mount works read-write, and every chmod is there.
        mounted = v.mount()
        try:
            assert "full" in mounted.stderr
            for n in range(30):
                assert stat.S_IMODE(os.stat(os.path.join(v.mountpoint, f"small{n}")).st_mode) == 0o600
            with pytest.raises(OSError) as e:
                with open(os.path.join(v.mountpoint, "new"), "w") as f:
                    f.write("x")
            assert e.value.errno == errno.ENOSPC
            # Space freed (the user's own file goes): writes work again.
            for filler in fillers:
                os.unlink(filler)
            os.unlink(os.path.join(v.mountpoint, "small0"))
            with open(os.path.join(v.mountpoint, "new"), "w") as f:
                f.write("room again")
        finally:
            v.umount()
        assert replicas_clean(v)
        assert drives.pqcfs("fsck", v.primary, "--passfile", v.passfile, "--backup", v.backup,
                            "--allow-fixed").returncode == 0
        assert os.path.getsize(os.path.join(v.primary, reserve.FILE_NAME)) >= reserve.LEAST


def test_a_full_single_drive_vault_is_never_stuck(tmp_path):
    """A vault made with --single has no other drive to lean on: the reserve alone keeps
    its records, and once space is freed it is writable again."""
    with drives.loop_drive(str(tmp_path), "only", "ext4", 40) as (location, _):
        v = drives.Vault(str(tmp_path), location, None)
        drives.pqcfs("init", location, "--single", "--passfile", v.passfile, "--allow-fixed")

        def mount():
            return drives.pqcfs("mount", location, v.mountpoint, "--passfile", v.passfile, "--allow-fixed")
        mount()
        try:
            os.mkdir(os.path.join(v.mountpoint, "before"))
            fillers = drives.fill_outside(location)
            with pytest.raises(OSError) as e:          # a new name never takes the reserve
                os.mkdir(os.path.join(v.mountpoint, "after-full"))
            assert e.value.errno == errno.ENOSPC
            os.rename(os.path.join(v.mountpoint, "before"), os.path.join(v.mountpoint, "renamed"))
            os.chmod(os.path.join(v.mountpoint, "renamed"), 0o700)
        finally:
            v.umount()
        doc = json.loads(drives.pqcfs("status", location, "--json", check=False).stdout)
        assert all(r["clean"] for r in doc["replicas"] if r["present"])
        mount()
        try:
            for filler in fillers:
                os.unlink(filler)
            with open(os.path.join(v.mountpoint, "after"), "w") as f:
                f.write("room again")
            assert stat.S_IMODE(os.stat(os.path.join(v.mountpoint, "renamed")).st_mode) == 0o700
        finally:
            v.umount()


def test_a_full_primary_is_checked_and_brings_a_plugged_back_backup_up_to_date(tmp_path):
    """A session without the backup, then the primary fills up: check-only fsck and sync
    still say the truth, and the backup catches up from the full primary (the primary's
    own records come from its reserve, never from room it does not have)."""
    with drives.standin_vault(str(tmp_path), ("ext4", 48), ("ext4", 48)) as v:
        backup = v.backup
        loop = drives.run("losetup", "-j", v.images[1]).stdout.split(":")[0]
        drives.run("umount", backup)                     # the backup is unplugged
        drives.pqcfs("mount", v.primary, v.mountpoint, "--passfile", v.passfile, "--allow-fixed")
        try:
            for n in range(20):
                with open(os.path.join(v.mountpoint, f"while-away{n}"), "w") as f:
                    f.write(f"written without the backup {n}")
        finally:
            v.umount()
        drives.run("mount", loop, backup)                 # and plugged back in
        fillers = drives.fill_outside(v.primary)

        check = drives.pqcfs("fsck", v.primary, "--passfile", v.passfile, "--backup", backup, "--allow-fixed",
                             check=False)
        # The backup missed a session: the replicas differ, and the check says so (no "clean").
        assert check.returncode == 12 and "NOT clean" in check.stdout and "pqcfs sync" in check.stdout, \
            check.stdout + check.stderr
        synced = drives.pqcfs("sync", v.primary, "--passfile", v.passfile, "--backup", backup, "--allow-fixed",
                              check=False)
        assert synced.returncode == 0, synced.stdout + synced.stderr
        assert drives.pqcfs("fsck", v.primary, "--passfile", v.passfile, "--backup", backup,
                            "--allow-fixed").returncode == 0
        assert replicas_clean(v)
        v.mount()
        try:
            for n in range(20):
                with open(os.path.join(v.mountpoint, f"while-away{n}")) as f:
                    assert f.read() == f"written without the backup {n}"
        finally:
            v.umount()
        for filler in fillers:
            os.unlink(filler)
