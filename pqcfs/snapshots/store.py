"""Where snapshots live on each replica, and how the replicas agree on them.

  pqcfs.snapshots/index             the snapshot index (format/snapshot.py), on every replica
  pqcfs.snapshots/<id>.s            one manifest per snapshot
  pqcfs.snapshots/data/<node>.<n>   a file's ciphertext as it was at write counter n, kept
                                    because a snapshot holds it and the live tree changed it

Every replica holds the same; the index with the highest sequence number that
authenticates wins, and a replica behind it (rolled back, damaged, or a manifest missing)
is brought up to it from one that holds it, as any other heal. A manifest is used only
when its BLAKE3 is the one the index lists.
"""

from __future__ import annotations

import hmac
import logging
import os

import blake3

from pqcfs.errors import CryptoError, DamagedStructure, PqcfsError, UnsupportedVersion
from pqcfs.format import snapshot as fmt
from pqcfs.store.drive import Drive, is_sparse
from pqcfs.store.sync import SNAPSHOTS

log = logging.getLogger(__name__)
DIR = SNAPSHOTS
INDEX = f"{DIR}/index"
DATA = f"{DIR}/data"
SMALL = 256 << 10     # a version up to this size is kept whole at its first change; a larger one block by block
DAMAGE = (CryptoError, DamagedStructure, UnsupportedVersion, OSError, PqcfsError)


def manifest_rel(snap_id: bytes) -> str:
    return f"{DIR}/{snap_id.hex()}.s"


def data_name(node_id: bytes, counter: int) -> str:
    return f"{node_id.hex()}.{counter}"


def data_rel(node_id: bytes, counter: int) -> str:
    return f"{DATA}/{data_name(node_id, counter)}"


def delta_name(node_id: bytes, counter: int) -> str:
    return f"{node_id.hex()}.{counter}{DELTA_SUFFIX}"


def delta_rel(node_id: bytes, counter: int) -> str:
    return f"{DATA}/{delta_name(node_id, counter)}"


DELTA_SUFFIX = ".b"


def parse_data_name(name: str) -> tuple[bytes, int, bool] | None:
    """(node id, write counter, a delta?) of a kept file's name; None for any other name."""
    delta = name.endswith(DELTA_SUFFIX)
    node, _, counter = name.removesuffix(DELTA_SUFFIX).partition(".")
    try:
        node_id = bytes.fromhex(node)
        n = int(counter)
    except ValueError:
        return None
    if len(node_id) != 16 or n < 0 or name != (delta_name if delta else data_name)(node_id, n):
        return None
    return node_id, n, delta


def needed(chain: list[tuple[int, bool]], counter: int) -> list[tuple[int, bool]]:
    """The kept files (counter, a delta?) that version `counter` of a node is read from, in
    order: its deltas from that counter on, up to and including the first whole copy. (A
    block the live file changed since is in the first delta from `counter` on that has it,
    or in that whole copy; any other block is unchanged: the live file's.)"""
    out = []
    for k, delta in chain:
        if k < counter:
            continue
        out.append((k, delta))
        if not delta:
            break
    return out


def delta_index(drive: Drive, rel: str) -> dict[int, tuple[int, int]]:
    """block index -> (offset, length) of each block a kept blocks file holds on drive (the
    first record of an index wins); empty when it is missing. A torn last record is left out."""
    return _scan_delta(drive, rel)[0]


def _scan_delta(drive: Drive, rel: str) -> tuple[dict[int, tuple[int, int]], int]:
    try:
        fd = drive.open(rel)
    except FileNotFoundError:
        return {}, 0
    try:
        st = os.fstat(fd)
        if is_sparse(st):
            # Written by appends of real blocks, never sparse: a planted one would cost a
            # scan of its size for nothing (what fails here is set aside and kept again).
            raise DamagedStructure(f"{drive.describe(rel)} is a sparse file of {st.st_size} bytes")
        size = st.st_size
        fmt.parse_delta_prefix(os.pread(fd, fmt.DELTA_PREFIX_LEN, 0))
        found, off = {}, fmt.DELTA_PREFIX_LEN
        while off + fmt.DELTA_RECORD_LEN <= size:
            index, n = fmt.parse_delta_record_head(os.pread(fd, fmt.DELTA_RECORD_LEN, off))
            if off + fmt.DELTA_RECORD_LEN + n > size:
                break
            found.setdefault(index, (off + fmt.DELTA_RECORD_LEN, n))
            off += fmt.DELTA_RECORD_LEN + n
        return found, off
    finally:
        os.close(fd)


