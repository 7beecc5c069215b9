"""A grantee's own audit log (`pqcfs.audit.<grant id>`): what a recipient did, chained
and encrypted under a key derived from the granted directory's key. The recipient
writes it; the owner verifies it and, at each unlock, copies what is new into the owner's
own log and records the head it saw in each replica's state, so that a recipient (who
holds the log's key) can append to their log but not rewrite or delete it unseen."""

from __future__ import annotations

import json
import logging
import re

from pqcfs import sharing
from pqcfs import vault as vault_mod
from pqcfs.audit import log as audit_log
from pqcfs.audit.writer import now
from pqcfs.crypto.kdf import LABEL_GRANTEE_AUDIT, hkdf
from pqcfs.errors import PqcfsError
from pqcfs.sharing import Opened

log = logging.getLogger(__name__)
AUDIT_PREFIX = "pqcfs.audit."
LOG_CAP = 16 << 20        # a grantee's log: written by the grantee, refused unread above this
EVENT_NAME = re.compile(r"[a-z0-9-]{1,40}")
EVENT_CAP = 4096          # bytes of one grantee event copied into the owner's log
OURS = {"event", "time", "grant", "grantee_seq", "grantee_time"}


def audit_name(grant_id: bytes) -> str:
    return AUDIT_PREFIX + grant_id.hex()


def audit_keys(subtree_key: bytes, grant_id: bytes) -> audit_log.AuditKeys:
    return audit_log.AuditKeys.from_root(hkdf(subtree_key, LABEL_GRANTEE_AUDIT, salt=grant_id))


def record(drives: list, opened: Opened, vault_id: bytes, event: str, **details) -> None:
    """Append one event to the grant's log on every drive that takes it. A log that does
    not verify is set aside (quarantined, never deleted) and a new segment says so."""
    keys = audit_keys(opened.keys.key, opened.grant.grant_id)
    name = audit_name(opened.grant.grant_id)
    payload = {"time": now(), "event": event, "grant": opened.grant.grant_id.hex(), **details}
    for drive in drives:
        try:
            try:
                data = drive.read(name, LOG_CAP)
            except FileNotFoundError:
                data = b""
            verdict = audit_log.verify(data, keys, vault_id, None)
            if not verdict.intact:
                kept = drive.quarantine(name, "damaged grantee audit log")
                data = audit_log.encode_segment(keys, vault_id, {
                    "time": now(), "reason": verdict.reason, "previous_bytes": len(data),
                    "previous_blake3": None, "previous_head": None, "kept_as": kept})
                drive.write_atomic(name, data)
            records = audit_log.parse(data)
            prev = records[-1].mac if records else audit_log.ZERO
            drive.write_atomic(name, data + audit_log.encode_event(keys, vault_id, len(records), prev, payload))
        except (OSError, PqcfsError) as e:
            log.warning("could not record %s in the grant's audit log on %s: %s", event, drive.location, e)


def read_log(drive, opened_key: bytes, grant_id: bytes, vault_id: bytes):
    """(verdict, intact records, present) of a grantee log on a drive."""
    keys = audit_keys(opened_key, grant_id)
    try:
        data = drive.read(audit_name(grant_id), LOG_CAP)
    except FileNotFoundError:
        return audit_log.Verdict(0, True, None, "no grantee sessions"), [], False
    verdict = audit_log.verify(data, keys, vault_id, None)
    intact = data if verdict.intact else data[:audit_log.offset_of(data, verdict.first_bad)]
    return verdict, audit_log.parse(intact), True


def verify_log(drive, opened_key: bytes, grant_id: bytes, vault_id: bytes) -> tuple[audit_log.Verdict, list[dict]]:
    """The owner's check of a grantee log (its subtree key derived from the tree)."""
    keys = audit_keys(opened_key, grant_id)
    verdict, records, _ = read_log(drive, opened_key, grant_id, vault_id)
    return verdict, [event_of(keys, vault_id, r) for r in records if r.kind == 0]


