"""Snapshots (docs/snapshots.md): a snapshot's manifest and the replica's snapshot index.

  manifest = "PQCS" | version u8 (1) | 3 zero bytes | snapshot id (16) | u32 len | head
             | u32 len | wrap* | record*
  head     = AES-256-GCM(snapshot_key, JSON, aad = "pqcfs snapshot head v1" || vault id || snapshot id)
             (JSON: id, created, label, kind, root, records, digest, files, bytes, secret)
  wrap     = locator_w (16) | u32 len | AES-256-GCM(wrap_key(dir), secret || u64 created,
                                                    aad = "pqcfs snapshot grant v1" || snapshot id || dir id)
  record   = locator (16) | u32 len | AES-256-GCM(record_key(dir), payload,
                                                 aad = "pqcfs snapshot dir v1" || snapshot id || dir id)
  record_key(dir) = HKDF(meta_key(dir), "pqcfs snapshot record v1", 32, salt = secret)
  locator  = HMAC(record_key(dir), "pqcfs snapshot locator v1" || snapshot id)[:16]
  wrap_key(dir)   = HKDF(meta_key(dir), "pqcfs snapshot grant v1", 32, salt = snapshot id)
  locator_w       = HMAC(meta_key(dir), "pqcfs snapshot grant locator v1" || snapshot id)[:16]
  payload  = u16 len | c_path | self entry | u32 len | xattrs | u32 n | (entry | key (32) | u32 len | xattrs)*

One record per directory, sealed under a key made of that directory's own metadata key
and the snapshot's secret (32 random bytes in the owner's head). A directory that a live
grant opens when the snapshot is taken gets a wrap of the secret under its own key: its
grantee finds and opens the records of that subtree, and of no snapshot taken before the
grant or after a revoke (which re-keys the directory), and nothing above it. The head
(the owner's) counts the records and hashes everything after it, so the owner notices
one dropped, added or swapped. Entries are the directory table's (format 2) with each
child's node key beside it: a snapshot does not depend on the overrides of the live tree.
The index lists the snapshots with each manifest's hash under a sequence number that
only grows. Pure: bytes in, bytes out.
"""

from __future__ import annotations

import hmac
import json
import struct
from dataclasses import dataclass, field

import blake3

from pqcfs.crypto import aead
from pqcfs.crypto.kdf import hkdf
from pqcfs.errors import CryptoError, DamagedStructure, UnsupportedVersion
from pqcfs.format.dir_table import Entry, pack_entry, unpack_entry

MAGIC, INDEX_MAGIC = b"PQCS", b"PQCI"
VERSION = 1
HEAD_AD = b"pqcfs snapshot head v1"
DIR_AD = b"pqcfs snapshot dir v1"
INDEX_AD = b"pqcfs snapshot index v1"
LOCATOR_INFO = b"pqcfs snapshot locator v1"
RECORD_INFO = b"pqcfs snapshot record v1"
GRANT_AD = b"pqcfs snapshot grant v1"
GRANT_LOCATOR_INFO = b"pqcfs snapshot grant locator v1"
SECRET_LEN = 32
MAX_WRAPS = 4096
_PREFIX = struct.Struct(">4sB3x16sI")
_INDEX_PREFIX = struct.Struct(">4sB3x")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")
ID_LEN = LOCATOR_LEN = 16
KEY_LEN = 32
MANIFEST_CAP = 512 << 20       # as a directory table: whole-file reads are bounded
RECORD_CAP = 64 << 20
INDEX_CAP = 4 << 20
MAX_SNAPSHOTS = 4096
MAX_ENTRIES = 10_000_000
KINDS = ("manual", "auto")


def snapshot_key(root_key: bytes) -> bytes:
    return hkdf(root_key, b"pqcfs snapshot v1", 32)


def record_key(meta_key: bytes, secret: bytes) -> bytes:
    return hkdf(meta_key, RECORD_INFO, 32, salt=secret)


def locator(rec_key: bytes, snap_id: bytes) -> bytes:
    return hmac.new(rec_key, LOCATOR_INFO + snap_id, "sha256").digest()[:LOCATOR_LEN]


