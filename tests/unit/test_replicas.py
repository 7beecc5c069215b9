"""Replica histories, the intent log and the ciphertext sync, without mounts."""

import os

from pqcfs.format import replica_state as rs
from pqcfs.store import intent, sync
from pqcfs.store.drive import Drive
from pqcfs.store.replicas import TREE_DIR, ReplicaSet


def state(*sessions):
    return rs.ReplicaState("v", "r", lineage=list(sessions), generation=len(sessions))


def test_lineage_tells_stale_newer_and_diverged_apart():
    base = state("init", "s1")
    assert rs.compare(base, state("init", "s1")) == rs.SAME
    assert rs.compare(state("init", "s1", "s2"), base) == rs.STALE
    assert rs.compare(base, state("init", "s1", "s2")) == rs.NEWER
    assert rs.compare(state("init", "s1", "a"), state("init", "s1", "b")) == rs.DIVERGED
    s = state("init")
    s.begin_session("x", ["backup"])
    assert s.head == "x" and not s.clean and s.missing == ["backup"] and s.generation == 2


def test_lineage_is_bounded():
    s = state()
    for n in range(1000):
        s.begin_session(str(n), [])
    assert len(s.lineage) == rs.ReplicaState.LINEAGE_KEPT and s.head == "999"


def test_intent_log_notes_once_and_reads_the_union(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    drives = [Drive(str(a)), Drive(str(b))]
    key = bytes(32)
    assert intent.read(drives, key) is None
    log = intent.IntentLog(drives, lambda: [0, 1], key)
    log.clear()
    assert intent.read(drives[:1], key) == set()
    log.note(intent.FILE, "x/y")
    log.note(intent.FILE, "x/y")
    log.note(intent.DIRECTORY, "")
    log.sync()
    assert (a / "pqcfs.intent").read_text().count("x/y") == 1
    assert intent.read(drives, key) == {("F", "x/y"), ("D", "")}
    # Records nobody with the key wrote are never acted on: the whole log is distrusted.
    with open(b / "pqcfs.intent", "a") as f:
        f.write("F other 00000000000000000000000000000000\nD ../escape\ngarbage\n")
    assert intent.read(drives, key) is None
    assert intent.read(drives, bytes([1]) * 32) is None
    log.clear()
    log.close()
    assert intent.read(drives[:1], key) == set()


def test_intent_log_written_under_another_mounting_is_not_trusted(tmp_path, monkeypatch):
    """A power loss, a reboot or a drive mounted again: changes never fsynced may have
    reached a drive without their intent record, so recovery must compare everything."""
    from pqcfs.store import devices
    a = tmp_path / "a"
    a.mkdir()
    drives = [Drive(str(a))]
    key = bytes(32)
    log = intent.IntentLog(drives, lambda: [0], key)
    log.clear()
    log.note(intent.FILE, "x/y")
    log.sync()
    assert intent.read(drives, key) == {("F", "x/y")}         # a daemon crash: same page cache
    monkeypatch.setattr(devices, "mount_identity", lambda fd, location: "another-boot:42")
    assert intent.read(drives, key) is None
    # A log from an older pqcfs (no identity line) is not trusted either.
    monkeypatch.undo()
    lines = (a / "pqcfs.intent").read_text().splitlines(keepends=True)
    (a / "pqcfs.intent").write_text("".join(line for line in lines if not line.startswith("B ")))
    assert intent.read(drives, key) is None
    log.close()


def test_sync_tree_copies_only_what_differs_and_keeps_per_replica_files(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for root in (src, dst):
        (root / "tree" / "d").mkdir(parents=True)
        (root / "pqcfs.state").write_text(f"state of {root.name}")
    (src / "tree" / "same").write_bytes(b"x" * 3000)
    (dst / "tree" / "same").write_bytes(b"x" * 3000)
    (src / "tree" / "d" / "changed").write_bytes(os.urandom(5000))
    (dst / "tree" / "d" / "changed").write_bytes(b"old")
    (dst / "tree" / "extra").write_bytes(b"gone soon")
    (dst / "README-drive.txt").write_text("the user's own file next to the vault")
    (src / "plain-on-primary").write_text("not the vault's")
    stats = sync.sync_tree(Drive(str(src)), Drive(str(dst)))
    assert (dst / "README-drive.txt").exists() and not (dst / "plain-on-primary").exists()
    assert (dst / "tree" / "d" / "changed").read_bytes() == (src / "tree" / "d" / "changed").read_bytes()
    assert not (dst / "tree" / "extra").exists()
    assert (dst / "pqcfs.state").read_text() == "state of dst"
    assert stats.files_changed == 1 and stats.removed == 1


def test_sync_paths_of_a_directory_reconciles_its_entries_and_own_files(tmp_path):
    """A directory's journal record: entries added, removed or replaced by another node
    (another header) are brought over, pqcfs' small files compared whole; an entry's
    contents are left to that entry's own record, so they are not read here."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    for root in (src, dst):
        (root / "tree" / "d").mkdir(parents=True)
    header_a, header_b = b"PQCF" + os.urandom(84), b"PQCL" + os.urandom(84)
    (src / "tree" / "d" / "replaced").write_bytes(header_b + b"x" * 100)
    (dst / "tree" / "d" / "replaced").write_bytes(header_a + b"x" * 100)
    (src / "tree" / "d" / "same").write_bytes(header_a + b"new contents")
    (dst / "tree" / "d" / "same").write_bytes(header_a + b"old contents")
    (src / "tree" / "d" / "d.x").write_bytes(b"new table")
    (dst / "tree" / "d" / "d.x").write_bytes(b"old table")
    (src / "tree" / "d" / "added").write_bytes(header_a)
    (dst / "tree" / "d" / "removed").write_bytes(header_a)
    stats = sync.sync_paths(Drive(str(src)), Drive(str(dst)), {"tree/d": False})
    assert (dst / "tree" / "d" / "replaced").read_bytes() == header_b + b"x" * 100
    assert (dst / "tree" / "d" / "d.x").read_bytes() == b"new table"
    assert (dst / "tree" / "d" / "added").exists() and not (dst / "tree" / "d" / "removed").exists()
    assert (dst / "tree" / "d" / "same").read_bytes() == header_a + b"old contents"
    assert stats.removed == 1


def _mirrored(tmp_path, data: bytes):
    from pqcfs.store.replicas import ReplicaSet
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        (d / "tree").mkdir(parents=True)
    replicas = ReplicaSet([Drive(str(a)), Drive(str(b))])
    f = replicas.create_file("f", data)
    return replicas, f, a / "tree" / "f", b / "tree" / "f"


def test_large_writes_reach_both_drives(tmp_path):
    replicas, f, pa, pb = _mirrored(tmp_path, b"h" * 88)
    big = os.urandom(1 << 20)
    f.pwrite(big, 88)
    f.close()
    assert pa.read_bytes() == pb.read_bytes() == b"h" * 88 + big


def test_a_primary_that_fails_a_write_leaves_the_backup_as_the_primary_is(tmp_path):
    """The drives are written one after the other, primary first: written at once, a
    kill can tear both copies of one block (exfat-fuse splits a write into 128 KiB
    requests), and crash recovery needs one of them whole."""
    import pytest
    replicas, f, pa, pb = _mirrored(tmp_path, b"old " * 1000)
    # The primary refuses the write (a descriptor that is read-only stands in for a
    # failure the vault can not go on without).
    os.close(f.fds[0])
    f.fds[0] = os.open(pa, os.O_RDONLY)
    with pytest.raises(OSError):
        f.pwrite(os.urandom(200_000), 2000)
    f.close()
    assert pb.read_bytes() == pa.read_bytes() == b"old " * 1000
    assert not replicas.failed


def test_a_reservation_takes_space_on_every_replica_and_keeps_the_size(tmp_path):
    """fallocate(FALLOC_FL_KEEP_SIZE) on each replica: blocks allocated on the drives,
    the ciphertext's size (which the plaintext size is derived from) unchanged."""
    drives = []
    for name in ("a", "b"):
        (tmp_path / name / TREE_DIR).mkdir(parents=True)
        drives.append(Drive(str(tmp_path / name)))
    replicas = ReplicaSet(drives)
    f = replicas.create_file("f", b"header")
    f.reserve(4096, 1 << 20)
    f.close()
    for name in ("a", "b"):
        st = os.stat(tmp_path / name / TREE_DIR / "f")
        assert st.st_size == len(b"header") and st.st_blocks * 512 >= 1 << 20


def test_an_overwrite_asks_ahead_for_the_pages_it_only_partly_covers(tmp_path):
    """A ciphertext block straddles pages; the pages a write covers only in part are the
    ones the kernel must read first, and the hint asks for them on every drive at once."""
    from pqcfs.store.replicas import partial_pages
    P = os.sysconf("SC_PAGE_SIZE")
    assert partial_pages(0, P) == [] and partial_pages(P, 3 * P) == []
    assert partial_pages(88, 4124) == [(0, 2 * P)]                 # one block after the header
    assert partial_pages(100, 10) == [(0, P)]                      # both ends in one page
    assert partial_pages(100, 3 * P) == [(0, P), (3 * P, P)]       # only the ends
    assert partial_pages(P, P + 1) == [(2 * P, P)]
    replicas, f, pa, pb = _mirrored(tmp_path, b"h" * 88)
    f.pwrite(b"a" * (8 * P), 88)
    f.will_overwrite(88 + 4124, 4124)
    f.pwrite(b"b" * 4124, 88 + 4124)
    # A hint never fails the write that follows: a descriptor gone bad is the write's to find.
    os.close(f.fds[1])
    f.will_overwrite(88, 4124)
    f.fds[1] = os.open(pb, os.O_RDWR)
    f.close()
    assert pa.read_bytes() == pb.read_bytes() == b"h" * 88 + b"a" * 4124 + b"b" * 4124 + b"a" * (8 * P - 8248)


def test_a_serving_drive_that_fails_while_it_is_healed_or_asked_for_space_is_dropped(tmp_path, monkeypatch):
    """A pulled primary can still answer from its page cache (a short read: a block that
    fails), then fail the heal's write, or fail the free-space question before anything
    else touched it (a write to a file held open): each drops it, and the backup answers."""
    import errno
    drives = []
    for name in ("a", "b"):
        (tmp_path / name / TREE_DIR).mkdir(parents=True)
        drives.append(Drive(str(tmp_path / name)))
    replicas = ReplicaSet(drives)

    def read(n: int) -> str:
        if n == 0:
            raise ValueError("a block that fails on the primary")
        return "good"

    def heal(first, source, value, why):
        raise OSError(errno.ENOTCONN, "the primary's file system is gone")
    assert replicas.first_good(read, heal, (ValueError,))[:2] == ("good", 1)
    assert replicas.failed == {0} and replicas.serving == 1

    replicas = ReplicaSet(drives)
    monkeypatch.setattr(drives[0], "statvfs", lambda: (_ for _ in ()).throw(OSError(errno.EIO, "gone")))
    assert replicas.statvfs() == drives[1].statvfs() and replicas.failed == {0}
    replicas.failed.add(1)
    import pytest
    with pytest.raises(OSError):
        replicas.statvfs()
