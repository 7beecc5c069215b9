"""Mirroring policy: which replicas are current, stale, newer or diverged, and what a
session does about it. Replica states decide; an older replica never overwrites a newer
one, and two that both moved on (split brain) are left alone until the user chooses.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from pqcfs import vault as vault_mod
from pqcfs.errors import DriveError, PqcfsError
from pqcfs.format import names
from pqcfs.fs import recovery
from pqcfs.fs.inodes import LINKS_DIR
from pqcfs.fs.trees import open_tree
from pqcfs.format import replica_state as rs
from pqcfs.store import changes
from pqcfs.store import sync as sync_mod

log = logging.getLogger(__name__)


@dataclass
class Plan:
    primary: str
    current: list[str]                      # present and identical in history to the primary
    stale: list[str] = field(default_factory=list)      # present, behind the primary: sync first
    missing: list[str] = field(default_factory=list)    # replica ids not plugged in
    unclean: bool = False                   # some present replica was not cleanly unmounted


def newest_first(vault: vault_mod.UnlockedVault) -> str | None:
    """A replica that is newer than the primary (it was used without it: the primary was
    pulled and came back) is put first, to serve and be the source the primary is
    brought up to date from: the primary's state is an ancestor of the newer one, so
    nothing is lost. Replicas that both changed without each other are a split brain and
    are never chosen between here. Done before anything is appended (the audit log
    continues the newest chain). Returns the location moved first, if any."""
    states = {loc: vault_mod.read_state(vault.drive(loc), vault.root_key) for loc in vault.locations}
    newer = [loc for loc in vault.locations[1:] if rs.compare(states[vault.locations[0]], states[loc]) == rs.NEWER]
    if not newer:
        return None
    newest = newer[0]
    for loc in newer[1:]:
        if rs.compare(states[newest], states[loc]) == rs.NEWER:
            newest = loc
    log.warning("the replica at %s is newer than the primary %s (it was used without it): it serves, and the "
                "primary is brought up to date from it", newest, vault.locations[0])
    vault.locations.remove(newest)
    vault.locations.insert(0, newest)
    return newest


def plan(vault: vault_mod.UnlockedVault) -> tuple[Plan, dict[str, rs.ReplicaState]]:
    newest_first(vault)
    states = {loc: vault_mod.read_state(vault.drive(loc), vault.root_key) for loc in vault.locations}
    primary = vault.locations[0]
    ref = states[primary]
    p = Plan(primary=primary, current=[primary], unclean=not ref.clean)
    for loc in vault.locations[1:]:
        relation = rs.compare(ref, states[loc])
        if relation == rs.SAME:
            p.current.append(loc)
            p.unclean |= not states[loc].clean
        elif relation == rs.STALE:
            p.stale.append(loc)
        else:
            raise DriveError(f"{primary} and {loc} were both changed without each other (split brain); "
                             "nothing was touched. Choose the one to keep and run "
                             f"`pqcfs sync KEEP --backup OTHER --overwrite-diverged`")
    present_ids = {states[loc].replica_id for loc in vault.locations}
    p.missing = [r["id"] for r in vault.header.replicas if r["id"] not in present_ids]
    return p, states


def vetter(vault: vault_mod.UnlockedVault, source: str):
    """vet(rel) for sync: a file entry of the source authenticates (header and every
    block, reached through authenticated names from the root) before it may replace the
    target's copy. pqcfs' own small files (id files, tables, sidecars, the link store)
    are copied as they are: each is authenticated wherever it is used."""
    bs = vault.header.block_size
    try:
        vfs = open_tree(vault, source, read_only=True)
    except (PqcfsError, OSError):
        return lambda rel: False      # the source's root does not authenticate: copy no file
    resolver = recovery.KeyResolver(vfs)

    def vet(rel: str) -> bool:
        inner = rel[len(vault_mod.TREE_DIR) + 1:] if rel.startswith(vault_mod.TREE_DIR + "/") else None
        if inner is None or not names.is_entry(inner.rsplit("/", 1)[-1]) or inner.startswith(LINKS_DIR + "/"):
            return True
        keys = resolver.keys_for(inner)
        return keys is not None and recovery.authentic_file(vault.drive(source), rel, keys, bs)
    return vet


def sync_plan(vault: vault_mod.UnlockedVault, source: str, target: str) -> dict[str, bool] | None:
    """The paths a sync from source to target must look at, from source's change
    journal; None when the journal does not cover everything target lacks (compare all)."""
    journal = changes.read(vault.drive(source), changes.changes_key(vault.root_key))
    if journal is None:
        return None
    src_state = vault_mod.read_state(vault.drive(source), vault.root_key)
    dst_state = vault_mod.read_state(vault.drive(target), vault.root_key)
    if rs.compare(src_state, dst_state) != rs.STALE or not journal.covers(dst_state.lineage):
        return None
    return journal.paths


def sync_totals(vault: vault_mod.UnlockedVault, source: str, paths: dict[str, bool] | None) -> tuple[int, int]:
    """Bytes and files a sync will read on source (for its progress bar)."""
    if paths is None:
        return totals(vault, source)
    return sync_mod.path_totals(vault.drive(source), paths)


def sync_replica(vault: vault_mod.UnlockedVault, source: str, target: str, progress=None,
                 paths: dict[str, bool] | None = None) -> sync_mod.SyncStats:
    """Make target a copy of source (ciphertext and history); a source file that fails
    authentication never replaces the target's copy. With paths (sync_plan), only
    those are looked at; else the whole tree is compared."""
    progress = progress or (lambda n, files=0: None)
    vet = vetter(vault, source)
    if paths is None:
        stats = sync_mod.sync_tree(vault.drive(source), vault.drive(target), progress, vet=vet)
    else:
        stats = sync_mod.sync_paths(vault.drive(source), vault.drive(target), paths, progress, vet=vet)
    adopt_history(vault, source, target)
    if not vault_mod.read_state(vault.drive(source), vault.root_key).missing:
        changes.remove([vault.drive(source), vault.drive(target)])   # nobody is behind any more
    audit = vault.audit
    if audit is not None:
        audit.close()   # reopened on the next record: the target's log is a new file
    return stats


def adopt_history(vault: vault_mod.UnlockedVault, source: str, target: str) -> None:
    """After target was made a copy of source: it shares source's history and is clean."""
    source, target = vault.drive(source), vault.drive(target)
    src_state = vault_mod.read_state(source, vault.root_key)
    dst_state = vault_mod.read_state(target, vault.root_key)
    dst_state.lineage = list(src_state.lineage)
    dst_state.generation = src_state.generation
    dst_state.clean = True
    dst_state.missing = []
    vault_mod.write_state(target, dst_state, vault.root_key)
    # The source no longer waits for this replica.
    if dst_state.replica_id in src_state.missing:
        src_state.missing.remove(dst_state.replica_id)
        vault_mod.write_state(source, src_state, vault.root_key)


def totals(vault: vault_mod.UnlockedVault, location: str) -> tuple[int, int]:
    """Bytes and files of a replica's tree (for progress bars)."""
    return sync_mod.totals(vault.drive(location))
