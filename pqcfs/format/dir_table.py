"""The directory table (d.t, format 2): a directory's entries and every attribute pqcfs
owns, authenticated as a whole, kept as an append-only journal of sealed records.

  file    = "PQCT" | version u8 (2) | 3 zero bytes | first seq u64 | record*
  record  = length u32 | nonce (12) | AES-256-GCM(meta_key(dir), payload, aad) (length - 12)
  aad     = "pqcfs dir table v2" || dir_id || u64(seq)         seq = first seq + index
  payload = 1 (snapshot) | self | u32 count | entry*
          | 2 (delta)    | u8 has_self | [self] | u32 puts | entry* | u32 dels | (u8 len | disk name)*
  entry   = ATTRS | u8 len | p_name | u8 len | disk name (ASCII)

The first record of a file is a snapshot, every later one a delta. Each record's AAD
binds the directory and the record's position, so records can not be moved between
directories, reordered or dropped from the middle; dropping the tail is a rollback that
the parent's (or the machine's) record of the table's sequence number catches. Pure: bytes
in, bytes out.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field, replace

from pqcfs.crypto import aead
from pqcfs.errors import CryptoError, DamagedStructure, UnsupportedVersion

MAGIC = b"PQCT"
VERSION = 2
NAME = "d.t"
AD = b"pqcfs dir table v2"
_PREFIX = struct.Struct(">4sB3xQ")
_LEN = struct.Struct(">I")
_SEQ = struct.Struct(">Q")
_COUNT = struct.Struct(">I")
# node id, mode, uid, gid, rdev, nlink, flags, size, atime, mtime, ctime, btime (ns), counter, seq
_ATTRS = struct.Struct(">16sIIIQIIQqqqqQQ")
SNAPSHOT, DELTA = 1, 2
FLAG_LINKED = 1            # a hard-link name: attributes live with the hard-linked node
FLAG_XATTRS = 2            # the node has an xattr table (none: no file to look for)
MAX_RECORD = 64 << 20
MAX_ENTRIES = 10_000_000
PREFIX_LEN = _PREFIX.size


@dataclass(slots=True)
class Entry:
    """One name's attributes (or, as a table's `self`, the directory's own)."""
    node_id: bytes
    mode: int
    uid: int = 0
    gid: int = 0
    rdev: int = 0
    nlink: int = 1
    flags: int = 0
    size: int = 0
    atime: int = 0
    mtime: int = 0
    ctime: int = 0
    btime: int = 0
    counter: int = 0       # files: the write counter their header must reach
    seq: int = 0           # directories: the least sequence number their own table must reach
    p_name: bytes = b""
    disk_name: str = ""

    def copy(self) -> "Entry":
        return replace(self)


@dataclass
class DirTable:
    dir_id: bytes
    self_attrs: Entry
    entries: dict[str, Entry] = field(default_factory=dict)   # by disk name
    by_name: dict[bytes, Entry] = field(default_factory=dict)  # the same entries, by plaintext name
    first_seq: int = 0
    seq: int = 0             # of the last record
    records: int = 0         # in the file (a snapshot and its deltas)
    journal_bytes: int = 0   # bytes of deltas after the snapshot
    snapshot_bytes: int = 0
    valid_len: int = 0       # bytes of the file that decoded (less than its size: a torn tail)
    missing: set[str] = field(default_factory=set)   # entries the drives lack (damage found by a reader)
    unsaved: set[str] = field(default_factory=set)    # entries known in memory, not yet in a record
    gone: set[str] = field(default_factory=set)       # entries in the file, gone from memory, not yet in a record
    self_dirty: bool = False                          # self_attrs changed since the last record

    def file_len(self) -> int:
        return PREFIX_LEN + self.snapshot_bytes + self.journal_bytes

    def wants_compaction(self) -> bool:
        """Amortised: a fresh snapshot once the deltas outweigh it (and are not tiny)."""
        return self.journal_bytes > max(64 << 10, self.snapshot_bytes)


def pack_entry(e: Entry) -> bytes:
    p_name, disk = e.p_name, e.disk_name.encode("ascii")
    return (_ATTRS.pack(e.node_id, e.mode, e.uid, e.gid, e.rdev, e.nlink, e.flags, e.size,
                        e.atime, e.mtime, e.ctime, e.btime, e.counter, e.seq)
            + bytes((len(p_name),)) + p_name + bytes((len(disk),)) + disk)


