"""A tree deeper than Python's recursion limit (1,000 frames) works in every walker: the
check (fsck), the sync of a replica that missed a session, sizing and copying for export,
and removal (what revoke and lineage re-keying do). Each once raised RecursionError past
about 1,000 levels. PQCFS_DEEP_LEVELS sets the depth (1,200 by default: the drive walk is
one openat per level, so each level costs more the deeper it is)."""

import os
import stat

import pytest

from pqcfs import export as export_mod
from pqcfs import fsck, mirror, sharing
from pqcfs import vault as vault_mod
from pqcfs.format.identity import Identity
from pqcfs.fs.common import Caller
from pqcfs.fs.copier import remove_tree
from pqcfs.fs.recovery import differing_files
from pqcfs.session.session import Session
from pqcfs.vault import Credentials
from tests.conftest import PASSPHRASE

LEVELS = int(os.environ.get("PQCFS_DEEP_LEVELS", "1200"))
ME = Caller(uid=0, gid=0)


def session(locations, tmp_path, change):
    vault = vault_mod.unlock(list(locations), Credentials(passphrase=PASSPHRASE))
    s = Session(vault, str(tmp_path / "mnt"))
    s.prepare()
    change(s.build())
    s._finish()
    vault.close()


def bottom(vfs):
    node = vfs.inodes.root
    for _ in range(LEVELS):
        node = vfs.lookup(node, b"d")
    return node


def remove_deep(path: str) -> None:
    """What pytest's own clean-up (shutil.rmtree, recursive, by path) can not remove: a
    tree deeper than the recursion limit, its paths longer than PATH_MAX. Iterative and
    relative to directory descriptors."""
    stack = [(os.open(path, os.O_RDONLY | os.O_DIRECTORY), None, None)]
    while stack:
        fd, parent, name = stack[-1]
        for entry in os.scandir(fd):
            if entry.is_dir(follow_symlinks=False):
                child = os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                stack.append((child, fd, entry.name))
                break
            os.unlink(entry.name, dir_fd=fd)
        else:
            stack.pop()
            os.close(fd)
            if parent is not None:
                os.rmdir(name, dir_fd=parent)


@pytest.fixture
def deep_places(two_dirs, tmp_path):
    places = [*two_dirs, str(tmp_path / "x1"), str(tmp_path / "x2")]
    yield places
    for place in places:
        if os.path.isdir(place):
            remove_deep(place)


def test_a_tree_deeper_than_the_recursion_limit(new_vault, two_dirs, tmp_path, deep_places):
    primary, backup = two_dirs

    def build(vfs):
        node = vfs.inodes.root
        for _ in range(LEVELS):
            node = vfs.mkdir(node, b"d", 0o755, ME)
        vfs.create_file(node, b"deep.txt", stat.S_IFREG | 0o644, ME, content=b"at the bottom")
    session(two_dirs, tmp_path, build)

    vault = vault_mod.unlock(list(two_dirs), Credentials(passphrase=PASSPHRASE))
    report = fsck.run(vault)
    assert report.clean and report.nodes == LEVELS + 1, report.problems[:3]
    tree = sharing.owner_tree(vault)
    assert sharing.tree_size(tree, tree.inodes.root) == (len(b"at the bottom"), 1)

    # Export copies the whole depth into a vault of its own.
    dest = deep_places[2:]
    for location in dest:
        os.mkdir(location)
    _, copier = export_mod.export(vault, "d", dest, Identity.generate().public)
    assert copier.files == 1
    vault.close()

    # A session without the backup changes the bottom file; the sync brings the backup up.
    def change(vfs):
        deep = vfs.lookup(bottom(vfs), b"deep.txt")
        content = vfs.open(deep, True)
        content.write(0, b"AT")
        vfs.release(deep)
    session([primary], tmp_path, change)
    vault = vault_mod.unlock(list(two_dirs), Credentials(passphrase=PASSPHRASE))
    mirror.sync_replica(vault, primary, backup)
    assert differing_files(vault.drive(primary), vault.drive(backup)) == []
    vault.close()

    # And the whole tree goes again.
    session(two_dirs, tmp_path, lambda vfs: remove_tree(vfs, vfs.inodes.root, b"d"))
    vault = vault_mod.unlock(list(two_dirs), Credentials(passphrase=PASSPHRASE))
    assert fsck.run(vault).clean and sharing.owner_tree(vault).listdir(sharing.owner_tree(vault).inodes.root) == []
    vault.close()