def wrap_locator(meta_key: bytes, snap_id: bytes) -> bytes:
    return hmac.new(meta_key, GRANT_LOCATOR_INFO + snap_id, "sha256").digest()[:LOCATOR_LEN]


def encode_wrap(meta_key: bytes, snap_id: bytes, dir_id: bytes, secret: bytes, created: int) -> bytes:
    """The snapshot's secret for the holder of dir's key (a live grant of dir)."""
    sealed = aead.seal(hkdf(meta_key, GRANT_AD, 32, salt=snap_id), secret + struct.pack(">Q", created),
                       GRANT_AD + snap_id + dir_id)
    return wrap_locator(meta_key, snap_id) + _U32.pack(len(sealed)) + sealed


def open_wrap(meta_key: bytes, snap_id: bytes, dir_id: bytes, sealed: bytes) -> tuple[bytes, int]:
    """(the snapshot's secret, when it was taken) from dir's wrap."""
    raw = aead.open_sealed(hkdf(meta_key, GRANT_AD, 32, salt=snap_id), sealed, GRANT_AD + snap_id + dir_id)
    if len(raw) != SECRET_LEN + 8:
        raise DamagedStructure("a snapshot's grant wrap is malformed")
    return raw[:SECRET_LEN], struct.unpack(">Q", raw[SECRET_LEN:])[0]


@dataclass
class Child:
    """One entry of a directory as the snapshot holds it."""
    entry: Entry          # attributes, as the table has them (hard-linked: resolved)
    key: bytes            # the child's node key
    xattrs: dict[bytes, bytes] = field(default_factory=dict)


@dataclass
class DirRecord:
    dir_id: bytes
    c_path: str                       # where the directory was on the drives (tree-relative)
    self_attrs: Entry
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    children: list[Child] = field(default_factory=list)


@dataclass
class Head:
    snap_id: bytes
    created: int                      # ns since the epoch
    label: str
    kind: str                         # "manual" | "auto"
    root_id: bytes                    # the root directory's node id
    records: int = 0
    digest: bytes = b""               # BLAKE3 of every record's bytes, in order
    files: int = 0
    bytes: int = 0                    # plaintext bytes of the files it holds
    secret: bytes = b""               # what every record's key is made with (format docstring)

    def to_json(self) -> dict:
        return {"format": VERSION, "id": self.snap_id.hex(), "created": self.created, "label": self.label,
                "kind": self.kind, "root": self.root_id.hex(), "records": self.records,
                "digest": self.digest.hex(), "files": self.files, "bytes": self.bytes, "secret": self.secret.hex()}


def _xattrs_bytes(table: dict[bytes, bytes]) -> bytes:
    raw = json.dumps({k.hex(): v.hex() for k, v in sorted(table.items())}).encode() if table else b""
    return _U32.pack(len(raw)) + raw


def _read_xattrs(buf: memoryview, off: int) -> tuple[dict[bytes, bytes], int]:
    (n,) = _U32.unpack_from(buf, off)
    off += _U32.size
    raw = bytes(buf[off:off + n])
    if len(raw) != n:
        raise DamagedStructure("snapshot record is truncated")
    if not n:
        return {}, off
    try:
        table = json.loads(raw)
        return {bytes.fromhex(k): bytes.fromhex(v) for k, v in table.items()}, off + n
    except (ValueError, AttributeError, TypeError):
        raise DamagedStructure("snapshot record holds malformed extended attributes") from None


def encode_record(rec_key: bytes, snap_id: bytes, rec: DirRecord) -> bytes:
    c_path = rec.c_path.encode("ascii")
    parts = [_U16.pack(len(c_path)), c_path, pack_entry(rec.self_attrs), _xattrs_bytes(rec.xattrs),
             _U32.pack(len(rec.children))]
    for child in rec.children:
        if len(child.key) != KEY_LEN:
            raise ValueError("a node key is 32 bytes")
        parts += [pack_entry(child.entry), child.key, _xattrs_bytes(child.xattrs)]
    sealed = aead.seal(rec_key, b"".join(parts), DIR_AD + snap_id + rec.dir_id)
    return locator(rec_key, snap_id) + _U32.pack(len(sealed)) + sealed


