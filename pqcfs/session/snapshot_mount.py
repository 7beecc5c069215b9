"""`pqcfs mount VAULT MNT --snapshot ID`: one snapshot, read-only, beside the live vault.

It takes no lock and writes nothing: the live vault may be mounted (and changing) at the
same time. What a snapshot holds never changes, so the daemon serves from the manifest it
read at the start; file contents are found as snapshots/view.py says.
"""

from __future__ import annotations

from pqcfs.session.session import Session
from pqcfs.snapshots.history import History, find
from pqcfs.snapshots.store import SnapshotStore
from pqcfs.snapshots.view import SnapshotTree


def open_snapshot(vault, ref: str, accept_older: bool = False) -> tuple[SnapshotTree, object]:
    """The snapshot ref of an unlocked vault as a tree (nothing is written or healed)."""
    header = vault.header
    store = SnapshotStore(vault.drives, header.vault_id, vault.root_key, writable=False)
    history = History(store, header.vault_id, vault.root_key, accept_older=accept_older)
    listed = find(history.index, ref)
    tree = SnapshotTree(history.manifest(listed), vault.drives, header.block_size)
    return tree, listed


class SnapshotSession(Session):
    def __init__(self, vault, mountpoint: str, ref: str, owner=None, accept_older: bool = False):
        super().__init__(vault, mountpoint, read_only=True, owner=owner, accept_older=accept_older)
        self.services = False
        self.tree, self.listed = open_snapshot(vault, ref, accept_older)
        self.snapshot = self.listed.snap_id.hex()

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
