"""Faults on real stand-in drives: killed daemons, full, yanked and rolled-back backups,
bit rot. Nothing fsynced may be lost, and replicas must end identical and fsck-clean."""

import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from pqcfs.session import session as session_mod
from tests.mounted import drives

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not drives.ROOT, reason="needs root and /dev/fuse")]

WRITER = r'''
import hashlib, json, os, random, sys
mnt, journal, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
contents = {}
for name in os.listdir(mnt):
    if name.startswith("f"):
        with open(os.path.join(mnt, name), "rb") as f:
            contents[name] = f.read()
with open(journal, "a") as log:
    while True:
        name = "f%d" % rng.randrange(8)
        chunk = os.urandom(rng.choice([1, 100, 4095, 4096, 5000, 70000, 300000]))
        fd = os.open(os.path.join(mnt, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(fd, chunk)
        os.fsync(fd)
        os.close(fd)
        contents[name] = contents.get(name, b"") + chunk
        log.write(json.dumps([name, len(contents[name]), hashlib.sha256(contents[name]).hexdigest()]) + "\n")
        log.flush()
'''


def daemon_pid(mountpoint: str) -> int:
    with open(session_mod.runtime_file(mountpoint)) as f:
        return json.load(f)["pid"]


def fsck(vault, *extra):
    return drives.pqcfs("fsck", vault.primary, "--passfile", vault.passfile, "--backup", vault.backup,
                        "--json", *extra, check=False)


def trees_identical(vault) -> bool:
    from pqcfs.fs.recovery import differing_files
    from pqcfs.store.drive import Drive
    with Drive(vault.primary) as primary, Drive(vault.backup) as backup:
        differ = differing_files(primary, backup)

        return differ == []


def verify_journal(mnt: str, journal: str) -> int:
    last = {}
    with open(journal) as f:
        for line in f:
            if line.endswith("\n"):
                name, length, digest = json.loads(line)
                last[name] = (length, digest)
    for name, (length, digest) in last.items():
        with open(os.path.join(mnt, name), "rb") as f:
            data = f.read()
        assert len(data) >= length, f"{name}: fsynced length {length}, found {len(data)}"
        assert hashlib.sha256(data[:length]).hexdigest() == digest, f"{name}: fsynced bytes changed"
    return len(last)


@pytest.fixture
def drive_pair(request):
    fstype = getattr(request, "param", "ext4")
    with drives.workdir() as w, drives.loop_drive(w, "primary", fstype, 256) as (p, _), \
         drives.loop_drive(w, "backup", fstype, 256) as (b, _):
        vault = drives.Vault(w, p, b)
        vault.init()
        try:
            yield vault
        finally:
            vault.umount()


@pytest.mark.parametrize("drive_pair,seed", [("ext4", 11), ("ext4", 12), ("ext4", 13), ("exfat", 21)],
                         indirect=["drive_pair"], ids=["ext4-11", "ext4-12", "ext4-13", "exfat-21"])
def test_sigkill_at_random_points_loses_nothing_fsynced(drive_pair, seed):
    vault, rng = drive_pair, random.Random(seed)
    journal = os.path.join(vault.workdir, "journal")
    for round_ in range(5):
        vault.mount()
        writer = subprocess.Popen([sys.executable, "-c", WRITER, vault.mountpoint, journal, str(seed * 100 + round_)],
                                  stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.5))
        os.kill(daemon_pid(vault.mountpoint), signal.SIGKILL)
        writer.wait(timeout=60)
        drives.unmount(vault.mountpoint)
        time.sleep(0.2)
        vault.mount()  # recovery runs here
        assert verify_journal(vault.mountpoint, journal) > 0
        vault.umount()
        assert trees_identical(vault), f"replicas differ after recovery (round {round_})"
        report = fsck(vault)
        assert report.returncode == 0, report.stdout