def decode_record(rec_key: bytes, snap_id: bytes, dir_id: bytes, sealed: bytes) -> DirRecord:
    payload = aead.open_sealed(rec_key, sealed, DIR_AD + snap_id + dir_id)
    buf = memoryview(payload)
    try:
        (n,) = _U16.unpack_from(buf, 0)
        c_path = bytes(buf[2:2 + n]).decode("ascii")
        self_attrs, off = unpack_entry(buf, 2 + n)
        xattrs, off = _read_xattrs(buf, off)
        (count,) = _U32.unpack_from(buf, off)
        off += _U32.size
        if count > MAX_ENTRIES:
            raise DamagedStructure("snapshot record claims too many entries")
        rec = DirRecord(dir_id=dir_id, c_path=c_path, self_attrs=self_attrs, xattrs=xattrs)
        for _ in range(count):
            entry, off = unpack_entry(buf, off)
            key = bytes(buf[off:off + KEY_LEN])
            if len(key) != KEY_LEN:
                raise DamagedStructure("snapshot record is truncated")
            child_x, off = _read_xattrs(buf, off + KEY_LEN)
            rec.children.append(Child(entry, key, child_x))
    except (struct.error, IndexError, UnicodeDecodeError):
        raise DamagedStructure("snapshot record is truncated or malformed") from None
    if off != len(payload):
        raise DamagedStructure("snapshot record has trailing bytes")
    if self_attrs.node_id != dir_id:
        raise DamagedStructure("snapshot record is not the directory it is filed under")
    return rec


def encode_manifest(snap_key: bytes, vault_id: bytes, head: Head, records: list[bytes], wraps: list[bytes] = ()) -> bytes:
    """The whole manifest file from records made by encode_record and wraps made by
    encode_wrap (head's count and digest are filled in here)."""
    body = _U32.pack(sum(len(w) for w in wraps)) + b"".join(wraps) + b"".join(records)
    head.records, head.digest = len(records), blake3.blake3(body).digest()
    sealed = aead.seal(snap_key, json.dumps(head.to_json(), sort_keys=True).encode(),
                       HEAD_AD + vault_id + head.snap_id)
    return _PREFIX.pack(MAGIC, VERSION, head.snap_id, len(sealed)) + sealed + body


def _prefix(data: bytes) -> tuple[bytes, int]:
    if len(data) < _PREFIX.size:
        raise DamagedStructure("snapshot manifest is truncated")
    magic, version, snap_id, n = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise DamagedStructure("not a snapshot manifest")
    if version != VERSION:
        raise UnsupportedVersion(f"snapshot manifest version {version} (this pqcfs reads {VERSION})")
    if _PREFIX.size + n > len(data):
        raise DamagedStructure("snapshot manifest is truncated")
    return snap_id, n


def _body_start(data: bytes) -> int:
    return _PREFIX.size + _prefix(data)[1]


def records_start(data: bytes) -> int:
    start = _body_start(data)
    if start + _U32.size > len(data):
        raise DamagedStructure("snapshot manifest is truncated")
    (n,) = _U32.unpack_from(data, start)
    if start + _U32.size + n > len(data):
        raise DamagedStructure("snapshot manifest's grant wraps run past its end")
    return start + _U32.size + n


def split_wraps(data: bytes) -> dict[bytes, tuple[int, int]]:
    """locator -> (offset, length) of each grant wrap's sealed bytes."""
    start, end = _body_start(data) + _U32.size, records_start(data)
    found = split_records(data[:end], start)
    if len(found) > MAX_WRAPS:
        raise DamagedStructure("snapshot manifest has too many grant wraps")
    return found


def manifest_id(data: bytes) -> bytes:
    """The snapshot id a manifest claims (unauthenticated: for a grantee's search)."""
    return _prefix(data)[0]


