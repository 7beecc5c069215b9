"""A push sends what changed: after one file of a vault of many changes, the push sends that
file's object, its directory's table and the pages on its path (plus the audit log), and
reads no other file's bytes. PQCFS_OFFSITE_FILES sets the vault's size (the issue's vault is
100,000 files; the default keeps CI short)."""

import json
import os
import shutil
import stat

import pytest

from pqcfs.fs.common import Caller
from tests.api.test_cli import pqcfs
from tests.api.test_incremental_sync import session_on, write
from tests.conftest import PASSPHRASE

pytestmark = pytest.mark.skipif(shutil.which("rclone") is None, reason="needs rclone (scripts/dev.sh installs it)")
ME = Caller(uid=1000, gid=1000)
FILES = int(os.environ.get("PQCFS_OFFSITE_FILES", "2000"))
PER_DIR = 500


def test_one_changed_file_pushes_that_file_and_what_it_touched(new_vault, tmp_path):
    vault, _ = new_vault
    locations = list(vault.locations)
    vault.close()

    def fill(vfs):
        for d in range(0, FILES, PER_DIR):
            folder = vfs.mkdir(vfs.inodes.root, f"dir{d // PER_DIR:03d}".encode(), stat.S_IFDIR | 0o755, ME)
            for n in range(d, min(d + PER_DIR, FILES)):
                node = vfs.create_file(folder, f"f{n:06d}".encode(), stat.S_IFREG | 0o644, ME)
                write(vfs, node, os.urandom(2048))
    session_on(locations, tmp_path, fill)
    pw = tmp_path / "pw"
    pw.write_bytes(PASSPHRASE + b"\n")
    remote = str(tmp_path / "remote")
    assert pqcfs("remote", "add", locations[0], remote).returncode == 0
    first = pqcfs("push", locations[0], "--passfile", str(pw), "--json")
    assert first.returncode == 0, first.stderr
    first = json.loads(first.stdout)["pushed"][0]
    assert first["files"] > FILES and first["objects_sent"] > FILES

    def change_one(vfs):
        folder = vfs.lookup(vfs.inodes.root, b"dir001" if FILES > PER_DIR else b"dir000")
        node = vfs.lookup(folder, f"f{min(FILES - 1, PER_DIR + 7):06d}".encode())
        write(vfs, node, b"changed")
    session_on(locations, tmp_path, change_one)
    second = json.loads(pqcfs("push", locations[0], "--passfile", str(pw), "--json").stdout)["pushed"][0]
    # The file, its directory's table, the root table (it records the directory's sequence
    # number), the pages of its directory, of tree/ and of the top, the audit log: what one
    # change touched, whatever the vault's size.
    assert second["epoch"] == 2 and second["objects_sent"] <= 7, second
    assert second["bytes_sent"] < first["bytes_sent"] // 10, (first, second)
    assert pqcfs("fsck", locations[0], "--remote", "--passfile", str(pw)).returncode == 0
