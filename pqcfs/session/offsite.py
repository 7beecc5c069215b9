"""Pushing a mounted vault to its remotes, in the background and on request (`pqcfs push`,
`pqcfs umount --wait-remote`): the consistent point is taken in the mount's trio loop,
between two requests, where nothing can change the drives; reading the remote before and
uploading after run in worker threads while the mount goes on serving.

The upload queue is the vault itself: what the remote lacks is what differs between the
primary and this machine's authenticated index of the remote (registry.py), and what an
interrupted push already sent is on the remote's listing. So it survives unmount, kill -9
and reboot with nothing of its own to lose: each mount pushes once at its start (what an
earlier session left), then whenever the vault changed, every interval; a push that fails
(network down, server gone) is tried again with a backoff doubling up to BACKOFF_MAX."""

from __future__ import annotations

import logging

import trio

from pqcfs import vault as vault_mod
from pqcfs.errors import PqcfsError
from pqcfs.remote import registry
from pqcfs.remote.push import Pusher, replica_state_fields

log = logging.getLogger(__name__)
BACKOFF_MAX = 3600.0


class ChangeFlag(dict):
    """A change-journal watcher that only remembers that something changed: a session
    with no remote (or a remote long unreachable) must not keep every path it touched."""

    def __init__(self):
        super().__init__()
        self.dirty = False

    def __setitem__(self, rel, subtree) -> None:
        self.dirty = True

    def get(self, rel, default=None):
        return default

    def clear(self) -> None:
        self.dirty = False


class Offsite:
    def __init__(self, session):
        self.session = session
        self.running = trio.Lock()
        self.progress: dict | None = None
        self.changed = ChangeFlag()             # whether anything changed since the last consistent point
        self.last_error: str | None = None

    async def watch(self, interval: float) -> None:
        """The background push: at the start, then after changes, every interval."""
        vault_id = self.session.vault.header.vault_id
        if self.session.changes is not None:
            self.session.changes.watchers.append(self.changed)
        dirty, wait, backoff = True, 0.0, interval
        try:
            while True:
                await trio.sleep(wait)
                wait = interval
                if not (dirty or self.changed.dirty) or not registry.load(vault_id):
                    continue
                try:
                    await self.push()
                except Exception as e:  # noqa: BLE001 - a push must never take the mount down
                    # Nothing is lost: the next try stages again and sends what is still missing.
                    dirty, self.last_error = True, str(e)
                    backoff = wait = min(backoff * 2, BACKOFF_MAX)
                    if isinstance(e, (PqcfsError, OSError)):
                        log.warning("pushing to the remote failed (%s); tried again in %.0f s", e, wait)
                    else:
                        log.exception("pushing to the remote failed; tried again in %.0f s", wait)
                else:
                    dirty, self.last_error, backoff = False, None, interval
        finally:
            if self.session.changes is not None and self.changed in self.session.changes.watchers:
                self.session.changes.watchers.remove(self.changed)

    async def push(self, only: str | None = None, bwlimit: str | None = None) -> list[dict]:
        vault = self.session.vault
        vault_id = vault.header.vault_id
        entries = [registry.find(vault_id, only)] if only else registry.load(vault_id)
        if not entries:
            raise PqcfsError("this vault has no remote on this machine; `pqcfs remote add VAULT REMOTE:PATH` adds one")
        results = []
        async with self.running:
            for entry in entries:
                results.append(await self._push_one(entry, bwlimit))
        return results

    async def _push_one(self, entry, bwlimit) -> dict:
        vault, vfs = self.session.vault, self.session.vfs
        pusher = Pusher(entry, vault.header.vault_id, vault.root_key, bwlimit)
        try:
            checked = await trio.to_thread.run_sync(pusher.check)
            # The consistent point: no await from here to the end of stage(), so no request
            # runs in between. What only memory holds (entries, attributes, sequence numbers)
            # is written first, as an unmount would.
            vfs.settle()
            drive = vfs.replicas.drive()
            state = vault_mod.read_state(drive, vault.root_key)
            staged = pusher.stage(drive, checked, replica_state_fields(state))
            self.changed.clear()         # everything noted so far is in what was staged
            total = sum(staged.sizes.get(p.rsplit("/", 1)[-1], 0) for p in staged.staged)
            self.progress = {"remote": entry.name, "bytes": 0, "bytes_total": total}

            def on_bytes(done: int) -> None:
                self.progress = {"remote": entry.name, "bytes": done, "bytes_total": total}
            result = await trio.to_thread.run_sync(pusher.send, checked, staged, on_bytes)
        except (PqcfsError, OSError) as e:
            pusher.failed(e)
            self.session.event("remote-push-failed", remote=entry.name, error=type(e).__name__)
            raise
        finally:
            self.progress = None
        self.session.event("remote-push", remote=entry.name, epoch=result.epoch, objects=result.objects_sent,
                           bytes=result.bytes_sent, removed=result.removed)
        return {"remote": entry.name, **result.__dict__}
