"""Format 2: a directory is authenticated as a whole by its table. Each tamper an
attacker with both drives (and no key) can try is caught by the mount and by fsck:
a swapped, removed, added or rolled-back entry, a rolled-back file or directory, and
the whole vault rolled back to an older copy of both drives."""

import os
import shutil
import stat

import pytest

from pqcfs import fsck
from pqcfs import vault as vault_mod
from pqcfs.errors import DamagedStructure, PqcfsError, RolledBack
from pqcfs.fs.common import Caller, FsError
from pqcfs.session.session import Session
from pqcfs.store.drive import QUARANTINE_DIR
from pqcfs.vault import Credentials
from tests.conftest import PASSPHRASE

ME = Caller(uid=1000, gid=1000)


def unlock(locations):
    return vault_mod.unlock(list(locations), Credentials(passphrase=PASSPHRASE))


def session(locations, tmp_path, change=None):
    """One mount session without the kernel; change(vfs) runs inside it. Returns what
    change returned."""
    vault = unlock(locations)
    s = Session(vault, str(tmp_path / "mnt"))
    s.prepare()
    vfs = s.build()
    try:
        return change(vfs) if change else None
    finally:
        s._finish()
        vault.close()


def write(vfs, node, data):
    content = vfs.open(node, True)
    content.truncate(0)
    content.write(0, data)
    vfs.release(node)


def slurp(path):
    with open(path, "rb") as f:
        return f.read()


def populate(vfs):
    root = vfs.inodes.root
    for name in (b"a", b"b"):
        d = vfs.mkdir(root, b"dir-" + name, 0o755, ME)
        vfs.create_file(d, b"inside-" + name, stat.S_IFREG | 0o644, ME, content=b"in " + name)
    for name in (b"one", b"two", b"three"):
        write(vfs, vfs.create_file(root, name, stat.S_IFREG | 0o644, ME), b"contents of " + name * 100)
    return {p: d for p, d in vfs.listdir(root)}


@pytest.fixture
def vault_dirs(new_vault, tmp_path):
    vault, _ = new_vault
    locations = list(vault.locations)
    vault.close()
    disk = session(locations, tmp_path, populate)
    return locations, disk


def on_both(locations, fn):
    for location in locations:
        fn(os.path.join(location, "tree"))


def read_back(locations, tmp_path, p_name):
    def read(vfs):
        return vfs.read_all(vfs.lookup(vfs.inodes.root, p_name))
    return session(locations, tmp_path, read)


def fsck_clean(locations) -> bool:
    vault = unlock(locations)
    try:
        return fsck.run(vault).clean
    finally:
        vault.close()


def test_an_untouched_vault_is_clean(vault_dirs, tmp_path):
    locations, _ = vault_dirs
    assert read_back(locations, tmp_path, b"one") == b"contents of " + b"one" * 100
    assert fsck_clean(locations)


def swap_on_both(locations, a_name: str, b_name: str):
    def swap(tree):
        a, b = os.path.join(tree, a_name), os.path.join(tree, b_name)
        os.rename(a, a + ".tmp")
        os.rename(b, a)
        os.rename(a + ".tmp", b)
    on_both(locations, swap)


def test_two_files_swapped_in_one_directory(vault_dirs, tmp_path):
    locations, disk = vault_dirs
    swap_on_both(locations, disk[b"one"], disk[b"two"])
    with pytest.raises(DamagedStructure, match="swapped"):
        read_back(locations, tmp_path, b"one")
    assert not fsck_clean(locations)


def test_two_directories_swapped_under_one_parent(vault_dirs, tmp_path):
    locations, disk = vault_dirs
    swap_on_both(locations, disk[b"dir-a"], disk[b"dir-b"])
    with pytest.raises(PqcfsError):
        session(locations, tmp_path, lambda vfs: vfs.lookup(vfs.inodes.root, b"dir-a"))
    assert not fsck_clean(locations)


def test_an_entry_deleted_on_both_drives(vault_dirs, tmp_path):
    locations, disk = vault_dirs
    on_both(locations, lambda tree: os.unlink(os.path.join(tree, disk[b"three"])))

    def look(vfs):
        assert b"three" in dict(vfs.listdir(vfs.inodes.root))    # the table still names it ...
        with pytest.raises(DamagedStructure, match="gone"):       # ... and says it is gone
            vfs.lookup(vfs.inodes.root, b"three")
    session(locations, tmp_path, look)
    assert not fsck_clean(locations)