def test_files_made_reach_their_tables_within_the_hold_interval_without_an_unmount(drive_pair, monkeypatch):
    """Files made (and their chmod and utimens while open, as `tar x` does) wait in memory
    for their directory's next record; the daemon writes them by itself within the hold
    interval: killed after it, the next mount has every mode and time, not only the
    names and bytes a rebuild recovers."""
    vault = drive_pair
    monkeypatch.setenv("PQCFS_HOLD_INTERVAL", "0.3")
    vault.mount()
    for n in range(30):
        path = os.path.join(vault.mountpoint, f"f{n:02d}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, b"%d" % n * 500)
        os.fchmod(fd, 0o600)
        os.utime(fd, ns=(1_000_000_000, 2_000_000_000 + n))
        os.close(fd)
    time.sleep(1.5)
    os.kill(daemon_pid(vault.mountpoint), signal.SIGKILL)
    time.sleep(0.2)
    drives.unmount(vault.mountpoint)
    vault.mount()
    for n in range(30):
        st = os.stat(os.path.join(vault.mountpoint, f"f{n:02d}"))
        assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns, st.st_size) == (0o600, 2_000_000_000 + n, 500 * len(b"%d" % n))
    vault.umount()
    assert fsck(vault).returncode == 0


def test_backup_full_keeps_writing_degraded():
    with drives.workdir() as w, drives.standin_vault(w, backup=("ext4", 32)) as vault:
        b = vault.backup
        vault.mount()
        try:
            data = os.urandom(1 << 20)
            with open(os.path.join(vault.mountpoint, "big"), "wb") as f:
                for _ in range(64):   # 64 MiB: twice what the backup can hold
                    f.write(data)
                f.flush()
                os.fsync(f.fileno())
            status = drives.pqcfs("status", vault.mountpoint, "--json", check=False)
            mine = [m for m in json.loads(status.stdout)["mounts"] if m["mountpoint"] == vault.mountpoint]
            assert mine and mine[0]["health"] == "degraded" and status.returncode == 12
            online = drives.pqcfs("sync", vault.primary, check=False)    # asks the daemon: still full
            assert online.returncode == 9 and b in online.stderr, online.stderr
            with open(os.path.join(vault.mountpoint, "big"), "rb") as f:
                assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data * 64).digest()
        finally:
            vault.umount()
        pending = json.loads(drives.pqcfs("status", vault.primary, "--json", check=False).stdout)["pending_sync"]
        assert pending, "the full backup must be marked as needing a sync"
        synced = drives.pqcfs("sync", vault.primary, "--passfile", vault.passfile, "--backup", b, check=False)
        assert synced.returncode == 9 and b in synced.stderr, synced.stderr   # full, and which drive
        vault.mount()  # the backup still can not take it: mounts degraded, loses nothing
        try:
            with open(os.path.join(vault.mountpoint, "big"), "rb") as f:
                assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data * 64).digest()
        finally:
            vault.umount()


def backup_fails_mid_write(backup_fstype, break_backup, plug_back):
    """Write 40 MiB, break the backup after 10, and check that nothing is lost: the write
    completes, the mount says degraded, and the next mount resyncs the returned backup."""
    with drives.workdir() as w, drives.loop_drive(w, "primary", "ext4", 256) as (p, _), \
         drives.loop_drive(w, "backup", backup_fstype, 256) as (b, bimg):
        vault = drives.Vault(w, p, b)
        vault.init()
        vault.mount()
        loop = drives.run("losetup", "-j", bimg).stdout.split(":")[0]
        payload = os.urandom(1 << 20)
        try:
            with open(os.path.join(vault.mountpoint, "big"), "wb") as f:
                for n in range(40):
                    f.write(payload)
                    if n == 10:
                        break_backup(b, loop)
                f.flush()
                os.fsync(f.fileno())
            with open(os.path.join(vault.mountpoint, "after"), "wb") as f:
                f.write(b"still writable")
            with open(os.path.join(vault.mountpoint, "big"), "rb") as f:
                assert f.read() == payload * 40
            status = drives.pqcfs("status", "--json", check=False)
            mine = [m for m in json.loads(status.stdout)["mounts"] if m["mountpoint"] == vault.mountpoint]
            assert mine[0]["health"] == "degraded" and status.returncode == 12
        finally:
            vault.umount()
        plug_back(b, loop)
        assert json.loads(drives.pqcfs("status", vault.primary, "--json", check=False).stdout)["pending_sync"]
        vault.mount()   # brings the backup up to date
        with open(os.path.join(vault.mountpoint, "big"), "rb") as f:
            assert f.read() == payload * 40
        vault.umount()
        assert trees_identical(vault)
        assert fsck(vault).returncode == 0


