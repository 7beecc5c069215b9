"""Snapshots against an attacker with both drives and no key: every structure altered,
swapped, removed, rolled back or forged is detected and named (never served), through the
reader, fsck, and the next session; one replica's damage is healed from the other."""

import os
import shutil

import pytest

from pqcfs import fsck
from pqcfs.errors import CryptoError, DamagedStructure, NoSuchSnapshot, PqcfsError, RolledBack
from pqcfs.format import snapshot as fmt
from pqcfs.session.snapshot_mount import open_snapshot
from pqcfs.snapshots.store import DATA, DIR, INDEX
from tests.api.test_incremental_sync import unlock
from tests.api.test_snapshots import Open, read, snapshot_files


def write(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def manifests(location) -> list[str]:
    return sorted(os.path.join(location, DIR, n) for n in os.listdir(os.path.join(location, DIR)) if n.endswith(".s"))


def by_label(locations, label) -> str:
    vault = unlock(locations)
    try:
        return os.path.join(DIR, open_snapshot(vault, label)[1].snap_id.hex() + ".s")
    finally:
        vault.close()


def fsck_problems(locations, repair=False) -> list[str]:
    vault = unlock(locations)
    try:
        report = fsck.run(vault, repair=repair)
        return [p.what for p in report.problems if not p.repaired]
    finally:
        vault.close()


@pytest.fixture
def two_snapshots(locations, tmp_path):
    with Open(locations, tmp_path) as v:
        v.put("secret.txt", b"the original")
        v.put("dir/other", b"o" * 9000)
        v.history.create(v.vfs, label="one")
        v.put("secret.txt", b"changed once")
        v.history.create(v.vfs, label="two")
        v.put("secret.txt", b"changed twice")
    return locations


def test_an_altered_manifest_on_both_drives_is_named_not_served(two_snapshots):
    locations = two_snapshots
    rel = by_label(locations, "one")
    for loc in locations:
        data = bytearray(read(os.path.join(loc, rel)))
        data[-5] ^= 1                         # inside the last directory record
        write(os.path.join(loc, rel), bytes(data))
    with pytest.raises(DamagedStructure, match="no replica holds its manifest unchanged"):
        snapshot_files(locations, "one")
    assert snapshot_files(locations, "two")["secret.txt"] == b"changed once"
    problems = fsck_problems(locations)
    assert any("no replica holds its manifest unchanged" in p for p in problems)


def test_manifests_swapped_or_removed_on_one_drive_are_healed_from_the_other(two_snapshots, tmp_path):
    locations = two_snapshots
    one, two = by_label(locations, "one"), by_label(locations, "two")
    a, b = os.path.join(locations[0], one), os.path.join(locations[0], two)
    data_a, data_b = read(a), read(b)
    write(a, data_b)
    write(b, data_a)                          # swapped on the primary
    assert snapshot_files(locations, "one")["secret.txt"] == b"the original"   # served from the backup's
    assert snapshot_files(locations, "two")["secret.txt"] == b"changed once"
    assert len(fsck_problems(locations)) == 2
    assert fsck_problems(locations, repair=True) == []
    assert read(a) == data_a and read(b) == data_b
    os.unlink(os.path.join(locations[1], one))    # gone from the backup
    assert snapshot_files(locations, "one")["secret.txt"] == b"the original"
    with Open(locations, tmp_path) as v:          # a session heals what it reads
        v.history.manifest(v.history.index.snapshots[0])
    assert read(os.path.join(locations[1], one)) == data_a
    assert fsck_problems(locations) == []


def test_a_manifest_removed_from_both_drives_is_named(two_snapshots):
    locations = two_snapshots
    rel = by_label(locations, "two")
    for loc in locations:
        os.unlink(os.path.join(loc, rel))
    with pytest.raises(DamagedStructure, match="snapshot .* \\(two\\)"):
        snapshot_files(locations, "two")


def test_a_record_dropped_or_a_manifest_under_another_id_is_refused(two_snapshots):
    locations = two_snapshots
    vault = unlock(locations)
    try:
        key = fmt.snapshot_key(vault.root_key)
        vault_id = vault.header.vault_id
        data = read(os.path.join(locations[0], by_label(locations, "one")))
        head, start = fmt.decode_head(key, vault_id, data)
        located = fmt.split_records(data, start)
        # The head authenticates only with its own records: one dropped is refused.
        first_off, first_len = min(located.values())
        dropped = data[:start] + data[first_off + first_len:]
        with pytest.raises(DamagedStructure, match="not the ones its head names"):
            fmt.decode_head(key, vault_id, dropped)
        # A manifest presented as another snapshot's.
        with pytest.raises(DamagedStructure, match="another snapshot's"):
            fmt.decode_head(key, vault_id, data, snap_id=os.urandom(16))
        # A forged head (no key): fails authentication.
        forged = bytearray(data)
        forged[40] ^= 1
        with pytest.raises((CryptoError, DamagedStructure)):
            fmt.decode_head(key, vault_id, bytes(forged))
    finally:
        vault.close()


def test_a_kept_version_swapped_for_another_is_never_served(two_snapshots):
    locations = two_snapshots
    kept = sorted(os.listdir(os.path.join(locations[0], DATA)))
    assert len(kept) == 2                      # secret.txt as snapshot one and two had it
    for loc in locations:                      # the older version put where the newer one was
        shutil.copyfile(os.path.join(loc, DATA, kept[0]), os.path.join(loc, DATA, kept[1]))
    # The newer name now holds the file with the older counter in its authenticated header.
    target = "two" if kept[1].split(".")[1] > kept[0].split(".")[1] else "one"
    with pytest.raises(DamagedStructure, match="on no drive"):
        snapshot_files(locations, target)
    assert any("on no drive" in p for p in fsck_problems(locations))


def test_a_kept_version_damaged_on_one_drive_is_repaired_by_fsck(two_snapshots):
    locations = two_snapshots
    name = sorted(os.listdir(os.path.join(locations[1], DATA)))[0]
    path = os.path.join(locations[1], DATA, name)
    data = bytearray(read(path))
    data[100] ^= 0x40                          # one bit inside a block
    write(path, bytes(data))
    assert any("fails authentication" in p for p in fsck_problems(locations, repair=False))
    assert fsck_problems(locations, repair=True) == []
    assert read(path) == read(os.path.join(locations[0], DATA, name))


def test_the_index_forged_or_rolled_back(two_snapshots, tmp_path):
    locations = two_snapshots
    good = read(os.path.join(locations[0], INDEX))
    write(os.path.join(locations[1], INDEX), b"PQCI\x01\x00\x00\x00" + os.urandom(200))   # forged on one drive
    with Open(locations, tmp_path) as v:
        assert [s.label for s in v.history.index.snapshots] == ["one", "two"]
        assert any("does not authenticate" in p for p in v.history.store.problems)
    assert read(os.path.join(locations[1], INDEX)) == good           # healed
    # Both drives' index replaced by one that lists no snapshot (an attacker's "delete"
    # needs the key to write one; an older genuine one is all there is): a rollback.
    for loc in locations:
        write(os.path.join(loc, INDEX), b"PQCI\x01\x00\x00\x00" + os.urandom(200))
    with pytest.raises(PqcfsError):
        snapshot_files(locations, "one")
    with pytest.raises(RolledBack):
        with Open(locations, tmp_path):
            pass


def test_an_unknown_snapshot_is_its_own_error(two_snapshots):
    with pytest.raises(NoSuchSnapshot):
        snapshot_files(two_snapshots, "nonexistent")


def test_kept_versions_removed_or_damaged_on_every_drive_are_never_replaced_by_the_live_file(two_snapshots,
                                                                                           tmp_path):
    """The live file changed since: it must not stand in for a version whose kept copy (a
    small file's) or kept blocks (a large file's) an attacker removed or spoiled."""
    locations = two_snapshots
    for loc in locations:
        for name in os.listdir(os.path.join(loc, DATA)):
            os.unlink(os.path.join(loc, DATA, name))       # secret.txt's kept copies, gone
    with pytest.raises(DamagedStructure, match="on no drive"):
        snapshot_files(locations, "one")
    big = os.urandom(1 << 20)
    with Open(locations, tmp_path) as v:
        v.put("big", big)
        v.history.create(v.vfs, label="three")
        v.put("big", b"overwritten")                  # its blocks kept, then the live file cut
    for loc in locations:
        for name in os.listdir(os.path.join(loc, DATA)):
            if name.endswith(".b"):
                write(os.path.join(loc, DATA, name), b"PQCB\x01\0\0\0" + bytes(8) + bytes(12))   # a record of 0 bytes
    with pytest.raises(DamagedStructure):
        snapshot_files(locations, "three")
