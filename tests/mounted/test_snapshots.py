"""Snapshots through the real CLI and real mounts: take one while mounted, delete and
overwrite, restore with one command; a snapshot mounted while the live vault changes under
it; automatic history at unmount and hourly; a full drive with history on; kill -9 while a
snapshot is taken or deleted."""

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import time

import pytest

from tests.mounted import drives
from tests.mounted.test_faults import daemon_pid, fsck

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not drives.ROOT, reason="needs root and /dev/fuse")]
# Daemon kills while it creates (even rounds) or deletes (odd) a snapshot; every drive write
# of both is killed at in tests/api/test_snapshot_crashes.py. More rounds: a longer soak.
ROUNDS = int(os.environ.get("PQCFS_SNAPSHOT_KILL_ROUNDS", "2"))


def cli(vault, *args, check=True, timeout=120):
    """A vault command with the vault's unlock options after its own arguments."""
    return drives.pqcfs(*args, "--passfile", vault.passfile, "--backup", vault.backup, check=check, timeout=timeout)


def snapshot_list(vault) -> list[dict]:
    return json.loads(cli(vault, "snapshot", "list", vault.primary, "--json").stdout)["snapshots"]


def tree_digest(top: str) -> dict[str, str]:
    out = {}
    for here, dirs, files in os.walk(top):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(here, d))]:
            path = os.path.join(here, name)
            rel = os.path.relpath(path, top)
            if os.path.islink(path):
                out[rel] = "-> " + os.readlink(path)
            else:
                with open(path, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
        for d in dirs:
            out[os.path.relpath(os.path.join(here, d), top) + "/"] = oct(os.lstat(os.path.join(here, d)).st_mode)
    return out


def fill(root: str) -> None:
    os.makedirs(os.path.join(root, "docs/letters"))
    for n in range(20):
        with open(os.path.join(root, f"docs/letters/l{n:02d}.txt"), "wb") as f:
            f.write(os.urandom(100 + n * 997))
    with open(os.path.join(root, "docs/big.bin"), "wb") as f:
        f.write(os.urandom(3 << 20))
    with open(os.path.join(root, "notes.txt"), "w") as f:
        f.write("version 1\n")
    os.symlink("docs/big.bin", os.path.join(root, "big-link"))
    os.chmod(os.path.join(root, "docs/letters/l00.txt"), 0o600)


@pytest.fixture
def vault(plain_vault):
    plain_vault.mount()
    return plain_vault


def test_restore_a_deleted_directory_and_an_overwritten_file_with_one_command(vault, tmp_path):
    mnt = vault.mountpoint
    fill(mnt)
    before = tree_digest(mnt)
    made = json.loads(cli(vault, "snapshot", "create", vault.primary, "--label", "before", "--json").stdout)
    assert made["snapshot"]["files"] == 23
    # Metadata only: no file was copied to take it.
    for location in (vault.primary, vault.backup):
        assert os.listdir(os.path.join(location, "pqcfs.snapshots/data")) == []
    shutil.rmtree(os.path.join(mnt, "docs"))
    with open(os.path.join(mnt, "notes.txt"), "w") as f:
        f.write("version 2, overwritten by mistake\n")
    changes = json.loads(cli(vault, "diff", vault.primary, "before", "--json").stdout)
    assert "/notes.txt" in changes["changed"] and "/docs/big.bin" in changes["removed"]

    # The vault is mounted: restored through the mount, at the old path when it is free.
    out = cli(vault, "restore", vault.primary, "docs", "--snapshot", "before")
    assert "to " + os.path.join(mnt, "docs") in out.stdout
    out = cli(vault, "restore", vault.primary, "/notes.txt", "--snapshot", "latest", "--json")
    where = json.loads(out.stdout)["restored_to"]
    assert os.path.basename(where).startswith("notes.txt.restored-")
    with open(where) as f:
        assert f.read() == "version 1\n"
    os.replace(where, os.path.join(mnt, "notes.txt"))
    assert tree_digest(mnt) == before
    assert oct(os.stat(os.path.join(mnt, "docs/letters/l00.txt")).st_mode & 0o777) == "0o600"

    # Unmounted: into the vault through a session of its own; and to a plain directory.
    shutil.rmtree(os.path.join(mnt, "docs/letters"))
    vault.umount()
    cli(vault, "restore", vault.primary, "docs/letters", "--snapshot", "before")
    cli(vault, "restore", vault.primary, "/", "--snapshot", "before", "--to", str(tmp_path / "plain"))
    assert tree_digest(str(tmp_path / "plain")) == before
    vault.mount()
    assert tree_digest(mnt) == before
    vault.umount()
    assert fsck(vault).returncode == 0


def test_a_snapshot_mounted_while_the_live_vault_changes(vault, tmp_path, monkeypatch):
    mnt, snap_mnt = vault.mountpoint, str(tmp_path / "snap")
    os.mkdir(snap_mnt)
    fill(mnt)
    before = tree_digest(mnt)
    cli(vault, "snapshot", "create", vault.primary, "--label", "s1")
    # The live daemon's periodic work (records held back, written every interval) has
    # nothing to do in a read-only snapshot's daemon, which must outlive its interval.
    monkeypatch.setenv("PQCFS_HOLD_INTERVAL", "0.2")
    drives.pqcfs("mount", vault.primary, snap_mnt, "--snapshot", "s1", "--passfile", vault.passfile,
                 "--backup", vault.backup, "--allow-fixed", "--allow-same-device")
    try:
        assert tree_digest(snap_mnt) == before
        # The live vault goes on changing: appends to an open file, a rename of the whole
        # directory, deletes, overwrites, while the snapshot is read again and again.
        writer = subprocess.Popen(["python3", "-c", f"""
import os, random
mnt = {mnt!r}
fd = os.open(os.path.join(mnt, "docs/big.bin"), os.O_WRONLY)
for n in range(40):
    os.pwrite(fd, os.urandom(70000), random.randrange(3 << 20))
os.close(fd)
os.rename(os.path.join(mnt, "docs"), os.path.join(mnt, "papers"))
for n in range(0, 20, 2):
    os.unlink(os.path.join(mnt, "papers/letters/l%02d.txt" % n))
with open(os.path.join(mnt, "notes.txt"), "w") as f:
    f.write("changed")
"""])
        for _ in range(5):
            assert tree_digest(snap_mnt) == before
        assert writer.wait(timeout=120) == 0
        time.sleep(0.5)
        assert tree_digest(snap_mnt) == before
        assert tree_digest(mnt) != before
        # Read-only, whatever is tried.
        for attempt in (lambda: open(os.path.join(snap_mnt, "notes.txt"), "w"),
                        lambda: os.unlink(os.path.join(snap_mnt, "notes.txt")),
                        lambda: os.mkdir(os.path.join(snap_mnt, "x"))):
            with pytest.raises(OSError) as e:
                attempt()
            assert e.value.errno == 30    # EROFS
    finally:
        drives.pqcfs("umount", snap_mnt, check=False)
    vault.umount()
    assert fsck(vault).returncode == 0
    # The versions the live vault changed were kept once each, on both drives alike.
    kept = [sorted(os.listdir(os.path.join(loc, "pqcfs.snapshots/data"))) for loc in (vault.primary, vault.backup)]
    assert kept[0] == kept[1] and len(kept[0]) == 12      # big.bin, 10 letters, notes.txt


def test_automatic_history_at_unmount_and_while_mounted(plain_vault, monkeypatch):
    vault = plain_vault
    out = cli(vault, "history", vault.primary, "--keep", "30d", "--max-space", "20%")
    assert "automatic history on" in out.stdout
    monkeypatch.setenv("PQCFS_HISTORY_INTERVAL", "1")
    vault.mount()
    with open(os.path.join(vault.mountpoint, "a"), "w") as f:
        f.write("1")
    deadline = time.time() + 20
    while time.time() < deadline and not snapshot_list(vault):
        time.sleep(0.5)
    hourly = snapshot_list(vault)
    assert [s["label"] for s in hourly] == ["hourly"] and hourly[0]["kind"] == "auto"
    time.sleep(3)      # nothing changed since: no more snapshots
    assert len(snapshot_list(vault)) == 1
    vault.umount()
    labels = [s["label"] for s in snapshot_list(vault)]
    # Both in the same hour: thinning keeps the newest of it.
    assert labels == ["unmount"]
    cli(vault, "history", vault.primary, "--off")
    vault.mount()
    vault.umount()
    assert [s["label"] for s in snapshot_list(vault)] == ["unmount"]
    audit = cli(vault, "audit", "show", vault.primary, "--json").stdout
    assert "snapshot-created" in audit and "history-policy" in audit


def test_a_full_drive_with_history_on_yields_history_not_the_write(tmp_path):
    with drives.workdir() as w, drives.standin_vault(w, ("ext4", 48), ("ext4", 48)) as vault:
        mnt = vault.mountpoint
        vault.mount()
        big = os.path.join(mnt, "big")
        with open(big, "wb") as f:
            f.write(os.urandom(22 << 20))
        cli(vault, "snapshot", "create", vault.primary, "--label", "old")
        # A change of 1 MiB keeps 1 MiB of the old version (block by block): that fits.
        with open(big, "r+b") as f:
            f.write(os.urandom(1 << 20))
            f.flush()
            os.fsync(f.fileno())
        assert [s["label"] for s in snapshot_list(vault)] == ["old"]
        # Rewriting the whole file keeps all 22 MiB of it: there is no room for both.
        with open(big, "wb") as f:
            f.write(os.urandom(22 << 20))
            f.flush()
            os.fsync(f.fileno())
        with open(os.path.join(mnt, "after"), "wb") as f:
            f.write(os.urandom(8 << 20))
        assert snapshot_list(vault) == []          # the snapshot went, not the write
        vault.umount()
        audit = cli(vault, "audit", "show", vault.primary, "--json").stdout
        assert "history-yielded" in audit
        assert fsck(vault).returncode == 0


@pytest.mark.parametrize("seed", [5])
def test_kill_9_while_a_snapshot_is_taken_or_deleted(plain_vault, seed):
    vault, rng = plain_vault, random.Random(seed)
    vault.mount()
    for d in range(6):
        os.makedirs(os.path.join(vault.mountpoint, f"d{d}"))
        for n in range(150):
            with open(os.path.join(vault.mountpoint, f"d{d}/f{n}"), "wb") as f:
                f.write(b"%d" % n)
    vault.umount()
    cli(vault, "snapshot", "create", vault.primary, "--label", "base")
    for round_ in range(ROUNDS):
        vault.mount()
        with open(os.path.join(vault.mountpoint, f"d{round_}/f0"), "wb") as f:
            f.write(b"round %d" % round_)
        action = ["create", vault.primary, "--label", f"r{round_}"] if round_ % 2 == 0 else \
            ["delete", vault.primary, snapshot_list(vault)[-1]["id"]]
        proc = subprocess.Popen([*drives.PQCFS, "snapshot", *action, "--passfile", vault.passfile,
                                 "--backup", vault.backup], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.2))      # the command's unlock takes ~0.3 s; the daemon works after
        os.kill(daemon_pid(vault.mountpoint), signal.SIGKILL)
        proc.wait(timeout=60)
        drives.unmount(vault.mountpoint)
        vault.mount()              # recovery
        vault.umount()
        listed = snapshot_list(vault)
        assert listed[0]["label"] == "base"
        for s in listed:           # every snapshot listed is whole
            out = cli(vault, "diff", vault.primary, s["id"], "--json")
            assert json.loads(out.stdout)["to"] == "now"
        report = fsck(vault)
        assert report.returncode == 0, report.stdout
    out = cli(vault, "restore", vault.primary, "d0", "--snapshot", "base", "--to", os.path.join(vault.workdir, "d0"))
    with open(os.path.join(vault.workdir, "d0/f0"), "rb") as f:
        assert f.read() == b"0"