def append_delta(drive: Drive, rel: str, counter: int, records: bytes) -> None:
    """records at the end of a kept blocks file's valid part (made when missing), durably."""
    try:
        _, valid = _scan_delta(drive, rel)
    except PqcfsError as e:
        # Never in the way of the live tree: a damaged file is set aside and kept again.
        drive.quarantine(rel, f"a kept blocks file that does not parse ({e})")
        valid = 0
    if valid == 0:
        drive.write_at(rel, fmt.delta_prefix(counter) + records, 0)
    else:
        drive.write_at(rel, records, valid)


def chains_on(drive: Drive) -> dict[bytes, list[tuple[int, bool]]]:
    out: dict[bytes, list[tuple[int, bool]]] = {}
    if drive.kind(DATA) != "dir":
        return out
    for name, kind in drive.scandir(DATA):
        parsed = parse_data_name(name) if kind == "file" else None
        if parsed is not None:
            out.setdefault(parsed[0], []).append(parsed[1:])
    for chain in out.values():
        chain.sort()
    return out


class SnapshotStore:
    """The snapshot structures of one vault's replicas (drives: the vault's, in replica
    order; healthy: which of them to use)."""

    def __init__(self, drives: list[Drive], vault_id: bytes, root_key: bytes, healthy=None, on_change=None,
                 writable: bool = True):
        self.drives = drives
        self.vault_id = vault_id
        self.key = fmt.snapshot_key(root_key)
        self._healthy = healthy or (lambda: list(range(len(drives))))
        self.on_change = on_change or (lambda rel, subtree=False: None)
        self.writable = writable
        self.problems: list[str] = []      # what reading found wrong (and healed, when writable)

    @property
    def healthy(self) -> list[int]:
        return self._healthy()

    # --- the index --------------------------------------------------------------------

    def read_index(self) -> fmt.Index:
        """The newest index any replica holds; replicas behind it (or damaged) are given
        it when writable. No index anywhere: an empty one (no snapshot was ever taken)."""
        found: dict[int, tuple[fmt.Index, bytes] | None] = {}
        for n in self.healthy:
            drive = self.drives[n]
            try:
                data = drive.read(INDEX, fmt.INDEX_CAP)
            except FileNotFoundError:
                found[n] = None
                continue
            except DAMAGE as e:
                self.problems.append(f"{drive.describe(INDEX)}: {e}")
                found[n] = None
                continue
            try:
                found[n] = (fmt.decode_index(self.key, self.vault_id, data), data)
            except DAMAGE as e:
                self.problems.append(f"{drive.describe(INDEX)}: {e}")
                found[n] = None
        good = [f for f in found.values() if f is not None]
        if not good:
            return fmt.Index()
        best, data = max(good, key=lambda f: f[0].seq)
        for n, f in found.items():
            if f is None or f[0].seq < best.seq:
                if f is not None:
                    self.problems.append(f"{self.drives[n].describe(INDEX)}: behind the newest snapshot index "
                                         f"(sequence {f[0].seq} < {best.seq})")
                if self.writable:
                    self._ensure_dirs(n)
                    self.drives[n].write_atomic(INDEX, data)
                    self.on_change(INDEX)
        return best

    def commit(self, index: fmt.Index) -> None:
        """index, one sequence number on, on every replica (the index is what a snapshot's
        existence is: a manifest it does not list is not a snapshot)."""
        index.seq += 1
        data = fmt.encode_index(self.key, self.vault_id, index)
        self.on_change(INDEX)
        for n in self.healthy:
            self._ensure_dirs(n)
            self.drives[n].write_atomic(INDEX, data)

    def _ensure_dirs(self, n: int) -> None:
        drive = self.drives[n]
        for rel in (DIR, DATA):
            kind = drive.kind(rel)
            if kind is None:
                drive.mkdir(rel, 0o700)
            elif kind != "dir":
                drive.quarantine(rel, "not a directory where the snapshots belong")
                drive.mkdir(rel, 0o700)

    def prepare(self) -> None:
        for n in self.healthy:
            self._ensure_dirs(n)

    # --- manifests --------------------------------------------------------------------

    def write_manifest(self, snap_id: bytes, data: bytes) -> None:
        rel = manifest_rel(snap_id)
        self.on_change(rel)
        for n in self.healthy:
            self._ensure_dirs(n)
            self.drives[n].write_atomic(rel, data)

    def read_manifest(self, listed: fmt.Listed) -> bytes:
        """The manifest the index lists, from the first replica that holds it unchanged;
        replicas whose copy is missing or differs get that one (when writable)."""
        rel = manifest_rel(listed.snap_id)
        bad, data = [], None
        for n in self.healthy:
            drive = self.drives[n]
            try:
                found = drive.read(rel, fmt.MANIFEST_CAP)
            except FileNotFoundError:
                bad.append((n, "missing"))
                continue
            except DAMAGE as e:
                bad.append((n, str(e)))
                continue
            if len(found) == listed.size and hmac.compare_digest(blake3.blake3(found).digest(), listed.digest):
                data = found
                break
            bad.append((n, "not the manifest the snapshot index lists (altered or swapped)"))
        if data is not None:
            # The replicas after the one read: missing or of another size is seen at the cost
            # of a stat (a copy altered in place is fsck's to find: it reads every byte).
            for n in self.healthy[self.healthy.index(n) + 1:]:
                try:
                    if self.drives[n].lstat(rel).st_size != listed.size:
                        bad.append((n, "not the manifest the snapshot index lists (altered or swapped)"))
                except FileNotFoundError:
                    bad.append((n, "missing"))
                except OSError as e:
                    bad.append((n, str(e)))
        for n, why in bad:
            self.problems.append(f"snapshot {listed.snap_id.hex()[:12]} on {self.drives[n].location}: {why}")
        if data is None:
            raise DamagedStructure(f"snapshot {listed.snap_id.hex()[:12]} ({listed.label or 'no label'}): no replica "
                                   "holds its manifest unchanged")
        if self.writable:
            for n, _ in bad:
                self.drives[n].write_atomic(rel, data)
                self.on_change(rel)
        return data

    # --- kept data ----------------------------------------------------------------------

    def chains(self, n: int | None = None) -> dict[bytes, list[tuple[int, bool]]]:
        """node id -> its kept files on replica n (the first healthy one) as (counter, a
        delta?), in counter order."""
        return chains_on(self.drives[self.healthy[0] if n is None else n])

    @staticmethod
    def listing(drive: Drive) -> list[str]:
        return [name for name, kind in drive.scandir(DIR)] if drive.kind(DIR) == "dir" else []

    @staticmethod
    def kept_listing(drive: Drive) -> list[str]:
        return [name for name, kind in drive.scandir(DATA)] if drive.kind(DATA) == "dir" else []

    def kept(self, n: int | None = None) -> dict[str, int]:
        """name -> bytes of every kept file on replica n (the first healthy one)."""
        drive = self.drives[self.healthy[0] if n is None else n]
        if drive.kind(DATA) != "dir":
            return {}
        out = {}
        for name, kind in drive.scandir(DATA):
            if kind == "file" and parse_data_name(name) is not None:
                try:
                    out[name] = drive.lstat(f"{DATA}/{name}").st_size
                except FileNotFoundError:
                    pass
        return out

    def drop_unreferenced(self, referenced: set[str]) -> tuple[int, int]:
        """Remove kept files no snapshot refers to (and stray temp files), on every
        replica; returns (files, bytes) removed on the first."""
        files = size = 0
        for i, n in enumerate(self.healthy):
            drive = self.drives[n]
            if drive.kind(DATA) != "dir":
                continue
            for name, kind in drive.scandir(DATA):
                if name in referenced or kind == "dir":
                    continue
                rel = f"{DATA}/{name}"
                self.on_change(rel)
                if kind == "file":
                    if i == 0:
                        files += 1
                        size += drive.lstat(rel).st_size
                    drive.unlink(rel)
                else:
                    drive.quarantine(rel, "not a regular file among the snapshots' data")
        return files, size

    def sweep_manifests(self, listed: set[bytes]) -> int:
        """Manifests the index does not list (a create or delete cut short) leave every
        replica; returns how many the first held."""
        removed = 0
        for i, n in enumerate(self.healthy):
            drive = self.drives[n]
            if drive.kind(DIR) != "dir":
                continue
            for name, kind in drive.scandir(DIR):
                if not name.endswith(".s") or kind != "file":
                    continue
                try:
                    snap_id = bytes.fromhex(name[:-2])
                except ValueError:
                    continue
                if snap_id not in listed:
                    self.on_change(f"{DIR}/{name}")
                    drive.unlink(f"{DIR}/{name}")
                    removed += i == 0
        return removed
