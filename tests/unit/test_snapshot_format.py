"""The snapshot format (pqcfs/format/snapshot.py): round trips, and every malformed or
misplaced structure refused."""

import os
import struct

import pytest

from pqcfs.errors import CryptoError, DamagedStructure, UnsupportedVersion
from pqcfs.format import snapshot as fmt
from pqcfs.format.dir_table import Entry

KEY, VAULT = os.urandom(32), os.urandom(16)


def record(dir_key=None, dir_id=None, snap_id=None, children=2):
    dir_key, dir_id, snap_id = dir_key or os.urandom(32), dir_id or os.urandom(16), snap_id or os.urandom(16)
    rec = fmt.DirRecord(dir_id=dir_id, c_path="abc/def", self_attrs=Entry(node_id=dir_id, mode=0o40755),
                        xattrs={b"user.a": b"1"})
    for n in range(children):
        e = Entry(node_id=os.urandom(16), mode=0o100644, size=n * 100, counter=n + 1, p_name=b"f%d" % n,
                  disk_name="x%d" % n)
        rec.children.append(fmt.Child(e, os.urandom(32), {b"user.b": b"2"} if n else {}))
    return dir_key, snap_id, rec, fmt.encode_record(dir_key, snap_id, rec)


def test_a_record_round_trips_and_is_bound_to_its_snapshot_and_directory():
    key, snap_id, rec, raw = record()
    located = fmt.split_records(raw, 0)
    (off, n), = located.values()
    assert list(located) == [fmt.locator(key, snap_id)]        # key: the record key (here a random one)
    back = fmt.decode_record(key, snap_id, rec.dir_id, raw[off:off + n])
    assert back.c_path == rec.c_path and back.xattrs == rec.xattrs
    assert [(c.entry, c.key, c.xattrs) for c in back.children] == [(c.entry, c.key, c.xattrs) for c in rec.children]
    with pytest.raises(CryptoError):
        fmt.decode_record(key, os.urandom(16), rec.dir_id, raw[off:off + n])     # another snapshot's
    with pytest.raises(CryptoError):
        fmt.decode_record(key, snap_id, os.urandom(16), raw[off:off + n])        # another directory's
    assert fmt.locator(key, snap_id) != fmt.locator(key, os.urandom(16))


def test_a_manifest_counts_and_hashes_its_records():
    key, snap_id, rec, raw = record()
    secret, meta = os.urandom(32), os.urandom(32)
    head = fmt.Head(snap_id=snap_id, created=1, label="l", kind="manual", root_id=rec.dir_id, secret=secret)
    wrap = fmt.encode_wrap(meta, snap_id, rec.dir_id, secret, 77)
    data = fmt.encode_manifest(KEY, VAULT, head, [raw], [wrap])
    back, start = fmt.decode_head(KEY, VAULT, data, snap_id)
    assert back.records == 1 and fmt.split_records(data, start) and back.secret == secret
    (w_off, w_n), = fmt.split_wraps(data).values()
    assert list(fmt.split_wraps(data)) == [fmt.wrap_locator(meta, snap_id)]
    assert fmt.open_wrap(meta, snap_id, rec.dir_id, data[w_off:w_off + w_n]) == (secret, 77)
    with pytest.raises(CryptoError):
        fmt.open_wrap(os.urandom(32), snap_id, rec.dir_id, data[w_off:w_off + w_n])
    assert fmt.manifest_id(data) == snap_id and fmt.records_start(data) == start
    for bad, error in ((data + b"x", DamagedStructure), (data[:-1], DamagedStructure),
                       (b"PQCX" + data[4:], DamagedStructure), (data[:4] + b"\x02" + data[5:], UnsupportedVersion)):
        with pytest.raises(error):
            fmt.decode_head(KEY, VAULT, bad)
    with pytest.raises(CryptoError):
        fmt.decode_head(os.urandom(32), VAULT, data)
    with pytest.raises(CryptoError):
        fmt.decode_head(KEY, os.urandom(16), data)       # another vault's


def test_split_refuses_records_past_the_end_twice_or_over_the_cap():
    key, snap_id, rec, raw = record()
    with pytest.raises(DamagedStructure, match="twice"):
        fmt.split_records(raw + raw, 0)
    with pytest.raises(DamagedStructure, match="past its end"):
        fmt.split_records(raw[:-1], 0)
    huge = raw[:16] + struct.pack(">I", fmt.RECORD_CAP + 1) + raw[20:]
    with pytest.raises(DamagedStructure, match="past its end"):
        fmt.split_records(huge, 0)
    with pytest.raises(DamagedStructure, match="inside a record"):
        fmt.split_records(raw + b"\0" * 5, 0)


def test_the_index_round_trips_and_refuses_what_is_malformed():
    listed = fmt.Listed(snap_id=os.urandom(16), created=5, label="x", kind="auto", digest=os.urandom(32), size=9)
    index = fmt.Index(seq=3, snapshots=[listed], policy=fmt.Policy(keep_s=86400, max_space_pct=20.0))
    back = fmt.decode_index(KEY, VAULT, fmt.encode_index(KEY, VAULT, index))
    assert back.seq == 3 and back.snapshots == [listed] and back.policy == index.policy
    twice = fmt.Index(seq=1, snapshots=[listed, listed])
    with pytest.raises(DamagedStructure):
        fmt.decode_index(KEY, VAULT, fmt.encode_index(KEY, VAULT, twice))
    with pytest.raises(CryptoError):
        fmt.decode_index(KEY, os.urandom(16), fmt.encode_index(KEY, VAULT, index))
    with pytest.raises(DamagedStructure):
        fmt.decode_index(KEY, VAULT, b"PQCX\x01\0\0\0" + os.urandom(60))