def test_a_grantee_mounts_a_snapshot_of_its_directory(vault, tmp_path):
    mnt = vault.mountpoint
    fill(mnt)
    bob, bob_pw = str(tmp_path / "bob.json"), tmp_path / "bob-pw"
    bob_pw.write_text("bob's own long passphrase here\n")
    drives.pqcfs("identity", "new", "--file", bob, "--passfile", str(bob_pw))
    drives.pqcfs("identity", "export", "--file", bob, "-o", bob + ".pub")
    vault.umount()                                    # share writes the header: not while mounted
    cli(vault, "share", vault.primary, "docs", "--to", bob + ".pub", "--label", "shared docs")
    vault.mount()
    cli(vault, "snapshot", "create", vault.primary, "--label", "with-grant")
    before = tree_digest(os.path.join(mnt, "docs"))
    shutil.rmtree(os.path.join(mnt, "docs/letters"))
    snap_mnt = str(tmp_path / "bob-snap")
    os.mkdir(snap_mnt)
    drives.pqcfs("mount", vault.primary, snap_mnt, "--identity", bob, "--passfile", str(bob_pw), "--snapshot",
                 "latest", "--backup", vault.backup, "--allow-fixed", "--allow-same-device")
    try:
        assert tree_digest(snap_mnt) == before          # the granted directory, as it was; nothing above it
    finally:
        drives.pqcfs("umount", snap_mnt, check=False)
