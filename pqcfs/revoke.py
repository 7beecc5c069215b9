"""Revoking a grant: the grant goes, and its directory is re-keyed.

The directory S is copied, through the file system (so the copy has the mount's crash
safety: intent log, mirrored writes, degraded mode), into a new directory beside it with
fresh node ids, so every key below it is new: K(new) = HMAC(K(parent), id') is unknown to
whoever held K(S). Then the two are exchanged atomically (RENAME_EXCHANGE) and the old
one, now under the temporary name, is deleted. Every name, header, table and block under
S is then ciphertext under keys the revoked grant never saw, on every replica.

Progress lives in the grant's header record (sealed: it names the directory), so a
revoke cut short anywhere (a crash, SIGKILL, a pulled drive) is finished by running it
again (`pqcfs revoke --resume`, or the next mount):

  1. record {"parent", "name", "temp", "swapped": false}      (header, every replica)
  2. copy S into parent/temp (a leftover temp from a cut-short copy is removed first)
  3. exchange S and temp; record "swapped": true
  4. delete temp (the old ciphertext)
  5. re-wrap the other grants of S to the new key (same grant ids), tombstone the
     revoked one, drop the record

Before 1, each grant's own audit log (keyed from the old subtree key) is verified and its
head recorded in the owner's log, and the file is kept under a new name.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from pqcfs import lineage, sharing
from pqcfs.crypto import aead
from pqcfs.errors import CryptoError, DamagedStructure, GrantRefused, PqcfsError
from pqcfs.format import grants
from pqcfs.fs.copier import Copier, exists as _exists, remove_tree
from pqcfs.session import grantee

log = logging.getLogger(__name__)
TEMP_PREFIX = ".pqcfs-rekey-"
REKEY_AD = b"pqcfs rekey v1"


@dataclass
class Result:
    grant_id: str
    path: str | None
    bytes: int = 0
    files: int = 0
    seconds: float = 0.0
    rewrapped: int = 0


def find(records: list[dict], grant_id: str) -> dict | None:
    """The live grant record grant_id names; None when it was revoked already (running a
    revoke again after a crash is not an error)."""
    wanted = grant_id.lower()
    matches = [r for r in records if r["id"].startswith(wanted) and "blob" in r]
    if not matches:
        if any(r["id"].startswith(wanted) for r in records):
            return None
        raise GrantRefused(f"there is no grant {grant_id} in this vault (`pqcfs grants` lists them)")
    if len(matches) > 1:
        raise PqcfsError(f"{grant_id} names {len(matches)} grants; give more of the id")
    return matches[0]


def pending(records: list[dict]) -> dict | None:
    """A revoke that was cut short (its record still in the header)."""
    return next((r for r in records if "rekey" in r), None)


def _seal(root_key: bytes, record: dict, state: dict) -> str:
    return aead.seal(sharing.note_key(root_key), json.dumps(state).encode(),
                     REKEY_AD + bytes.fromhex(record["id"])).hex()


def _open(root_key: bytes, record: dict) -> dict:
    try:
        state = json.loads(aead.open_sealed(sharing.note_key(root_key), bytes.fromhex(record["rekey"]),
                                            REKEY_AD + bytes.fromhex(record["id"])))
        for key, kind in (("parent", str), ("name", str), ("temp", str), ("swapped", bool)):
            if not isinstance(state.get(key), kind):
                raise ValueError(key)
        return state
    except (CryptoError, ValueError):
        raise DamagedStructure(f"the revoke record of grant {record['id']} is damaged") from None


def revoke(vault, vfs, record: dict, event, progress_factory=None, save_header=None) -> Result:
    """Run (or finish) the revoke of the grant record; vfs is a writable session's, and
    save_header writes the header to the replicas that session still has."""
    save_header = save_header or vault.save_header
    start = time.monotonic()
    result = Result(record["id"], None)
    if "rekey" not in record:
        node = sharing.find_dir(vfs, bytes.fromhex(record["node"]))
        if node is None:
            # The directory is gone: nothing holds the old key's ciphertext any more.
            _finish_records(vault, record, None, [], save_header)
            event("revoke", grant=record["id"], rekeyed=False, reason="directory deleted")
            return result
        # Nodes that left the directory keep keys derived from the one being revoked.
        lineage.rekey_escaped(vfs, node, event)
        _archive_grantee_logs(vault, node, event)
        state = {"parent": node.parent.keys.node_id.hex(), "name": node.p_name.hex(),
                 "temp": (TEMP_PREFIX + record["id"][:16]).encode().hex(), "swapped": False}
        record["rekey"] = _seal(vault.root_key, record, state)
        save_header()
        event("revoke-started", grant=record["id"], path=sharing.p_path(node))
    state = _open(vault.root_key, record)
    parent = sharing.find_dir(vfs, bytes.fromhex(state["parent"]))
    if parent is None:
        raise DamagedStructure("the directory being re-keyed lost its parent; run `pqcfs fsck`")
    name, temp = bytes.fromhex(state["name"]), bytes.fromhex(state["temp"])
    result.path = sharing.p_path(parent).rstrip("/") + "/" + name.decode("utf-8", "replace")
    if not state["swapped"]:
        if _exists(vfs, parent, temp):
            remove_tree(vfs, parent, temp)        # a copy cut short: start it again
        source = vfs.lookup(parent, name)
        total_bytes, total_files = sharing.tree_size(vfs, source)
        bar = progress_factory(f"re-key {result.path}", total_bytes, total_files) if progress_factory else None
        progress = AuditedProgress(bar, total_bytes, lambda percent, done: event(
            "revoke-progress", grant=record["id"], step="copying", percent=percent, bytes=done))
        try:
            copier = Copier(vfs, vfs, progress)
            copier.tree(source, copier.mkdir(source, parent, temp))
            result.bytes, result.files = copier.bytes, copier.files
        except (OSError, PqcfsError) as e:
            # A full drive (say): the copy goes, the directory and the grant stay as they
            # were (the revoke did not happen), and it can be run again once there is room.
            if _remove_quietly(vfs, parent, temp):
                del record["rekey"]
                save_header()
                again = f"`pqcfs revoke VAULT {record['id']}` again"
            else:
                again = "`pqcfs revoke VAULT --resume`"
            raise RevokeIncomplete(f"the re-key of {result.path} did not finish ({e}); the grant is still in "
                                   "force. Free space (the re-key needs room for a second copy of the directory) "
                                   f"and run {again}", e) from e
        finally:
            if bar:
                bar.close()
        vfs.rename(parent, name, parent, temp, exchange=True)
        state["swapped"] = True
        record["rekey"] = _seal(vault.root_key, record, state)
        save_header()
        event("revoke-progress", grant=record["id"], step="re-keyed copy in place", bytes=result.bytes,
              files=result.files)
    if _exists(vfs, parent, temp):
        remove_tree(vfs, parent, temp)
    fresh = vfs.lookup(parent, name)
    result.rewrapped = _finish_records(vault, record, fresh, sharing.locator(fresh), save_header)
    result.seconds = time.monotonic() - start
    event("revoke", grant=record["id"], rekeyed=True, bytes=result.bytes, files=result.files,
          rewrapped=result.rewrapped, seconds=round(result.seconds, 3))
    return result


def _finish_records(vault, record: dict, fresh, locator: list[str], save_header) -> int:
    """Re-wrap the other live grants of the directory to its new key; tombstone this one."""
    old_node = record["node"]
    records = vault.header.grants
    generation = max((r["generation"] for r in records if r["node"] == old_node), default=0) + 1
    owner = grants.fingerprint(grants.owner_public(vault.root_key))
    rewrapped = 0
    for n, other in enumerate(records):
        if other is record or other.get("node") != old_node or "blob" not in other or fresh is None:
            continue
        parsed = grants.verify(sharing.unb64(other["blob"]), vault.header.vault_id, owner)
        g = parsed.grant
        label = sharing.open_note(vault.root_key, other).get("label") or fresh.p_name.decode("utf-8", "replace")
        recipient = sharing.recipient_of(other)
        _, blob = grants.issue(vault.root_key, vault_id=vault.header.vault_id, node_id=fresh.keys.node_id,
                               subtree_key=fresh.keys.key, generation=generation, recipient=recipient,
                               rights=g.rights, label=label, expires=g.expires, not_before=g.not_before,
                               now=g.created, grant_id=g.grant_id)
        records[n] = {**other, "node": fresh.keys.node_id.hex(), "generation": generation,
                      "blob": sharing.b64(blob), "locator": locator}
        rewrapped += 1
    new_node = fresh.keys.node_id.hex() if fresh is not None else old_node
    records[records.index(record)] = {"id": record["id"], "node": new_node, "generation": generation,
                                      "revoked": int(time.time())}
    save_header()
    return rewrapped


def _archive_grantee_logs(vault, node, event) -> None:
    """Each grant's log is keyed from the subtree key that is about to go: verified now,
    its head recorded in the owner's log, and kept under a name of its own."""
    for record in vault.header.grants:
        if record.get("node") != node.keys.node_id.hex() or "blob" not in record:
            continue
        grant_id = bytes.fromhex(record["id"])
        for n, drive in enumerate(vault.drives):
            try:
                verdict, events = grantee.verify_log(drive, node.keys.key, grant_id, vault.header.vault_id)
            except (OSError, PqcfsError) as e:
                log.warning("could not read the grant's log on replica %d: %s", n, e)
                continue
            if verdict.records == 0:
                continue
            kept = f"{grantee.audit_name(grant_id)}.g{record['generation']}"
            try:
                drive.rename(grantee.audit_name(grant_id), kept)
            except (OSError, PqcfsError) as e:
                log.warning("could not keep the grant's log on replica %d: %s", n, e)
            event("grantee-log-archived", grant=record["id"], replica=n, records=verdict.records,
                  intact=verdict.intact, reason=verdict.reason, kept_as=kept,
                  head=verdict.last_mac.hex() if verdict.last_mac else None,
                  events=[e.get("event") for e in events][-50:])


class AuditedProgress:
    """The progress bar, and an audit record at each quarter of the bytes copied."""

    def __init__(self, bar, total: int, record):
        self.bar, self.total, self.record = bar, max(total, 1), record
        self.done, self.next_quarter = 0, 1

    def __call__(self, amount: int, files: int = 0) -> None:
        if self.bar:
            self.bar(amount, files=files)
        self.done += amount
        while self.next_quarter < 4 and self.done * 4 >= self.total * self.next_quarter:
            self.record(25 * self.next_quarter, self.done)
            self.next_quarter += 1


class RevokeIncomplete(PqcfsError):
    """A re-key that stopped (a full drive); the grant stays, the revoke can run again."""

    def __init__(self, message: str, cause: BaseException):
        super().__init__(message)
        self.cause = cause


def _remove_quietly(vfs, parent, p_name: bytes) -> bool:
    """Remove an unfinished copy; False when it (or part of it) is still there."""
    try:
        if _exists(vfs, parent, p_name):
            remove_tree(vfs, parent, p_name)
        return True
    except (OSError, PqcfsError) as e:
        log.warning("the unfinished copy could not be removed yet (%s); the next revoke removes it", e)
        return False
