"""Snapshots through the session and the tree (no FUSE): copy-on-write keeps exactly the
versions a snapshot holds, reads find moved files, deleting frees what only it held, and
thinning and the space share work as docs/snapshots.md says."""

import os
import shutil
import stat

import pytest

from pqcfs.errors import NoSuchSnapshot, RolledBack
from pqcfs.format import snapshot as fmt
from pqcfs.fs.common import Caller, FsError
from pqcfs.session.session import Session
from pqcfs.session.snapshot_mount import open_snapshot
from pqcfs.snapshots import plain, policy
from pqcfs.snapshots.history import find
from pqcfs.snapshots.store import DATA, INDEX
from tests.api.test_cli import pqcfs
from tests.api.test_incremental_sync import unlock
from tests.conftest import PASSPHRASE

ME = Caller(uid=1000, gid=1000)
FILE = stat.S_IFREG | 0o644


class Open:
    """A mount session without FUSE on the vault's replicas (a context manager)."""

    def __init__(self, locations, tmp_path):
        self.locations, self.tmp_path = locations, tmp_path

    def __enter__(self):
        self.vault = unlock(self.locations)
        self.session = Session(self.vault, str(self.tmp_path / "mnt"))
        self.session.prepare()
        self.vfs = self.session.build()
        self.history = self.session.history
        return self

    def __exit__(self, *exc):
        self.session._finish()
        self.vault.close()

    def put(self, path: str, data: bytes, mode: int = FILE):
        parent, name = self.parent_of(path)
        try:
            node = self.vfs.lookup(parent, name)
        except FsError:
            node = self.vfs.create_file(parent, name, mode, ME)
        self.vfs.inodes.remember(node)          # as the kernel does: a node it holds stays known
        content = self.vfs.open(node, True)
        content.truncate(0)
        content.write(0, data)
        self.vfs.release(node)
        return node

    def parent_of(self, path: str):
        *dirs, name = path.split("/")
        node = self.vfs.inodes.root
        for d in dirs:
            try:
                node = self.vfs.lookup(node, d.encode())
            except FsError:
                node = self.vfs.mkdir(node, d.encode(), stat.S_IFDIR | 0o755, ME)
        return node, name.encode()

    def read(self, path: str) -> bytes:
        parent, name = self.parent_of(path)
        return self.vfs.read_all(self.vfs.lookup(parent, name))


def snapshot_files(locations, ref="latest") -> dict[str, bytes]:
    vault = unlock(locations)
    try:
        tree, _ = open_snapshot(vault, ref)
        return {p.decode(): tree.read_all(n) for p, n in tree.walk() if not n.is_dir}
    finally:
        vault.close()


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def kept(location) -> list[str]:
    return sorted(os.listdir(os.path.join(location, DATA)))


def test_a_snapshot_costs_metadata_and_keeps_only_what_changes(locations, tmp_path):
    with Open(locations, tmp_path) as v:
        v.put("a.txt", b"first a")
        v.put("b.txt", b"b" * 10000)
        v.put("docs/c.txt", b"c stays")
        v.put("docs/deep/d.txt", b"d" * 5000)
        listed = v.history.create(v.vfs, label="before")
        assert kept(locations[0]) == [] and kept(locations[1]) == []     # nothing copied
        v.put("a.txt", b"second a, longer")                  # overwritten
        v.vfs.unlink(v.vfs.inodes.root, b"b.txt")              # deleted
        docs, _ = v.parent_of("docs/x")
        v.vfs.rename(v.vfs.inodes.root, b"docs", v.vfs.inodes.root, b"papers")   # c and d moved, not changed
        v.put("new.txt", b"after the snapshot")
        assert len(kept(locations[0])) == 2 and kept(locations[0]) == kept(locations[1])
        v.put("a.txt", b"third a")                           # a second change copies nothing more
        assert len(kept(locations[0])) == 2
    assert listed.files == 4
    files = snapshot_files(locations, "before")
    assert files == {"a.txt": b"first a", "b.txt": b"b" * 10000, "docs/c.txt": b"c stays",
                     "docs/deep/d.txt": b"d" * 5000}
    with Open(locations, tmp_path) as v:
        assert v.read("a.txt") == b"third a" and v.read("papers/c.txt") == b"c stays"


def test_an_open_file_written_across_a_snapshot_keeps_the_snapshots_version(locations, tmp_path):
    with Open(locations, tmp_path) as v:
        node = v.put("log", b"one\n")
        content = v.vfs.open(node, True)
        content.write(4, b"two\n")                # the open's counter rose before the snapshot
        v.history.create(v.vfs, label="mid")
        content.write(8, b"three\n")              # the same open, after it: must not reach the snapshot
        v.vfs.release(node)
    assert snapshot_files(locations, "mid") == {"log": b"one\ntwo\n"}