def unpack_entry(buf: memoryview, off: int) -> tuple[Entry, int]:
    try:
        fields = _ATTRS.unpack_from(buf, off)
        off += _ATTRS.size
        n = buf[off]
        p_name = bytes(buf[off + 1:off + 1 + n])
        off += 1 + n
        m = buf[off]
        disk = bytes(buf[off + 1:off + 1 + m]).decode("ascii")
        off += 1 + m
    except (struct.error, IndexError, UnicodeDecodeError):
        raise DamagedStructure("directory table entry is truncated or malformed") from None
    if len(p_name) != n or len(disk) != m:
        raise DamagedStructure("directory table entry is truncated")
    return Entry(*fields, p_name=p_name, disk_name=disk), off


def _aad(dir_id: bytes, seq: int) -> bytes:
    return AD + dir_id + _SEQ.pack(seq)


def _seal(key: bytes, dir_id: bytes, seq: int, payload: bytes) -> bytes:
    sealed = aead.seal(key, payload, _aad(dir_id, seq))
    return _LEN.pack(len(sealed)) + sealed


def encode_snapshot(key: bytes, table: DirTable) -> bytes:
    """A whole table file holding one snapshot record at the table's next sequence number
    (numbers only grow, also across compactions). Updates table's bookkeeping."""
    seq = table.seq + 1
    payload = b"".join([bytes((SNAPSHOT,)), pack_entry(table.self_attrs), _COUNT.pack(len(table.entries)),
                        *(pack_entry(e) for e in table.entries.values())])
    record = _seal(key, table.dir_id, seq, payload)
    table.first_seq = table.seq = seq
    table.records, table.snapshot_bytes, table.journal_bytes = 1, len(record), 0
    data = _PREFIX.pack(MAGIC, VERSION, seq) + record
    table.valid_len = len(data)
    return data


def new_table(key: bytes, dir_id: bytes, self_attrs: Entry) -> tuple[DirTable, bytes]:
    table = DirTable(dir_id=dir_id, self_attrs=self_attrs)
    return table, encode_snapshot(key, table)


def encode_delta(key: bytes, table: DirTable, puts: list[Entry] = (), dels: list[str] = (),
                 self_changed: bool = False, forgotten: list[str] = ()) -> bytes:
    """Apply puts (whole entries, by disk name), deletions and the table's own attributes,
    and return the record to append. forgotten: deletions memory has made already (they
    are recorded, not applied: the name may hold a newer entry since)."""
    parts = [bytes((DELTA, 1 if self_changed else 0))]
    if self_changed:
        parts.append(pack_entry(table.self_attrs))
    parts.append(_COUNT.pack(len(puts)))
    parts.extend(pack_entry(e) for e in puts)
    parts.append(_COUNT.pack(len(dels) + len(forgotten)))
    for disk_name in itertools.chain(dels, forgotten):
        raw = disk_name.encode("ascii")
        parts.append(bytes((len(raw),)) + raw)
    for disk_name in dels:
        gone = table.entries.pop(disk_name, None)
        if gone is not None and table.by_name.get(gone.p_name) is gone:
            del table.by_name[gone.p_name]
    for e in puts:
        table.entries[e.disk_name] = e
        table.by_name[e.p_name] = e
    table.seq += 1
    record = _seal(key, table.dir_id, table.seq, b"".join(parts))
    table.records += 1
    table.journal_bytes += len(record)
    table.valid_len += len(record)
    return record


def _apply(table: DirTable | None, dir_id: bytes, payload: bytes) -> DirTable:
    buf = memoryview(payload)
    kind = payload[0] if payload else 0
    try:
        if kind == SNAPSHOT:
            if table is not None:
                raise DamagedStructure("directory table has a second snapshot")
            self_attrs, off = unpack_entry(buf, 1)
            (count,), off = _COUNT.unpack_from(buf, off), off + _COUNT.size
            if count > MAX_ENTRIES:
                raise DamagedStructure("directory table claims too many entries")
            table = DirTable(dir_id=dir_id, self_attrs=self_attrs)
            for _ in range(count):
                e, off = unpack_entry(buf, off)
                if e.disk_name in table.entries:
                    raise DamagedStructure("directory table names an entry twice")
                table.entries[e.disk_name] = e
        elif kind == DELTA:
            if table is None:
                raise DamagedStructure("directory table starts without a snapshot")
            off = 2
            if payload[1] not in (0, 1):
                raise DamagedStructure("directory table record has unknown flags")
            if payload[1]:
                table.self_attrs, off = unpack_entry(buf, off)
            (puts,), off = _COUNT.unpack_from(buf, off), off + _COUNT.size
            for _ in range(min(puts, MAX_ENTRIES + 1)):
                e, off = unpack_entry(buf, off)
                table.entries[e.disk_name] = e
            (dels,), off = _COUNT.unpack_from(buf, off), off + _COUNT.size
            for _ in range(min(dels, MAX_ENTRIES + 1)):
                n = buf[off]
                name = bytes(buf[off + 1:off + 1 + n]).decode("ascii")
                off += 1 + n
                if table.entries.pop(name, None) is None:
                    raise DamagedStructure("directory table removes an entry it does not hold")
            if len(table.entries) > MAX_ENTRIES:
                raise DamagedStructure("directory table holds too many entries")
        else:
            raise DamagedStructure("directory table record of unknown kind")
    except (struct.error, IndexError, UnicodeDecodeError):
        raise DamagedStructure("directory table record is truncated or malformed") from None
    if off != len(payload):
        raise DamagedStructure("directory table record has trailing bytes")
    return table


