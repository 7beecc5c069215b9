"""Operation-level tests: the file system core and the pyfuse3 Operations, no kernel."""

import errno
import os
import stat
import types

import pyfuse3
import pytest
import trio

from pqcfs import fsck
from pqcfs.format import link_attrs
from pqcfs.fs.inodes import SPILL, Node, inode_number, link_path
from pqcfs.fs.trees import open_tree
from pqcfs.fuse.operations import Operations
from pqcfs.fs.vaultfs import Caller, FsError
from pqcfs.store.replicas import TREE_DIR

ME = Caller(uid=1000, gid=1000)


@pytest.fixture
def vfs(new_vault):
    vault, _ = new_vault
    return make_vfs(vault)


def make_vfs(vault):
    return open_tree(vault)


def write(vfs, node, offset, data):
    content = vfs.open(node, True)
    content.write(offset, data)
    vfs.release(node)


def read(vfs, node):
    return vfs.read_all(node)


def test_create_write_read_back_after_reopen(new_vault, vfs):
    root = vfs.inodes.root
    f = vfs.create_file(root, b"notes.txt", stat.S_IFREG | 0o640, ME)
    write(vfs, f, 0, b"hello world")
    assert read(vfs, f) == b"hello world"
    # A fresh VaultFS (a new mount) decrypts the same bytes and metadata.
    again = make_vfs(new_vault[0])
    node = again.lookup(again.inodes.root, b"notes.txt")
    assert again.read_all(node) == b"hello world"
    assert (node.meta.uid, node.meta.gid, stat.S_IMODE(node.meta.mode)) == (1000, 1000, 0o640)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096, 3 * 4096 + 17])
def test_writes_at_every_alignment_match_a_model(vfs, size):
    rng = __import__("random").Random(size)
    f = vfs.create_file(vfs.inodes.root, b"f", stat.S_IFREG | 0o644, ME)
    model = bytearray(os.urandom(size))
    write(vfs, f, 0, bytes(model))
    for _ in range(40):
        off = rng.randrange(0, size + 9000)
        data = os.urandom(rng.randrange(1, 9000))
        if off > len(model):
            model.extend(bytes(off - len(model)))
        model[off:off + len(data)] = data
        write(vfs, f, off, data)
        if rng.random() < 0.3:
            new = rng.randrange(0, len(model) + 10000)
            vfs.truncate(f, new)
            model = model[:new] + bytes(max(0, new - len(model)))
        assert read(vfs, f) == bytes(model)


def test_sparse_file_far_beyond_the_end(vfs):
    f = vfs.create_file(vfs.inodes.root, b"sparse", stat.S_IFREG | 0o644, ME)
    write(vfs, f, 10 * 1024 * 1024, b"end")
    assert f.size == 10 * 1024 * 1024 + 3
    content = vfs.open(f, False)
    assert content.read(5 * 1024 * 1024, 4) == bytes(4)
    assert content.read(10 * 1024 * 1024, 10) == b"end"
    vfs.release(f)


def test_names_directories_and_errors(vfs):
    root = vfs.inodes.root
    d = vfs.mkdir(root, b"dir", 0o755, ME)
    vfs.create_file(d, b"inner", stat.S_IFREG | 0o600, ME)
    assert [p for p, _ in vfs.listdir(root)] == [b"dir"]
    with pytest.raises(FsError) as e:
        vfs.mkdir(root, b"dir", 0o755, ME)
    assert e.value.errno == errno.EEXIST
    with pytest.raises(FsError) as e:
        vfs.rmdir(root, b"dir")
    assert e.value.errno == errno.ENOTEMPTY
    with pytest.raises(FsError) as e:
        vfs.lookup(root, b"missing")
    assert e.value.errno == errno.ENOENT
    with pytest.raises(FsError) as e:
        vfs.create_file(root, b"x" * 256, stat.S_IFREG, ME)
    assert e.value.errno == errno.ENAMETOOLONG
    for too_long in (lambda: vfs.lookup(root, b"x" * 256), lambda: vfs.unlink(root, b"x" * 256),
                     lambda: vfs.rmdir(root, b"x" * 256), lambda: vfs.rename(root, b"x" * 256, root, b"y")):
        with pytest.raises(FsError) as e:
            too_long()
        assert e.value.errno == errno.ENAMETOOLONG
    vfs.unlink(d, b"inner")
    vfs.rmdir(root, b"dir")
    assert vfs.listdir(root) == []


def test_long_names_round_trip_and_rename(new_vault, vfs):
    root = vfs.inodes.root
    long_name = "ä".encode() * 120  # 240 bytes
    f = vfs.create_file(root, long_name, stat.S_IFREG | 0o644, ME)
    write(vfs, f, 0, b"long")
    assert [p for p, _ in vfs.listdir(root)] == [long_name]
    vfs.rename(root, long_name, root, b"short", False)
    vfs.rename(root, b"short", root, long_name + b"!", False)
    again = make_vfs(new_vault[0])
    assert [p for p, _ in again.listdir(again.inodes.root)] == [long_name + b"!"]
    tree = os.listdir(os.path.join(new_vault[0].locations[0], "tree"))
    assert sorted(n.endswith(".n") for n in tree).count(True) == 1