def test_an_entry_added_on_both_drives_is_kept_out_of_the_way(vault_dirs, tmp_path):
    locations, disk = vault_dirs
    # A real entry of the vault, copied into another directory (so it even authenticates
    # under a key the attacker can not know: the names are the same length).
    on_both(locations, lambda tree: shutil.copy(os.path.join(tree, disk[b"one"]),
                                                os.path.join(tree, disk[b"dir-a"], disk[b"one"])))
    names = session(locations, tmp_path,
                    lambda vfs: [p for p, _ in vfs.listdir(vfs.lookup(vfs.inodes.root, b"dir-a"))])
    assert names == [b"inside-a"]
    assert os.listdir(os.path.join(locations[0], QUARANTINE_DIR))   # moved aside, not deleted


def test_one_file_rolled_back_on_both_drives(vault_dirs, tmp_path):
    locations, disk = vault_dirs
    old = {loc: slurp(os.path.join(loc, "tree", disk[b"two"])) for loc in locations}
    session(locations, tmp_path, lambda vfs: write(vfs, vfs.lookup(vfs.inodes.root, b"two"), b"new contents"))
    assert read_back(locations, tmp_path, b"two") == b"new contents"
    for loc, data in old.items():
        with open(os.path.join(loc, "tree", disk[b"two"]), "wb") as f:
            f.write(data)
    with pytest.raises(DamagedStructure, match="rolled back"):
        read_back(locations, tmp_path, b"two")
    assert not fsck_clean(locations)


def test_one_directory_rolled_back_on_both_drives(vault_dirs, tmp_path):
    """The attacker restores an older copy of one directory (its table and entries alike,
    so it is consistent in itself): its parent recorded a newer table at unmount."""
    locations, disk = vault_dirs
    folder = lambda loc: os.path.join(loc, "tree", disk[b"dir-a"])  # noqa: E731
    before = {loc: (slurp(os.path.join(folder(loc), "d.t")), set(os.listdir(folder(loc))))
              for loc in locations}
    session(locations, tmp_path, lambda vfs: vfs.create_file(vfs.lookup(vfs.inodes.root, b"dir-a"), b"later",
                                                             stat.S_IFREG | 0o644, ME))
    for loc, (table, entries) in before.items():
        with open(os.path.join(folder(loc), "d.t"), "wb") as f:
            f.write(table)
        for name in set(os.listdir(folder(loc))) - entries:
            os.unlink(os.path.join(folder(loc), name))
    with pytest.raises(DamagedStructure, match="rolled back"):
        session(locations, tmp_path, lambda vfs: vfs.lookup(vfs.inodes.root, b"dir-a"))
    assert not fsck_clean(locations)


def test_the_whole_vault_rolled_back_is_refused_on_a_machine_that_saw_it_newer(vault_dirs, tmp_path):
    locations, _ = vault_dirs
    copies = []
    for n, loc in enumerate(locations):
        copies.append(str(tmp_path / f"old-{n}"))
        shutil.copytree(loc, copies[-1], symlinks=True)
    session(locations, tmp_path, lambda vfs: vfs.unlink(vfs.inodes.root, b"three"))
    for loc, copy in zip(locations, copies):
        shutil.rmtree(loc)
        shutil.copytree(copy, loc, symlinks=True)
    with pytest.raises(RolledBack, match="older state"):
        session(locations, tmp_path)
    assert not fsck_clean(locations)


def test_times_are_pqcfs_own_in_nanoseconds(vault_dirs, tmp_path):
    locations, _ = vault_dirs

    def touch(vfs):
        node = vfs.lookup(vfs.inodes.root, b"one")
        vfs.set_times(node, 1_000_000_001, 978_307_200_123_456_789)
        vfs.set_mode(node, 0o600)
    session(locations, tmp_path, touch)

    def look(vfs):
        e = vfs.lookup(vfs.inodes.root, b"one").entry
        return e.atime, e.mtime, e.ctime, stat.S_IMODE(e.mode)
    atime, mtime, ctime, mode = session(locations, tmp_path, look)
    assert (atime, mtime, mode) == (1_000_000_001, 978_307_200_123_456_789, 0o600)
    assert ctime > mtime     # the chmod came after: ctime is now, never the mtime set by touch -d


def test_lookups_of_missing_names_read_no_file(vault_dirs, tmp_path):
    locations, _ = vault_dirs

    def look(vfs):
        vfs.lookup(vfs.inodes.root, b"one")
        before = slurp("/proc/self/io").decode()
        for n in range(200):
            with pytest.raises(FsError):
                vfs.lookup(vfs.inodes.root, b"nothing-%d" % n)
        return before, slurp("/proc/self/io").decode()
    before, after = session(locations, tmp_path, look)
    syscr = lambda text: int(next(l for l in text.splitlines() if l.startswith("syscr")).split()[1])  # noqa: E731,E741
    assert syscr(after) - syscr(before) < 10


