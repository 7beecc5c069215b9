"""Bringing a replica back while mounted, without unmounting.

A drive that failed during the session, or was missing when it began, is found again
(where it was, or on its file system UUID; `pqcfs sync` may name it), checked with the
root key, brought up to date from the serving replica while the mount goes on serving,
and then joins the mirror. The copy runs between requests, one file at a time, with the
trio loop serving in between; whatever changes meanwhile is noted (change journal
watchers) and copied in the next pass. When a pass ends with nothing new, the replica
joins in one step no request can come between: from then on every change goes to it
too, open files included. What is copied: the change journal's paths when it covers
everything the replica lacks, else the whole tree is compared.
"""

from __future__ import annotations

import errno
import logging
import os
import time

import trio

from pqcfs import mirror
from pqcfs import vault as vault_mod
from pqcfs.errors import MountError, NoSpace, PqcfsError
from pqcfs.format import replica_state as rs
from pqcfs.format import vault_header
from pqcfs.store import intent as intent_mod
from pqcfs.store import sync as sync_mod
from pqcfs.store.drive import Drive
from pqcfs.store.lock import VaultLock

log = logging.getLogger(__name__)
BACKOFF_MAX = 300.0


def _mount_table() -> bytes:
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _totals(location: str, paths: dict[str, bool]) -> tuple[int, int]:
    # A Drive of its own: Drives are not shared between threads.
    with Drive(location) as drive:
        return sync_mod.path_totals(drive, paths)


class RejoinError(PqcfsError):
    """A replica that was found can not rejoin (full, newer, diverged, read-only...)."""