def test_moves_keep_keys_through_overrides(new_vault, vfs):
    root = vfs.inodes.root
    a = vfs.mkdir(root, b"a", 0o755, ME)
    b = vfs.mkdir(root, b"b", 0o755, ME)
    sub = vfs.mkdir(a, b"sub", 0o755, ME)
    f = vfs.create_file(sub, b"f", stat.S_IFREG | 0o644, ME)
    write(vfs, f, 0, b"payload")
    vfs.rename(a, b"sub", b, b"moved", False)
    again = make_vfs(new_vault[0])
    moved = again.lookup(again.lookup(again.inodes.root, b"b"), b"moved")
    assert again.read_all(again.lookup(moved, b"f")) == b"payload"
    # Moving back home drops the override again.
    vfs.rename(b, b"moved", a, b"sub", False)
    assert not os.path.exists(os.path.join(new_vault[0].locations[0], "tree", a.disk_name, "d.ov"))
    third = make_vfs(new_vault[0])
    home = third.lookup(third.lookup(third.inodes.root, b"a"), b"sub")
    assert third.read_all(third.lookup(home, b"f")) == b"payload"


def test_rename_replace_noreplace_exchange(vfs):
    root = vfs.inodes.root
    vfs.create_file(root, b"x", stat.S_IFREG | 0o644, ME, content=b"X")
    vfs.create_file(root, b"y", stat.S_IFREG | 0o644, ME, content=b"Y")
    with pytest.raises(FsError) as e:
        vfs.rename(root, b"x", root, b"y", noreplace=True)
    assert e.value.errno == errno.EEXIST
    d = vfs.mkdir(root, b"d", 0o755, ME)
    vfs.rename(root, b"x", d, b"y", exchange=False)
    vfs.rename(d, b"y", root, b"y", exchange=True)
    assert vfs.read_all(vfs.lookup(root, b"y")) == b"X"
    assert vfs.read_all(vfs.lookup(d, b"y")) == b"Y"
    vfs.rename(root, b"y", d, b"y")  # replaces
    assert vfs.read_all(vfs.lookup(d, b"y")) == b"X"
    assert [p for p, _ in vfs.listdir(d)] == [b"y"] and [p for p, _ in vfs.listdir(root)] == [b"d"]
    with pytest.raises(FsError) as e:
        vfs.rename(root, b"d", d, b"inside")
    assert e.value.errno == errno.EINVAL


def test_symlinks_fifos_xattrs_and_modes(new_vault, vfs):
    root = vfs.inodes.root
    vfs.create_file(root, b"link", stat.S_IFLNK | 0o777, ME, content=b"../target")
    fifo = vfs.create_file(root, b"fifo", stat.S_IFIFO | 0o600, ME)
    vfs.set_xattr(fifo, b"user.colour", b"blue")
    vfs.set_mode(fifo, 0o640)
    vfs.set_owner(fifo, 7, 8)
    again = make_vfs(new_vault[0])
    assert again.read_all(again.lookup(again.inodes.root, b"link")) == b"../target"
    fifo2 = again.lookup(again.inodes.root, b"fifo")
    assert stat.S_ISFIFO(fifo2.meta.mode) and stat.S_IMODE(fifo2.meta.mode) == 0o640
    assert (fifo2.meta.uid, fifo2.meta.gid) == (7, 8)
    assert again.xattrs(fifo2) == {b"user.colour": b"blue"}
    vfs.set_xattr(fifo, b"user.colour", None)
    third = make_vfs(new_vault[0])
    assert third.xattrs(third.lookup(third.inodes.root, b"fifo")) == {}


def test_corrupt_block_is_healed_from_the_backup(new_vault, vfs):
    f = vfs.create_file(vfs.inodes.root, b"f", stat.S_IFREG | 0o644, ME)
    write(vfs, f, 0, b"A" * 10000)
    primary = os.path.join(new_vault[0].locations[0], "tree", f.disk_name)
    with open(primary, "r+b") as fh:
        fh.seek(200)
        fh.write(b"\xff\xff")
    fresh = make_vfs(new_vault[0])
    assert fresh.read_all(fresh.lookup(fresh.inodes.root, b"f")) == b"A" * 10000
    assert fresh.heal_events == 1
    backup = os.path.join(new_vault[0].locations[1], "tree", f.disk_name)
    with open(primary, "rb") as p, open(backup, "rb") as b:
        assert p.read() == b.read()


def test_corrupt_block_on_every_replica_is_an_io_error(new_vault, vfs):
    f = vfs.create_file(vfs.inodes.root, b"f", stat.S_IFREG | 0o644, ME)
    write(vfs, f, 0, b"A" * 10000)
    for loc in new_vault[0].locations:
        with open(os.path.join(loc, "tree", f.disk_name), "r+b") as fh:
            fh.seek(5000)
            fh.write(b"\x00\x01")
    ops = Operations(make_vfs(new_vault[0]))

    async def scenario():
        entry = await ops.lookup(pyfuse3.ROOT_INODE, b"f")
        fi = await ops.open(entry.st_ino, os.O_RDONLY, None)
        assert await ops.read(fi.fh, 0, 100) == b"A" * 100
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.read(fi.fh, 4096, 100)
        assert e.value.errno == errno.EIO
        await ops.release(fi.fh)
    trio.run(scenario)


