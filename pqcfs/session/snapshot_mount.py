"""`pqcfs mount VAULT MNT --snapshot ID`: one snapshot, read-only, beside the live vault.

It takes no lock and writes nothing: the live vault may be mounted (and changing) at the
same time. What a snapshot holds never changes, so the daemon serves from the manifest it
read at the start; file contents are found as snapshots/view.py says.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pqcfs.errors import NoSuchSnapshot, PqcfsError
from pqcfs.format import snapshot as fmt
from pqcfs.session.session import Session
from pqcfs.snapshots.history import History, find
from pqcfs.snapshots.manifest import load_subtree
from pqcfs.snapshots.store import DIR, SnapshotStore
from pqcfs.snapshots.view import SnapshotTree

log = logging.getLogger(__name__)


def open_snapshot(vault, ref: str, accept_older: bool = False) -> tuple[SnapshotTree, object]:
    """The snapshot ref of an unlocked vault as a tree (nothing is written or healed)."""
    header = vault.header
    store = SnapshotStore(vault.drives, header.vault_id, vault.root_key, writable=False)
    history = History(store, header.vault_id, vault.root_key, accept_older=accept_older)
    listed = find(history.index, ref)
    tree = SnapshotTree(history.manifest(listed), vault.drives, header.block_size)
    return tree, listed


@dataclass
class GranteeSnapshot:
    snap_id: bytes
    created: int           # ns
    grant: str             # the grant's id (hex) whose directory it holds
    label: str             # that directory's name in the grantee's mount
    manifest: object


def grantee_snapshots(gv) -> list[GranteeSnapshot]:
    """Snapshots that hold a directory of one of gv's opened grants (taken while that grant
    was live), oldest first. A grantee cannot read the owner's index: it tries each
    manifest on the first drive; one that does not open for it is not its."""
    drive, found = gv.drives[0], []
    for name in sorted(SnapshotStore.listing(drive)):
        if not name.endswith(".s"):
            continue
        try:
            data = drive.read(f"{DIR}/{name}", fmt.MANIFEST_CAP)
        except (OSError, PqcfsError) as e:
            log.warning("snapshot %s: %s", name, e)
            continue
        for o in gv.opened:
            try:
                opened = load_subtree(data, o.keys)
            except PqcfsError as e:
                log.warning("snapshot %s does not open for grant %s: %s", name[:14], o.grant.grant_id.hex(), e)
                continue
            if opened is not None:
                manifest, created = opened
                found.append(GranteeSnapshot(manifest.snap_id, created, o.grant.grant_id.hex(), o.label, manifest))
    return sorted(found, key=lambda s: s.created)


def find_grantee_snapshot(snaps: list[GranteeSnapshot], ref: str) -> GranteeSnapshot:
    if ref == "latest" and snaps:
        return snaps[-1]
    found = [s for s in snaps if len(ref) >= 4 and s.snap_id.hex().startswith(ref.lower())]
    if len(found) != 1:
        raise NoSuchSnapshot(f"no snapshot of your granted directories named {ref!r} "
                             "(`pqcfs snapshot list VAULT --identity` shows them)")
    return found[0]


class SnapshotSession(Session):
    def __init__(self, vault, mountpoint: str, tree: SnapshotTree, snap_id: bytes, owner=None):
        super().__init__(vault, mountpoint, read_only=True, owner=owner)
        self.services = False
        self.tree = tree
        self.snapshot = snap_id.hex()

    def prepare(self, progress_factory=None):
        return None

    def build(self):
        self.tree.on_event = self.event
        self.vfs = self.tree
        return self.tree

    def event(self, event: str, **details) -> None:
        pass     # read-only and lock-free: the live vault's daemon may own the audit log

    def _give_top_directory(self, vfs) -> None:
        pass     # a snapshot's owner is what it was: read-only, nothing to give

    def _finish(self) -> None:
        pass
