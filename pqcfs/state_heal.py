"""A replica state (pqcfs.state) that fails authentication is rebuilt, never guessed.

The state is each drive's own: its replica id, its history (lineage: the sessions it
took part in) and whether it was left clean. It can not be copied from another drive,
and guessing its history could let an older drive overwrite a newer one. The history is
read back from the drive's own audit log instead, which holds every session that wrote
to it (a `mount` or `session-start` record with the session id, and a `degraded` record
with the id the session went on under when another drive dropped out), authenticated
under the vault's key. Set against a good drive's state, that history says whether the
damaged drive is the same, older (it is brought up to date), newer (it serves and the
other is brought up to date) or split from it (left alone until the user chooses, as
any split brain). The damaged file is kept in pqcfs.quarantine/.
"""

from __future__ import annotations

import os

from pqcfs import vault as vault_mod
from pqcfs.audit import log as audit_log
from pqcfs.errors import DamagedStructure, PqcfsError
from pqcfs.format import replica_state as rs

SESSION_EVENTS = ("mount", "session-start")


def damaged(vault: vault_mod.UnlockedVault) -> list[tuple[str, str]]:
    """(location, why) of each present replica whose state does not authenticate."""
    out = []
    for location in vault.locations:
        try:
            state = vault_mod.read_state(vault.drive(location), vault.root_key)
        except FileNotFoundError:
            out.append((location, f"{rs.FILE_NAME} is missing"))
            continue
        except (OSError, PqcfsError) as e:
            out.append((location, f"{rs.FILE_NAME}: {e}"))
            continue
        if state.vault_id != vault.header.vault_id.hex():
            out.append((location, f"{rs.FILE_NAME} names another vault"))
    return out


def sessions_in_log(vault: vault_mod.UnlockedVault, location: str) -> list[str] | None:
    """The sessions the drive's own audit log shows, oldest first; None when the log is
    missing or does not verify (then it shows nothing)."""
    keys = audit_log.AuditKeys.from_root(vault.root_key)
    vault_id = vault.header.vault_id
    try:
        data = vault.drive(location).read(audit_log.FILE_NAME, audit_log.MAX_FILE)
    except (OSError, PqcfsError):
        return None
    if not audit_log.verify(data, keys, vault_id, None).intact:
        return None
    out = []
    for record in audit_log.parse(data):
        if record.kind != audit_log.EVENT:
            continue
        try:
            event = audit_log.decrypt(keys, vault_id, record)
        except (ValueError, PqcfsError):
            return None
        if not isinstance(event, dict):
            continue
        if event.get("event") in SESSION_EVENTS and isinstance(event.get("session"), str):
            out.append(event["session"])
        elif event.get("event") == "degraded" and isinstance(event.get("lineage"), str):
            out.append(event["lineage"])
    return out


def _replica_id(vault: vault_mod.UnlockedVault, location: str, good: dict[str, rs.ReplicaState]) -> str:
    taken = {state.replica_id for state in good.values()}
    candidates = [r for r in vault.header.replicas if r["id"] not in taken]
    if len(candidates) > 1:
        here = os.path.realpath(location)
        candidates = [r for r in candidates if r.get("path_hint") == here]
    if len(candidates) != 1:
        raise DamagedStructure(f"the replica state on {location} is damaged, and which of the vault's replicas "
                               "that drive holds can not be told; plug in the other drives of the vault and run "
                               "the command again")
    return candidates[0]["id"]


def rebuild(vault: vault_mod.UnlockedVault, location: str,
            good: dict[str, rs.ReplicaState]) -> tuple[rs.ReplicaState, str]:
    """The state the drive had, as far as its audit log shows it; and how it stands to
    the good drives ("same", "stale", "newer", "diverged", or "alone")."""
    state = rs.ReplicaState(vault.header.vault_id.hex(), _replica_id(vault, location, good), clean=False)
    sessions = sessions_in_log(vault, location) or []
    if not good:
        # Nothing to set it against: its log's history, and a crash recovery at the next
        # session (clean is unknown) checks every directory against the drive.
        state.lineage = sessions[-state.LINEAGE_KEPT:] or ["rebuilt-" + os.urandom(8).hex()]
        return state, "alone"
    ref = next(iter(good.values()))
    state.generation, state.missing = ref.generation, list(ref.missing)
    state.grantee_heads = dict(ref.grantee_heads) if ref.grantee_heads else None
    head = sessions[-1] if sessions else None
    if head is not None and head in ref.lineage:
        state.lineage = ref.lineage[:ref.lineage.index(head) + 1]
        if head == ref.head:
            state.clean = ref.clean     # the same session ended both
            return state, "same"
        return state, "stale"
    if sessions and ref.head in sessions:
        state.lineage = sessions[-state.LINEAGE_KEPT:]
        return state, "newer"
    # Its log shows no history the good drive shares: a split brain, for the user to settle.
    state.lineage = ["rebuilt-" + os.urandom(8).hex()]
    return state, "diverged"


def heal(vault: vault_mod.UnlockedVault, which: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """Rebuild each damaged state (the bad file quarantined); (location, why, relation)."""
    bad = {location for location, _ in which}
    good = {}
    for location in vault.locations:
        if location not in bad:
            good[location] = vault_mod.read_state(vault.drive(location), vault.root_key)
    done = []
    for location, why in which:
        state, relation = rebuild(vault, location, good)
        drive = vault.drive(location)
        if drive.kind(rs.FILE_NAME) == "file":
            drive.quarantine(rs.FILE_NAME, f"a damaged replica state ({why})")
        vault_mod.write_state(drive, state, vault.root_key)
        done.append((location, why, relation))
    return done


NEXT = {
    "same": "nothing else to do",
    "stale": "it missed sessions the other drive has: it is brought up to date from it",
    "newer": "it holds sessions the other drive missed: it serves, and the other is brought up to date",
    "diverged": "its audit log does not show how it stands to the other drive: treated as a split brain",
    "alone": "the next session checks every directory against the drive",
}