def test_operations_translate_and_count_lookups(vfs):
    ops = Operations(vfs)

    class Ctx:
        uid, gid, umask, pid = 1000, 1000, 0o022, 1

    async def scenario():
        fi, entry = await ops.create(pyfuse3.ROOT_INODE, b"a", stat.S_IFREG | 0o644, os.O_RDWR, Ctx())
        assert await ops.write(fi.fh, 0, b"data") == 4
        assert (await ops.getattr(entry.st_ino)).st_size == 4
        await ops.release(fi.fh)
        again = await ops.lookup(pyfuse3.ROOT_INODE, b"a")
        assert again.st_ino == entry.st_ino and vfs.inodes[entry.st_ino].lookups == 2
        await ops.forget([(entry.st_ino, 2)])
        assert vfs.inodes.get(entry.st_ino) is None
        assert (await ops.lookup(pyfuse3.ROOT_INODE, b"missing")).st_ino == 0  # cached negative entry
        with pytest.raises(pyfuse3.FUSEError) as e:
            await ops.getxattr(pyfuse3.ROOT_INODE, b"user.none", Ctx())
        assert e.value.errno == pyfuse3.ENOATTR
    trio.run(scenario)


def test_set_id_bits_drop_where_the_kernel_marks_it_and_at_every_chown(new_vault, vfs):
    """Under FUSE_HANDLE_KILLPRIV_V2 the kernel marks the writes, truncations and O_TRUNC
    opens of callers without CAP_FSETID and leaves the clearing to pqcfs; unmarked ones
    keep the bits, a chown of a non-directory drops them always. The modes are kept."""
    ops = Operations(vfs)
    assert ops.handle_killpriv_v2

    class Ctx:
        uid, gid, umask, pid = 0, 0, 0o022, 1

    def fields(**set_):
        names = ("atime", "mtime", "ctime", "mode", "uid", "gid", "size")
        return types.SimpleNamespace(**{f"update_{n}": set_.get(n, False) for n in names},
                                     kill_suidgid=set_.get("kill", False))

    async def made(name, mode):
        fi, entry = await ops.create(pyfuse3.ROOT_INODE, name, stat.S_IFREG | mode, os.O_RDWR, Ctx())
        await ops.write(fi.fh, 0, b"#!/bin/sh\n")
        return fi.fh

    def mode_of(ino):
        return stat.S_IMODE(vfs.inodes[ino].meta.mode)

    async def scenario():
        attr = pyfuse3.EntryAttributes()
        attr.st_size, attr.st_uid, attr.st_gid = 1, 4321, 4321
        plain, marked, locking = [await made(n, m) for n, m in
                                  ((b"plain", 0o6755), (b"marked", 0o6755), (b"locking", 0o6745))]
        await ops.write(plain, 0, b"x")                                  # root: no mark
        await ops.setattr(plain, attr, fields(size=True), plain, Ctx())
        assert mode_of(plain) == 0o6755
        await ops.write(marked, 0, b"x", kill_suidgid=True)
        await ops.write(locking, 0, b"x", kill_suidgid=True)
        assert (mode_of(marked), mode_of(locking)) == (0o755, 0o2745)
        for how in ("setattr", "open"):
            ino = await made(how.encode(), 0o6755)
            if how == "setattr":
                await ops.setattr(ino, attr, fields(size=True, kill=True), ino, Ctx())
            else:
                await ops.open(ino, os.O_WRONLY | os.O_TRUNC, Ctx(), kill_suidgid=True)
            assert mode_of(ino) == 0o755, how
        # A setattr with nothing to set is the kernel's own request (a fallocate by such
        # a caller); a directory is left alone.
        asked = await made(b"asked", 0o6755)
        await ops.setattr(asked, attr, fields(), asked, Ctx())
        assert mode_of(asked) == 0o755
        chowned = await made(b"chowned", 0o6755)
        await ops.setattr(chowned, attr, fields(uid=True, gid=True), chowned, Ctx())
        assert mode_of(chowned) == 0o755
        d = await ops.mkdir(pyfuse3.ROOT_INODE, b"d", stat.S_IFDIR | 0o2775, Ctx())
        await ops.setattr(d.st_ino, attr, fields(uid=True), None, Ctx())
        assert mode_of(d.st_ino) == 0o2775                          # a directory keeps it
        await ops.setattr(d.st_ino, attr, fields(), None, Ctx())
        assert mode_of(d.st_ino) == 0o2775
        for ino in (plain, marked, locking, asked, chowned):
            await ops.release(ino)
    trio.run(scenario)
    vfs.settle()
    again = make_vfs(new_vault[0])
    modes = {n: stat.S_IMODE(again.lookup(again.inodes.root, n).meta.mode)
             for n in (b"plain", b"marked", b"locking", b"setattr", b"open", b"chowned")}
    assert modes == {b"plain": 0o6755, b"marked": 0o755, b"locking": 0o2745, b"setattr": 0o755,
                     b"open": 0o755, b"chowned": 0o755}


def test_open_unlinked_file_keeps_working(vfs):
    root = vfs.inodes.root
    f = vfs.create_file(root, b"tmp", stat.S_IFREG | 0o644, ME)
    content = vfs.open(f, True)
    vfs.unlink(root, b"tmp")
    content.write(0, b"still here")
    assert content.read(0, 100) == b"still here"
    vfs.release(f)
    with pytest.raises(FsError):
        vfs.lookup(root, b"tmp")


