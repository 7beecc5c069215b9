"""Audit log records (pqcfs.audit), pure: bytes in, bytes out.

  record = u32be(len(rest)) || rest
  rest   = kind u8 || seq u64be || body || mac (32)
  mac    = BLAKE3-keyed(mac_key, prev_mac || vault_id || kind || seq || body)   (prev_mac of seq 0: 32 zero bytes)
  kind 0 (event):      body = nonce || AES-256-GCM(enc_key, JSON {"time","event",...}, aad = vault_id || u64be(seq))
  kind 1 (checkpoint): body = JSON {"signer","upto","hash","sig"} in clear, for verifiers without the key
  kind 2 (segment):    only as record 0: body = JSON {"time","reason","previous_bytes","previous_blake3",
                       "previous_head","kept_as"} in clear: the log before it was found damaged and
                       set aside (never trimmed); this log continues the history from there
  hash chain (public): h(-1) = 32 zero bytes; h(seq) = BLAKE3(h(seq-1) || record)
  checkpoint sig = ML-DSA-65(sign key, "pqcfs audit checkpoint v1" || vault_id || u64be(upto) || h(upto))

Every event is encrypted, so the log on a stolen drive says nothing but how many records
there are. The MAC chain makes edits, deletions, reordering and duplicates visible; the
state file records the last (seq, mac) so truncation is visible too; checkpoints let
anyone with the owner's public key verify the log up to the checkpoint.
"""

from __future__ import annotations

import hmac
import json
import struct
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa

from pqcfs.crypto import aead
from pqcfs.crypto.kdf import LABEL_AUDIT, hkdf
from pqcfs.errors import CryptoError

FILE_NAME = "pqcfs.audit"
EVENT, CHECKPOINT, SEGMENT = 0, 1, 2
_HEAD = struct.Struct(">BQ")
_LEN = struct.Struct(">I")
MAC_LEN = 32
ZERO = bytes(32)
CHECKPOINT_CONTEXT = b"pqcfs audit checkpoint v1"
MAX_RECORD = 1 << 20
MAX_FILE = 256 << 20    # cap on the bytes read from a drive


@dataclass(frozen=True)
class AuditKeys:
    mac_key: bytes
    enc_key: bytes

    @classmethod
    def from_root(cls, root_key: bytes) -> "AuditKeys":
        audit = hkdf(root_key, LABEL_AUDIT)
        return cls(hkdf(audit, b"pqcfs audit mac v1"), hkdf(audit, b"pqcfs audit enc v1"))


@dataclass
class Record:
    seq: int
    kind: int
    body: bytes
    mac: bytes
    raw: bytes
    offset: int


def _mac(keys: AuditKeys, prev_mac: bytes, vault_id: bytes, kind: int, seq: int, body: bytes) -> bytes:
    return blake3.blake3(prev_mac + vault_id + _HEAD.pack(kind, seq) + body, key=keys.mac_key).digest()


def encode_event(keys: AuditKeys, vault_id: bytes, seq: int, prev_mac: bytes, payload: dict) -> bytes:
    body = aead.seal(keys.enc_key, json.dumps(payload, sort_keys=True).encode(), vault_id + struct.pack(">Q", seq))
    return _frame(EVENT, seq, body, _mac(keys, prev_mac, vault_id, EVENT, seq, body))


def checkpoint_message(vault_id: bytes, upto: int, chain_hash: bytes) -> bytes:
    return CHECKPOINT_CONTEXT + vault_id + struct.pack(">Q", upto) + chain_hash


def encode_checkpoint(keys: AuditKeys, vault_id: bytes, seq: int, prev_mac: bytes, chain_hash: bytes,
                      signer: str, sign_key: mldsa.MLDSA65PrivateKey) -> bytes:
    sig = sign_key.sign(checkpoint_message(vault_id, seq - 1, chain_hash))
    body = json.dumps({"signer": signer, "upto": seq - 1, "hash": chain_hash.hex(), "sig": sig.hex()},
                      sort_keys=True).encode()
    return _frame(CHECKPOINT, seq, body, _mac(keys, prev_mac, vault_id, CHECKPOINT, seq, body))


def encode_segment(keys: AuditKeys, vault_id: bytes, info: dict) -> bytes:
    body = json.dumps(info, sort_keys=True).encode()
    return _frame(SEGMENT, 0, body, _mac(keys, ZERO, vault_id, SEGMENT, 0, body))


def _frame(kind: int, seq: int, body: bytes, mac: bytes) -> bytes:
    rest = _HEAD.pack(kind, seq) + body + mac
    return _LEN.pack(len(rest)) + rest


class Malformed(CryptoError):
    def __init__(self, index: int, message: str):
        super().__init__(f"record {index}: {message}")
        self.index = index


def parse(data: bytes) -> list[Record]:
    """Split the log into records; a torn or malformed frame raises Malformed."""
    out, pos = [], 0
    while pos < len(data):
        if pos + _LEN.size > len(data):
            raise Malformed(len(out), "truncated length field")
        (length,) = _LEN.unpack_from(data, pos)
        end = pos + _LEN.size + length
        if length < _HEAD.size + MAC_LEN or length > MAX_RECORD or end > len(data):
            raise Malformed(len(out), "bad length (torn or edited)")
        kind, seq = _HEAD.unpack_from(data, pos + _LEN.size)
        rest = data[pos + _LEN.size:end]
        out.append(Record(seq, kind, rest[_HEAD.size:-MAC_LEN], rest[-MAC_LEN:], data[pos:end], pos))
        pos = end
    return out