class Rejoin:
    def __init__(self, session):
        self.session = session
        self.running = trio.Lock()
        self.locks: list[VaultLock] = []
        self._retry_at: dict[str, tuple[float, float]] = {}   # replica id -> (when, backoff)
        self.progress: dict | None = None     # the sync under way, for `pqcfs sync` while mounted

    @property
    def wanted(self) -> list[str]:
        return list(self.session.missing)

    def _index(self, replica_id: str) -> int | None:
        """The replica set index of a replica that failed this session (None: it was
        missing from the start, and joins as a new one)."""
        return next((n for n, rid in self.session.failed_ids.items() if rid == replica_id), None)

    def _entry(self, replica_id: str) -> dict | None:
        return next((r for r in self.session.vault.header.replicas if r["id"] == replica_id), None)

    def _probe(self, replica_id: str, location: str | None) -> tuple[str, Drive, rs.ReplicaState] | None:
        """Where the replica is now, opened and authenticated (runs in a worker thread:
        a drive that hangs must not stall the mount)."""
        vault = self.session.vault
        entry = self._entry(replica_id)
        if entry is None:
            return None
        n = self._index(replica_id)
        candidates = [location] if location else []
        if not location:
            if n is not None:
                candidates.append(vault.locations[n])
            serving = os.path.realpath(vault.locations[self.session.replicas.serving])
            found = vault_mod.find_replica(entry, vault.header.vault_id, serving)
            if found:
                candidates.append(found)
        for where in candidates:
            try:
                drive = vault_mod.open_location(where)
            except (OSError, PqcfsError) as e:
                log.debug("replica %s is not at %s: %s", replica_id, where, e)
                continue
            try:
                header, signed, mac = vault_mod.read_header(drive)
                if header.vault_id != vault.header.vault_id:
                    raise RejoinError(f"{where} holds a different vault")
                if not vault_header.verify_mac(signed, mac, vault.root_key):
                    raise RejoinError(f"the vault header on {where} fails authentication")
                state = vault_mod.read_state(drive, vault.root_key)
                if state.replica_id != replica_id:
                    raise RejoinError(f"{where} holds another replica of this vault")
                return os.path.abspath(where), drive, state
            except (OSError, PqcfsError) as e:
                drive.close()
                log.info("replica %s: %s can not be used: %s", replica_id, where, e)
                if location:
                    raise RejoinError(str(e)) from None
        return None

    async def watch(self, interval: float) -> None:
        """Bring back, by themselves, replicas that reappear. A drive that comes back is
        mounted again, so nothing is looked for while the mount table stays the same,
        except a retry that has come due (a full drive someone may have emptied)."""
        seen = None
        while True:
            await trio.sleep(interval)
            if not self.session.missing:
                continue
            table = _mount_table()
            due = any(when <= time.monotonic() for when, _ in self._retry_at.values())
            if table != seen or due:
                seen = table
                await self.run(automatic=True)

    async def run(self, location: str | None = None, automatic: bool = False) -> list[dict]:
        """Try every replica the session lacks (or the one at location); one result per
        replica tried: {"replica", "location", "ok", "error"|"files_changed"...}."""
        results = []
        async with self.running:
            for replica_id in self.wanted:
                if automatic and time.monotonic() < self._retry_at.get(replica_id, (0.0, 0.0))[0]:
                    continue
                try:
                    found = await trio.to_thread.run_sync(self._probe, replica_id, location,
                                                          abandon_on_cancel=True)
                except RejoinError as e:
                    results.append(self._failed(replica_id, location, e, automatic))
                    continue
                if found is None:
                    continue
                where, drive, state = found
                try:
                    results.append(await self._rejoin(replica_id, where, drive, state))
                    self._retry_at.pop(replica_id, None)
                except (OSError, PqcfsError) as e:
                    drive.close()
                    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                        e = NoSpace(f"no space left on {where}: it can not hold the vault")
                    results.append(self._failed(replica_id, where, e, automatic))
        return results

    def _failed(self, replica_id: str, where: str | None, error: Exception, automatic: bool) -> dict:
        _, backoff = self._retry_at.get(replica_id, (0.0, 5.0))
        self._retry_at[replica_id] = (time.monotonic() + backoff, min(backoff * 2, BACKOFF_MAX))
        if not automatic or backoff <= 5.0:
            log.warning("replica %s at %s can not rejoin: %s", replica_id, where, error)
        return {"replica": replica_id, "location": where, "ok": False, "error": str(error),
                "no_space": isinstance(error, NoSpace)}

    async def _rejoin(self, replica_id: str, where: str, drive: Drive, state: rs.ReplicaState) -> dict:
        s = self.session
        vault, replicas = s.vault, s.replicas
        source_n = replicas.serving
        source = replicas.drives[source_n]
        serving_state = vault_mod.read_state(source, vault.root_key)
        relation = rs.compare(serving_state, state)
        if relation != rs.STALE:
            raise RejoinError(f"{where} is {relation} relative to the mounted vault; "
                              "unmount and run `pqcfs sync` to choose")
        if drive.read_only:
            raise RejoinError(f"{where} is read-only")
        held = [vault.lock, *self.locks]
        lock = VaultLock([drive])
        if not any(h is not None and h.covers(drive) for h in held):   # a drive that never went away
            try:
                lock.acquire()
            except MountError as e:
                raise RejoinError(str(e)) from None
        try:
            stats, incremental = await self._copy(source, drive, state, vault.locations[source_n])
            self._join(replica_id, where, drive, source, serving_state)
        except BaseException:
            lock.release()
            raise
        self.locks.append(lock)
        s.event("resync", replica=replica_id, target=where, at="while mounted", incremental=incremental,
                files_changed=stats.files_changed, damaged=stats.damaged)
        log.warning("replica %s at %s is up to date again and mirrored (%d files copied, %s)%s", replica_id,
                    where, stats.files_changed, "incremental" if incremental else "full compare",
                    "" if s.missing else ": no longer degraded")
        return {"replica": replica_id, "location": where, "ok": True, "incremental": incremental,
                "files_changed": stats.files_changed, "bytes_written": stats.bytes_written,
                "removed": stats.removed, "damaged": stats.damaged}

    async def _copy(self, source: Drive, target: Drive, state: rs.ReplicaState,
                    source_location: str) -> tuple[sync_mod.SyncStats, bool]:
        """Passes over what target lacks, until one ends with nothing changed meanwhile."""
        s = self.session
        paths = s.changes.covering(state.lineage)
        batch = paths if paths is not None else {sync_mod.TREE: True}
        stats = sync_mod.SyncStats()
        watch: dict[str, bool] = {}
        s.changes.watchers.append(watch)
        size, files = await trio.to_thread.run_sync(_totals, source.location, batch, abandon_on_cancel=True)
        self.progress = {"replica": state.replica_id, "bytes": 0, "files": 0, "bytes_total": size,
                         "files_total": files, "started": time.time()}

        def progress(amount: int, files: int = 0) -> None:
            self.progress["bytes"] += amount
            self.progress["files"] += files
        try:
            while True:
                vet = mirror.vetter(s.vault, source_location)
                for _ in sync_mod.path_steps(source, target, batch, stats, progress, vet):
                    await trio.sleep(0)   # serve requests between files
                if not watch:
                    return stats, paths is not None
                batch = dict(watch)
                watch.clear()
        finally:
            s.changes.watchers.remove(watch)
            self.progress = None

    def _join(self, replica_id: str, where: str, drive: Drive, source: Drive,
              serving_state: rs.ReplicaState) -> None:
        """Synchronous on purpose: no request runs between the last pass and this."""
        s = self.session
        vault, replicas = s.vault, s.replicas
        sync_mod.sync_own_files(source, drive, sync_mod.SyncStats())
        if source.kind(intent_mod.FILE_NAME) == "file":
            drive.copy_from(source, intent_mod.FILE_NAME)
        state = vault_mod.read_state(drive, vault.root_key)
        state.lineage, state.generation = list(serving_state.lineage), serving_state.generation
        state.clean, state.missing, state.audit_head = False, [], serving_state.audit_head
        vault_mod.write_state(drive, state, vault.root_key)
        for n in replicas.healthy:
            other = vault_mod.read_state(replicas.drives[n], vault.root_key)
            if replica_id in other.missing:
                other.missing.remove(replica_id)
                vault_mod.write_state(replicas.drives[n], other, vault.root_key)
        n = self._index(replica_id)
        if n is None:
            n = len(vault.locations)
            vault.locations.append(where)
        else:
            old = replicas.drives[n]
            vault.locations[n] = where
            old.close()
        vault.adopt_drives({where: drive}, replace=True)
        replicas.attach(n, drive)
        for log_file in s.append_files():
            log_file.forget(n)
        s.failed_ids.pop(n, None)
        s.missing = [m for m in s.missing if m != replica_id]
        if not s.missing and not replicas.failed:
            s.changes.stop(replicas.drives)
        s.write_runtime()

    def release(self) -> None:
        for lock in self.locks:
            lock.release()
        self.locks = []