def test_deleting_frees_only_what_no_other_snapshot_holds(locations, tmp_path):
    with Open(locations, tmp_path) as v:
        v.put("keep.txt", b"unchanged")
        v.put("x.txt", b"x1")
        v.put("y.txt", b"y1")
        s1 = v.history.create(v.vfs, label="s1")
        v.put("x.txt", b"x2")                     # s1 holds x1
        s2 = v.history.create(v.vfs, label="s2")
        v.put("y.txt", b"y2")                     # s1 and s2 hold y1 (one copy)
        v.put("x.txt", b"x3")                     # s2 holds x2
        assert len(kept(locations[0])) == 3
        files, _ = v.history.delete([s1.snap_id])
        assert files == 1 and len(kept(locations[0])) == 2     # x1 went; y1 stays for s2
        assert [s.label for s in v.history.index.snapshots] == ["s2"]
    assert snapshot_files(locations, "s2") == {"keep.txt": b"unchanged", "x.txt": b"x2", "y.txt": b"y1"}
    with pytest.raises(NoSuchSnapshot):
        snapshot_files(locations, s1.snap_id.hex())
    with Open(locations, tmp_path) as v:
        v.history.delete([s2.snap_id])
        assert kept(locations[0]) == [] and kept(locations[1]) == []
        assert [n for n in os.listdir(os.path.join(locations[0], "pqcfs.snapshots")) if n.endswith(".s")] == []


def test_hard_links_symlinks_xattrs_and_modes_come_back(locations, tmp_path):
    with Open(locations, tmp_path) as v:
        node = v.put("data", b"linked bytes")
        v.vfs.link(node, v.vfs.inodes.root, b"alias")
        v.vfs.set_xattr(node, b"user.tag", b"blue")
        v.vfs.set_mode(node, stat.S_IFREG | 0o600)
        v.vfs.create_file(v.vfs.inodes.root, b"ln", stat.S_IFLNK | 0o777, ME, content=b"data")
        v.history.create(v.vfs, label="s")
        v.put("alias", b"changed through the other name")
        v.vfs.set_xattr(v.vfs.lookup(v.vfs.inodes.root, b"data"), b"user.tag", b"red")
        v.vfs.unlink(v.vfs.inodes.root, b"ln")
    vault = unlock(locations)
    try:
        tree, _ = open_snapshot(vault, "s")
        data, alias, ln = (tree.resolve(p) for p in ("data", "alias", "ln"))
        assert tree.read_all(data) == b"linked bytes" == tree.read_all(alias)
        assert data.ino == alias.ino and data.entry.nlink == 2
        assert tree.xattrs(data) == {b"user.tag": b"blue"} and stat.S_IMODE(data.entry.mode) == 0o600
        assert tree.read_all(ln) == b"data" and stat.S_ISLNK(ln.entry.mode)
        dest = tmp_path / "out"
        writer = plain.Writer(tree)
        writer.restore(tree.root, str(dest))
        assert (dest / "data").read_bytes() == b"linked bytes" and os.path.samefile(dest / "data", dest / "alias")
        assert os.readlink(dest / "ln") == "data" and stat.S_IMODE(os.stat(dest / "data").st_mode) == 0o600
        assert os.getxattr(dest / "data", "user.tag") == b"blue"
    finally:
        vault.close()


def test_diff_names_what_was_added_changed_and_removed(locations, tmp_path):
    with Open(locations, tmp_path) as v:
        v.put("same", b"s")
        v.put("edit", b"1")
        v.put("gone", b"g")
        v.history.create(v.vfs, label="old")
        v.put("edit", b"2")
        v.vfs.unlink(v.vfs.inodes.root, b"gone")
        v.put("dir/new", b"n")
        v.history.create(v.vfs, label="new")
    vault = unlock(locations)
    try:
        a, _ = open_snapshot(vault, "old")
        b, _ = open_snapshot(vault, "new")
        added, changed, removed = plain.diff(plain.signatures(a, a.root), plain.signatures(b, b.root))
    finally:
        vault.close()
    assert (added, changed, removed) == ([b"dir", b"dir/new"], [b"edit"], [b"gone"])


def test_thinning_keeps_the_newest_of_each_hour_day_and_week():
    H, D = 3600 * 10**9, 86400 * 10**9
    now = 100 * D

    def s(age_ns, kind="auto"):
        return fmt.Listed(snap_id=os.urandom(16), created=now - age_ns, label="", kind=kind, digest=b"", size=0)
    recent = [s(10 * 60 * 10**9), s(20 * 60 * 10**9), s(3 * H)]              # two in one hour: the older goes
    days = [s(2 * D + H), s(2 * D + 2 * H), s(3 * D + 12 * H)]                      # two on one day: the older goes
    weeks = [s(8 * D), s(9 * D), s(40 * D)]                                   # 40 days: past keep
    manual = [s(200 * D, kind="manual")]
    snaps = recent + days + weeks + manual
    gone = policy.thin(snaps, now, keep_s=30 * 86400)
    kept_ids = {x.snap_id for x in snaps} - gone
    assert recent[1].snap_id in gone and days[1].snap_id in gone and weeks[2].snap_id in gone
    assert {recent[0].snap_id, recent[2].snap_id, days[0].snap_id, days[2].snap_id, manual[0].snap_id} <= kept_ids
    assert policy.parse_duration("30d") == 30 * 86400 and policy.parse_percent("20%") == 20
    with pytest.raises(ValueError):
        policy.parse_duration("30 days")