def event_of(keys: audit_log.AuditKeys, vault_id: bytes, record: audit_log.Record) -> dict:
    """A grantee's event as the owner may use it: its author holds the key, so its MAC
    proves only that a key holder wrote it. A body that is not a JSON object, an event name
    outside [a-z0-9-], keys the owner's record uses itself and anything above 4 KiB are not
    taken as they are."""
    try:
        event = audit_log.decrypt(keys, vault_id, record)
        raw = json.dumps(event, sort_keys=True)
    except (ValueError, TypeError, PqcfsError):
        return {"event": "unreadable"}
    if not isinstance(event, dict):
        return {"event": "unreadable"}
    name = event.get("event")
    name = name if isinstance(name, str) and EVENT_NAME.fullmatch(name) else "unnamed"
    if len(raw) > EVENT_CAP:
        return {"event": name, "time": event.get("time") if isinstance(event.get("time"), str) else None,
                "truncated_bytes": len(raw)}
    return {**{k: v for k, v in event.items() if isinstance(k, str) and k not in OURS},
            "event": name, "time": event.get("time") if isinstance(event.get("time"), str) else None}


ADOPT_LIMIT = 1000     # grantee events copied into the owner's log per grant and unlock


def adopt_logs(vault, append=None) -> list[dict]:
    """The owner's unlock: what each live grant's recipient did since the owner last
    looked comes into the owner's own log (append(event, **details), as "grantee-<event>"),
    and each replica's state records the grantee log's head the owner has now seen. The
    recipient holds their log's key, so they could rewrite or delete it; against that head
    a log that lost records it had, or changed them, is reported ("grantee-log-tampered")
    and returned, and the head moves on so that it is reported once. Without append
    (a command that only reads) nothing is copied or written: the problems are returned."""
    write = append is not None
    append = append or (lambda event, **details: None)
    live = [r for r in vault.header.grants if "blob" in r]
    problems: list[dict] = []
    if not live or not vault.tables:
        return problems
    vfs = sharing.owner_tree(vault)
    nodes = {r["id"]: sharing.find_granted(vfs, r) for r in live}
    copied: set[tuple[str, int, str]] = set()
    for location in vault.locations:
        drive = vault.drive(location)
        if drive.read_only and write:
            continue
        state = vault_mod.read_state(drive, vault.root_key)
        heads = {gid: h for gid, h in (state.grantee_heads or {}).items() if gid in nodes}
        for record in live:
            gid, node = record["id"], nodes[record["id"]]
            if node is None:
                continue
            keys = audit_keys(node.keys.key, bytes.fromhex(gid))
            try:
                _, records, present = read_log(drive, node.keys.key, bytes.fromhex(gid), vault.header.vault_id)
            except (OSError, PqcfsError) as e:
                # Too big, planted as a link, unreadable: said and recorded, the head kept.
                problem = {"grant": gid, "replica": state.replica_id, "reason": f"unreadable ({e})"}
                problems.append(problem)
                append("grantee-log-unreadable", **problem)
                continue
            seen, start = heads.get(gid), 0
            if seen is not None:
                if len(records) > seen["seq"] and records[seen["seq"]].mac.hex() == seen["mac"]:
                    start = seen["seq"] + 1
                else:
                    why = ("deleted" if not present else
                           "truncated" if len(records) <= seen["seq"] else "rewritten")
                    problem = {"grant": gid, "replica": state.replica_id, "reason": why,
                               "seen_records": seen["seq"] + 1, "records_now": len(records)}
                    problems.append(problem)
                    append("grantee-log-tampered", **problem)
                    log.warning("the log of grant %s on %s was %s: %d record(s) seen before, %d now", gid, location,
                                why, seen["seq"] + 1, len(records))
            # Each replica holds its own copy of the log (sealed apart, so the bytes differ):
            # an event is copied once, whichever replica has it; at most ADOPT_LIMIT are
            # opened per grant and unlock, the rest only counted.
            adopted = skipped = 0
            for r in records[start:]:
                if r.kind != 0:
                    continue
                if adopted >= ADOPT_LIMIT:
                    skipped += 1
                    continue
                event = event_of(keys, vault.header.vault_id, r)
                same = (gid, r.seq, json.dumps(event, sort_keys=True))
                if same in copied:
                    continue
                copied.add(same)
                adopted += 1
                name, when = event.pop("event"), event.pop("time", None)
                append(name if name.startswith("grantee-") else "grantee-" + name, grant=gid, grantee_seq=r.seq,
                       grantee_time=when, **event)
            if skipped:
                append("grantee-events-skipped", grant=gid, skipped=skipped)
            if records:
                heads[gid] = {"seq": len(records) - 1, "mac": records[-1].mac.hex()}
            else:
                heads.pop(gid, None)
        if write and heads != (state.grantee_heads or {}):
            state.grantee_heads = heads or None
            vault_mod.write_state(drive, state, vault.root_key)
    return problems
