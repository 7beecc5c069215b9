"""Snapshots while mounted: the control socket's `snapshot` requests and automatic history's
hourly snapshot. Both run in the mount's trio loop between two requests, so the tree
holds still for them (the consistent point, as `fsfreeze` gives one); nothing here
awaits while the tree is read."""

from __future__ import annotations

import logging

import trio

from pqcfs.errors import PqcfsError
from pqcfs.format import snapshot as fmt
from pqcfs.session.offsite import ChangeFlag
from pqcfs.snapshots.history import find

log = logging.getLogger(__name__)


def listed_json(s: fmt.Listed) -> dict:
    return s.to_json()


class HistoryService:
    def __init__(self, session):
        self.session = session
        self.changed = ChangeFlag()      # anything changed since the last automatic snapshot

    @property
    def history(self):
        h = self.session.history
        if h is None:
            raise PqcfsError("snapshots need format 2 (directory tables) and a read-write mount")
        return h

    def handle(self, request: dict) -> dict:
        """One `snapshot` request of the control socket (create, delete, policy)."""
        action, h = request.get("action"), self.history
        if action == "create":
            label = request.get("label") or ""
            listed = h.create(self.session.vfs, label=label, kind=request.get("kind") or "manual")
            return {"snapshot": listed_json(listed)}
        if action == "delete":
            gone = [find(h.index, ref).snap_id for ref in request.get("ids") or []]
            files, size = h.delete(gone)
            return {"deleted": [g.hex() for g in gone], "freed_files": files, "freed_bytes": size}
        if action == "policy":
            p = request.get("policy")
            h.set_policy(fmt.Policy(keep_s=int(p["keep"]), max_space_pct=float(p["max_space"])) if p else None)
            thinned = h.thin() if p else []
            return {"policy": p, "thinned": [t.hex() for t in thinned]}
        raise ValueError(f"unknown snapshot action {action!r}")

    async def watch(self, interval: float) -> None:
        """Automatic history: a snapshot every interval in which something changed."""
        changes = self.session.changes
        if changes is not None:
            changes.watchers.append(self.changed)
        try:
            while True:
                await trio.sleep(interval)
                h = self.session.history
                if h is None or h.index.policy is None or not self.changed.dirty:
                    continue
                try:
                    h.create(self.session.vfs, label="hourly", kind="auto")
                except Exception as e:  # noqa: BLE001 - history must never take the mount down
                    log.warning("the automatic snapshot failed: %s", e)
                self.changed.clear()      # (after: the snapshot's own files are changes too)
        finally:
            if changes is not None and self.changed in changes.watchers:
                changes.watchers.remove(self.changed)
