"""The machine's record of the newest state of each vault it has mounted (CryFS-style):
the root directory table's sequence number at the last unmount. Drives that come back
holding an older root table have been rolled back as a whole (both drives alike), which
nothing on the drives themselves can show.

  <state dir>/<vault id hex>.seen = JSON {"format": 1, "root_seq": N, "lineage": [...], "revoked": [grant ids],
                                          "snapshots": the snapshot index's sequence number}
                                    "\\n" hex(HMAC) "\\n"

The lineage (the replica state's, authenticated there) tells a rollback (the drives'
session is an earlier one of the recorded history) from a split (the drives were used
apart on this machine: another branch, which the replicas' lineages already handle).

The HMAC (key from the vault's root key) makes a damaged or forged record an error, not
a silent pass. The state directory is pqcfs.userdirs.state_dir().
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os

from pqcfs.crypto.kdf import LABEL_SEEN, hkdf
from pqcfs.errors import DamagedStructure, RolledBack
from pqcfs import userdirs
from pqcfs.store.atomic import write_atomic

CAP = 4096


def _path(vault_id: bytes) -> str:
    return os.path.join(userdirs.state_dir(), vault_id.hex() + ".seen")


def _mac(root_key: bytes, body: bytes) -> str:
    return hmac.new(hkdf(root_key, LABEL_SEEN), body, hashlib.sha256).hexdigest()


def _load(vault_id: bytes, root_key: bytes) -> dict:
    try:
        with open(_path(vault_id), "rb") as f:
            data = f.read(CAP + 1)
    except FileNotFoundError:
        return {"root_seq": 0, "lineage": [], "revoked": []}
    try:
        body, mac, rest = data.split(b"\n")
        if rest or not hmac.compare_digest(_mac(root_key, body).encode(), mac):
            raise ValueError("MAC")
        record = json.loads(body)
        record["root_seq"] = int(record["root_seq"])
        record.setdefault("revoked", [])
        for key in ("lineage", "revoked"):
            if not (isinstance(record[key], list) and all(isinstance(x, str) for x in record[key])):
                raise TypeError(key)
        return record
    except (ValueError, KeyError, TypeError):
        raise DamagedStructure(f"this machine's record of the vault ({_path(vault_id)}) is damaged; "
                               "remove it to accept the drives as they are") from None


def read(vault_id: bytes, root_key: bytes) -> tuple[int, list[str]]:
    """The newest root sequence number this machine has seen, and the lineage (session
    ids, newest last) of the state that had it; (0, []) when never mounted here."""
    record = _load(vault_id, root_key)
    return record["root_seq"], record["lineage"]


def revoked(vault_id: bytes, root_key: bytes) -> set[str]:
    """Ids of the grants this machine has seen revoked."""
    return set(_load(vault_id, root_key)["revoked"])


def check(vault_id: bytes, root_key: bytes, root_seq: int, lineage: list[str]) -> None:
    """The drives' state (its root table and its authenticated lineage) against the
    machine's record. The same session or a later one of the same history must hold a
    root table at least as new; an earlier session of that history is a rollback; a
    history that split from the recorded one (the drives were used apart) is another
    branch, which the replicas' own lineages handle."""
    seen_seq, seen_lineage = read(vault_id, root_key)
    if not seen_lineage:
        return
    head, seen_head = (lineage[-1] if lineage else None), seen_lineage[-1]
    older = head != seen_head and head in seen_lineage
    same_history = head == seen_head or seen_head in lineage
    if older or (same_history and root_seq < seen_seq):
        raise RolledBack(f"the drives hold an older state of this vault than this machine has mounted "
                         f"(root table {root_seq}, newest seen {seen_seq}): a backup that missed sessions, "
                         f"or drives rolled back to old copies. To use them anyway: mount --accept-older "
                         f"(or remove {_path(vault_id)})")


def record(vault_id: bytes, root_key: bytes, root_seq: int, lineage: list[str],
           revoked_grants: list[str] = ()) -> None:
    """Write the record; the grants seen revoked accumulate (a header rolled back to an
    older copy must not bring one back on this machine)."""
    try:
        gone = revoked(vault_id, root_key)
    except DamagedStructure:
        gone = set()
    gone |= set(revoked_grants)
    _write(vault_id, root_key, {"format": 1, "root_seq": root_seq, "lineage": lineage[-256:],
                                "revoked": sorted(gone)[-4096:], "snapshots": _snapshots_or_0(vault_id, root_key)})


def _snapshots_or_0(vault_id: bytes, root_key: bytes) -> int:
    try:
        return snapshots(vault_id, root_key)
    except DamagedStructure:
        return 0


def _write(vault_id: bytes, root_key: bytes, record: dict) -> None:
    os.makedirs(userdirs.state_dir(), mode=0o700, exist_ok=True)
    body = json.dumps(record, sort_keys=True).encode()
    write_atomic(_path(vault_id), body + b"\n" + _mac(root_key, body).encode() + b"\n")


def snapshots(vault_id: bytes, root_key: bytes) -> int:
    """The newest snapshot index sequence number this machine has seen (0: none)."""
    value = _load(vault_id, root_key).get("snapshots", 0)
    if not isinstance(value, int) or value < 0:
        raise DamagedStructure(f"this machine's record of the vault ({_path(vault_id)}) is damaged")
    return value


def record_snapshots(vault_id: bytes, root_key: bytes, seq: int) -> None:
    """The snapshot index reached seq (kept as the highest seen: an index put back to an
    older copy is a rollback)."""
    record = _load(vault_id, root_key)
    if seq <= record.get("snapshots", 0):
        return
    record["snapshots"] = seq
    record.setdefault("format", 1)
    _write(vault_id, root_key, record)
