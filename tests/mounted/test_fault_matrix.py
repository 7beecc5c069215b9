"""The fault matrix: every accident two USB sticks meet, on each drive, under each command.

{full, read-only, pulled mid-write, one flipped byte in each kind of structure}
× {primary, backup, a --single vault's only drive}
× {mount, umount, sync, fsck --repair, status}

Each cell plays one accident through the real CLI on loop-device drives and checks three
things: the command ends in a named state (a documented exit code, never the catch-all,
never a traceback, and a failure names the drive); the way out docs/recovery.md gives for
that accident works (undo the accident, then `pqcfs fsck --repair`); and everything that
was acknowledged (closed or fsynced without an error) reads back afterwards. The one thing
no way out can give back is a block of a --single vault's file whose only copy rotted: that
cell checks that the damage is named (the file, EIO on read) and that nothing else is lost.

All 150 cells take about 10 minutes, so CI runs a fixed selection in which every accident,
every drive and every command appears. PQCFS_FAULT_MATRIX=all runs every cell;
PQCFS_FAULT_MATRIX=N runs N cells drawn with PQCFS_FAULT_SEED (printed, so a failure can be
replayed).
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from pqcfs.cli import exitcodes
from pqcfs.format.node_header import HEADER_LEN
from tests.mounted import drives

pytestmark = [pytest.mark.mount, pytest.mark.skipif(not drives.ROOT, reason="needs root and /dev/fuse")]

# The structures a drive holds, each with the byte a flip hits (an offset into the file).
FLIPS = {
    "header": ("pqcfs.vault", lambda size: size // 2),
    "state": ("pqcfs.state", lambda size: size // 2),
    "audit": ("pqcfs.audit", lambda size: size // 2),
    "dir-table": ("DIR/d.t", lambda size: size // 2),
    "dir-id": ("DIR/d.id", lambda size: size // 2),
    "file-header": ("FILE", lambda size: HEADER_LEN // 2),
    "content": ("FILE", lambda size: size - 100),
}
FAULTS = ["full", "read-only", "pulled"] + [f"flip-{k}" for k in FLIPS]
PLACES = ["primary", "backup", "single"]
COMMANDS = ["mount", "umount", "sync", "fsck-repair", "status"]

# A documented code for every end; ERROR (1) is the catch-all no accident may reach.
NAMED_ENDS = {exitcodes.OK, exitcodes.DAMAGED, exitcodes.DRIVE, exitcodes.NO_SPACE, exitcodes.CRYPTO,
              exitcodes.DEGRADED}

# The content of a --single vault's rotted block has no other copy: named, not restored.
ONLY_COPY_LOST = {("flip-content", "single")}
# A --single vault's directory table with no good copy: its files answer EIO (never wrong
# data) until `fsck --repair` makes the table again from the drive's entries. A mount does
# not do that on its own: the entries' rollback protection lives in that very table.
UNTIL_REPAIR = {("flip-dir-table", "single")}


def selection() -> list[tuple[str, str, str]]:
    every = list(itertools.product(FAULTS, PLACES, COMMANDS))
    knob = os.environ.get("PQCFS_FAULT_MATRIX", "")
    if knob == "all":
        return every
    if knob.isdigit():
        seed = int(os.environ.get("PQCFS_FAULT_SEED", str(random.randrange(1 << 30))))
        print(f"fault matrix: {knob} cells, PQCFS_FAULT_SEED={seed}")
        return sorted(random.Random(seed).sample(every, min(int(knob), len(every))))
    # Every accident once, the drive and the command turning with it: each of the three
    # axes is covered whole, in about a minute.
    return [(fault, PLACES[n % 3], COMMANDS[(2 * n) % 5]) for n, fault in enumerate(FAULTS)]


WRITER = r'''
import os, sys
mnt, journal = sys.argv[1], sys.argv[2]
os.makedirs(os.path.join(mnt, "late"), exist_ok=True)
with open(journal, "a") as log:
    for n in range(100000):
        data = (b"late %d " % n) * 900
        fd = os.open(os.path.join(mnt, "late", "f%d" % n), os.O_WRONLY | os.O_CREAT, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        log.write("late/f%d\n" % n)
        log.flush()
'''


class Cell:
    """One accident on stand-in drives: the vault, what was acknowledged, and the accident
    itself (made and undone)."""

    def __init__(self, work: str, fault: str, place: str):
        self.work, self.fault, self.place = work, fault, place
        self.single = place == "single"
        self.acked: dict[str, bytes] = {}
        self.mountpoint = os.path.join(work, "mnt")
        self.passfile = os.path.join(work, "passphrase")
        os.makedirs(self.mountpoint)
        with open(self.passfile, "w") as f:
            f.write(drives.PASSPHRASE + "\n")
        self.stack = contextlib.ExitStack()
        self.fillers: list[str] = []
        self.aborted = False

    # --- drives ---------------------------------------------------------------------

    def __enter__(self):
        faulted = "primary" if self.single else self.place
        for role in ("primary",) if self.single else ("primary", "backup"):
            fstype = "exfat" if self.fault == "pulled" and role == faulted else "ext4"
            location, image = self.stack.enter_context(drives.loop_drive(self.work, role, fstype, 48))
            setattr(self, role, location)
            if role == faulted:
                self.target, self.image, self.fstype = location, image, fstype
        if self.single:
            self.backup = None
            self.cli("init", self.primary, "--single")
        else:
            self.cli("init", self.primary, self.backup)
        return self

    def __exit__(self, *exc):
        try:
            self.umount(check=False)
        finally:
            self.undo()
            self.stack.close()

    @property
    def loop(self) -> str:
        return drives.run("losetup", "-j", self.image).stdout.split(":")[0]

    # --- the CLI --------------------------------------------------------------------

    def cli(self, command: str, *args, check=True, unlock=True):
        extra = ["--passfile", self.passfile, "--allow-fixed"] if unlock else []
        if unlock and self.backup and command in ("mount", "sync", "fsck"):
            extra += ["--backup", self.backup]
        return drives.pqcfs(command, *args, *extra, check=check)

    def mount(self, check=True):
        return self.cli("mount", self.primary, self.mountpoint, check=check)

    def umount(self, check=True):
        if drives.is_mounted(self.mountpoint):
            proc = drives.pqcfs("umount", self.mountpoint, check=False)
            if drives.is_mounted(self.mountpoint):
                subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], capture_output=True)
            assert not check or proc.returncode in NAMED_ENDS, proc.stderr
            return proc
        return None

    # --- what the user keeps ---------------------------------------------------------

    def write_acknowledged(self) -> None:
        def put(rel: str, data: bytes) -> None:
            with open(os.path.join(self.mountpoint, rel), "wb") as f:
                f.write(data)
            self.acked[rel] = data
        os.makedirs(os.path.join(self.mountpoint, "docs"))
        put("notes.txt", b"the root's own note\n")
        put("docs/letter.txt", b"dear future self\n" * 20)
        put("docs/photo.bin", os.urandom(200_000))
        os.symlink("docs/letter.txt", os.path.join(self.mountpoint, "link"))

    def check_acknowledged(self) -> list[str]:
        """Every acknowledged file reads back the same; returns those that can not (a
        rotted block with no other copy), which must fail loudly (EIO), never differ."""
        unreadable = []
        for rel, data in sorted(self.acked.items()):
            try:
                with open(os.path.join(self.mountpoint, rel), "rb") as f:
                    got = f.read()
            except OSError as e:
                assert e.errno == errno.EIO, f"{rel}: {e}"
                unreadable.append(rel)
                continue
            assert got == data, f"{rel}: acknowledged bytes changed"
        assert os.readlink(os.path.join(self.mountpoint, "link")) == "docs/letter.txt"
        return unreadable

    # --- the accident ---------------------------------------------------------------

    def structure(self, kind: str) -> str:
        name, _ = FLIPS[kind]
        tree = os.path.join(self.target, "tree")
        subdir = next(os.path.join(tree, n) for n in os.listdir(tree) if os.path.isdir(os.path.join(tree, n)))
        if name == "FILE":   # the photo: the largest file of the subdirectory
            return max((os.path.join(subdir, n) for n in os.listdir(subdir) if not n.startswith("d.")),
                       key=os.path.getsize)
        if name.startswith("DIR/"):
            return os.path.join(subdir, name[4:])
        return os.path.join(self.target, name)

    def make(self, mounted: bool) -> None:
        """The accident, on the faulted drive (pulled is played by pull_mid_write)."""
        if self.fault == "full":
            self.fillers = drives.fill_outside(self.target)
        elif self.fault == "read-only":
            if mounted:   # what ext4 does on a drive error while files are open for writing
                # What ext4 had committed by then (its journal commits every 5 s; an abort
                # drops the rest, on any file system): pqcfs' part is what reached the drive.
                os.sync()
                drives.run("mount", "-o", "remount,abort", self.target)
                self.aborted = True
            else:
                drives.run("mount", "-o", "remount,ro", self.target)
        elif self.fault.startswith("flip-"):
            kind = self.fault[5:]
            path = self.structure(kind)
            offset = FLIPS[kind][1](os.path.getsize(path))
            with open(path, "r+b") as f:
                f.seek(offset)
                byte = f.read(1)
                f.seek(offset)
                f.write(bytes([byte[0] ^ 0x01]))
            os.sync()

    def pull_mid_write(self) -> None:
        """The mount busy writing (each file fsynced, then journaled) when the drive goes:
        the exFAT drive's daemon dies, as when its stick is pulled."""
        journal = os.path.join(self.work, "journal")
        writer = subprocess.Popen([sys.executable, "-c", WRITER, self.mountpoint, journal],
                                  stderr=subprocess.DEVNULL)
        time.sleep(0.8)
        drives.run("pkill", "-KILL", "-f", f"mount.exfat-fuse {self.loop}", check=False)
        time.sleep(0.5)
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
        with open(journal) as f:
            done = [line.strip() for line in f if line.endswith("\n")]
        assert done, "the writer acknowledged nothing before the drive was pulled"
        for n, rel in enumerate(done):
            self.acked[rel] = (b"late %d " % int(rel.split("/f")[1])) * 900
        self.pulled = True

    def plug_back(self) -> None:
        drives.unmount(self.target)
        drives.run("mount.exfat-fuse", self.loop, self.target)
        self.pulled = False

    def undo(self) -> None:
        """The user's part of the way out: space freed, the drive writable, plugged back."""
        for filler in self.fillers:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(filler)
        self.fillers = []
        if self.fault == "read-only":
            if self.aborted:   # an aborted ext4 comes back only through a fresh mount
                loop = self.loop
                drives.unmount(self.target)
                drives.run("e2fsck", "-fy", loop, check=False)
                drives.run("mount", loop, self.target)
                self.aborted = False
            else:
                drives.run("mount", "-o", "remount,rw", self.target, check=False)
        if getattr(self, "pulled", False):
            self.plug_back()