def dying_session(locations, tmp_path):
    """A mount session without the kernel that a test ends without its unmount (a killed
    daemon): (vault, session, vfs)."""
    vault = unlock(locations)
    s = Session(vault, str(tmp_path / "mnt"))
    s.prepare()
    return vault, s, s.build()


@pytest.mark.parametrize("drives", [1, 2])
def test_a_crash_mid_change_is_reconciled_not_reported(vault_dirs, tmp_path, drives):
    """The daemon dies with a file half written, its table record torn and a create not
    yet in the table: the next mount rebuilds the tables the intent log names (on one
    drive as on two), and nothing written is lost or reported as tampering."""
    locations = vault_dirs[0][:drives]
    vault, s, vfs = dying_session(locations, tmp_path)
    node = vfs.lookup(vfs.inodes.root, b"one")
    content = vfs.open(node, True)
    content.write(0, b"X" * 10_000)          # header counter raised, table not yet told
    vfs.create_file(vfs.inodes.root, b"born", stat.S_IFREG | 0o644, ME, content=b"new")
    table = os.path.join(locations[0], "tree", "d.t")
    with open(table, "r+b") as f:             # the create's record torn on the primary
        f.truncate(os.path.getsize(table) - 9)
    s.intent.sync()
    vault.close()                             # no unmount: the daemon is gone
    assert read_back(locations, tmp_path, b"one") == b"X" * 10_000
    assert read_back(locations, tmp_path, b"born") == b"new"
    assert fsck_clean(locations)


@pytest.mark.parametrize("drives", [1, 2])
def test_a_crash_after_removals_the_table_held_back_is_reconciled_not_reported(vault_dirs, tmp_path, drives):
    """Removals wait for the directory's next record; the daemon dies before it: the next
    mount rebuilds the table from the drives, the removed names stay removed, a name
    removed and made again keeps its new file, and nothing is reported as tampering."""
    locations = vault_dirs[0][:drives]
    vault, s, vfs = dying_session(locations, tmp_path)
    table = os.path.join(locations[0], "tree", "d.t")
    before = os.path.getsize(table)
    vfs.unlink(vfs.inodes.root, b"one")
    vfs.unlink(vfs.inodes.root, b"two")
    vfs.unlink(vfs.lookup(vfs.inodes.root, b"dir-a"), b"inside-a")
    assert os.path.getsize(table) == before          # no record yet
    vfs.create_file(vfs.inodes.root, b"two", stat.S_IFREG | 0o644, ME, content=b"second life")
    s.intent.sync()
    vault.close()                                    # no unmount: the daemon is gone

    def names_and_two(vfs):
        with pytest.raises(FsError):
            vfs.lookup(vfs.inodes.root, b"one")
        return (sorted(p for p, _ in vfs.listdir(vfs.inodes.root)), vfs.listdir(vfs.lookup(vfs.inodes.root, b"dir-a")),
                vfs.read_all(vfs.lookup(vfs.inodes.root, b"two")))
    listed, inside_a, two = session(locations, tmp_path, names_and_two)
    assert listed == [b"dir-a", b"dir-b", b"three", b"two"] and inside_a == [] and two == b"second life"
    assert fsck_clean(locations)


@pytest.mark.parametrize("drives", [1, 2])
def test_a_crash_before_the_record_of_files_made_keeps_them_whole(vault_dirs, tmp_path, drives):
    """Files made and closed wait for their directory's next record; the daemon dies
    before it: the next mount rebuilds the table from the drives, every file is there
    with its bytes, size and the mode it was made with (a chmod since is what a crash
    loses), a file made and removed again stays removed, and nothing is reported as
    tampering."""
    locations = vault_dirs[0][:drives]
    vault, s, vfs = dying_session(locations, tmp_path)
    table = os.path.join(locations[0], "tree", "d.t")
    before = os.path.getsize(table)
    made = {}
    for n in range(20):
        node = vfs.create(vfs.inodes.root, b"new%02d" % n, stat.S_IFREG | 0o640, ME)
        made[b"new%02d" % n] = os.urandom(n * 700)
        node.content.write(0, made[b"new%02d" % n])
        if n == 3:
            vfs.set_mode(node, 0o600)
        vfs.release(node)
    vfs.unlink(vfs.inodes.root, b"new05")
    del made[b"new05"]
    assert os.path.getsize(table) == before          # no record yet
    s.intent.sync()
    vault.close()                                    # no unmount: the daemon is gone

    def found(vfs):
        root = vfs.inodes.root
        return {p: (vfs.read_all(vfs.lookup(root, p)), stat.S_IMODE(vfs.lookup(root, p).meta.mode))
                for p, _ in vfs.listdir(root) if p.startswith(b"new")}
    got = session(locations, tmp_path, found)
    assert {p: data for p, (data, _) in got.items()} == made
    assert {mode for _, mode in got.values()} == {0o640}
    assert fsck_clean(locations)