def split_records(data: bytes, offset: int) -> dict[bytes, tuple[int, int]]:
    """locator -> (offset, length) of each record's sealed bytes, from offset on."""
    found, off = {}, offset
    while off < len(data):
        if off + LOCATOR_LEN + _U32.size > len(data):
            raise DamagedStructure("snapshot manifest ends inside a record")
        loc = bytes(data[off:off + LOCATOR_LEN])
        (n,) = _U32.unpack_from(data, off + LOCATOR_LEN)
        start = off + LOCATOR_LEN + _U32.size
        if n > RECORD_CAP or start + n > len(data):
            raise DamagedStructure("snapshot manifest has a record past its end")
        if loc in found:
            raise DamagedStructure("snapshot manifest names a directory twice")
        found[loc] = (start, n)
        off = start + n
    return found


def decode_head(snap_key: bytes, vault_id: bytes, data: bytes, snap_id: bytes | None = None) -> tuple[Head, int]:
    """(the authenticated head, where the records start); the hash of everything after it
    (wraps and records) is checked against it, so nothing there can be dropped, added or
    changed."""
    claimed, n = _prefix(data)
    if snap_id is not None and not hmac.compare_digest(claimed, snap_id):
        raise DamagedStructure("the snapshot manifest is another snapshot's")
    try:
        raw = aead.open_sealed(snap_key, bytes(data[_PREFIX.size:_PREFIX.size + n]), HEAD_AD + vault_id + claimed)
    except CryptoError:
        raise CryptoError("the snapshot manifest's head does not authenticate") from None
    try:
        j = json.loads(raw)
        head = Head(snap_id=bytes.fromhex(j["id"]), created=int(j["created"]), label=str(j["label"]),
                    kind=str(j["kind"]), root_id=bytes.fromhex(j["root"]), records=int(j["records"]),
                    digest=bytes.fromhex(j["digest"]), files=int(j["files"]), bytes=int(j["bytes"]),
                    secret=bytes.fromhex(j["secret"]))
    except (ValueError, KeyError, TypeError):
        raise DamagedStructure("the snapshot manifest's head is malformed") from None
    start = _PREFIX.size + n
    if head.snap_id != claimed or j.get("format") != VERSION or len(head.secret) != SECRET_LEN:
        raise DamagedStructure("the snapshot manifest's head is malformed")
    if not hmac.compare_digest(blake3.blake3(bytes(data[start:])).digest(), head.digest):
        raise DamagedStructure("the snapshot manifest's records are not the ones its head names")
    return head, records_start(data)


# --- the index ------------------------------------------------------------------------

@dataclass
class Listed:
    snap_id: bytes
    created: int
    label: str
    kind: str
    digest: bytes          # BLAKE3 of the whole manifest file
    size: int              # the manifest file's bytes
    files: int = 0

    def to_json(self) -> dict:
        return {"id": self.snap_id.hex(), "created": self.created, "label": self.label, "kind": self.kind,
                "digest": self.digest.hex(), "size": self.size, "files": self.files}


@dataclass
class Policy:
    """Automatic history (`pqcfs history`): what is kept and how much room it may take."""
    keep_s: int                    # snapshots older than this go
    max_space_pct: float           # of a drive, for what only history holds

    def to_json(self) -> dict:
        return {"keep": self.keep_s, "max_space": self.max_space_pct}


@dataclass
class Index:
    seq: int = 0
    snapshots: list[Listed] = field(default_factory=list)    # oldest first
    policy: Policy | None = None

    def find(self, snap_id: bytes) -> Listed | None:
        return next((s for s in self.snapshots if s.snap_id == snap_id), None)


def encode_index(snap_key: bytes, vault_id: bytes, index: Index) -> bytes:
    body = {"format": VERSION, "seq": index.seq, "snapshots": [s.to_json() for s in index.snapshots],
            "policy": index.policy.to_json() if index.policy else None}
    sealed = aead.seal(snap_key, json.dumps(body, sort_keys=True).encode(), INDEX_AD + vault_id)
    return _INDEX_PREFIX.pack(INDEX_MAGIC, VERSION) + sealed