HEAD_LEN = PREFIX_LEN + _LEN.size


def _check_prefix(data: bytes) -> int:
    """The file's first sequence number, once its magic and version are ours."""
    magic, version, first_seq = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise DamagedStructure("directory table has a wrong magic")
    if version != VERSION:
        raise UnsupportedVersion(f"directory table version {version} is not supported")
    return first_seq


def first_record_end(head: bytes) -> int:
    """Where a table file's first record (its snapshot) ends, from its first HEAD_LEN
    bytes: a reader authenticates that much before it reads the rest, so a file of junk
    costs one bounded record, whatever size it claims."""
    if len(head) < HEAD_LEN:
        raise DamagedStructure("directory table is truncated")
    _check_prefix(head)
    (length,) = _LEN.unpack_from(head, PREFIX_LEN)
    if length < aead.OVERHEAD or length > MAX_RECORD:
        raise DamagedStructure("directory table record has an impossible length")
    return HEAD_LEN + length


def decode(key: bytes, dir_id: bytes, data: bytes, tolerate_torn_tail: bool = False) -> DirTable:
    """The table a file holds. A record that fails authentication, anywhere, is damage;
    with tolerate_torn_tail (after a crash, for a directory the intent log names) an
    incomplete last record is dropped instead, and valid_len says where the table ends."""
    if len(data) < PREFIX_LEN:
        raise DamagedStructure("directory table is truncated")
    first_seq = _check_prefix(data)
    table, off, seq, records, snapshot_bytes = _records(key, dir_id, data, PREFIX_LEN, first_seq, None, 0,
                                                         tolerate_torn_tail)
    if table is None:
        raise DamagedStructure("directory table holds no snapshot")
    table.first_seq = first_seq
    return _finish(table, seq, records, snapshot_bytes, off)


def decode_more(key: bytes, table: DirTable, more: bytes, tolerate_torn_tail: bool = False) -> DirTable:
    """The table with the records that follow what decode() read (its valid_len bytes):
    a reader authenticates the snapshot alone before it reads the rest of the file."""
    table, off, seq, records, _ = _records(key, table.dir_id, more, 0, table.seq + 1, table, table.records,
                                           tolerate_torn_tail)
    return _finish(table, seq, records, table.snapshot_bytes, table.valid_len + off)


def _records(key: bytes, dir_id: bytes, data: bytes, off: int, seq: int, table: DirTable | None, records: int,
             tolerate_torn_tail: bool):
    snapshot_bytes = 0
    while off < len(data):
        if off + _LEN.size > len(data):
            if tolerate_torn_tail and table is not None:
                break
            raise DamagedStructure("directory table ends inside a record")
        (length,) = _LEN.unpack_from(data, off)
        end = off + _LEN.size + length
        if length < aead.OVERHEAD or length > MAX_RECORD:
            raise DamagedStructure("directory table record has an impossible length")
        if end > len(data):
            if tolerate_torn_tail and table is not None:
                break
            raise DamagedStructure("directory table ends inside a record")
        try:
            payload = aead.open_sealed(key, data[off + _LEN.size:end], _aad(dir_id, seq))
        except CryptoError:
            if tolerate_torn_tail and table is not None and end == len(data):
                break   # a record half written when the machine stopped
            raise CryptoError("directory table failed authentication") from None
        table = _apply(table, dir_id, payload)
        if records == 0:
            snapshot_bytes = end - off
        records += 1
        seq += 1
        off = end
    return table, off, seq, records, snapshot_bytes


def _finish(table: DirTable, seq: int, records: int, snapshot_bytes: int, valid_len: int) -> DirTable:
    table.by_name = {e.p_name: e for e in table.entries.values()}
    if len(table.by_name) != len(table.entries):
        raise DamagedStructure("directory table names one plaintext name twice")
    table.seq, table.records = seq - 1, records
    table.snapshot_bytes, table.journal_bytes = snapshot_bytes, valid_len - PREFIX_LEN - snapshot_bytes
    table.valid_len = valid_len
    return table
