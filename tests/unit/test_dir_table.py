"""The directory table (d.t): round trips, the journal, and what a reader refuses."""

import os

import pytest

from pqcfs.errors import CryptoError, DamagedStructure, UnsupportedVersion
from pqcfs.format import dir_table
from pqcfs.format.dir_table import Entry

KEY = bytes(range(32))
DIR_ID = b"D" * 16


def _entry(i: int, **kw) -> Entry:
    return Entry(node_id=os.urandom(16), mode=0o100644, uid=1000 + i, size=i * 10, mtime=i * 1_000_000_007,
                 p_name=f"file {i}".encode(), disk_name=f"name{i:04d}", **kw)


def _table_with(n: int):
    table, data = dir_table.new_table(KEY, DIR_ID, Entry(node_id=DIR_ID, mode=0o40755, nlink=2))
    for i in range(n):
        data += dir_table.encode_delta(KEY, table, puts=[_entry(i)], self_changed=True)
    return table, data


def test_snapshot_and_deltas_round_trip():
    table, data = _table_with(5)
    data += dir_table.encode_delta(KEY, table, dels=["name0003"])
    again = dir_table.decode(KEY, DIR_ID, data)
    assert again.entries == table.entries and again.self_attrs == table.self_attrs
    assert sorted(again.entries) == ["name0000", "name0001", "name0002", "name0004"]
    assert (again.first_seq, again.seq, again.records) == (1, 7, 7)
    assert again.valid_len == len(data) == again.file_len()


def test_compaction_keeps_numbering_growing():
    table, data = _table_with(3)
    compact = dir_table.encode_snapshot(KEY, table)
    again = dir_table.decode(KEY, DIR_ID, compact)
    assert again.first_seq == again.seq == 5 and again.entries == table.entries
    # An older file (lower numbers) stays decodable; the rollback check is the caller's.
    assert dir_table.decode(KEY, DIR_ID, data).seq == 4


def test_nanosecond_times_and_long_names_survive():
    e = _entry(1, atime=-1, ctime=2**62 + 123456789, btime=7)
    e.p_name, e.disk_name = b"\xff" * 255, "l." + "a" * 52
    table, data = dir_table.new_table(KEY, DIR_ID, Entry(node_id=DIR_ID, mode=0o40700))
    data += dir_table.encode_delta(KEY, table, puts=[e])
    assert dir_table.decode(KEY, DIR_ID, data).entries[e.disk_name] == e


def test_a_record_moved_to_another_directory_fails():
    _, data = _table_with(2)
    with pytest.raises(CryptoError):
        dir_table.decode(KEY, b"E" * 16, data)


@pytest.mark.parametrize("how", ["flip", "swap", "drop-middle", "renumber"])
def test_tampered_journal_is_refused(how):
    table, data = _table_with(3)
    start = dir_table.PREFIX_LEN + table.snapshot_bytes
    rec = (len(data) - start) // 3        # the three deltas have the same length
    r1, r2, r3 = (data[start + i * rec:start + (i + 1) * rec] for i in range(3))
    head = data[:start]
    bad = {"flip": data[:-5] + bytes([data[-5] ^ 1]) + data[-4:],
           "swap": head + r2 + r1 + r3,
           "drop-middle": head + r1 + r3,
           "renumber": data[:8] + (9).to_bytes(8, "big") + data[16:]}[how]
    with pytest.raises((CryptoError, DamagedStructure)):
        dir_table.decode(KEY, DIR_ID, bad)


def test_torn_tail_only_when_asked():
    table, data = _table_with(3)
    torn = data[:-7]
    with pytest.raises(DamagedStructure):
        dir_table.decode(KEY, DIR_ID, torn)
    got = dir_table.decode(KEY, DIR_ID, torn, tolerate_torn_tail=True)
    assert len(got.entries) == 2 and got.valid_len < len(torn)
    # A damaged record before the last is damage even then.
    start = dir_table.PREFIX_LEN + table.snapshot_bytes + 30
    mid = data[:start] + bytes([data[start] ^ 1]) + data[start + 1:]
    with pytest.raises(CryptoError):
        dir_table.decode(KEY, DIR_ID, mid, tolerate_torn_tail=True)


@pytest.mark.parametrize("data", [b"", b"PQCT", b"XXXX\x02\0\0\0" + bytes(8), b"PQCT\x02\0\0\0" + bytes(8),
                                  b"PQCT\x02\0\0\0" + bytes(8) + b"\xff\xff\xff\xff" + bytes(40)])
def test_malformed_files_are_damage(data):
    with pytest.raises(DamagedStructure):
        dir_table.decode(KEY, DIR_ID, data)


def test_unknown_version_is_named():
    _, data = _table_with(0)
    with pytest.raises(UnsupportedVersion):
        dir_table.decode(KEY, DIR_ID, data[:4] + b"\x03" + data[5:])


def test_wants_compaction_is_amortised():
    table, _ = _table_with(0)
    assert not table.wants_compaction()
    for i in range(2000):
        dir_table.encode_delta(KEY, table, puts=[_entry(i)])
    assert table.wants_compaction()
    dir_table.encode_snapshot(KEY, table)
    assert not table.wants_compaction() and table.records == 1