def said(proc) -> str:
    return proc.stdout + proc.stderr


def check_named_end(cell: Cell, command: str, proc) -> None:
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode in NAMED_ENDS, f"{command} ended with {proc.returncode}: {said(proc)}"
    if proc.returncode != 0 and not getattr(cell, "pulled_and_back", False):
        assert cell.target in said(proc), f"{command} failed without naming {cell.target}: {said(proc)}"


def run_command(cell: Cell, command: str) -> None:
    """Make the accident, then run the command on the vault it left."""
    cell.mount()
    cell.write_acknowledged()
    if cell.fault == "pulled":
        cell.pull_mid_write()
        if command != "umount":
            cell.umount()
            cell.plug_back()
            cell.pulled_and_back = True
    elif command == "umount":
        cell.make(mounted=True)
        if cell.fault == "full":   # a change after the drive filled: a record from the reserve
            os.chmod(os.path.join(cell.mountpoint, "notes.txt"), 0o600)
    if command == "umount":
        proc = cell.umount(check=False)
        check_named_end(cell, command, proc)
        return
    cell.umount()
    cell.make(mounted=False)
    if command == "mount":
        proc = cell.mount(check=False)
        check_named_end(cell, command, proc)
        if proc.returncode == 0:
            try:
                unreadable = cell.check_acknowledged()
                assert not unreadable or (cell.fault, cell.place) in ONLY_COPY_LOST | UNTIL_REPAIR, unreadable
            finally:
                cell.umount()
    elif command == "sync":
        proc = cell.cli("sync", cell.primary, check=False)
        check_named_end(cell, command, proc)
    elif command == "fsck-repair":
        proc = cell.cli("fsck", cell.primary, "--repair", check=False)
        check_named_end(cell, command, proc)
    elif command == "status":
        proc = drives.pqcfs("status", cell.primary, check=False)
        check_named_end(cell, command, proc)
        # What status sees without a key: a header that does not decode, a state that no
        # longer matches the other drive's. (A --single vault's state is checked by fsck.)
        if cell.fault == "flip-header" or (cell.fault == "flip-state" and cell.place != "single"):
            assert proc.returncode == exitcodes.DEGRADED and cell.target in said(proc), said(proc)


