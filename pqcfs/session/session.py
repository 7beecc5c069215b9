"""A mount session: lock the replicas, mark them in use, serve, and mark them clean.

The lock (flock on pqcfs.lock in every replica, store/lock.py) is what makes "already
mounted" an error instead of two daemons writing the same ciphertext. The runtime file
(in userdirs.runtime_dir()) lets `pqcfs umount` and `pqcfs status` find the daemon.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os


from pqcfs import mirror, sharing, userdirs
from pqcfs import vault as vault_mod
from pqcfs.errors import MountError, PqcfsError, RolledBack
from pqcfs.format import grants
from pqcfs.fs import recovery
from pqcfs.session import grantee_intent
from pqcfs.session.owner import MountOwner
from pqcfs.snapshots.history import History
from pqcfs.snapshots.store import SnapshotStore
from pqcfs.fs.trees import open_tree
from pqcfs.fs.vaultfs import VaultFS
from pqcfs.store.atomic import write_atomic
from pqcfs.store import changes as changes_mod
from pqcfs.store import intent as intent_mod
from pqcfs.store import seen
from pqcfs.store import reserve
from pqcfs.store.lock import VaultLock
from pqcfs.store.replicas import ReplicaSet

log = logging.getLogger(__name__)
AUDIT_FILE = "pqcfs.audit"


def canonical_mountpoint(mountpoint: str) -> str:
    # Resolve the parent only: stat-ing the mountpoint itself would ask the FUSE daemon,
    # which may be this very process or a hung one.
    path = os.path.abspath(mountpoint)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def runtime_file(mountpoint: str, base: str | None = None) -> str:
    """Where the daemon of mountpoint keeps its runtime file (in base, by default this
    user's runtime directory)."""
    digest = hashlib.sha256(canonical_mountpoint(mountpoint).encode()).hexdigest()[:16]
    return os.path.join(userdirs.runtime_dir() if base is None else base, f"mount-{digest}.json")


def grant_roots(header) -> set[bytes]:
    """Node ids of the directories the vault's live grants open."""
    return {bytes.fromhex(r["node"]) for r in header.grants if "blob" in r}


def check_mountpoint(mountpoint: str) -> None:
    if not os.path.isdir(mountpoint):
        raise MountError(f"mountpoint {mountpoint} does not exist or is not a directory")
    if os.path.ismount(mountpoint):
        raise MountError(f"{mountpoint} is already a mountpoint (busy)")
    if os.listdir(mountpoint):
        raise MountError(f"mountpoint {mountpoint} is not empty")


class Session:
    SNAPSHOT_AT_END = True     # automatic history: a snapshot at every clean unmount

    def __init__(self, vault: vault_mod.UnlockedVault, mountpoint: str, read_only: bool = False,
                 audit_files: bool = False, accept_older: bool = False, owner: MountOwner | None = None):
        self.vault = vault
        self.owner = owner                 # the user the mount belongs to (None: whoever mounts)
        self.accept_older = accept_older   # mount drives older than this machine has seen
        self.audit = vault.audit
        self.audit_files = audit_files
        self.mountpoint = canonical_mountpoint(mountpoint)
        self.read_only = read_only
        self._lock = VaultLock(vault.drives)
        # Resolved now: once mounted, any lookup under the mountpoint would wait for this
        # very process to answer, before it serves.
        self.runtime_path = runtime_file(self.mountpoint)
        # A mount for a user goes through a descriptor of the mountpoint, walked without
        # following links (owner.open_no_links): the user may swap a path component.
        self.mount_fd: int | None = None
        self.replicas: ReplicaSet | None = None
        self.intent: intent_mod.IntentLog | None = None
        self.changes: changes_mod.ChangeJournal | None = None
        self.drives: list = []          # one list shared by all that write; attach() grows it
        self._since = ""                # the primary's last session before this one
        self.failed_ids: dict[int, str] = {}   # replica set index -> id of a replica that failed
        self.rejoin = None              # online rejoin: made by the serving loop (session/serving.py)
        self.offsite = None             # pushes to remotes while mounted: likewise
        self.snapshots = None           # snapshot requests and hourly history while mounted: likewise
        self.history: History | None = None   # the vault's snapshots (format 2, read-write sessions)
        self.snapshot: str | None = None      # a snapshot's mount (snapshot_mount.py): which one
        self.vfs: VaultFS | None = None  # the tree, once built
        self.missing: list[str] = []
        self.session_id = ""
        self.services = not read_only   # online sync and rejoin (they need the root key)
        self._ready = None              # told once the mount answers (serve sets it)
        self.stopped_by: int | None = None   # the signal that ended the session, if one did
        self.log_path: str | None = None     # the daemon's log file (None: standard error)

    def lock(self) -> None:
        if self.vault.lock is None:   # the CLI took it before unlocking
            self._lock.acquire()
            self.vault.lock = self._lock

    def unlock(self) -> None:
        lock = self.vault.lock
        if lock is not None:
            lock.release()
        if self.rejoin is not None:
            self.rejoin.release()

    def append_files(self) -> list:
        """The per-replica logs kept open for the session (reopened when a drive rejoins)."""
        return [log.file for log in (self.intent, self.changes, self.audit) if log is not None]

    def prepare(self, progress_factory=None) -> mirror.Plan:
        """Before serving: bring stale replicas up to date, repair after a crash, and
        start a new session in every present replica's history."""
        plan, _ = mirror.plan(self.vault)
        if not self.read_only:
            self._fill_reserves()     # before a sync or a repair may need the room
        if self.read_only:
            # A read-only mount writes nothing, so it does not sync; it reads only the
            # replicas that are current.
            for location in plan.stale:
                self.vault.locations.remove(location)
            plan.stale = []
        for location in plan.stale:
            progress = None
            try:
                paths = mirror.sync_plan(self.vault, plan.primary, location)
                if progress_factory:
                    size, files = mirror.sync_totals(self.vault, plan.primary, paths)
                    progress = progress_factory(f"sync {location}", size, files=files)
                stats = mirror.sync_replica(self.vault, plan.primary, location, progress, paths)
                log.info("brought the stale replica at %s up to date", location)
                self.event("sync", target=location, files_changed=stats.files_changed, damaged=stats.damaged,
                            at="mount")
                if stats.damaged:
                    log.warning("warning: %d file(s) fail authentication on %s and were not copied to %s; "
                                "run `pqcfs fsck`", stats.damaged, plan.primary, location)
            except (OSError, PqcfsError) as e:
                # A backup that can not take the sync (full, read-only, failing) does not
                # stop the mount: it stays stale and the session runs degraded.
                log.warning("warning: could not bring %s up to date (%s); it stays out of date", location, e)
                plan.missing.append(vault_mod.read_state(self.vault.drive(location), self.vault.root_key).replica_id)
                self.vault.locations.remove(location)
            finally:
                if progress:
                    progress.close()
        if plan.unclean and not self.read_only and (len(self.vault.locations) > 1 or self.vault.tables):
            self._recover(plan)
        if not self.read_only and self.vault.tables:
            self._recover_grantees(plan)
        if self.vault.tables:
            # Before this session begins: drives older than what this machine has seen are
            # refused (a whole-vault rollback leaves nothing else to see on the drives).
            root = open_tree(self.vault, read_only=True).inodes.root
            lineage = vault_mod.read_state(self.vault.drives[0], self.vault.root_key).lineage
            try:
                seen.check(self.vault.header.vault_id, self.vault.root_key, root.table.seq, lineage)
            except RolledBack as e:
                if not self.accept_older:
                    raise
                log.warning("warning: %s (accepted: --accept-older)", e)
                self.event("older-state-accepted", root_seq=root.table.seq)
        self.missing = plan.missing
        if plan.missing:
            self.event("degraded", missing=plan.missing, at="mount")
        if not self.read_only:
            self._since = vault_mod.read_state(self.vault.drives[0], self.vault.root_key).head
            self.session_id = os.urandom(8).hex()
            self.event("mount", mountpoint=self.mountpoint, replicas=len(self.vault.locations),
                        session=self.session_id)
            for drive in self.vault.drives:
                state = vault_mod.read_state(drive, self.vault.root_key)
                state.begin_session(self.session_id, plan.missing)
                vault_mod.write_state(drive, state, self.vault.root_key)
        return plan

    def _recover(self, plan: mirror.Plan) -> None:
        """After an unclean unmount: repair what the intent logs name (or, without them,
        everything that differs), then make the backups copies of the primary again."""
        drives, bs = self.vault.drives, self.vault.header.block_size
        intents = intent_mod.read(drives, intent_mod.intent_key(self.vault.root_key))
        # Directory tables the session may have left mid-change are rebuilt from what the
        # drives hold, once the files are repaired and before the backups copy them.
        in_flux = recovery.dirs_in_flux(intents) if intents is not None else recovery.ALL
        tables = self.vault.tables
        vfs = open_tree(self.vault, read_only=tables, in_flux=in_flux)
        if intents is None:
            repaired = recovery.recover(vfs, drives[0], drives[1:], bs)
            for location in self.vault.locations[1:]:
                mirror.sync_replica(self.vault, plan.primary, location)
        else:
            repaired = recovery.recover_intents(vfs, drives[0], drives[1:], intents, bs)
            for location, drive in zip(self.vault.locations[1:], drives[1:]):
                if drives[0].kind(AUDIT_FILE) == "file":
                    drive.copy_from(drives[0], AUDIT_FILE)
                mirror.adopt_history(self.vault, plan.primary, location)
            if self.audit is not None:
                self.audit.close()   # reopened on the next record: the copies are new files
        log.warning("recovered from an unclean unmount (%d blocks repaired from a backup, %s)", repaired,
                    "full comparison" if intents is None else f"{len(intents)} intent records")
        self.event("crash-recovery", blocks_repaired=repaired,
                    intent_records=None if intents is None else len(intents))

    def _recover_grantees(self, plan: mirror.Plan) -> None:
        """A grantee's read-write session that did not end cleanly left its intent log:
        repaired here with the subtree key derived from the tree, once every replica is
        present (until then the log is kept: it is what the missing one lacks)."""
        pending = grantee_intent.unclean(self.vault.drives)
        if not pending:
            return
        if plan.missing:
            log.warning("a grantee's session did not end cleanly; it is repaired at the next mount with every "
                        "replica present")
            return
        vfs = sharing.owner_tree(self.vault)
        for grant_id in pending:
            record = next((r for r in self.vault.header.grants if r["id"] == grant_id.hex() and "blob" in r), None)
            node = sharing.find_dir(vfs, bytes.fromhex(record["node"])) if record else None
            if node is None:
                log.warning("an intent log of grant %s is left: the grant or its directory is gone", grant_id.hex())
                continue
            if grants.parse(sharing.unb64(record["blob"])).grant.read_only:
                # A read-only grant's session writes no intent log: this one was planted.
                problem = "the grant is read-only"
                grantee_intent.set_aside(self.vault.drives, grant_id, problem)
            else:
                problem = grantee_intent.recover(self.vault.drives, node.keys.key, grant_id, node.c_path,
                                          self.vault.header.block_size, vfs)
            if problem is None:
                self.event("grantee-session-repaired", grant=grant_id.hex())
            else:
                self.event("grantee-intent-set-aside", grant=grant_id.hex(), reason=problem)

    def _replica_failed(self, n: int, error: BaseException) -> None:
        """A replica dropped out while mounted: the serving replica's history moves on
        without it, so the next mount knows that replica is stale (and, when it was the
        primary, that the backup is now the newer one)."""
        location = self.vault.locations[n]
        serving = self.vault.drives[self.replicas.serving]
        try:
            failed_id = vault_mod.read_state(self.vault.drives[n], self.vault.root_key).replica_id
        except Exception:  # noqa: BLE001 - the drive may be gone entirely
            failed_id = next((r["id"] for r in self.vault.header.replicas
                              if r.get("path_hint") == os.path.realpath(location)), location)
        state = vault_mod.read_state(serving, self.vault.root_key)
        since = state.head
        went_on_as = f"{self.session_id}-degraded-{os.urandom(4).hex()}"
        state.begin_session(went_on_as, [failed_id])
        vault_mod.write_state(serving, state, self.vault.root_key)
        if self.changes is not None:
            # From here on, list what the failed one misses; and what this session changed
            # before (the intent log's paths), which its drive may have lost.
            earlier = {self.replicas.rel(rel): False for _, rel in self.intent.noted_on(serving)}
            self.changes.start(since, None, earlier)
        self.missing = sorted(set(self.missing) | {failed_id})
        self.failed_ids[n] = failed_id
        # The id the serving drive's history goes on under: what rebuilds that history
        # from its audit log if its state file is ever damaged (state_heal).
        self.event("degraded", replica=failed_id, error=str(error), at="while mounted", lineage=went_on_as)
        self.write_runtime()
        log.warning("%s at %s failed (%s): degraded, going on with %s", "primary" if n == 0 else "backup",
                    location, error, serving.location)

    def event(self, event: str, **details) -> None:
        if self.audit is not None and not self.read_only:
            try:
                self.audit.append(event, **details)
            except OSError as e:  # the audit log must never take the file system down
                log.error("could not write the audit log: %s", e)

    def _finish(self) -> None:
        if self.read_only:
            return
        # Everything on the drives before anything says "clean": the drives may be pulled
        # right after `pqcfs umount` returns.
        root_seq = 0
        if self.history is not None and self.history.index.policy is not None and self.SNAPSHOT_AT_END:
            try:
                self.history.create(self.vfs, label="unmount", kind="auto")
            except (OSError, PqcfsError) as e:
                log.error("the automatic snapshot at unmount failed: %s", e)
        if self.vfs is not None:
            try:
                root_seq = self.vfs.settle()
            except (OSError, PqcfsError) as e:
                log.error("directory tables could not be written (%s); the next mount rebuilds them", e)
                return   # the intent log stays: the next mount reconciles
        os.sync()
        if self.intent is not None:
            self.intent.clear()
            self.intent.close()
        if self.changes is not None:
            self.changes.end()
        if self.audit is not None:
            heals = self.vfs.heal_events if self.vfs is not None else 0
            self.event("unmount", session=self.session_id, self_heals=heals)
            identity = self.vault.identity
            try:
                if identity is not None:
                    self.audit.checkpoint(identity)
                self.audit.sync()
                self.audit.close()
            except OSError as e:
                log.error("could not write the audit log: %s", e)
        healthy = self.replicas.healthy if self.replicas else range(len(self.vault.locations))
        for n in healthy:
            drive = self.vault.drives[n]
            state = vault_mod.read_state(drive, self.vault.root_key)
            state.clean = True
            vault_mod.write_state(drive, state, self.vault.root_key)
        if root_seq and healthy:
            try:
                seen.record(self.vault.header.vault_id, self.vault.root_key, root_seq, state.lineage,
                            [r["id"] for r in self.vault.header.grants if "revoked" in r])
            except OSError as e:
                log.warning("could not record the vault's state on this machine (%s)", e)

    def build(self) -> VaultFS:
        self.drives = self.vault.drives
        self.replicas = ReplicaSet(self.drives, on_failure=self._replica_failed)
        healthy = lambda: self.replicas.healthy  # noqa: E731
        if not self.read_only:
            self.intent = intent_mod.IntentLog(self.drives, healthy, intent_mod.intent_key(self.vault.root_key))
            self.intent.clear()
            key = changes_mod.changes_key(self.vault.root_key)
            self.changes = changes_mod.ChangeJournal(self.drives, healthy, key)
            if self.missing:
                self.changes.start(self._since, changes_mod.read(self.drives[0], key))
            else:
                changes_mod.remove(self.drives)   # every replica is current: nothing to track
            self.replicas.on_change = self.changes.note
            self.replicas.before_sync = self._before_sync
        vfs = open_tree(self.vault, replicas=self.replicas, read_only=self.read_only, on_event=self.event,
                        intent=self.intent)
        vfs.grant_roots = grant_roots(self.vault.header)
        if not self.read_only and self.vault.tables:
            self.history = self._history()
            vfs.history = self.history
        if self.audit is not None:
            self.audit.follow(healthy, self.drives)
        self.vfs = vfs
        return vfs

    def _history(self) -> History:
        """The vault's snapshots, kept through this session's replica set: its failures
        and its change journal (a replica brought back gets them too)."""
        header = self.vault.header
        store = SnapshotStore(self.drives, header.vault_id, self.vault.root_key, lambda: self.replicas.healthy,
                              on_change=lambda rel, subtree=False: self.replicas.on_change(rel, subtree))
        history = History(store, header.vault_id, self.vault.root_key, on_event=self.event,
                          accept_older=self.accept_older)
        history.attach(self.replicas)
        return history

    def _fill_reserves(self) -> None:
        """Each drive's reserve made whole before anything is written (store/reserve.py);
        a drive too full for it is said, and writers get ENOSPC until space is freed."""
        for location, drive in zip(self.vault.locations, self.vault.drives):
            try:
                if not reserve.fill(drive):
                    log.warning("warning: %s is full: writes through the mount get 'no space' until you delete "
                                "files in the vault (the vault's own records still fit)", location)
            except (OSError, PqcfsError) as e:
                drive.reserve_in_use = True
                log.warning("warning: the reserve on %s could not be made (%s); writes through the mount get "
                            "'no space' until it can", location, e)

    def _before_sync(self) -> None:
        # Both logs say what may have changed; they reach the drive before any data does.
        self.intent.sync()
        self.changes.sync()

    def serve(self, extra_options: list[str], ready=None) -> None:
        """Mount and serve until unmounted or signalled; ready() runs once mounted."""
        # pyfuse3 and trio load only in a process that serves: the CLI's start stays light.
        from pqcfs.session import serving
        serving.serve(self, extra_options, ready)

    def _give_top_directory(self, vfs: VaultFS) -> None:
        """A vault made by root (`sudo pqcfs init`) has a top directory only root may
        write, and root can not even enter a mount that belongs to a user: it is given to
        the user the mount is for, once. A top directory someone else owns is theirs."""
        root = vfs.inodes.root
        if root.meta.uid != 0 or self.read_only:
            return
        vfs.set_owner(root, self.owner.uid, self.owner.gid)
        self.event("top-directory-given", user=self.owner.name, uid=self.owner.uid)

    def write_runtime(self) -> None:
        os.makedirs(os.path.dirname(self.runtime_path), mode=0o700, exist_ok=True)
        failed = [os.path.abspath(self.vault.locations[n]) for n in sorted(self.replicas.failed)] if self.replicas else []
        data = json.dumps({
            "pid": os.getpid(), "mountpoint": self.mountpoint,
            # A snapshot's mount is not the vault's: commands that reach a mounted vault's
            # daemon (sync, push, snapshot) must not find it by its replicas.
            "replicas": [] if self.snapshot else [os.path.abspath(location) for location in self.vault.locations],
            "snapshot": self.snapshot,
            "failed": failed, "missing": self.missing, "vault_id": self.vault.header.vault_id.hex(),
            "read_only": self.read_only, "single": len(self.vault.header.replicas) == 1,
            "log": self.log_path, "user": self.owner.name if self.owner else None}).encode()
        write_atomic(self.runtime_path, data, sync=False)
        if self.owner is not None:
            self.owner.write_runtime(os.path.basename(self.runtime_path), data)

    def _remove_runtime(self) -> None:
        try:
            os.unlink(self.runtime_path)
        except FileNotFoundError:
            pass
        if self.owner is not None:
            self.owner.remove_runtime(os.path.basename(self.runtime_path))


class OfflineSession(Session):
    """A session without a mount, for a command that changes the tree (a revoke's
    re-key): the same intent log, change journal, degraded mode and crash recovery as a
    mount, and its start and end in the audit log under the command's name."""

    SNAPSHOT_AT_END = False    # a command's session is not an unmount

    def __init__(self, vault: vault_mod.UnlockedVault, purpose: str):
        super().__init__(vault, purpose)
        self.purpose = purpose

    def start(self, progress_factory=None) -> tuple[VaultFS, mirror.Plan]:
        self.lock()
        plan = self.prepare(progress_factory)
        return self.build(), plan

    def event(self, event: str, **details) -> None:
        if event in ("mount", "unmount"):
            details.pop("mountpoint", None)
            event = {"mount": "session-start", "unmount": "session-end"}[event]
            details["purpose"] = self.purpose
        super().event(event, **details)

    def end(self) -> None:
        self._finish()
