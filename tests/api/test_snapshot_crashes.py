"""kill -9 at every point where taking, deleting or keeping a snapshot writes a drive.

The operation runs in a forked child that dies with os._exit (no cleanup, no flush: what a
SIGKILL leaves) right before its Nth write to a drive (a file replaced, copied, renamed,
removed or made), for N = 1, 2, ... until the operation finishes without reaching N. After
each, the next session must open the vault, every snapshot the index lists must read back
whole with the contents it was taken with, nothing a snapshot holds may be missing, and
nothing no snapshot holds may stay behind once the next session has started."""

import os
import shutil

import pytest

from pqcfs.store.drive import Drive
from pqcfs.snapshots.store import DATA, DIR
from tests.api.test_snapshots import Open, snapshot_files

WRITES = ("write_atomic", "copy_from", "rename", "unlink", "mkdir", "fsync_dir", "write_at")


def crash_at(locations, tmp_path, n: int, op) -> bool:
    """Run op(open session) in a child killed before its nth drive write; True when the
    child got that far (crashed), False when op finished first."""
    pid = os.fork()
    if pid == 0:
        count = [0]
        for name in WRITES:
            real = getattr(Drive, name)

            def wrapped(self, *args, _real=real, **kwargs):
                count[0] += 1
                if count[0] == n:
                    os._exit(9)
                return _real(self, *args, **kwargs)
            setattr(Drive, name, wrapped)
        try:
            with Open(locations, tmp_path) as v:
                op(v)
        except BaseException:
            import traceback
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 9), f"the operation failed on its own (exit {code})"
    return code == 9


def check_whole(locations, tmp_path, expected: dict[str, dict[str, bytes]]) -> list[str]:
    """The next session opens; every listed snapshot reads as it was taken; returns labels."""
    with Open(locations, tmp_path) as v:
        labels = [s.label for s in v.history.index.snapshots]
        kept = set(os.listdir(os.path.join(locations[0], DATA))) if os.path.isdir(os.path.join(locations[0], DATA)) \
            else set()
        referenced = v.history.referenced()
        manifests = {n for n in os.listdir(os.path.join(locations[0], DIR)) if n.endswith(".s")}
    for label in labels:
        assert snapshot_files(locations, label) == expected[label], label
    assert kept <= referenced | {n for n in kept if n in referenced}, "a kept file nothing holds stayed"
    assert not (kept - referenced), f"kept files no snapshot holds: {kept - referenced}"
    assert len(manifests) == len(labels), "a manifest the index does not list stayed"
    return labels


@pytest.fixture
def base(locations, tmp_path):
    with Open(locations, tmp_path) as v:
        v.put("a", b"a1")
        v.put("dir/b", b"b1" * 3000)
        v.put("dir/c", b"c1")
        v.put("big", BIG)
        v.history.create(v.vfs, label="s1")
        v.put("a", b"a2")
    pristine = tmp_path / "pristine"
    for n, loc in enumerate(locations):
        shutil.copytree(loc, pristine / str(n), symlinks=True)
    shutil.copytree(os.environ["PQCFS_STATE_DIR"], pristine / "state")
    return locations, pristine


def reset(locations, pristine):
    """The drives and this machine's record of them as they were (else a rollback)."""
    for n, loc in enumerate(locations):
        shutil.rmtree(loc)
        shutil.copytree(pristine / str(n), loc, symlinks=True)
    shutil.copytree(pristine / "state", os.environ["PQCFS_STATE_DIR"], dirs_exist_ok=True)


BIG = bytes(range(256)) * 4096 + b"end"      # over SMALL: kept block by block
S1 = {"a": b"a1", "dir/b": b"b1" * 3000, "dir/c": b"c1", "big": BIG}
S2 = {"a": b"a2", "dir/b": b"b1" * 3000, "dir/c": b"c1", "big": BIG}


@pytest.mark.parametrize("what", ["create", "delete", "keep", "keep-blocks"])
def test_kill_9_at_every_write(base, tmp_path, what):
    locations, pristine = base

    def op(v):
        if what == "create":
            v.history.create(v.vfs, label="s2")
        elif what == "delete":
            v.history.delete([v.history.index.snapshots[0].snap_id])
        elif what == "keep":     # the copy-on-write of an overwrite and the move of an unlink
            v.put("dir/b", b"b2")
            v.vfs.unlink(v.parent_of("dir/c")[0], b"c")
        else:                    # blocks kept one write at a time, then a cut, then the unlink
            parent, name = v.parent_of("big")
            node = v.vfs.lookup(parent, name)
            v.vfs.inodes.remember(node)
            content = v.vfs.open(node, True)
            content.write(5 * 4096, b"x" * 9000)
            content.write(len(BIG), b"more")
            content.truncate(100 * 4096 + 5)
            v.vfs.release(node)
            v.vfs.unlink(parent, name)
    n, seen_outcomes = 1, set()
    while True:
        reset(locations, pristine)
        crashed = crash_at(locations, tmp_path, n, op)
        labels = check_whole(locations, tmp_path, {"s1": S1, "s2": S2})
        seen_outcomes.add(tuple(labels))
        if not crashed:
            break
        n += 1
    print(f"{what}: killed at each of {n - 1} drive writes")
    assert n > 3, "the operation wrote less than expected: the crash points were not reached"
    want = {"create": {("s1",), ("s1", "s2")}, "delete": {("s1",), ()}, "keep": {("s1",)},
            "keep-blocks": {("s1",)}}[what]
    assert seen_outcomes == want