def test_hard_links_share_one_node_across_directories_and_remounts(new_vault, vfs):
    root = vfs.inodes.root
    d = vfs.mkdir(root, b"d", 0o755, ME)
    f = vfs.create_file(root, b"orig", stat.S_IFREG | 0o644, ME, content=b"shared data")
    vfs.set_xattr(f, b"user.k", b"v")
    assert vfs.link(f, d, b"alias") is f and f.meta.nlink == 2
    vfs.link(f, root, b"third")
    write(vfs, vfs.lookup(d, b"alias"), 0, b"SHARED")
    assert read(vfs, vfs.lookup(root, b"third")) == b"SHARED data"
    again = make_vfs(new_vault[0])
    a = again.lookup(again.lookup(again.inodes.root, b"d"), b"alias")
    b = again.lookup(again.inodes.root, b"orig")
    assert a is b and a.meta.nlink == 3 and again.read_all(a) == b"SHARED data"
    assert again.xattrs(a) == {b"user.k": b"v"}
    vfs.unlink(root, b"orig")
    vfs.rename(d, b"alias", root, b"renamed")
    vfs.unlink(root, b"third")
    third = make_vfs(new_vault[0])
    last = third.lookup(third.inodes.root, b"renamed")
    assert last.meta.nlink == 1 and third.read_all(last) == b"SHARED data"
    vfs.unlink(root, b"renamed")
    shared_dir = os.path.join(new_vault[0].locations[0], "tree", "h.links")
    assert os.listdir(shared_dir) == []
    with pytest.raises(FsError) as e:
        vfs.link(d, root, b"dirlink")
    assert e.value.errno == errno.EPERM


def test_the_size_cap_follows_the_drives_serving(vfs, monkeypatch):
    """On drives without holes (exFAT) a size beyond the smallest one is EFBIG; when the
    drives serving change (the small stick replaced by a bigger one), the cap follows."""
    from pqcfs.store import devices
    monkeypatch.setattr(devices, "holds_sparse_files", lambda location: False)
    sizes = {n: 1 << 30 for n in range(len(vfs.replicas.drives))}
    sizes[1] = 64 << 20

    class Stat:
        def __init__(self, total):
            self.f_blocks, self.f_frsize = total // 4096, 4096

    for n, drive in enumerate(vfs.replicas.drives):
        monkeypatch.setattr(drive, "statvfs", lambda n=n: Stat(sizes[n]))
    with pytest.raises(FsError) as e:
        vfs.check_size(100 << 20)
    assert e.value.errno == errno.EFBIG
    bigger = type(vfs.replicas.drives[1])(vfs.replicas.drives[1].location)   # the replacement stick
    sizes[1] = 1 << 30
    monkeypatch.setattr(bigger, "statvfs", lambda: Stat(sizes[1]))
    vfs.replicas.drives[1] = bigger
    try:
        vfs.check_size(100 << 20)
    finally:
        bigger.close()


def test_a_read_the_primary_fails_is_served_by_the_backup_asking_the_primary_once(vfs, monkeypatch):
    """A drive failing under a read (EIO from a pulled stick, which can take seconds to
    come) drops the primary and the backup serves; the primary is not asked again."""
    from pqcfs.store import replicas as replicas_mod
    root = vfs.inodes.root
    f = vfs.create_file(root, b"f", stat.S_IFREG | 0o644, ME)
    data = os.urandom(3 * 4096)
    write(vfs, f, 0, data)
    content = vfs.open(f, False)
    content.file._open_later()                           # a reader opens the rest on need
    primary_fd = content.file.fds[0]
    real, asked = os.pread, []

    def pread(fd, size, offset):
        if fd == primary_fd:
            asked.append(offset)
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, size, offset)
    monkeypatch.setattr(replicas_mod.os, "pread", pread)
    assert bytes(vfs.read(f, 4096, 4096)) == data[4096:8192]
    assert len(asked) == 1 and 0 in vfs.replicas.failed
    assert bytes(vfs.read(f, 0, 4096)) == data[:4096] and len(asked) == 1
    monkeypatch.undo()
    vfs.release(f)


def test_inode_numbers_never_change_for_the_life_of_a_file(new_vault, vfs):
    """What backup tools and build systems rely on: st_ino of a file is the same after
    the kernel forgets it, after a rename or a move, for every hard link, after a remount,
    and on each replica alone."""
    vault, _ = new_vault
    root = vfs.inodes.root
    d = vfs.mkdir(root, b"dir", 0o755, ME)
    f = vfs.create_file(d, b"file", stat.S_IFREG | 0o644, ME, content=b"x")
    numbers = {"dir": d.ino, "file": f.ino}
    assert len(set(numbers.values()) | {root.ino}) == 3

    vfs.inodes.forget(f.ino, f.lookups)       # the kernel evicted it: looked up anew
    vfs.inodes.maybe_drop(f)
    assert vfs.inodes.get(numbers["file"]) is None
    assert vfs.lookup(d, b"file").ino == numbers["file"]

    vfs.rename(d, b"file", root, b"moved")
    assert vfs.lookup(root, b"moved").ino == numbers["file"]
    linked = vfs.link(vfs.lookup(root, b"moved"), d, b"second name")
    assert linked.ino == numbers["file"] and vfs.lookup(d, b"second name").ino == numbers["file"]

    for location in (None, *vault.locations):          # remounted; each replica on its own
        again = open_tree(vault, location, read_only=True)
        assert again.lookup(again.inodes.root, b"dir").ino == numbers["dir"]
        assert again.lookup(again.inodes.root, b"moved").ino == numbers["file"]
        assert again.lookup(again.lookup(again.inodes.root, b"dir"), b"second name").ino == numbers["file"]


