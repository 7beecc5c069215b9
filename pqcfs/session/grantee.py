"""A recipient's mount: the directory a grant opens, served from the owner's drives.

The recipient holds the subtree key and nothing above it: no root key, so nothing that
the root key authenticates (the header's MAC, replica states, the intent log, the owner's
audit log) is read or written. What the recipient does is recorded in a log of its own
per grant (`pqcfs.audit.<grant id>`), chained and encrypted under a key derived from the
subtree key, which the owner derives too and verifies with `pqcfs audit verify`.

A read-only grant mounts read-only (docs/sharing.md says what enforces it); a read-write
grant mounts read-write only with every replica of the vault present.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from pqcfs.fs.grantee_tree import GranteeFS, Share
from pqcfs import userdirs
from pqcfs.errors import DamagedStructure, GrantRefused, PqcfsError
from pqcfs.format import vault_header
from pqcfs.session import session as session_mod
from pqcfs.snapshots.history import BlindKeeper
from pqcfs.session.grantee_intent import intent_key, intent_name, recover
from pqcfs.fs.vaultfs import VaultFS
from pqcfs.sharing import Opened
from pqcfs.store.replicas import ReplicaSet
from pqcfs.store import intent as intent_mod
# A grantee's own audit log lives with sharing (no pyfuse3): re-exported for the session.
from pqcfs.grantee_log import AUDIT_PREFIX, audit_keys, audit_name, record, verify_log  # noqa: F401

log = logging.getLogger(__name__)
def pin_owner(vault_id: bytes, owner: bytes, expected: bytes | None) -> bool:
    """Trust on first use of the vault owner's signing key (or the one the user named).
    Returns True when this is the first time (the caller says so)."""
    if expected is not None:
        if expected != owner:
            raise GrantRefused(f"the grants are signed by {owner.hex()}, not by the owner key {expected.hex()} "
                               "you named")
    path = os.path.join(userdirs.state_dir(), f"{vault_id.hex()}.owner")
    try:
        with open(path) as f:
            pinned = bytes.fromhex(f.read(64).strip())
    except FileNotFoundError:
        with userdirs.open_private(path) as f:
            f.write(owner.hex() + "\n")
        return expected is None
    except ValueError:
        raise DamagedStructure(f"{path} is damaged (it should hold one owner key fingerprint)") from None
    if pinned != owner:
        raise GrantRefused(f"the grants are signed by {owner.hex()}, but this vault's owner key was "
                           f"{pinned.hex()} when you first mounted it (a forged grant?); if the owner really "
                           f"changed, remove {path}")
    return False


@dataclass
class GranteeVault:
    """What a mount session needs of a vault, for someone who holds no root key."""
    header: vault_header.VaultHeader
    locations: list[str]
    opened: list[Opened]     # the grants this session serves, one top-level directory each
    drives: list
    lock: object = None        # as UnlockedVault's: the VaultLock while a session holds it
    audit: object = None       # a grantee writes no owner's audit log
    identity: object = None


def shares(opened: list[Opened]) -> list[Share]:
    """(name, keys, c_path) of each granted directory: its label, made unique."""
    out, taken = [], set()
    for o in opened:
        name = o.label
        if name in taken:
            name = f"{o.label} ({o.grant.grant_id.hex()[:8]})"
        taken.add(name)
        out.append((name.encode(), o.keys, o.c_path))
    return out


class GranteeSession(session_mod.Session):
    """A session over the granted directories: read-only, or read-write with a
    write-intent log of the session's own, named after and keyed from its first grant
    (`pqcfs.intent.<grant id>`), which a crash leaves behind for the next session, the
    grantee's or the owner's, to repair."""

    def __init__(self, vault: "GranteeVault", mountpoint: str, read_only: bool):
        super().__init__(vault, mountpoint, read_only=read_only)
        self.services = False    # the control socket and rejoin need the root key
        self.opened = vault.opened
        self.logged = self.opened[0]

    def _fs(self, replicas, **kw) -> GranteeFS:
        return GranteeFS(replicas, shares(self.opened), self.vault.header.block_size, **kw)

    def prepare(self, progress_factory=None):
        if not self.read_only:
            for o in self.opened:
                if any(drive.exists(intent_name(o.grant.grant_id)) for drive in self.vault.drives):
                    problem = recover(self.vault.drives, o.keys.key, o.grant.grant_id, o.c_path,
                                      self.vault.header.block_size,
                                      self._fs(ReplicaSet(self.vault.drives), read_only=True))
                    if problem is not None:
                        record(self.vault.drives, o, self.vault.header.vault_id, "intent-log-set-aside",
                               reason=problem)
        return None

    def build(self) -> VaultFS:
        self.drives = self.vault.drives
        self.replicas = ReplicaSet(self.drives, on_failure=self._replica_failed)
        healthy = lambda: self.replicas.healthy  # noqa: E731
        if not self.read_only:
            grant_id = self.logged.grant.grant_id
            self.intent = intent_mod.IntentLog(self.drives, healthy, intent_key(self.logged.keys.key, grant_id),
                                               name=intent_name(grant_id))
            self.intent.clear()
            self.replicas.before_sync = self.intent.sync
        self.vfs = self._fs(self.replicas, read_only=self.read_only, on_event=self.event, intent=self.intent)
        if not self.read_only:
            self.vfs.history = BlindKeeper(self.replicas)
        return self.vfs

    def _give_top_directory(self, vfs: VaultFS) -> None:
        # The root of a grantee's mount is pqcfs' own and nothing on the drives.
        root = vfs.inodes.root
        root.meta.uid = root.entry.uid = self.owner.uid
        root.meta.gid = root.entry.gid = self.owner.gid

    def event(self, event: str, **details) -> None:
        drives = [self.vault.drives[n] for n in self.replicas.healthy] if self.replicas else self.vault.drives
        for o in self.opened:
            record([d for d in drives if not d.read_only], o, self.vault.header.vault_id, event, **details)

    def _replica_failed(self, n: int, error: BaseException) -> None:
        # The failed drive misses what comes next: the intent log stays on the others at
        # unmount, and the owner's next mount with every drive present repairs from it.
        self.missing = sorted(set(self.missing) | {self.vault.locations[n]})
        self.event("degraded", replica=n, error=str(error))
        self.write_runtime()
        log.warning("replica %d at %s failed (%s): degraded, going on without it", n, self.vault.locations[n],
                    error)

    def _finish(self) -> None:
        if self.read_only:
            self.event("grantee-unmount", writes_refused=self.vfs.refused_writes if self.vfs is not None else 0)
            return
        try:
            self.vfs.settle()
        except (OSError, PqcfsError) as e:
            log.error("directory tables could not be written (%s); the next mount repairs them", e)
            return
        os.sync()
        self.event("grantee-unmount", self_heals=self.vfs.heal_events)
        if self.intent is not None:
            self.intent.close()
            if not self.replicas.failed:
                for drive in self.vault.drives:
                    try:
                        drive.unlink(intent_name(self.logged.grant.grant_id))
                    except FileNotFoundError:
                        pass
