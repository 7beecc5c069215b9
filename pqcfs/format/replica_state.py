"""Replica state (pqcfs.state): one per replica, never copied between them.

  canonical JSON {"format":1,"vault_id","replica_id","generation","clean","lineage",
  "missing","audit_head"} + "\n" + hex(HMAC-SHA256(state_mac_key, that JSON))
  format 2 adds "grantee_heads": {grant id: {"seq", "mac"}}: the last record of each
  grantee log on this replica that the owner has seen (written only when there is one).

`generation` rises with every mount session that changes the replica; `lineage` lists
the ids of the last sessions it took part in (newest last), so one replica is known to be
an ancestor of another (stale) or the two to have diverged (split brain); `missing` names
the replicas that missed writes this replica has. The MAC (key from the root key) stops
anyone without the key from faking any of it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict, dataclass, field

from pqcfs.crypto.kdf import LABEL_STATE_MAC, hkdf
from pqcfs.errors import DamagedStructure, UnsupportedVersion

FILE_NAME = "pqcfs.state"
VERSION = 1                # written when there are no grantee heads (older pqcfs reads it)
GRANTEE_HEADS_VERSION = 2  # written when there are
READABLE_VERSIONS = {1, 2}
MAX_GRANTEE_HEADS = 256
MAX_FILE = 64 * 1024   # cap on the bytes read from a drive (256 lineage ids fit in ~10 KiB)


@dataclass
class ReplicaState:
    vault_id: str
    replica_id: str
    generation: int = 0
    clean: bool = True
    format: int = VERSION
    lineage: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    audit_head: dict | None = None   # {"seq", "mac"} of the last audit record written
    # grant id -> {"seq", "mac"} of the last record of that grantee's log on this replica
    # the owner has seen: a grantee (who holds the log's key) can append, never rewrite.
    grantee_heads: dict | None = None

    LINEAGE_KEPT = 256

    @property
    def head(self) -> str:
        return self.lineage[-1] if self.lineage else ""

    def begin_session(self, session_id: str, missing: list[str]) -> None:
        self.lineage = (self.lineage + [session_id])[-self.LINEAGE_KEPT:]
        self.generation += 1
        self.clean = False
        self.missing = sorted(set(self.missing) | set(missing))


SAME, STALE, NEWER, DIVERGED = "same", "stale", "newer", "diverged"


def compare(reference: ReplicaState, other: ReplicaState) -> str:
    """How `other` stands relative to `reference`."""
    if reference.head == other.head:
        return SAME
    if other.head in reference.lineage:
        return STALE
    if reference.head in other.lineage:
        return NEWER
    return DIVERGED


def _check_shape(state: ReplicaState) -> None:
    """Every field of the right type: `info` and replica discovery read the state before
    any key can check it."""
    head = state.audit_head
    if not (isinstance(state.vault_id, str) and isinstance(state.replica_id, str)
            and type(state.generation) is int and type(state.clean) is bool and type(state.format) is int
            and isinstance(state.lineage, list) and all(isinstance(x, str) for x in state.lineage)
            and isinstance(state.missing, list) and all(isinstance(x, str) for x in state.missing)
            and (head is None or (isinstance(head, dict) and type(head.get("seq")) is int
                                  and isinstance(head.get("mac"), str)))):
        raise ValueError("wrong types")
    if head is not None:
        bytes.fromhex(head["mac"])
    heads = state.grantee_heads
    if heads is not None:
        if not (isinstance(heads, dict) and len(heads) <= MAX_GRANTEE_HEADS and all(
                isinstance(k, str) and isinstance(v, dict) and type(v.get("seq")) is int and v["seq"] >= 0
                and isinstance(v.get("mac"), str) for k, v in heads.items())):
            raise ValueError("wrong types")
        for v in heads.values():
            bytes.fromhex(v["mac"])


def _mac(root_key: bytes, body: bytes) -> str:
    return hmac.new(hkdf(root_key, LABEL_STATE_MAC), body, hashlib.sha256).hexdigest()


def encode(state: ReplicaState, root_key: bytes) -> bytes:
    fields = asdict(state)
    if state.grantee_heads:
        fields["format"] = GRANTEE_HEADS_VERSION
    else:
        # What an older pqcfs reads: no field it does not know.
        fields.pop("grantee_heads")
        fields["format"] = VERSION
    body = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()
    return body + b"\n" + _mac(root_key, body).encode() + b"\n"


def decode(data: bytes, root_key: bytes | None) -> ReplicaState:
    """Parse; verify the MAC when the root key is known (info shows it unverified)."""
    try:
        body, mac = data.rstrip(b"\n").split(b"\n")
        fields = json.loads(body)
        state = ReplicaState(**fields)
        _check_shape(state)
    except (ValueError, TypeError, AttributeError):
        raise DamagedStructure("replica state is malformed") from None
    if state.format not in READABLE_VERSIONS:
        raise UnsupportedVersion(f"replica state format {state.format} is not supported")
    if root_key is not None and not hmac.compare_digest(_mac(root_key, body).encode(), mac):
        raise DamagedStructure("replica state failed authentication")
    return state