def test_the_snapshot_list_going_back_is_a_rollback(locations, tmp_path):
    with Open(locations, tmp_path) as v:
        v.put("f", b"1")
        v.history.create(v.vfs, label="one")
        old_index = [read(os.path.join(loc, INDEX)) for loc in locations]
        v.history.create(v.vfs, label="two")
    for loc, data in zip(locations, old_index):       # both drives put back to the older list
        with open(os.path.join(loc, INDEX), "wb") as f:
            f.write(data)
    with pytest.raises(RolledBack, match="snapshot list is older"):
        with Open(locations, tmp_path):
            pass


def test_one_replica_behind_is_brought_up_to_the_newest_list(locations, tmp_path):
    with Open(locations, tmp_path) as v:
        v.put("f", b"1")
        v.history.create(v.vfs, label="one")
        backup_index = read(os.path.join(locations[1], INDEX))
        v.history.create(v.vfs, label="two")
    with open(os.path.join(locations[1], INDEX), "wb") as f:
        f.write(backup_index)
    with Open(locations, tmp_path) as v:
        assert [s.label for s in v.history.index.snapshots] == ["one", "two"]
        assert any("behind the newest snapshot index" in p for p in v.history.store.problems)
    assert read(os.path.join(locations[1], INDEX)) == read(os.path.join(locations[0], INDEX))
    assert snapshot_files(locations, "one") == {"f": b"1"}


@pytest.mark.skipif(shutil.which("rclone") is None, reason="needs rclone (scripts/dev.sh installs it)")
def test_snapshots_go_to_the_offsite_remote_and_come_back_with_a_recovery(locations, tmp_path):
    with Open(locations, tmp_path) as v:
        v.put("report.txt", b"draft 1")
        v.history.create(v.vfs, label="draft")
        v.put("report.txt", b"draft 2")
    pw = tmp_path / "pw"
    pw.write_bytes(PASSPHRASE + b"\n")
    remote = str(tmp_path / "remote")
    assert pqcfs("remote", "add", locations[0], remote).returncode == 0
    assert pqcfs("push", locations[0], "--passfile", str(pw)).returncode == 0
    new_a, new_b = tmp_path / "new-a", tmp_path / "new-b"
    new_a.mkdir()
    new_b.mkdir()
    r = pqcfs("recover", remote, str(new_a), str(new_b), "--passfile", str(pw), "--allow-fixed",
              "--allow-same-device")
    assert r.returncode == 0, r.stderr
    out = pqcfs("restore", str(new_a), "report.txt", "--snapshot", "draft", "--to", str(tmp_path / "back"),
                "--passfile", str(pw), "--backup", str(new_b))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "back").read_bytes() == b"draft 1"


def test_a_label_is_one_short_line(locations, tmp_path):
    from pqcfs.errors import PqcfsError
    with Open(locations, tmp_path) as v:
        for label in ("two\nlines", "x" * 201):
            with pytest.raises(PqcfsError, match="one line"):
                v.history.create(v.vfs, label=label)
        assert v.history.index.snapshots == []


def test_a_large_file_keeps_only_the_blocks_that_change(locations, tmp_path):
    from pqcfs import fsck
    from pqcfs.snapshots.history import SMALL
    v1 = os.urandom(2 << 20)                       # 512 blocks: kept block by block
    assert len(v1) > SMALL
    with Open(locations, tmp_path) as v:
        node = v.put("big", v1)
        v.history.create(v.vfs, label="s1")
        content = v.vfs.open(node, True)
        content.write(10 * 4096, b"A" * 4096)      # one whole block
        content.write(200 * 4096 + 7, b"B" * 100)  # part of one
        content.write(len(v1), b"tail")            # past the end: the old last block is sealed again
        v.vfs.release(node)
        v2 = v.read("big")
        deltas = [n for n in kept(locations[0]) if n.endswith(".b")]
        assert len(deltas) == 1 and kept(locations[0]) == kept(locations[1])
        assert os.path.getsize(os.path.join(locations[0], DATA, deltas[0])) < 4 * 4200    # 3 blocks, not 2 MiB
        v.history.create(v.vfs, label="s2")
        content = v.vfs.open(node, True)
        content.write(10 * 4096, b"C" * 4096)
        content.write(300 * 4096, b"D" * 4096)
        content.truncate(1 << 20)
        v.vfs.release(node)
        v3 = v.read("big")
    assert snapshot_files(locations, "s1")["big"] == v1
    assert snapshot_files(locations, "s2")["big"] == v2
    with Open(locations, tmp_path) as v:
        assert v.read("big") == v3
        v.vfs.unlink(v.vfs.inodes.root, b"big")    # the live file goes whole to the end of the chain
        s1 = find(v.history.index, "s1")
        v.history.delete([s1.snap_id])             # s1's kept blocks go; s2 keeps what it reads
    assert snapshot_files(locations, "s2")["big"] == v2
    vault = unlock(locations)
    try:
        report = fsck.run(vault)
        assert report.clean, report.problems
    finally:
        vault.close()