def test_a_crash_after_held_files_were_renamed_linked_and_exchanged(vault_dirs, tmp_path):
    """Files made whose entries wait for their directory's next record, then renamed over
    a recorded file, over each other, into another directory, linked and exchanged; the
    daemon dies: the next mount has exactly the result, and nothing reports tampering."""
    locations = vault_dirs[0]
    vault, s, vfs = dying_session(locations, tmp_path)
    root = vfs.inodes.root
    sub = vfs.lookup(root, b"dir-a")

    def made(parent, name, data):
        node = vfs.create(parent, name, stat.S_IFREG | 0o644, ME)
        node.content.write(0, data)
        vfs.release(node)
    made(root, b".one.tmp", b"new one")
    vfs.rename(root, b".one.tmp", root, b"one")
    made(root, b"a", b"A")
    made(root, b"b", b"B")
    vfs.rename(root, b"a", root, b"b")
    made(root, b"moved", b"M")
    vfs.rename(root, b"moved", sub, b"moved")
    made(sub, b"linked", b"L")
    vfs.link(vfs.lookup(sub, b"linked"), root, b"second")
    made(root, b"x", b"X")
    made(sub, b"y", b"Y")
    vfs.rename(root, b"x", sub, b"y", exchange=True)
    s.intent.sync()
    vault.close()                                    # no unmount: the daemon is gone

    def found(vfs):
        root = vfs.inodes.root
        sub = vfs.lookup(root, b"dir-a")
        return ({p: vfs.read_all(vfs.lookup(root, p)) for p in (b"one", b"b", b"second", b"x")},
                {p: vfs.read_all(vfs.lookup(sub, p)) for p in (b"moved", b"linked", b"y")},
                {p for p, _ in vfs.listdir(root)} & {b".one.tmp", b"a", b"moved"})
    top, inside, gone = session(locations, tmp_path, found)
    assert top == {b"one": b"new one", b"b": b"A", b"second": b"L", b"x": b"Y"}
    assert inside == {b"moved": b"M", b"linked": b"L", b"y": b"X"} and gone == set()
    assert fsck_clean(locations)


def test_a_table_damaged_on_one_drive_heals_on_mount_and_fsck_repairs_it(vault_dirs, tmp_path):
    locations, disk = vault_dirs
    for loc in reversed(locations):            # the backup first: fsck --repair's case
        table = os.path.join(loc, "tree", disk[b"dir-a"], "d.t")
        data = bytearray(slurp(table))
        data[-3] ^= 1
        with open(table, "wb") as f:
            f.write(data)
        vault = unlock(locations)
        try:
            if loc == locations[1]:
                report = fsck.run(vault, repair=True)
                assert report.problems and all(p.repaired for p in report.problems)
                assert fsck.run(vault).clean
            else:
                vault.close()
                names = session(locations, tmp_path, lambda vfs: [
                    p for p, _ in vfs.listdir(vfs.lookup(vfs.inodes.root, b"dir-a"))])
                assert names == [b"inside-a"]             # read from the backup, primary healed
                vault = unlock(locations)
                assert fsck.run(vault).clean
        finally:
            vault.close()


def test_an_unmount_with_files_still_open_keeps_their_sizes_and_times(vault_dirs, tmp_path):
    """The daemon stopped (SIGTERM) before the kernel's release of a just-written file
    arrived: the unmount writes what only memory held."""
    locations, _ = vault_dirs

    def create_and_leave_open(vfs):
        node = vfs.create(vfs.inodes.root, b"open at unmount", stat.S_IFREG | 0o644, ME)
        node.content.write(0, b"written, never released")
        existing = vfs.lookup(vfs.inodes.root, b"one")
        vfs.open(existing, True).write(0, b"CHANGED")
    session(locations, tmp_path, create_and_leave_open)
    assert read_back(locations, tmp_path, b"open at unmount") == b"written, never released"
    assert read_back(locations, tmp_path, b"one").startswith(b"CHANGED")
    assert fsck_clean(locations)
