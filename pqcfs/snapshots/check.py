"""fsck of the snapshots: the index on every replica, each manifest (its hash in the index,
its head, every record reached once), and every file version a snapshot holds: its kept
copy on each replica authenticates block by block, or the live file is that version."""

from __future__ import annotations

from dataclasses import dataclass

from pqcfs.crypto.content import BlockCorrupt, ContentCipher
from pqcfs.errors import PqcfsError
from pqcfs.format.node_header import HEADER_LEN
from pqcfs.snapshots.history import History
from pqcfs.snapshots.store import SnapshotStore, data_rel
from pqcfs.snapshots.view import SnapNode, SnapshotTree
from pqcfs.store import seen

CHUNK_BLOCKS = 256


@dataclass
class Finding:
    location: str
    where: str           # a path on the drive (ciphertext names, ids): safe to show
    what: str
    repaired: bool = False
    rollback: bool = False


def _blocks_ok(drive, rel: str, node: SnapNode, block_size: int) -> bool:
    cipher = ContentCipher(node.keys.content_key, node.keys.node_id, block_size)
    size = node.entry.size
    if not size:
        return True
    last = (size - 1) // block_size
    for first in range(0, last + 1, CHUNK_BLOCKS):
        end = min(last, first + CHUNK_BLOCKS - 1)
        c_data = drive.read_at(rel, (end - first + 1) * cipher.c_block, HEADER_LEN + first * cipher.c_block)
        try:
            cipher.open(first, c_data, last)
        except BlockCorrupt:
            return False
    return True


def check(vault, repair: bool = False) -> tuple[list[Finding], int]:
    """(what is wrong, file versions checked). With repair: replicas behind the newest
    index, a missing or altered manifest and a damaged or missing kept copy are made
    whole from a replica that has them good."""
    header, drives = vault.header, vault.drives
    store = SnapshotStore(drives, header.vault_id, vault.root_key, writable=repair)
    history = History(store, header.vault_id, vault.root_key, accept_older=True)
    found = [Finding(drives[0].location, "pqcfs.snapshots", p, repaired=repair) for p in store.problems]
    recorded = seen.snapshots(header.vault_id, vault.root_key)
    if history.index.seq < recorded:
        found.append(Finding(drives[0].location, "pqcfs.snapshots/index",
                             f"the snapshot list is older than this machine has seen ({history.index.seq} < "
                             f"{recorded}): snapshots were removed behind pqcfs' back", rollback=True))
    checked: set[tuple[bytes, int]] = set()
    for listed in history.index.snapshots:
        store.problems = []
        try:
            manifest = history.manifest(listed)
        except (PqcfsError, OSError) as e:
            found.append(Finding(drives[0].location, f"pqcfs.snapshots/{listed.snap_id.hex()}.s", str(e)))
            continue
        finally:
            found += [Finding(drives[0].location, "pqcfs.snapshots", p, repaired=repair) for p in store.problems]
        tree = SnapshotTree(manifest, drives, header.block_size)
        for _, node in tree.walk():
            if node.is_dir or (node.keys.node_id, node.entry.counter) in checked:
                continue
            checked.add((node.keys.node_id, node.entry.counter))
            found += _check_version(tree, node, header.block_size, repair)
    return found, len(checked)


def _check_version(tree: SnapshotTree, node: SnapNode, block_size: int, repair: bool) -> list[Finding]:
    rel = data_rel(node.keys.node_id, node.entry.counter)
    good, bad = [], []
    for drive in tree.drives:
        if not drive.exists(rel):
            bad.append((drive, "missing"))
        elif tree._version_ok(drive, rel, node) and _blocks_ok(drive, rel, node, block_size):
            good.append(drive)
        else:
            bad.append((drive, "fails authentication (altered, or another version put in its place)"))
    if not good:
        # Not kept: the live file must still be this version (on the first drive; the tree's
        # own fsck compares the replicas).
        try:
            tree.read_version(node, HEADER_LEN, 0)
            return []
        except (PqcfsError, OSError):
            pass
        what = "a file version a snapshot holds is on no drive (kept copy and live file both gone or changed)"
        return [Finding(tree.drives[0].location, rel, what)]
    findings = []
    for drive, why in bad:
        f = Finding(drive.location, rel, f"kept file version {why}")
        if repair:
            try:
                if drive.exists(rel):
                    drive.quarantine(rel, "a kept file version that fails authentication (fsck)")
                drive.copy_from(good[0], rel)
                f.repaired = True
            except (PqcfsError, OSError):
                pass
        findings.append(f)
    return findings