def test_a_shared_inode_number_is_served_under_a_number_of_the_mounts_own(new_vault, vfs):
    """Two files whose node ids share the 63 bits an inode number is made of (made here
    on purpose) never share a number while the kernel holds both."""
    root = vfs.inodes.root
    a = vfs.create_file(root, b"a", stat.S_IFREG | 0o644, ME)
    twin_id = a.keys.node_id[:8] + bytes(8)
    assert inode_number(twin_id) == a.ino
    twin = vfs.inodes.add(Node(parent=root, p_name=b"twin", disk_name="t", keys=root.keys.child(twin_id),
                               meta=a.meta))
    assert twin.ino >= SPILL and twin.ino != a.ino and vfs.inodes.collisions == 1
    assert vfs.inodes[a.ino] is a and vfs.inodes[twin.ino] is twin


def test_a_hard_linked_files_times_are_its_own_authenticated_and_healed(new_vault, vfs):
    """Its times live in a sealed record beside its data (link_attrs), not in the drive's
    timestamps: exact to the nanosecond after a remount; a record that fails on the
    serving replica heals from another; one that fails everywhere leaves the file readable."""
    vault, _ = new_vault
    root = vfs.inodes.root
    f = vfs.create_file(root, b"f", stat.S_IFREG | 0o644, ME, content=b"x")
    vfs.link(f, root, b"g")
    vfs.set_times(f, 1_111_111_111_123_456_789, 1_222_222_222_987_654_321)
    record = f"{TREE_DIR}/{link_path(f.keys.node_id)}{link_attrs.SUFFIX}"
    primary, backup = (vault.drive(location) for location in vault.locations)

    def times_seen(tree):
        return tree.times(tree.lookup(tree.inodes.root, b"g"))[:2]
    assert times_seen(open_tree(vault, read_only=True)) == (1_111_111_111_123_456_789, 1_222_222_222_987_654_321)

    good = primary.read(record, link_attrs.LENGTH)
    primary.write_atomic(record, good[:20] + bytes([good[20] ^ 1]) + good[21:])
    healing = open_tree(vault)
    assert times_seen(healing) == (1_111_111_111_123_456_789, 1_222_222_222_987_654_321)
    assert healing.heal_events == 1 and primary.read(record, link_attrs.LENGTH) == good

    events = []
    for drive in (primary, backup):
        drive.write_atomic(record, good[:20] + bytes([good[20] ^ 1]) + good[21:])
    damaged = open_tree(vault, read_only=True, on_event=lambda event, **details: events.append(event))
    node = damaged.lookup(damaged.inodes.root, b"g")
    assert damaged.times(node) is not None and damaged.read_all(node) == b"x"
    assert events == ["integrity-failure"]


def test_fsck_checks_a_hard_linked_files_times_and_repair_rebuilds_them(new_vault, vfs):
    """fsck reads each hard-linked file's times record once; one that fails on every
    replica is rebuilt by --repair from the data file's times (and the file stays whole)."""
    vault, _ = new_vault
    root = vfs.inodes.root
    f = vfs.create_file(root, b"f", stat.S_IFREG | 0o644, ME, content=b"kept")
    vfs.link(f, root, b"g")
    assert fsck.run(vault).clean
    record = f"{TREE_DIR}/{link_path(f.keys.node_id)}{link_attrs.SUFFIX}"
    for location in vault.locations:
        drive = vault.drive(location)
        good = drive.read(record, link_attrs.LENGTH)
        drive.write_atomic(record, good[:30] + bytes([good[30] ^ 4]) + good[31:])
    report = fsck.run(vault)
    assert [p.what.split(":")[0] for p in report.problems] == ["times", "times"]
    assert all(p.repaired for p in fsck.run(vault, repair=True).problems)
    after = fsck.run(vault)
    assert after.clean and not after.problems and not after.differing_files
    again = open_tree(vault, read_only=True)
    assert again.read_all(again.lookup(again.inodes.root, b"g")) == b"kept"


def test_unlink_removes_an_xattr_side_file_only_where_the_table_says_there_is_one(new_vault, vfs):
    """rm -rf of 1,000 files once made 2,000 failed unlinks (an absent `.x` on each
    replica); the table's flag says whether there is one to remove."""
    vault, _ = new_vault
    root = vfs.inodes.root
    plain = vfs.create_file(root, b"plain", stat.S_IFREG | 0o644, ME)
    tagged = vfs.create_file(root, b"tagged", stat.S_IFREG | 0o644, ME)
    vfs.set_xattr(tagged, b"user.tag", b"v")
    sidecars = [f"{TREE_DIR}/{node.c_path}.x" for node in (plain, tagged)]
    asked = []
    real_unlink = vfs.replicas.unlink
    vfs.replicas.unlink = lambda rel, missing_ok=False: (asked.append(rel), real_unlink(rel, missing_ok))
    vfs.unlink(root, b"plain")
    vfs.unlink(root, b"tagged")
    assert not any(rel.endswith(plain.disk_name + ".x") for rel in asked)
    assert any(rel.endswith(tagged.disk_name + ".x") for rel in asked)
    for location in vault.locations:
        assert not any(vault.drive(location).exists(sidecar) for sidecar in sidecars)