def torn_tail(data: bytes) -> int | None:
    """Where a torn last record starts, when that is the log's only flaw (what a crash
    in the middle of an append leaves: a frame that runs past the end of the file)."""
    pos = 0
    while pos < len(data):
        if pos + _LEN.size > len(data):
            return pos
        (length,) = _LEN.unpack_from(data, pos)
        if length < _HEAD.size + MAC_LEN or length > MAX_RECORD:
            return None
        if pos + _LEN.size + length > len(data):
            return pos
        pos += _LEN.size + length
    return None


def offset_of(data: bytes, index: int) -> int:
    """Byte offset where record `index` starts (the length of the records before it)."""
    pos = 0
    for _ in range(index):
        pos += _LEN.size + _LEN.unpack_from(data, pos)[0]
    return pos


def chain_hashes(records: list[Record]) -> list[bytes]:
    hashes, h = [], ZERO
    for r in records:
        h = blake3.blake3(h + r.raw).digest()
        hashes.append(h)
    return hashes


@dataclass
class Verdict:
    records: int
    intact: bool
    first_bad: int | None = None
    reason: str = ""
    last_mac: bytes = ZERO
    checkpoints: int = 0
    damage: str = ""          # a segment record: an earlier log was found damaged


def segment_info(record: Record) -> dict:
    try:
        info = json.loads(record.body)
        if not isinstance(info, dict):
            raise ValueError("not an object")
        return info
    except ValueError:
        return {"reason": "unreadable segment record"}


def verify(data: bytes, keys: AuditKeys, vault_id: bytes, head: dict | None) -> Verdict:
    """Check the MAC chain and sequence, and against the authenticated head (truncation)."""
    try:
        records = parse(data)
    except Malformed as e:
        return Verdict(e.index, False, e.index, str(e))
    prev = ZERO
    checkpoints = 0
    damage = ""
    for n, r in enumerate(records):
        if r.seq != n:
            return Verdict(len(records), False, n, f"record {n}: sequence number {r.seq} "
                           "(records deleted, duplicated or reordered)", prev)
        if not hmac.compare_digest(_mac(keys, prev, vault_id, r.kind, r.seq, r.body), r.mac):
            return Verdict(len(records), False, n, f"record {n}: MAC does not verify (edited, or from "
                           "another vault or log)", prev)
        if r.kind == CHECKPOINT:
            checkpoints += 1
        elif r.kind == SEGMENT:
            if n != 0:
                return Verdict(len(records), False, n, f"record {n}: a segment record inside the log", prev)
            info = segment_info(r)
            damage = (f"the log before record 0 was found damaged at {info.get('time')} "
                      f"({info.get('reason')}) and kept as {info.get('kept_as')}")
        elif r.kind != EVENT:
            return Verdict(len(records), False, n, f"record {n}: unknown record kind {r.kind}", prev)
        prev = r.mac
    if head:
        seq, mac = head["seq"], bytes.fromhex(head["mac"])
        if seq >= len(records):
            return Verdict(len(records), False, len(records),
                           f"log ends at record {len(records) - 1} but record {seq} was written (truncated)", prev)
        if not hmac.compare_digest(records[seq].mac, mac):
            return Verdict(len(records), False, seq, f"record {seq} is not the one that was written", prev)
    return Verdict(len(records), True, last_mac=prev, checkpoints=checkpoints, damage=damage)


def decrypt(keys: AuditKeys, vault_id: bytes, record: Record) -> dict:
    if record.kind == CHECKPOINT:
        doc = json.loads(record.body)
        return {"event": "checkpoint", "signer": doc["signer"], "upto": doc["upto"]}
    if record.kind == SEGMENT:
        return {"event": "log-damaged", **segment_info(record)}
    return json.loads(aead.open_sealed(keys.enc_key, record.body, vault_id + struct.pack(">Q", record.seq)))


def verify_public(data: bytes, vault_id: bytes, sign_pk: bytes) -> Verdict:
    """Without the root key: the hash chain up to the last checkpoint signed by sign_pk."""
    try:
        records = parse(data)
    except Malformed as e:
        return Verdict(e.index, False, e.index, str(e))
    hashes = chain_hashes(records)
    public = mldsa.MLDSA65PublicKey.from_public_bytes(sign_pk)
    good_upto, checkpoints = None, 0
    for n, r in enumerate(records):
        if r.seq != n:
            return Verdict(len(records), False, n, f"record {n}: sequence number {r.seq}")
        if r.kind != CHECKPOINT:
            continue
        try:
            doc = json.loads(r.body)
            upto, claimed, sig = int(doc["upto"]), bytes.fromhex(doc["hash"]), bytes.fromhex(doc["sig"])
        except (ValueError, KeyError, TypeError):
            return Verdict(len(records), False, n, f"record {n}: malformed checkpoint")
        if upto != n - 1 or not hmac.compare_digest(hashes[upto] if upto >= 0 else ZERO, claimed):
            return Verdict(len(records), False, min(n, upto + 1), f"record {n}: checkpoint does not match "
                           "the records before it (edited, deleted or reordered)")
        try:
            public.verify(sig, checkpoint_message(vault_id, upto, claimed))
        except InvalidSignature:
            return Verdict(len(records), False, n, f"record {n}: checkpoint signature does not verify (forged)")
        good_upto, checkpoints = n, checkpoints + 1
    if good_upto is None:
        return Verdict(len(records), False, None, "no checkpoint signed by this key")
    return Verdict(good_upto + 1, True, checkpoints=checkpoints)