def test_backup_yanked_mid_write_then_resynced():
    def yank(b, loop):
        # Pull the backup: the exFAT daemon dies, every access fails.
        drives.run("pkill", "-KILL", "-f", f"mount.exfat-fuse {loop}", check=False)

    def plug_back(b, loop):
        drives.unmount(b)
        drives.run("mount.exfat-fuse", loop, b)

    backup_fails_mid_write("exfat", yank, plug_back)


def test_backup_turning_read_only_mid_write_then_resynced():
    def read_only(b, loop):
        # What ext4 does on a drive error (errors=remount-ro): read-only from now on.
        drives.run("mount", "-o", "remount,abort", b)

    def plug_back(b, loop):
        drives.unmount(b)
        drives.run("e2fsck", "-fy", loop, check=False)
        drives.run("mount", loop, b)

    backup_fails_mid_write("ext4", read_only, plug_back)


@pytest.mark.parametrize("where", ["blocks", "headers", "names"])
def test_bit_rot_in_one_replica_is_healed_on_read_and_by_fsck(plain_vault, where):
    vault = plain_vault
    vault.mount()
    os.mkdir(os.path.join(vault.mountpoint, "dir"))
    files = {f"dir/f{n}" if n % 2 else f"f{n}": os.urandom(50000 + n) for n in range(6)}
    for name, data in files.items():
        with open(os.path.join(vault.mountpoint, name), "wb") as f:
            f.write(data)
    vault.umount()
    rng = random.Random(5)
    tree = os.path.join(vault.primary, "tree")
    victims = sorted(os.path.relpath(os.path.join(d, n), tree) for d, _, fs in os.walk(tree)
                     for n in fs if "." not in n)
    for n, rel in enumerate(victims):
        path = os.path.join(vault.primary if n % 2 else vault.backup, "tree", rel)
        if where == "names":
            os.rename(path, path[:-3] + ("aaa" if not path.endswith("aaa") else "bbb"))
            continue
        with open(path, "rb") as f:
            data = bytearray(f.read())
        lo, hi = (24, 88) if where == "headers" else (100, len(data))
        data[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
        with open(path, "wb") as f:
            f.write(data)
    assert fsck(vault).returncode == 10
    vault.mount()
    assert sorted(os.listdir(os.path.join(vault.mountpoint, "dir"))) == ["f1", "f3", "f5"]
    for name, data in files.items():
        with open(os.path.join(vault.mountpoint, name), "rb") as f:
            assert f.read() == data, name
    vault.umount()
    repaired = fsck(vault, "--repair")
    assert repaired.returncode == 0, repaired.stdout
    assert fsck(vault).returncode == 0 and trees_identical(vault)


def test_rolled_back_replica_is_never_trusted_over_the_newer_one(plain_vault, tmp_path):
    vault = plain_vault
    vault.mount()
    with open(os.path.join(vault.mountpoint, "doc"), "wb") as f:
        f.write(b"version 1")
    vault.umount()
    snapshot = str(tmp_path / "backup-snapshot")
    shutil.copytree(vault.backup, snapshot)
    vault.mount()
    with open(os.path.join(vault.mountpoint, "doc"), "wb") as f:
        f.write(b"version 2")
    vault.umount()
    shutil.rmtree(vault.backup)
    shutil.copytree(snapshot, vault.backup)   # the backup is rolled back
    # Even named as the primary, the old copy does not serve: the newer replica does, and
    # the old one is brought up to date from it (with a warning that says so).
    rolled = drives.pqcfs("mount", vault.backup, vault.mountpoint, "--passfile", vault.passfile,
                          "--backup", vault.primary, "--allow-fixed", "--allow-same-device")
    assert "newer" in rolled.stderr and "brought up to date" in rolled.stderr
    with open(os.path.join(vault.mountpoint, "doc"), "rb") as f:
        assert f.read() == b"version 2"
    vault.umount()
    assert trees_identical(vault)
    vault.mount()
    with open(os.path.join(vault.mountpoint, "doc"), "rb") as f:
        assert f.read() == b"version 2"
    vault.umount()
    assert trees_identical(vault)


def test_split_brain_is_reported_and_left_alone(plain_vault, tmp_path):
    vault = plain_vault
    away = str(tmp_path / "away")
    for location, other, text in ((vault.primary, vault.backup, b"A"), (vault.backup, vault.primary, b"B")):
        os.rename(other, away)        # only one drive plugged in
        # The backup alone is older than what this machine mounted last: it takes consent.
        r = drives.pqcfs("mount", location, vault.mountpoint, "--passfile", vault.passfile, "--allow-fixed",
                         check=False)
        if location == vault.backup:
            assert r.returncode == 10 and "--accept-older" in r.stderr
            drives.pqcfs("mount", location, vault.mountpoint, "--passfile", vault.passfile, "--allow-fixed",
                         "--accept-older")
        else:
            assert r.returncode == 0, r.stderr
        with open(os.path.join(vault.mountpoint, "doc"), "wb") as f:
            f.write(text)
        drives.pqcfs("umount", vault.mountpoint)
        os.rename(away, other)
    r = drives.pqcfs("mount", vault.primary, vault.mountpoint, "--passfile", vault.passfile,
                     "--backup", vault.backup, "--allow-fixed", "--allow-same-device", check=False)
    assert r.returncode == 7 and "split brain" in r.stderr
    r = drives.pqcfs("sync", vault.primary, "--passfile", vault.passfile, "--backup", vault.backup, check=False)
    assert r.returncode == 7
    drives.pqcfs("sync", vault.primary, "--passfile", vault.passfile, "--backup", vault.backup,
                 "--overwrite-diverged")
    vault.mount()
    with open(os.path.join(vault.mountpoint, "doc"), "rb") as f:
        assert f.read() == b"A"
    vault.umount()


def test_mount_finds_a_moved_backup_by_its_file_system_uuid():
    with drives.workdir() as w, drives.loop_drive(w, "primary", "ext4", 64) as (p, _), \
         drives.loop_drive(w, "backup", "ext4", 64) as (b, bimg):
        vault = drives.Vault(w, p, b)
        vault.init()
        # The backup comes back mounted somewhere else.
        loop = drives.run("losetup", "-j", bimg).stdout.split(":")[0]
        drives.unmount(b)
        elsewhere = os.path.join(w, "media-usb-backup")
        os.mkdir(elsewhere)
        drives.run("mount", loop, elsewhere)
        try:
            # No --allow-fixed: init's choice of fixed disks is remembered in the header.
            drives.pqcfs("mount", p, vault.mountpoint, "--passfile", vault.passfile)
            try:
                status = json.loads(drives.pqcfs("status", vault.mountpoint, "--json").stdout)["mounts"]
                mine = [m for m in status if m["mountpoint"] == vault.mountpoint][0]
                assert mine["health"] == "healthy" and os.path.realpath(elsewhere) in map(os.path.realpath, mine["replicas"])
            finally:
                vault.umount()
            # The header now says where the backup was found: info and status show it there.
            info = json.loads(drives.pqcfs("info", p, "--json").stdout)
            backup = [r for r in info["replicas"] if r["role"] == "backup"][0]
            assert backup["path_hint"] == os.path.realpath(elsewhere) and backup["present"]
        finally:
            drives.unmount(elsewhere)
            drives.run("mount", loop, b)



def test_read_only_drives_give_degraded_or_read_only_mounts():
    with drives.workdir() as w, drives.standin_vault(w, ("ext4", 64), ("ext4", 64)) as vault:
        p, b = vault.primary, vault.backup
        vault.mount()
        with open(os.path.join(vault.mountpoint, "doc"), "wb") as f:
            f.write(b"before")
        vault.umount()
        # A write-protected backup: the mount goes on without it, degraded.
        drives.run("mount", "-o", "remount,ro", b)
        try:
            mounted = vault.mount()
            assert "read-only" in mounted.stderr and "DEGRADED" in mounted.stderr
            try:
                with open(os.path.join(vault.mountpoint, "doc"), "ab") as f:
                    f.write(b" and after")
                status = drives.pqcfs("status", vault.mountpoint, "--json", check=False)
                assert status.returncode == 12 and json.loads(status.stdout)["mounts"][0]["health"] == "degraded"
            finally:
                vault.umount()
        finally:
            drives.run("mount", "-o", "remount,rw", b)
        vault.mount()   # the backup is writable again: brought up to date
        vault.umount()
        assert trees_identical(vault)
        # A write-protected primary: refused read-write with a clear message, served with --ro.
        drives.run("mount", "-o", "remount,ro", p)
        try:
            refused = drives.pqcfs("mount", p, vault.mountpoint, "--passfile", vault.passfile,
                                   "--backup", b, "--allow-fixed", check=False)
            assert refused.returncode == 7 and "--ro" in refused.stderr
            vault.mount("--ro")
            try:
                with open(os.path.join(vault.mountpoint, "doc"), "rb") as f:
                    assert f.read() == b"before and after"
            finally:
                vault.umount()
        finally:
            drives.run("mount", "-o", "remount,rw", p)


def test_foreign_files_beside_the_vault_survive_everything(plain_vault):
    vault = plain_vault
    foreign = {}
    for location in (vault.primary, vault.backup):
        os.makedirs(os.path.join(location, "myfiles", "deep"))
        for rel in ("README-drive.txt", "myfiles/photo.jpg", "myfiles/deep/notes"):
            path = os.path.join(location, rel)
            with open(path, "wb") as f:
                f.write(os.urandom(2000))
            with open(path, "rb") as f:
                foreign[path] = f.read()
    vault.mount()
    with open(os.path.join(vault.mountpoint, "doc"), "wb") as f:
        f.write(b"v1")
    vault.umount()
    # A session without the backup makes it stale; `pqcfs sync` then copies for real.
    os.rename(vault.backup, vault.backup + ".unplugged")
    drives.pqcfs("mount", vault.primary, vault.mountpoint, "--passfile", vault.passfile, "--allow-fixed",
                 *vault.mount_flags)
    with open(os.path.join(vault.mountpoint, "doc"), "wb") as f:
        f.write(b"v2")
    vault.umount()
    os.rename(vault.backup + ".unplugged", vault.backup)
    base = ["--passfile", vault.passfile, "--backup", vault.backup]
    synced = drives.pqcfs("sync", vault.primary, *base, "--json")
    assert json.loads(synced.stdout)["synced"][0]["files_changed"] >= 1
    drives.pqcfs("fsck", vault.primary, *base, "--repair")
    for path, data in foreign.items():
        with open(path, "rb") as f:
            assert f.read() == data, path


@pytest.mark.parametrize("fstype", ["ext4", "exfat"])
def test_a_full_primary_fails_the_write_itself(fstype):
    """ENOSPC reaches the writing program at write(), the file never looks larger than
    what the drives hold, and what was written before stays readable."""
    with drives.workdir() as w, drives.standin_vault(w, primary=(fstype, 48)) as vault:
        vault.mount()
        try:
            with open(os.path.join(vault.mountpoint, "kept"), "wb") as f:
                f.write(b"written before the drive filled up")
            chunk = os.urandom(1 << 20)
            written = 0
            fd = os.open(os.path.join(vault.mountpoint, "big"), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                with pytest.raises(OSError) as failed:
                    for _ in range(200):            # 200 MiB into a 48 MiB drive
                        written += os.write(fd, chunk)
                assert failed.value.errno == errno.ENOSPC
            finally:
                try:
                    os.close(fd)
                except OSError:
                    pass
            size = os.stat(os.path.join(vault.mountpoint, "big")).st_size
            assert size <= written < 48 << 20
            with open(os.path.join(vault.mountpoint, "big"), "rb") as f:
                data = f.read()
            assert len(data) == size and data == (chunk * (size // len(chunk) + 1))[:size]
            with open(os.path.join(vault.mountpoint, "kept"), "rb") as f:
                assert f.read() == b"written before the drive filled up"
        finally:
            vault.umount()


def test_the_backup_serves_everything_when_the_primary_dies():
    """The primary's exfat-fuse process killed mid-session (what pulling the stick looks
    like): reads and writes go on from the backup, status says DEGRADED, and afterwards
    the backup, now the newest replica, mounts as the primary with everything."""
    with drives.workdir() as w, drives.standin_vault(w, primary=("exfat", 256)) as vault:
        vault.mount()
        big = os.path.join(vault.mountpoint, "big")
        chunk = os.urandom(1 << 20)
        with open(big, "wb") as f:
            for _ in range(4):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        with open(os.path.join(vault.mountpoint, "doc"), "wb") as f:
            f.write(b"before")
        daemon = drives.run("pgrep", "-f", f"exfat-fuse .*{vault.primary}").stdout.split()
        assert len(daemon) == 1
        os.kill(int(daemon[0]), signal.SIGKILL)
        time.sleep(0.3)
        with open(big, "ab") as f:                       # mid-write: goes on
            for _ in range(4):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        with open(big, "rb") as f:                       # mid-read: served by the backup
            assert f.read() == chunk * 8
        with open(os.path.join(vault.mountpoint, "doc"), "rb") as f:
            assert f.read() == b"before"
        with open(os.path.join(vault.mountpoint, "after"), "wb") as f:
            f.write(b"written without the primary")
        assert sorted(os.listdir(vault.mountpoint)) == ["after", "big", "doc"]
        status = drives.pqcfs("status", vault.mountpoint, "--json", check=False)
        assert status.returncode == 12 and json.loads(status.stdout)["mounts"][0]["health"] == "degraded"
        vault.umount()
        drives.unmount(vault.primary)                    # the dead stick's mount
        drives.pqcfs("mount", vault.backup, vault.mountpoint, "--passfile", vault.passfile, "--allow-fixed")
        with open(big, "rb") as f:
            assert f.read() == chunk * 8
        with open(os.path.join(vault.mountpoint, "after"), "rb") as f:
            assert f.read() == b"written without the primary"


def _health(mountpoint: str) -> tuple[str, int]:
    status = drives.pqcfs("status", mountpoint, "--json", check=False)
    return json.loads(status.stdout)["mounts"][0]["health"], status.returncode


@contextlib.contextmanager
def replugged_drive(image: str, mountpoint: str):
    """pull() kills an exFAT stand-in's daemon (the stick yanked); plug_back() checks it
    (a yanked exFAT stick's allocation bitmap is stale: mounted unchecked, new files
    overwrite old ones) and mounts it on a new loop device, as a re-plugged stick comes
    back as a new device (the old one stays busy while pqcfs holds files on the dead mount)."""
    loops = [drives.run("losetup", "-j", image).stdout.split(":")[0]]

    def pull():
        drives.run("pkill", "-KILL", "-f", f"mount.exfat-fuse {loops[-1]} ")
        time.sleep(0.3)

    def plug_back():
        drives.unmount(mountpoint)
        # What the killed daemon wrote is still dirty in the old loop device's cache; a
        # real stick takes it along when pulled, here it must land before the new device
        # writes, or its late write-back would overwrite newer data.
        drives.run("blockdev", "--flushbufs", loops[-1], check=False)
        loops.append(drives.run("losetup", "--find", "--show", image).stdout.strip())
        drives.run("fsck.exfat", "-y", loops[-1], check=False)
        drives.run("mount.exfat-fuse", loops[-1], mountpoint)
    try:
        yield pull, plug_back
    finally:
        drives.unmount(mountpoint)
        for loop in loops[1:]:
            drives.run("losetup", "-d", loop, check=False)


def test_a_backup_plugged_back_in_is_synced_online(monkeypatch):
    """The exFAT backup pulled mid-session, then plugged back in while mounted: `pqcfs
    sync` brings it back online (incremental, from the change journal), and in the next
    session the daemon does so by itself; a file kept open across it ends up on both."""
    monkeypatch.setenv("PQCFS_REJOIN_INTERVAL", "0")      # first by hand, through `pqcfs sync`
    with drives.workdir() as w, drives.standin_vault(w, backup=("exfat", 256)) as vault, \
            replugged_drive(vault.images[1], vault.backup) as (pull, plug_back):
        mnt = vault.mountpoint
        vault.mount()
        for n in range(50):
            with open(os.path.join(mnt, f"old{n}"), "wb") as f:
                f.write(os.urandom(3000))
        vault.umount()
        vault.mount()     # a new session: the 50 files are on both drives, and stay so
        with open(os.path.join(mnt, "kept-open"), "wb") as kept:
            kept.write(b"a" * 5000)
            kept.flush()
            pull()
            kept.write(b"b" * 5000)
            kept.flush()
            with open(os.path.join(mnt, "while-pulled"), "wb") as f:
                f.write(b"only on the primary")
            os.unlink(os.path.join(mnt, "old3"))
            assert _health(mnt) == ("degraded", 12)
            # Online sync with the backup still out: an error that names it, not "done".
            early = drives.pqcfs("sync", vault.primary, check=False)
            assert early.returncode == 7 and "not plugged in" in early.stderr, early.stderr
            plug_back()
            report = json.loads(drives.pqcfs("sync", vault.primary, "--json").stdout)
            assert [r["incremental"] for r in report["synced"]] == [True], report
            assert report["synced"][0]["files_changed"] <= 6, report    # what changed, not all 50
            assert report["missing"] == [] and _health(mnt) == ("healthy", 0)
            kept.write(b"c" * 5000)                       # goes to both drives now
            kept.flush()
            os.fsync(kept.fileno())
        vault.umount()
        assert trees_identical(vault)

        monkeypatch.setenv("PQCFS_REJOIN_INTERVAL", "0.5")   # now the daemon watches by itself
        vault.mount()
        pull()
        with open(os.path.join(mnt, "while-pulled-2"), "wb") as f:
            f.write(b"again")
        assert _health(mnt) == ("degraded", 12)
        plug_back()
        deadline = time.monotonic() + 30
        while _health(mnt) != ("healthy", 0):
            assert time.monotonic() < deadline, "the re-plugged backup was never brought back"
            time.sleep(0.5)
        with open(os.path.join(mnt, "after-rejoin"), "wb") as f:
            f.write(b"mirrored")
        vault.umount()
        assert trees_identical(vault)
        assert fsck(vault).returncode == 0
        vault.mount()
        with open(os.path.join(mnt, "kept-open"), "rb") as f:
            assert f.read() == b"a" * 5000 + b"b" * 5000 + b"c" * 5000
        assert not os.path.exists(os.path.join(mnt, "old3"))


def test_a_primary_plugged_back_in_rejoins_and_serves_again(monkeypatch):
    """The primary pulled while mounted, the backup serving; plugged back in, `pqcfs sync`
    (here naming the backup: either replica finds the mount) brings it up to date from
    the backup online, and it serves again; afterwards both are current."""
    monkeypatch.setenv("PQCFS_REJOIN_INTERVAL", "0")
    with drives.workdir() as w, drives.standin_vault(w, primary=("exfat", 256)) as vault, \
            replugged_drive(vault.images[0], vault.primary) as (pull, plug_back):
        mnt = vault.mountpoint
        vault.mount()
        with open(os.path.join(mnt, "before"), "wb") as f:
            f.write(b"on both")
        pull()
        with open(os.path.join(mnt, "while-pulled"), "wb") as f:
            f.write(b"only on the backup")
        assert _health(mnt) == ("degraded", 12)
        plug_back()
        report = json.loads(drives.pqcfs("sync", vault.backup, "--json").stdout)
        assert [r["incremental"] for r in report["synced"]] == [True], report
        assert _health(mnt) == ("healthy", 0)
        with open(os.path.join(mnt, "after"), "wb") as f:
            f.write(b"mirrored again")
        assert sorted(os.listdir(mnt)) == ["after", "before", "while-pulled"]
        vault.umount()
        assert trees_identical(vault)
        assert fsck(vault).returncode == 0
        vault.mount()                                   # the primary, as always: nothing stale
        with open(os.path.join(mnt, "while-pulled"), "rb") as f:
            assert f.read() == b"only on the backup"


def test_an_online_rejoin_under_a_busy_writer_loses_nothing(monkeypatch):
    """A writer appending and fsyncing all the time while the backup is pulled, plugged
    back in and brought back by the daemon's watcher: every pass of the copy races new
    writes. At the end both drives are identical and every fsynced byte is there."""
    monkeypatch.setenv("PQCFS_REJOIN_INTERVAL", "0.3")
    with drives.workdir() as w, drives.standin_vault(w, backup=("exfat", 256)) as vault, \
            replugged_drive(vault.images[1], vault.backup) as (pull, plug_back):
        mnt, journal = vault.mountpoint, os.path.join(w, "journal")
        vault.mount()
        writer = subprocess.Popen([sys.executable, "-c", WRITER, mnt, journal, "7"], stderr=subprocess.DEVNULL)
        try:
            time.sleep(1)
            pull()
            time.sleep(1)
            plug_back()
            deadline = time.monotonic() + 60
            while _health(mnt) != ("healthy", 0):
                assert time.monotonic() < deadline, "the backup never rejoined under load"
                time.sleep(0.3)
            time.sleep(1)                                 # and more writes, now to both
        finally:
            writer.kill()
            writer.wait()
        assert verify_journal(mnt, journal) > 0
        vault.umount()
        assert trees_identical(vault)
        assert fsck(vault).returncode == 0


def _loop_device_of(mountpoint: str) -> str:
    from mounttool import mountinfo
    for mount in reversed(mountinfo.read()):
        if mount.mountpoint == mountpoint:
            return os.path.basename(mount.source)
    raise AssertionError(f"{mountpoint} is not mounted")


def _bytes_written(device: str) -> int:
    with open(f"/sys/block/{device}/stat") as f:
        return int(f.read().split()[6]) * 512          # sectors written


def test_a_large_file_reaches_both_drives_while_it_is_written():
    """Write-behind, end to end: 24 MiB written in order through the mount and not
    fsynced are on both drives' devices within a second (the kernel alone keeps such data
    in memory for up to 30 s, or until a tenth of memory is dirty); nothing random or small
    was sent early; and the file reads back whole after an unmount."""
    with drives.workdir() as w, drives.loop_drive(w, "primary", "ext4", 256, settled=True) as (p, _), \
            drives.loop_drive(w, "backup", "ext4", 256, settled=True) as (b, _):
        vault = drives.Vault(w, p, b)
        vault.init()
        vault.mount()
        try:
            devices = [_loop_device_of(p), _loop_device_of(b)]
            subprocess.run(["sync"], check=True)
            before = [_bytes_written(d) for d in devices]
            data = os.urandom(24 << 20)
            path = os.path.join(vault.mountpoint, "big")
            with open(path, "wb") as f:
                for off in range(0, len(data), 1 << 20):
                    f.write(data[off:off + (1 << 20)])
            time.sleep(1)
            sent = [_bytes_written(d) - was for d, was in zip(devices, before)]
            assert all(n >= 20 << 20 for n in sent), f"written to the drives before any fsync: {sent}"
        finally:
            vault.umount()
        vault.mount()
        try:
            with open(path, "rb") as f:
                assert hashlib.sha256(f.read()).digest() == hashlib.sha256(data).digest()
        finally:
            vault.umount()
