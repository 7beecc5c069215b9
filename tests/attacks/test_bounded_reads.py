"""Every read from a drive is bounded: a sparse or oversized structure is refused
without allocating its size, a failed parse frees what it read, and the damage stays an
EIO in its own directory while the daemon serves the rest within normal memory."""

import errno
import os

import pytest

from pqcfs.format import dir_table, names
from tests.mounted import drives
from tests.mounted.test_sharing import daemon_pid, populated_vault

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not drives.ROOT, reason="needs root and /dev/fuse")]
SPARSE = 512 << 20
STATS = 8


def memory_kib(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as f:
        return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f) if k in ("VmRSS", "VmHWM")}


def second_level_dirs(location: str) -> list[str]:
    """The ciphertext directories of projects/acme and projects/other."""
    tree = os.path.join(location, "tree")
    [projects] = [n for n in os.listdir(tree) if names.is_entry(n) and os.path.isdir(os.path.join(tree, n))]
    base = os.path.join(tree, projects)
    return [os.path.join(base, n) for n in os.listdir(base)
            if names.is_entry(n) and os.path.isdir(os.path.join(base, n))]


@pytest.mark.parametrize("kind", ["sparse", "junk"])
def test_an_oversized_directory_table_costs_no_memory_and_stays_in_its_directory(tmp_path, kind):
    with populated_vault(tmp_path, size=160) as v:
        for location in (v.primary, v.backup):
            for c_dir in second_level_dirs(location):
                path = os.path.join(c_dir, dir_table.NAME)
                with open(path, "r+b") as f:
                    if kind == "sparse":
                        f.truncate(SPARSE)            # 512 MiB that take no room on the drive
                    else:
                        f.seek(dir_table.PREFIX_LEN)   # a real file: a first record of maximal length, junk
                        f.write((dir_table.MAX_RECORD).to_bytes(4, "big") + os.urandom(1 << 20) * 24)
        v.mount()
        try:
            pid = daemon_pid(v.mountpoint)
            before = memory_kib(pid)
            for _ in range(STATS):
                for p_path in ("projects/acme/plan.txt", "projects/other/secret.txt"):
                    with pytest.raises(OSError) as e:
                        os.stat(os.path.join(v.mountpoint, p_path))
                    assert e.value.errno == errno.EIO
            with open(os.path.join(v.mountpoint, "top.txt")) as f:
                assert f.read() == "not for bob either"
            after = memory_kib(pid)
            # Neither the files' size nor a copy of it: each access costs at most one record.
            assert after["VmRSS"] - before["VmRSS"] < 96 << 10, (before, after)
            assert after["VmHWM"] < before["VmHWM"] + (96 << 10), (before, after)
        finally:
            v.umount()
