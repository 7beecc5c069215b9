"""fsck of the snapshots: the index on every replica, each manifest (its hash in the index,
its head, every record reached once), and every file version a snapshot holds: its kept
copy on each replica authenticates block by block, or the live file is that version."""

from __future__ import annotations

from dataclasses import dataclass

from pqcfs.crypto.content import BlockCorrupt, ContentCipher, p_size
from pqcfs.errors import PqcfsError
from pqcfs.format.node_header import HEADER_LEN
from pqcfs.snapshots.history import History
from pqcfs.snapshots.store import SnapshotStore, data_rel, delta_index, delta_rel, needed
from pqcfs.snapshots.view import SnapNode, SnapshotTree, names_node
from pqcfs.store import seen

CHUNK_BLOCKS = 256


@dataclass
class Finding:
    location: str
    where: str           # a path on the drive (ciphertext names, ids): safe to show
    what: str
    repaired: bool = False
    rollback: bool = False


def _whole_ok(drive, rel: str, node: SnapNode, counter: int, block_size: int) -> bool:
    """A whole kept copy: its header names the node at counter, every block authenticates."""
    if not names_node(drive, rel, node, counter, at_least=False):
        return False
    cipher = ContentCipher(node.keys.content_key, node.keys.node_id, block_size)
    try:
        size = p_size(drive.lstat(rel).st_size - HEADER_LEN, block_size)
    except PqcfsError:
        return False
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


def _delta_ok(drive, rel: str, node: SnapNode, block_size: int) -> bool:
    """Kept blocks: each record's block authenticates (as its version's last block, or not)."""
    cipher = ContentCipher(node.keys.content_key, node.keys.node_id, block_size)
    try:
        index = delta_index(drive, rel)
    except PqcfsError:
        return False
    for i, (off, n) in index.items():
        data = drive.read_at(rel, n, off)
        try:
            cipher.open(i, data, i + 1)          # a block before the end
        except BlockCorrupt:
            try:
                cipher.open(i, data, i)          # the version's last block
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
    chains = store.chains()
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
            found += _check_version(tree, node, chains, header.block_size, repair)
    return found, len(checked)


def _check_version(tree: SnapshotTree, node: SnapNode, chains: dict, block_size: int, repair: bool) -> list[Finding]:
    """Every kept file version node's chain uses, on every replica; then the version read
    whole (kept blocks, a whole copy or the live file: every block authenticates)."""
    findings = []
    for k, delta in needed(chains.get(node.keys.node_id, []), node.entry.counter):
        rel = (delta_rel if delta else data_rel)(node.keys.node_id, k)
        good, bad = [], []
        for drive in tree.drives:
            if not drive.exists(rel):
                bad.append((drive, "missing"))
            elif (_delta_ok(drive, rel, node, block_size) if delta
                  else _whole_ok(drive, rel, node, k, block_size)):
                good.append(drive)
            else:
                bad.append((drive, "fails authentication (altered, or another version put in its place)"))
        for drive, why in bad:
            f = Finding(drive.location, rel, f"kept file version {why}")
            if repair and good:
                try:
                    if drive.exists(rel):
                        drive.quarantine(rel, "a kept file version that fails authentication (fsck)")
                    drive.copy_from(good[0], rel)
                    f.repaired = True
                except (PqcfsError, OSError):
                    pass
            findings.append(f)
    try:
        tree.read_all(node)
    except (PqcfsError, OSError) as e:
        findings.append(Finding(tree.drives[0].location, data_rel(node.keys.node_id, node.entry.counter),
                                f"a file version a snapshot holds can not be read whole: {e}"))
    return findings