def test_a_read_moves_atime_in_memory_and_its_directory_writes_it_later(new_vault, vfs):
    """Lazy atime: a read that only moves atime writes no table record; the atime goes
    with the directory's next record, an fsync, or the unmount, and survives a remount."""
    root = vfs.inodes.root
    f = vfs.create_file(root, b"old.txt", stat.S_IFREG | 0o644, ME)
    write(vfs, f, 0, b"read me")
    vfs.set_times(f, 1_000_000_000_000_000_000, 1_000_000_000_000_000_000)   # 2001: relatime will move it
    table = os.path.join(new_vault[0].locations[0], TREE_DIR, "d.t")
    before = os.path.getsize(table)
    content = vfs.open(f, False)
    content.read(0, 7)
    vfs.accessed(f)
    vfs.release(f)
    moved = f.entry.atime
    assert moved > 1_000_000_000_000_000_000
    assert os.path.getsize(table) == before                  # no record for an atime
    vfs.settle()                                             # what unmount does
    assert os.path.getsize(table) > before
    again = make_vfs(new_vault[0])
    node = again.lookup(again.inodes.root, b"old.txt")
    assert node.entry.atime == moved
    # The next record of the directory takes a pending atime along.
    again.set_times(node, 1_000_000_000_000_000_000, 1_000_000_000_000_000_000)
    again.accessed(node)
    later = node.entry.atime
    g = again.create_file(again.inodes.root, b"other.txt", stat.S_IFREG | 0o644, ME)
    write(again, g, 0, b"x")
    third = make_vfs(new_vault[0])
    assert third.lookup(third.inodes.root, b"old.txt").entry.atime == later


def test_removals_wait_for_the_directorys_next_record(new_vault, vfs, monkeypatch):
    """An unlink or rmdir removes the entry from memory and from the drives at once; its
    table record waits for the directory's next one (or the unmount, or GONE_HELD of
    them). A directory emptied and removed (rm -rf) wrote no record for its files; a
    name removed and made again keeps its new entry whichever record comes first."""
    from pqcfs.fs import tables
    root = vfs.inodes.root
    loc = new_vault[0].locations[0]
    d = vfs.mkdir(root, b"d", stat.S_IFDIR | 0o755, ME)
    for n in range(5):
        vfs.create_file(d, b"f%d" % n, stat.S_IFREG | 0o644, ME, content=b"x")
    for name in (b"keep", b"again", b"gone"):
        vfs.create_file(root, name, stat.S_IFREG | 0o644, ME, content=name)
    root_table = os.path.join(loc, TREE_DIR, vfs._table_path(root))
    before = os.path.getsize(root_table)
    for n in range(5):
        vfs.unlink(d, b"f%d" % n)
    vfs.rmdir(root, b"d")
    vfs.unlink(root, b"gone")
    vfs.unlink(root, b"again")
    assert os.path.getsize(root_table) == before
    # Made again, still open (its entry unsaved), while another record goes: the old
    # entry's removal is in that record, the new entry stays in memory.
    again = vfs.create(root, b"again", stat.S_IFREG | 0o644, ME)
    vfs.open(again, True).write(0, b"second")
    vfs.create_file(root, b"other", stat.S_IFREG | 0o644, ME, content=b"o")
    assert os.path.getsize(root_table) > before
    vfs.release(again)
    vfs.release(again)
    vfs.unlink(root, b"other")
    vfs.settle()
    fresh = make_vfs(new_vault[0])
    assert sorted(p for p, _ in fresh.listdir(fresh.inodes.root)) == [b"again", b"keep"]
    assert fresh.read_all(fresh.lookup(fresh.inodes.root, b"again")) == b"second"
    assert fsck.run(new_vault[0]).clean
    # At most GONE_HELD removals wait.
    monkeypatch.setattr(tables, "GONE_HELD", 3)
    for n in range(3):
        fresh.create_file(fresh.inodes.root, b"g%d" % n, stat.S_IFREG | 0o644, ME, content=b"g")
    size = os.path.getsize(root_table)
    fresh.unlink(fresh.inodes.root, b"g0")
    fresh.unlink(fresh.inodes.root, b"g1")
    assert os.path.getsize(root_table) == size
    fresh.unlink(fresh.inodes.root, b"g2")
    assert os.path.getsize(root_table) > size
    third = make_vfs(new_vault[0])
    assert sorted(p for p, _ in third.listdir(third.inodes.root)) == [b"again", b"keep"]


