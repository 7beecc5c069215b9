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

import blake3

from pqcfs.errors import CryptoError, DamagedStructure, PqcfsError, UnsupportedVersion
from pqcfs.format import snapshot as fmt
from pqcfs.store.drive import Drive
from pqcfs.store.sync import SNAPSHOTS

log = logging.getLogger(__name__)
DIR = SNAPSHOTS
INDEX = f"{DIR}/index"
DATA = f"{DIR}/data"
DAMAGE = (CryptoError, DamagedStructure, UnsupportedVersion, OSError, PqcfsError)


def manifest_rel(snap_id: bytes) -> str:
    return f"{DIR}/{snap_id.hex()}.s"


def data_name(node_id: bytes, counter: int) -> str:
    return f"{node_id.hex()}.{counter}"


def data_rel(node_id: bytes, counter: int) -> str:
    return f"{DATA}/{data_name(node_id, counter)}"


def parse_data_name(name: str) -> tuple[bytes, int] | None:
    node, _, counter = name.partition(".")
    try:
        node_id = bytes.fromhex(node)
        n = int(counter)
    except ValueError:
        return None
    if len(node_id) != 16 or n < 0 or name != data_name(node_id, n):
        return None
    return node_id, n


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
