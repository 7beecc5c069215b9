"""Random operations from several processes against in-memory models, then a remount."""

import json
import os
import subprocess
import sys

import pytest

from pqcfs.fs import tables
from pqcfs.session import session as session_mod
from tests.mounted import drives
from tests.mounted.exerciser import snapshot

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not drives.ROOT, reason="needs root and /dev/fuse")]
WORKERS = 4
OPS = int(os.environ.get("PQCFS_EXERCISER_OPS", "700"))    # per worker; raise it for a longer soak
SEEDS = int(os.environ.get("PQCFS_EXERCISER_SEEDS", "2"))   # runs per file system; more for a longer soak
SCRIPT = os.path.join(os.path.dirname(__file__), "exerciser.py")


@pytest.fixture(scope="module", params=["ext4", "exfat"])
def vault(request):
    with drives.workdir() as w, drives.mounted_vault(w, request.param) as v:
        yield v


@pytest.mark.parametrize("seed", range(1, SEEDS + 1))
def test_exerciser(vault, seed):
    base = os.path.join(vault.mountpoint, f"seed{seed}")
    os.mkdir(base)
    procs, outs = [], []
    for n in range(WORKERS):
        out = os.path.join(vault.workdir, f"model-{seed}-{n}.json")
        outs.append(out)
        procs.append(subprocess.Popen([sys.executable, SCRIPT, os.path.join(base, f"w{n}"),
                                       str(seed * 100 + n), str(OPS), out],
                                      stderr=subprocess.PIPE, text=True))
    errors = [p.communicate(timeout=1200)[1] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(errors)
    # Thousands of opens and closes later, the daemon holds no leaked descriptors.
    with open(session_mod.runtime_file(vault.mountpoint)) as f:
        pid = json.load(f)["pid"]
    # (The 16 most recently changed directory tables stay open on both drives, by design.)
    assert len(os.listdir(f"/proc/{pid}/fd")) < 40 + 2 * tables.OPEN_TABLES
    vault.umount()
    vault.mount("-o", "allow_other")
    for n, out in enumerate(outs):
        with open(out) as f:
            want = {k: tuple(v) for k, v in json.load(f)["expected"].items()}
        got = snapshot(os.path.join(base, f"w{n}"))
        assert got == want, f"worker {n} of seed {seed} differs after remount"