def test_files_made_wait_for_their_directorys_next_record(new_vault, vfs, monkeypatch):
    """tar x sets owner, mode and times on each file before closing it: while the file's
    entry has never been written, those changes and its release wait for the
    directory's next record (any change there, an fsync, the unmount, or UNSAVED_HELD
    files), and a fresh mount then sees every one of them."""
    from pqcfs.fs import tables
    root = vfs.inodes.root
    table = [os.path.join(loc, TREE_DIR, vfs._table_path(root)) for loc in new_vault[0].locations]

    def sizes():
        return [os.path.getsize(t) for t in table]
    before = sizes()
    f = vfs.create(root, b"made", stat.S_IFREG | 0o600, ME)
    f.content.write(0, b"data")
    vfs.set_owner(f, 1234, 5678)
    vfs.set_mode(f, 0o4751)
    vfs.set_times(f, 1_000_000_000, 2_000_000_000)
    assert (f.entry.uid, f.entry.gid, stat.S_IMODE(f.entry.mode), f.entry.mtime) == (1234, 5678, 0o4751, 2_000_000_000)
    vfs.release(f)
    h = vfs.create(root, b"second", stat.S_IFREG | 0o644, ME)
    h.content.write(0, b"more data")
    vfs.release(h)
    assert sizes() == before                       # nothing written yet, all in memory
    vfs.mkdir(root, b"sub", stat.S_IFDIR | 0o755, ME)     # the directory's next record
    after = sizes()
    assert all(a > b for a, b in zip(after, before))
    fresh = make_vfs(new_vault[0])
    again = fresh.lookup(fresh.inodes.root, b"made")
    assert (again.entry.uid, again.entry.gid, stat.S_IMODE(again.entry.mode)) == (1234, 5678, 0o4751)
    assert (again.entry.atime, again.entry.mtime) == (1_000_000_000, 2_000_000_000)
    assert fresh.read_all(fresh.lookup(fresh.inodes.root, b"second")) == b"more data"
    assert fsck.run(new_vault[0]).clean

    # At most UNSAVED_HELD files wait.
    monkeypatch.setattr(tables, "UNSAVED_HELD", 3)
    held = sizes()
    for n in range(3):
        g = vfs.create(root, b"g%d" % n, stat.S_IFREG | 0o644, ME)
        vfs.release(g)
        assert (sizes() == held) == (n < 2)
    fresh = make_vfs(new_vault[0])
    assert {b"g0", b"g1", b"g2"} <= {p for p, _ in fresh.listdir(fresh.inodes.root)}

    # A file made, released and opened again: an fsync writes its entry though nothing
    # about it changed since.
    k = vfs.create(root, b"kept", stat.S_IFREG | 0o644, ME)
    k.content.write(0, b"k")
    vfs.release(k)
    vfs.open(k, False)
    vfs.fsync(k, False)
    fresh = make_vfs(new_vault[0])
    assert fresh.read_all(fresh.lookup(fresh.inodes.root, b"kept")) == b"k"
    vfs.release(k)

    # An fsync does not wait for the release; a file whose entry is on the drives is
    # written at each change, as before.
    g = vfs.create(root, b"synced", stat.S_IFREG | 0o600, ME)
    vfs.set_mode(g, 0o640)
    vfs.fsync(g, False)
    fresh = make_vfs(new_vault[0])
    assert stat.S_IMODE(fresh.lookup(fresh.inodes.root, b"synced").entry.mode) == 0o640
    vfs.release(g)
    g = vfs.lookup(root, b"synced")
    vfs.open(g, True)
    written = sizes()
    vfs.set_mode(g, 0o644)
    assert all(a > b for a, b in zip(sizes(), written))
    vfs.release(g)


def test_files_made_and_held_survive_renames_links_and_exchanges(new_vault, vfs):
    """The ways programs finish a file they made (an editor's or rsync's temporary file
    renamed over the target, into another directory, a hard link, an exchange) while its
    entry still waits for the directory's next record: a fresh mount after the unmount
    sees exactly the result, and fsck finds nothing."""
    root = vfs.inodes.root
    sub = vfs.mkdir(root, b"sub", stat.S_IFDIR | 0o755, ME)
    vfs.create_file(root, b"target", stat.S_IFREG | 0o644, ME, content=b"old")

    def made(parent, name, data):
        node = vfs.create(parent, name, stat.S_IFREG | 0o644, ME)
        node.content.write(0, data)
        vfs.release(node)
        return node
    made(root, b".target.tmp", b"new contents")
    vfs.rename(root, b".target.tmp", root, b"target")               # over a recorded file
    made(root, b"a", b"A")
    made(root, b"b", b"B")
    vfs.rename(root, b"a", root, b"b")                              # a held file over a held file
    made(root, b"moved", b"M")
    vfs.rename(root, b"moved", sub, b"moved")                       # into another directory
    linked = made(sub, b"one", b"L")
    vfs.link(linked, root, b"two")                                  # a second name
    made(root, b"x", b"X")
    made(sub, b"y", b"Y")
    vfs.rename(root, b"x", sub, b"y", exchange=True)
    vfs.settle()
    fresh = make_vfs(new_vault[0])
    froot = fresh.inodes.root
    fsub = fresh.lookup(froot, b"sub")
    got = {p: fresh.read_all(fresh.lookup(froot, p)) for p, _ in fresh.listdir(froot) if p != b"sub"}
    got_sub = {p: fresh.read_all(fresh.lookup(fsub, p)) for p, _ in fresh.listdir(fsub)}
    assert got == {b"target": b"new contents", b"b": b"A", b"two": b"L", b"x": b"Y"}
    assert got_sub == {b"moved": b"M", b"one": b"L", b"y": b"X"}
    assert fsck.run(new_vault[0]).clean


