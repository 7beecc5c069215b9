"""The one layer that touches a drive: nothing planted on it is followed, opened or read
without bound, and paths far beyond PATH_MAX work."""

import os
import stat
import threading

import pytest

from pqcfs.errors import DamagedStructure
from pqcfs.store import drive as drive_mod
from pqcfs.store.drive import Drive, UnsafeEntry


@pytest.fixture
def host(tmp_path):
    """A host file and directory outside the drive, and the drive itself."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"host secret")
    location = tmp_path / "drive"
    (location / "tree" / "d").mkdir(parents=True)
    (location / "tree" / "d" / "f").write_bytes(b"inside")
    return outside, location


def test_symlinks_are_never_followed_at_any_component(host):
    outside, location = host
    (location / "tree" / "evil").symlink_to(outside)
    (location / "tree" / "d" / "link").symlink_to(outside / "secret")
    with Drive(str(location)) as d:
        assert d.read("tree/d/f", 100) == b"inside"
        with pytest.raises(UnsafeEntry):
            d.read("tree/evil/secret", 100)          # a symlinked directory on the way
        with pytest.raises(UnsafeEntry):
            d.read("tree/d/link", 100)               # a symlink as the file itself
        with pytest.raises(UnsafeEntry):
            d.open("tree/d/link", os.O_WRONLY | os.O_CREAT)
        with pytest.raises(UnsafeEntry):
            d.write_atomic("tree/evil/new", b"x")
        with pytest.raises(UnsafeEntry):
            d.listdir("tree/evil")
        assert d.kind("tree/evil") == "other" and d.kind("tree/d/link") == "other"
        # Unlinking a planted link removes the link, never its target.
        d.unlink("tree/d/link")
        d.write_atomic("tree/d/link", b"replaced")
    assert (outside / "secret").read_bytes() == b"host secret"
    assert sorted(os.listdir(outside)) == ["secret"]


def test_fifos_and_devices_are_refused_without_blocking(host):
    _, location = host
    os.mkfifo(location / "tree" / "fifo")
    os.mknod(location / "tree" / "zero", stat.S_IFCHR | 0o600, os.makedev(1, 5))
    os.symlink("/dev/zero", location / "tree" / "zero-link")
    done = threading.Event()

    def attempt():
        with Drive(str(location)) as d:
            for name in ("fifo", "zero", "zero-link"):
                for call in (lambda: d.read(f"tree/{name}", 1 << 20), lambda: d.open(f"tree/{name}", os.O_RDWR),
                             lambda: d.read_at(f"tree/{name}", 10)):
                    with pytest.raises(UnsafeEntry):
                        call()
        done.set()

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(10)
    assert done.is_set(), "opening a planted FIFO or device blocked"


def test_whole_file_reads_are_capped(host):
    _, location = host
    data = os.urandom(10 << 20)
    with open(location / "tree" / "big", "wb") as f:
        f.write(data)
    with open(location / "tree" / "sparse", "wb") as f:
        f.truncate(10 << 20)
    with Drive(str(location)) as d:
        assert d.read("tree/big", 10 << 20) == data
        with pytest.raises(UnsafeEntry, match="more than"):
            d.read("tree/big", 1 << 20)
        # Holes cost a drive nothing and a reader their size: refused before reading.
        with pytest.raises(UnsafeEntry, match="sparse"):
            d.read("tree/sparse", 10 << 20)


def test_paths_beyond_path_max(tmp_path):
    """A ciphertext path of 100 KiB: every call walks it relative to descriptors."""
    (tmp_path / "tree").mkdir()
    component = "a" * 200
    parts = ["tree"]
    with Drive(str(tmp_path)) as d:
        for _ in range(500):
            parts.append(component)
            d.mkdir("/".join(parts))
        deep = "/".join(parts)
        assert len(deep) > 24 * 4096
        d.write_atomic(deep + "/file", b"deep")
        assert d.read(deep + "/file", 100) == b"deep"
        d.rename(deep + "/file", "tree/" + component + "/moved")
        assert d.read("tree/" + component + "/moved", 100) == b"deep"
        d.remove_tree("tree/" + component)
        assert d.listdir("tree") == []


def test_the_descriptor_cache_survives_renames_and_trimming(tmp_path):
    (tmp_path / "tree").mkdir()
    with Drive(str(tmp_path)) as d:
        for n in range(3 * drive_mod.DIR_CACHE):
            d.mkdir(f"tree/{n}")
            d.mkdir(f"tree/{n}/sub")
            d.write_atomic(f"tree/{n}/sub/f", str(n).encode())
        # Renames between many different directories: every descriptor in use stays valid.
        for n in range(3 * drive_mod.DIR_CACHE - 1):
            d.rename(f"tree/{n}/sub/f", f"tree/{n + 1}/sub/g{n}")
        d.rename("tree/0", "tree/zero")
        assert d.listdir("tree/zero/sub") == []
        assert d.read("tree/5/sub/g4", 10) == b"4"
        assert len(d._dirs) <= drive_mod.DIR_CACHE


def test_quarantine_keeps_what_it_moves(host):
    _, location = host
    os.mkfifo(location / "tree" / "d" / "odd")
    with Drive(str(location)) as d:
        where = d.quarantine("tree/d/odd", "test")
        assert d.kind(where) == "other" and not d.exists("tree/d/odd")
        d.quarantine("tree/d", "test")
    assert len(os.listdir(location / drive_mod.QUARANTINE_DIR)) == 2


def test_paths_that_climb_out_are_refused(host):
    _, location = host
    with Drive(str(location)) as d:
        for rel in ("tree/../../etc/passwd", "../x", "tree/d/.."):
            with pytest.raises(DamagedStructure):
                d.read(rel, 100)
