"""Incremental sync at the operation level: a session run without the backup journals
what it changed, and the sync afterwards reads only that (bytes counted by the kernel:
/proc/self/io rchar), ending with the same ciphertext a full comparison gives. A journal
that fails in any way is never partly trusted: the sync compares everything."""

import os
import stat

import pytest

from pqcfs import mirror
from pqcfs import vault as vault_mod
from pqcfs.fs.common import Caller
from pqcfs.fs.recovery import differing_files
from pqcfs.session.session import Session
from pqcfs.store import changes
from pqcfs.store.drive import Drive
from pqcfs.vault import Credentials
from tests.conftest import PASSPHRASE

ME = Caller(uid=1000, gid=1000)
FILES, FILE_SIZE = 400, 32 << 10
BIG_FILES = int(os.environ.get("PQCFS_SYNC_FILES", "10000"))     # the vault of 10,000 files


def bytes_read() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def unlock(locations):
    return vault_mod.unlock(list(locations), Credentials(passphrase=PASSPHRASE))


def session_on(locations, tmp_path, change):
    """A mount session (no FUSE) on these replicas; change(vfs) runs inside it."""
    vault = unlock(locations)
    session = Session(vault, str(tmp_path / "mnt"))
    session.prepare()
    vfs = session.build()
    change(vfs)
    session._finish()
    vault.close()


def session_without_backup(primary, tmp_path, change):
    session_on([primary], tmp_path, change)


def write(vfs, node, data, offset=0):
    content = vfs.open(node, True)
    content.write(offset, data)
    vfs.release(node)


def fill(vault, tmp_path, files, size):
    """files files of size bytes, in photos/, on both replicas."""
    primary, backup = vault.locations
    session = Session(vault, str(tmp_path / "mnt"))
    session.prepare()
    vfs = session.build()
    folder = vfs.mkdir(vfs.inodes.root, b"photos", stat.S_IFDIR | 0o755, ME)
    for n in range(files):
        node = vfs.create_file(folder, f"img{n:05d}.jpg".encode(), stat.S_IFREG | 0o644, ME)
        write(vfs, node, os.urandom(size))
    session._finish()
    vault.close()
    return primary, backup


@pytest.fixture
def filled(new_vault, tmp_path):
    return fill(new_vault[0], tmp_path, FILES, FILE_SIZE)


@pytest.fixture
def big_vault(new_vault, tmp_path):
    return fill(new_vault[0], tmp_path, BIG_FILES, FILE_SIZE)


def change_one(vfs):
    folder = vfs.lookup(vfs.inodes.root, b"photos")
    write(vfs, vfs.lookup(folder, b"img00007.jpg"), b"edited", 100)
    vfs.create_file(vfs.inodes.root, b"new.txt", stat.S_IFREG | 0o644, ME)
    vfs.unlink(folder, b"img00009.jpg")


def identical(primary, backup) -> bool:
    with Drive(primary) as p, Drive(backup) as b:
        return differing_files(p, b) == []


def test_one_changed_file_is_all_a_sync_reads(big_vault, tmp_path):
    primary, backup = big_vault
    session_without_backup(primary, tmp_path, change_one)
    vault = unlock([primary, backup])
    paths = mirror.sync_plan(vault, primary, backup)
    assert paths is not None, "a complete journal covers the stale backup"
    before = bytes_read()
    stats = mirror.sync_replica(vault, primary, backup, None, paths)
    read = bytes_read() - before
    vault_bytes = BIG_FILES * FILE_SIZE
    # The changed directory's table (about 170 bytes per entry, 1.7 MB for this folder)
    # gets only its new records appended, but it is read once to vet the changed entries
    # through it.
    tables = os.path.getsize(os.path.join(primary, "tree", "d.t")) + max(
        os.path.getsize(os.path.join(top, "d.t")) for top, _, _ in os.walk(os.path.join(primary, "tree"))
        if os.path.exists(os.path.join(top, "d.t")))
    assert read < 2 * FILE_SIZE + tables + (256 << 10), f"read {read} bytes of a {vault_bytes}-byte vault"
    assert stats.files_changed >= 2 and stats.removed >= 1
    assert identical(primary, backup)
    # The yardstick: the full comparison the sync did before reads both copies of everything.
    before = bytes_read()
    mirror.sync_replica(vault, primary, backup)
    assert bytes_read() - before > 2 * vault_bytes
    vault.close()
    # Nobody is behind any more: the journal is gone, and the next mount is not degraded.
    with Drive(primary) as p:
        assert changes.read(p, b"k") is None


def test_journal_over_several_sessions_and_a_rename(filled, tmp_path):
    primary, backup = filled
    session_without_backup(primary, tmp_path, change_one)

    def move_folder(vfs):
        vfs.rename(vfs.inodes.root, b"photos", vfs.inodes.root, b"pictures", 0)
    session_without_backup(primary, tmp_path, move_folder)
    vault = unlock([primary, backup])
    paths = mirror.sync_plan(vault, primary, backup)
    assert paths is not None and any(subtree for subtree in paths.values())
    mirror.sync_replica(vault, primary, backup, None, paths)
    vault.close()
    assert identical(primary, backup)


@pytest.mark.parametrize("damage", ["edited line", "dropped line", "cut off", "crashed session"])
def test_a_journal_that_fails_is_not_trusted(filled, tmp_path, damage):
    primary, backup = filled
    session_without_backup(primary, tmp_path, change_one)
    path = os.path.join(primary, changes.FILE_NAME)
    with open(path, "rb") as f:
        lines = f.read().splitlines(keepends=True)
    if damage == "edited line":
        lines[1] = lines[1].replace(b"P tree", b"P tree/x")
    elif damage == "dropped line":
        del lines[1]
    elif damage == "cut off":
        lines = lines[:-1]               # the end marker: lines may be missing after it
    else:
        lines.append(lines[1])           # a session that never ended: not complete
        lines = lines[:-2]
    with open(path, "wb") as f:
        f.writelines(lines)
    vault = unlock([primary, backup])
    assert mirror.sync_plan(vault, primary, backup) is None
    mirror.sync_replica(vault, primary, backup)        # the full comparison
    vault.close()
    assert identical(primary, backup)


def test_a_journal_not_going_back_far_enough_is_not_used(filled, tmp_path):
    """The backup missed a session before the journal began (it was made by an older
    pqcfs, or was removed): the sync compares everything."""
    primary, backup = filled
    session_without_backup(primary, tmp_path, change_one)
    with Drive(primary) as p:
        p.unlink(changes.FILE_NAME)

    def another(vfs):
        vfs.create_file(vfs.inodes.root, b"later.txt", stat.S_IFREG | 0o644, ME)
    session_without_backup(primary, tmp_path, another)
    vault = unlock([primary, backup])
    assert mirror.sync_plan(vault, primary, backup) is None
    mirror.sync_replica(vault, primary, backup)
    vault.close()
    assert identical(primary, backup)
