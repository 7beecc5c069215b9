"""The bytes an offsite remote holds (pqcfs.format.remote): keyed object ids, sealed pages and
epoch records, and everything a reader refuses before use."""

import os

import pytest

from pqcfs.errors import CryptoError, DamagedStructure
from pqcfs.format import remote as fmt

ROOT, OTHER_ROOT = os.urandom(32), os.urandom(32)
VAULT, OTHER_VAULT = os.urandom(16), os.urandom(16)
KEYS = fmt.RemoteKeys.derive(ROOT)


def epoch(number=3):
    return fmt.Epoch(number=number, time="2026-12-03T00:00:00Z", top="a" * 64, header="b" * 64,
                     state={"lineage": ["s1"], "generation": 4, "audit_head": None, "grantee_heads": None,
                            "clean": True}, objects=2, files=1, size=10)


def test_object_ids_are_keyed_and_incremental():
    data = os.urandom(3000)
    assert KEYS.object_id(data) != fmt.RemoteKeys.derive(OTHER_ROOT).object_id(data)
    hasher = KEYS.hasher()
    hasher.update(data[:1000])
    hasher.update(data[1000:])
    assert hasher.hexdigest() == KEYS.object_id(data) and fmt.is_object_id(KEYS.object_id(data))
    assert fmt.object_path(KEYS.object_id(data)).startswith(KEYS.object_id(data)[:2] + "/")


def test_an_epoch_record_opens_only_under_its_number_vault_and_key():
    sealed = fmt.seal_epoch(KEYS, VAULT, epoch(3))
    assert fmt.open_epoch(KEYS, VAULT, 3, sealed) == epoch(3)
    for keys, vault, number in ((KEYS, VAULT, 4), (KEYS, OTHER_VAULT, 3), (fmt.RemoteKeys.derive(OTHER_ROOT), VAULT, 3)):
        with pytest.raises(CryptoError):
            fmt.open_epoch(keys, vault, number, sealed)
    flipped = bytearray(sealed)
    flipped[40] ^= 1
    with pytest.raises(CryptoError):
        fmt.open_epoch(KEYS, VAULT, 3, bytes(flipped))
    with pytest.raises(DamagedStructure):
        fmt.open_epoch(KEYS, VAULT, 3, b"x" * (fmt.EPOCH_CAP + 1))


def test_epoch_names():
    assert fmt.epoch_name(12) == "00000000000000000012" and fmt.parse_epoch_name("00000000000000000012") == 12
    for name in ("12", "00000000000000000012.part", "../00000000000000000012", "0000000000000000001x"):
        assert fmt.parse_epoch_name(name) is None


def test_pages_round_trip_and_are_canonical():
    page = fmt.Page({"tree": "c" * 64}, {"pqcfs.audit": ("d" * 64, 10)})
    same = fmt.Page({"tree": "c" * 64}, {"pqcfs.audit": ("d" * 64, 10)})
    assert page.plain() == same.plain()
    opened = fmt.open_page(KEYS, VAULT, fmt.seal_page(KEYS, VAULT, page.plain()))
    assert opened == page
    with pytest.raises(CryptoError):
        fmt.open_page(KEYS, OTHER_VAULT, fmt.seal_page(KEYS, VAULT, page.plain()))


@pytest.mark.parametrize("dirs,files", [
    ({"..": "c" * 64}, {}), ({"a/b": "c" * 64}, {}), ({"": "c" * 64}, {}), ({"x": "not an id"}, {}),
    ({}, {"f": ("d" * 64, -1)}), ({}, {"f": ("d" * 64, 1 << 60)}), ({}, {"f\0": ("d" * 64, 1)}),
    ({"same": "c" * 64}, {"same": ("d" * 64, 1)}), ({}, {"x" * 300: ("d" * 64, 1)}),
])
def test_a_page_naming_an_impossible_entry_is_refused(dirs, files):
    # Written with the key (as only a key holder could): refused all the same, before use.
    sealed = fmt.seal_page(KEYS, VAULT, fmt.Page(dirs, files).plain())
    with pytest.raises(DamagedStructure):
        fmt.open_page(KEYS, VAULT, sealed)


def test_the_index_is_this_machines_authenticated_record(tmp_path, monkeypatch):
    from pqcfs.remote import registry
    monkeypatch.setenv("PQCFS_STATE_DIR", str(tmp_path))
    entry = registry.RemoteEntry("attic", "/somewhere")
    registry.save_index(entry, VAULT, ROOT, registry.Index(epoch=7, objects=["a" * 64]))
    assert registry.load_index(entry, VAULT, ROOT).epoch == 7
    with pytest.raises(DamagedStructure):
        registry.load_index(entry, VAULT, OTHER_ROOT)
    path = entry.file(VAULT, "index")
    with open(path, "rb") as f:
        data = f.read().replace(b'"epoch":7', b'"epoch":9')
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(DamagedStructure):
        registry.load_index(entry, VAULT, ROOT)
    assert registry.default_name("offsite:vaults/v1") == "offsite"
    assert registry.default_name(":sftp,host=h,user=u:v") == "sftp"
    assert registry.default_name("/mnt/nas/v") == "local"