def way_out(cell: Cell) -> None:
    """docs/recovery.md's way out: undo the accident, `pqcfs fsck --repair`; then every
    acknowledged byte reads back and the replicas are clean."""
    cell.undo()
    repair = cell.cli("fsck", cell.primary, "--repair", check=False)
    lost_only_copy = (cell.fault, cell.place) in ONLY_COPY_LOST
    if lost_only_copy:
        assert repair.returncode == exitcodes.CRYPTO and cell.target in said(repair), said(repair)
    else:
        assert repair.returncode == 0, said(repair)
    cell.mount()
    try:
        unreadable = cell.check_acknowledged()
        assert unreadable == (["docs/photo.bin"] if lost_only_copy else []), unreadable
        with open(os.path.join(cell.mountpoint, "after.txt"), "wb") as f:
            f.write(b"writable again")
    finally:
        cell.umount()
    doc = json.loads(drives.pqcfs("status", cell.primary, "--json", check=False).stdout)
    assert all(r["present"] and r["clean"] for r in doc["replicas"]), doc["replicas"]
    if not lost_only_copy:
        assert cell.cli("fsck", cell.primary, check=False).returncode == 0


@pytest.mark.parametrize("fault,place,command", selection(), ids=lambda v: v)
def test_fault_matrix_cell(tmp_path, fault, place, command):
    with Cell(str(tmp_path), fault, place) as cell:
        run_command(cell, command)
        way_out(cell)