def decode_index(snap_key: bytes, vault_id: bytes, data: bytes) -> Index:
    if len(data) < _INDEX_PREFIX.size:
        raise DamagedStructure("the snapshot index is truncated")
    magic, version = _INDEX_PREFIX.unpack_from(data)
    if magic != INDEX_MAGIC:
        raise DamagedStructure("not a snapshot index")
    if version != VERSION:
        raise UnsupportedVersion(f"snapshot index version {version} (this pqcfs reads {VERSION})")
    try:
        raw = aead.open_sealed(snap_key, data[_INDEX_PREFIX.size:], INDEX_AD + vault_id)
    except CryptoError:
        raise CryptoError("the snapshot index does not authenticate") from None
    try:
        j = json.loads(raw)
        if j["format"] != VERSION or len(j["snapshots"]) > MAX_SNAPSHOTS:
            raise ValueError
        snaps = [Listed(snap_id=bytes.fromhex(s["id"]), created=int(s["created"]), label=str(s["label"]),
                        kind=str(s["kind"]), digest=bytes.fromhex(s["digest"]), size=int(s["size"]),
                        files=int(s.get("files", 0)))
                 for s in j["snapshots"]]
        p = j.get("policy")
        policy = Policy(keep_s=int(p["keep"]), max_space_pct=float(p["max_space"])) if p else None
        index = Index(seq=int(j["seq"]), snapshots=snaps, policy=policy)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DamagedStructure("the snapshot index is malformed") from None
    if len({s.snap_id for s in snaps}) != len(snaps) or any(len(s.snap_id) != ID_LEN for s in snaps):
        raise DamagedStructure("the snapshot index is malformed")
    return index


# --- kept blocks (a delta) --------------------------------------------------------------------
#
#   delta  = "PQCB" | version u8 (1) | 3 zero bytes | counter u64 | record*
#   record = block index u64 | u32 len | the block's ciphertext as the version had it (len bytes)
#
# A large file's version is kept block by block: before the live tree changes a block of it
# for the first time since the snapshot, that block is appended here (and made durable) on
# every replica. Each block authenticates on its own (node key, index, end-of-file flag);
# the version a delta belongs to is its name's. A torn last record (a crash while appending)
# is ignored, and cut off before the next append.

DELTA_MAGIC = b"PQCB"
_DELTA_PREFIX = struct.Struct(">4sB3xQ")
_DELTA_RECORD = struct.Struct(">QI")
DELTA_PREFIX_LEN = _DELTA_PREFIX.size
DELTA_RECORD_LEN = _DELTA_RECORD.size
MAX_BLOCK = 1 << 20 | 64           # a block's ciphertext is never larger (block sizes up to 1 MiB)
MIN_BLOCK = aead.OVERHEAD + 1      # nor smaller (one byte, its nonce and tag): a scan moves on


def delta_prefix(counter: int) -> bytes:
    return _DELTA_PREFIX.pack(DELTA_MAGIC, VERSION, counter)


def delta_record(index: int, c_block: bytes) -> bytes:
    return _DELTA_RECORD.pack(index, len(c_block)) + c_block


def parse_delta_prefix(data: bytes) -> int:
    """The counter a delta claims (its name's must agree)."""
    if len(data) < DELTA_PREFIX_LEN:
        raise DamagedStructure("kept blocks file is truncated")
    magic, version, counter = _DELTA_PREFIX.unpack_from(data)
    if magic != DELTA_MAGIC:
        raise DamagedStructure("not a kept blocks file")
    if version != VERSION:
        raise UnsupportedVersion(f"kept blocks file version {version} (this pqcfs reads {VERSION})")
    return counter


def parse_delta_record_head(data: bytes) -> tuple[int, int]:
    index, n = _DELTA_RECORD.unpack(data)
    if not MIN_BLOCK <= n <= MAX_BLOCK:
        raise DamagedStructure("kept blocks file holds a record that is no block")
    return index, n
