"""Self-heal and fsck repair only from a copy that authenticates; what authenticates
nowhere is kept (quarantined), never deleted."""

import os
import shutil
import stat

from pqcfs.fs.trees import open_tree
from pqcfs import fsck, mirror
from pqcfs.format import names
from pqcfs.fs.common import Caller
from pqcfs.store.drive import QUARANTINE_DIR

ME = Caller(uid=1000, gid=1000)


def fs_of(vault):
    return open_tree(vault)


def files_under(path):
    return sorted(os.path.relpath(os.path.join(d, f), path) for d, _, fs in os.walk(path) for f in fs)


def test_a_copied_directory_id_destroys_nothing(new_vault):
    vault, _ = new_vault
    fs = fs_of(vault)
    root = fs.inodes.root
    a, b = fs.mkdir(root, b"a", 0o755, ME), fs.mkdir(root, b"b", 0o755, ME)
    for n in range(3):
        fs.create_file(b, b"precious-%d" % n, stat.S_IFREG | 0o644, ME, content=b"keep me %d" % n)
    primary_b = os.path.join(vault.locations[0], "tree", b.disk_name)
    before = files_under(primary_b)
    # The attacker copies a's id file over b's on the primary (a reversible tamper).
    shutil.copy(os.path.join(vault.locations[0], "tree", a.disk_name, names.DIR_ID_NAME),
                os.path.join(primary_b, names.DIR_ID_NAME))
    fresh = fs_of(vault)
    node = fresh.lookup(fresh.inodes.root, b"b")
    fresh.listdir(node)                      # what `ls` does
    assert files_under(primary_b) == before  # every entry's ciphertext is still there
    assert not fsck.run(vault).clean
    # fsck --repair puts the backup's id file back (the replaced one is kept).
    assert all(p.repaired for p in fsck.run(vault, repair=True).problems)
    assert fsck.run(vault).clean
    fresh = fs_of(vault)
    node = fresh.lookup(fresh.inodes.root, b"b")
    assert sorted(p for p, _ in fresh.listdir(node)) == [b"precious-0", b"precious-1", b"precious-2"]


def damage_root_id(vault) -> str:
    """A vault holding one file, whose root directory id file is damaged on the primary."""
    fs = fs_of(vault)
    fs.create_file(fs.inodes.root, b"f", stat.S_IFREG | 0o644, ME, content=b"data")
    root_id = os.path.join(vault.locations[0], "tree", names.DIR_ID_NAME)
    with open(root_id, "r+b") as f:
        f.seek(40)
        f.write(b"\xff\xff")
    return root_id


def test_a_damaged_root_id_heals_from_the_backup(new_vault):
    vault, _ = new_vault
    root_id = damage_root_id(vault)
    fresh = fs_of(vault)                      # a mount: reads the root from the backup, heals
    assert fresh.read_all(fresh.lookup(fresh.inodes.root, b"f")) == b"data"
    with open(root_id, "rb") as a, open(os.path.join(vault.locations[1], "tree", names.DIR_ID_NAME), "rb") as b:
        assert a.read() == b.read()


def test_fsck_repairs_a_damaged_root_id_and_quarantines_what_it_replaces(new_vault):
    vault, _ = new_vault
    damage_root_id(vault)
    report = fsck.run(vault, repair=True)
    assert report.problems and all(p.repaired for p in report.problems)
    assert fsck.run(vault).clean
    assert os.listdir(os.path.join(vault.locations[0], QUARANTINE_DIR))


def test_a_damaged_entry_name_is_healed_and_the_junk_kept(new_vault):
    vault, _ = new_vault
    fs = fs_of(vault)
    fs.create_file(fs.inodes.root, b"named", stat.S_IFREG | 0o644, ME, content=b"x")
    disk = names.on_disk_name(names.encrypt_name(fs.inodes.root.keys, b"named"))
    tree = os.path.join(vault.locations[0], "tree")
    os.rename(os.path.join(tree, disk), os.path.join(tree, "a" + disk[1:] if disk[0] != "a" else "b" + disk[1:]))
    fresh = fs_of(vault)
    assert [p for p, _ in fresh.listdir(fresh.inodes.root)] == [b"named"]
    assert os.path.exists(os.path.join(tree, disk))
    kept = os.listdir(os.path.join(vault.locations[0], QUARANTINE_DIR))
    assert len(kept) == 1


def test_sync_never_copies_a_file_that_fails_authentication(new_vault):
    vault, _ = new_vault
    fs = fs_of(vault)
    for name in (b"tampered", b"changed"):
        fs.create_file(fs.inodes.root, name, stat.S_IFREG | 0o644, ME, content=b"v1 " * 5000)
    # A legitimate change on the primary alone (the backup missed a session) ...
    primary_only = open_tree(vault, vault.locations[0])
    node = primary_only.lookup(primary_only.inodes.root, b"changed")
    handle = primary_only.open(node, True)
    handle.write(0, b"v2 " * 6000)
    primary_only.release(node)
    # ... and a tampered file on the primary.
    disk = names.on_disk_name(names.encrypt_name(fs.inodes.root.keys, b"tampered"))
    with open(os.path.join(vault.locations[0], "tree", disk), "r+b") as f:
        f.seek(5000)
        f.write(b"\x00evil")
    stats = mirror.sync_replica(vault, vault.locations[0], vault.locations[1])
    assert stats.damaged == 1 and stats.files_changed >= 1
    backup_view = open_tree(vault, vault.locations[1], read_only=True)
    assert backup_view.read_all(backup_view.lookup(backup_view.inodes.root, b"tampered")) == b"v1 " * 5000
    assert backup_view.read_all(backup_view.lookup(backup_view.inodes.root, b"changed")) == b"v2 " * 6000