def test_files_opened_in_listing_order_have_the_next_ones_read_ahead(new_vault, vfs, monkeypatch):
    """A scan (tar c) opens a directory's files in listing order: the next regular files'
    first pages are asked of the serving drive ahead (not subdirectories, not hard-linked
    files, whose data lives elsewhere); opens out of order, or for writing, ask nothing.
    A FIFO planted in place of a file ahead neither blocks nor fails the scan."""
    root = vfs.inodes.root
    d = vfs.mkdir(root, b"d", stat.S_IFDIR | 0o755, ME)
    for n in range(12):
        vfs.create_file(d, b"f%02d" % n, stat.S_IFREG | 0o644, ME, content=b"x" * n)
    vfs.mkdir(d, b"sub", stat.S_IFDIR | 0o755, ME)
    vfs.link(vfs.lookup(d, b"f00"), d, b"hard")
    asked = []
    real = os.posix_fadvise

    def noting(fd, offset, length, advice):
        if advice == os.POSIX_FADV_WILLNEED and offset == 0:
            asked.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd, offset, length, advice)
    monkeypatch.setattr(os, "posix_fadvise", noting)
    listing = vfs.listdir(d)
    order = [p for p, _ in listing]
    primary = new_vault[0].locations[0]
    on_disk = {p: os.path.join(primary, TREE_DIR, d.c_path, disk) for p, disk in listing}
    files = [p for p in order if p.startswith(b"f") and p != b"f00"]
    fifo = files[4]
    os.unlink(on_disk[fifo])
    os.mkfifo(on_disk[fifo])                     # planted on the primary, ahead of the scan
    first, second = files[0], files[1]
    for p in (first, second):
        node = vfs.lookup(d, p)
        vfs.open(node, False)
        vfs.release(node)
    window = order[order.index(first) + 1:order.index(second) + 1 + 8]
    assert all(a.startswith(primary) for a in asked)         # the serving drive alone
    assert sorted(asked) == sorted(on_disk[p] for p in window if p in files and p != fifo)
    assert len(window) > 8 and b"sub" in order and b"hard" in order
    asked.clear()
    node = vfs.lookup(d, files[-1])                          # a jump: nothing asked
    vfs.open(node, False)
    vfs.release(node)
    node = vfs.lookup(d, files[2])                           # for writing: nothing asked
    vfs.open(node, True)
    vfs.release(node)
    assert asked == []


def test_sequential_writes_start_every_drives_writeback_behind_them(new_vault, vfs, monkeypatch):
    """A large file written in order has each finished MiB of its ciphertext handed to every
    drive's writeback as it goes (not all at the fsync); random writes into it hand the
    whole file over once a MiB of them waits. What is read back, and what fsck finds, is
    unchanged."""
    from pqcfs.store import replicas, write_behind
    started = []
    real = replicas.start_writeback

    def noting(fd, offset, length):
        started.append((os.readlink(f"/proc/self/fd/{fd}"), offset, length))
        real(fd, offset, length)
    monkeypatch.setattr(replicas, "start_writeback", noting)
    root = vfs.inodes.root
    f = vfs.create_file(root, b"big", stat.S_IFREG | 0o644, ME)
    content = vfs.open(f, True)
    data = os.urandom(3 * 1024 * 1024 + 5000)
    for off in range(0, len(data), 10240):               # tar's record size: not block-aligned
        content.write(off, data[off:off + 10240])
    by_drive = {}
    for path, offset, length in started:
        by_drive.setdefault(path, []).append((offset, length))
    assert len(by_drive) == 2 and sorted(by_drive) == sorted(
        os.path.join(loc, TREE_DIR, f.data_path) for loc in new_vault[0].locations)
    for spans in by_drive.values():
        # Back to back from the header on (the next span takes up the partly written block
        # the last one ended in again).
        assert len(spans) == 3 and spans[0][0] == 0
        assert all(spans[i + 1][0] <= spans[i][0] + spans[i][1] < spans[i + 1][0] + 8192 for i in range(2))
        assert all(length >= write_behind.WRITE_BEHIND for _, length in spans)
    started.clear()
    rng = __import__("random").Random(5)
    model = bytearray(data)
    for n in range(300):
        off = rng.randrange(0, len(data) // 4096) * 4096
        content.write(off, b"r" * 4096)
        model[off:off + 4096] = b"r" * 4096
        if n == 200:
            assert started == []                       # 200 blocks' ciphertext: under a MiB
    assert sorted(started) == sorted((path, *write_behind.WHOLE_FILE) for path in by_drive)
    vfs.fsync(f, False)
    vfs.release(f)
    assert vfs.read_all(f) == bytes(model)
    assert fsck.run(new_vault[0]).clean


def test_the_periodic_write_takes_every_held_change_of_a_directory(new_vault, vfs):
    """write_held (the serving loop's, every few seconds): files made and released, and a
    directory whose only held change is its own times (a file made and removed before any
    record), all reach the drives; a fresh mount sees them without an unmount."""
    root = vfs.inodes.root
    d = vfs.mkdir(root, b"d", stat.S_IFDIR | 0o755, ME)
    e = vfs.mkdir(root, b"e", stat.S_IFDIR | 0o755, ME)
    f = vfs.create(d, b"kept", stat.S_IFREG | 0o644, ME)
    f.content.write(0, b"kept data")
    vfs.release(f)
    before = make_vfs(new_vault[0])
    old_mtime = before.lookup(before.inodes.root, b"e").entry.mtime
    t = vfs.create(e, b"tmp", stat.S_IFREG | 0o644, ME)
    vfs.release(t)
    vfs.unlink(e, b"tmp")
    assert e.entry.mtime > old_mtime
    fresh = make_vfs(new_vault[0])
    assert [p for p, _ in fresh.listdir(fresh.lookup(fresh.inodes.root, b"d"))] == []    # still held
    vfs.write_held()
    fresh = make_vfs(new_vault[0])
    froot = fresh.inodes.root
    assert fresh.read_all(fresh.lookup(fresh.lookup(froot, b"d"), b"kept")) == b"kept data"
    assert fresh.lookup(froot, b"e").entry.mtime == e.entry.mtime
    assert fsck.run(new_vault[0]).clean
