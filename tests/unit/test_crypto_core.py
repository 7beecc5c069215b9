"""Unit tests of the pure crypto layer: KDF bounds, node keys, blocks, names."""

import os
import re

import pytest

from pqcfs.crypto import kdf
from pqcfs.crypto.content import BlockCorrupt, ContentCipher
from pqcfs.crypto.keys import NodeKeys, child_key, root_dir_keys
from pqcfs.errors import CryptoError, DamagedStructure, ParameterError
from pqcfs.format import names


def keys(n=1):
    return NodeKeys(bytes([n]) * 16, bytes([n]) * 32)


# --- Argon2id -------------------------------------------------------------------------

def test_kdf_floor_and_ceiling(monkeypatch):
    monkeypatch.delenv(kdf.TEST_SWITCH, raising=False)
    salt = bytes(16)
    with pytest.raises(ParameterError, match="below the floor"):
        kdf.Argon2Params(1024, 3, 1, salt).validate()
    with pytest.raises(ParameterError, match="above the ceiling"):
        kdf.Argon2Params(8 * 1024 * 1024, 3, 1, salt).validate()
    with pytest.raises(ParameterError, match="iterations"):
        kdf.Argon2Params(64 * 1024, 1000, 1, salt).validate()
    kdf.Argon2Params(64 * 1024, 3, 1, salt).validate()


def test_kdf_params_round_trip_and_reject_other_algorithms():
    p = kdf.calibrate()
    assert kdf.Argon2Params.from_dict(p.to_dict()) == p
    with pytest.raises(ParameterError):
        kdf.Argon2Params.from_dict({**p.to_dict(), "alg": "scrypt"})
    with pytest.raises(ParameterError):
        kdf.Argon2Params.from_dict({"alg": "argon2id"})


def test_calibration_without_test_switch_hits_a_real_cost(monkeypatch):
    monkeypatch.delenv(kdf.TEST_SWITCH, raising=False)
    p = kdf.calibrate(target_seconds=0.05)
    assert p.memory_kib >= kdf.FLOOR["memory_kib"] and p.iterations >= kdf.FLOOR["iterations"]


# --- node-key tree --------------------------------------------------------------------

def test_node_keys_derive_downward_only():
    root = root_dir_keys(bytes(32), bytes(16))
    a = root.child(b"a" * 16)
    assert a.child(b"b" * 16).key == child_key(a.key, b"b" * 16)
    assert a.key != root.child(b"c" * 16).key
    # One key, one purpose.
    assert len({a.name_key[:32], a.wrap_key[:32], a.content_key, a.meta_key, a.key}) == 5


def test_override_is_bound_to_parent_and_node():
    parent, other = keys(1), keys(2)
    node = keys(3)
    wrapped = parent.wrap_override(node)
    assert parent.unwrap_override(node.node_id, wrapped) == node
    with pytest.raises(CryptoError):
        other.unwrap_override(node.node_id, wrapped)
    with pytest.raises(CryptoError):
        parent.unwrap_override(b"x" * 16, wrapped)


# --- content blocks -------------------------------------------------------------------

@pytest.fixture
def cipher():
    return ContentCipher(os.urandom(32), os.urandom(16), 4096)


def test_blocks_round_trip_with_short_tail(cipher):
    data = os.urandom(3 * 4096 + 100)
    c = cipher.seal(0, data, eof_at_end=True)
    assert len(c) == cipher.c_size(len(data)) and cipher.p_size(len(c)) == len(data)
    assert cipher.open(0, c, last_index=3) == data


def test_swapped_and_reordered_blocks_fail(cipher):
    c = cipher.seal(0, os.urandom(3 * 4096), eof_at_end=True)
    b = cipher.c_block
    swapped = c[b:2 * b] + c[:b] + c[2 * b:]
    with pytest.raises(BlockCorrupt) as e:
        cipher.open(0, swapped, last_index=2)
    assert e.value.index == 0


def test_truncation_at_a_block_boundary_is_detected(cipher):
    c = cipher.seal(0, os.urandom(3 * 4096), eof_at_end=True)
    with pytest.raises(BlockCorrupt):
        cipher.open(0, c[:2 * cipher.c_block], last_index=1)


def test_blocks_are_bound_to_their_file(cipher):
    c = cipher.seal(0, b"hello", eof_at_end=True)
    other = ContentCipher(cipher._aead._key if hasattr(cipher._aead, "_key") else os.urandom(32),
                          os.urandom(16), 4096)
    with pytest.raises(BlockCorrupt):
        other.open(0, c, last_index=0)


def test_all_zero_block_is_a_hole_except_at_the_end(cipher):
    b = cipher.c_block
    tail = cipher.seal(1, b"tail", eof_at_end=True)
    assert cipher.open(0, bytes(b) + tail, last_index=1) == bytes(4096) + b"tail"
    with pytest.raises(BlockCorrupt):
        cipher.open(0, bytes(b), last_index=0)


def test_flipped_bit_is_detected(cipher):
    c = bytearray(cipher.seal(0, b"x" * 5000, eof_at_end=True))
    c[100] ^= 1
    with pytest.raises(BlockCorrupt):
        cipher.open(0, bytes(c), last_index=1)


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 3 * 4096 + 100, 256 * 4096])
def test_sealing_and_opening_into_a_buffer_match_the_bytes_calls(cipher, size):
    """seal_into/open_into write into the caller's buffer (a slice of a larger one too),
    exactly sealed_len/opened_len bytes of it, and agree with seal/open both ways."""
    data = os.urandom(size)
    last = max(0, -(-size // 4096) - 1)
    whole = bytearray(cipher.sealed_len(size) + 10)
    into = memoryview(whole)[5:5 + cipher.sealed_len(size)]
    assert cipher.seal_into(7, data, True, into) == len(into)
    assert whole[:5] == bytes(5) and whole[-5:] == bytes(5)
    assert cipher.open(7, bytes(into), last + 7) == data
    c = cipher.seal(7, data, eof_at_end=True)
    assert len(c) == cipher.sealed_len(size)
    out = bytearray(cipher.opened_len(len(c)))
    assert cipher.open_into(7, memoryview(c), last + 7, out) == size and out == data


def test_opening_into_a_buffer_fails_as_open_does(cipher):
    b = cipher.c_block
    tail = cipher.seal(1, b"tail", eof_at_end=True)
    out = bytearray(cipher.opened_len(b + len(tail)))
    cipher.open_into(0, bytes(b) + tail, 1, out)
    assert out == bytes(4096) + b"tail"                        # a hole, then the tail
    bad = bytearray(cipher.seal(0, b"x" * 5000, eof_at_end=True))
    bad[5000] ^= 1
    with pytest.raises(BlockCorrupt) as e:
        cipher.open_into(0, bad, 1, bytearray(5000))
    assert e.value.index == 1
    with pytest.raises(BlockCorrupt):
        cipher.open_into(0, bad[:b + 10], 1, bytearray(4096))  # a tail too short to hold a tag


# --- names ----------------------------------------------------------------------------

def test_names_round_trip_and_are_exfat_safe():
    d = keys()
    for p_name in [b"a", b"hello.txt", "ünïcödé ✓".encode(), b"x" * 255, b"CON", b"a:b*c?"]:
        c_name = names.encrypt_name(d, p_name)
        assert re.fullmatch(r"[a-z2-7]+", c_name)
        disk = names.on_disk_name(c_name)
        assert len(disk) <= names.MAX_SHORT and names.is_entry(disk)
        assert names.decrypt_name(d, c_name) == p_name


def test_names_are_bound_to_their_directory():
    c_name = names.encrypt_name(keys(1), b"secret")
    with pytest.raises(CryptoError):
        names.decrypt_name(keys(2), c_name)


def test_names_hide_length_within_16_bytes_and_never_collide_case_insensitively():
    d = keys()
    assert len(names.encrypt_name(d, b"a")) == len(names.encrypt_name(d, b"a" * 15))
    seen = {names.on_disk_name(names.encrypt_name(d, n)).lower() for n in (b"A", b"a", b"B", b"b")}
    assert len(seen) == 4


def test_long_names_get_a_hashed_entry_name():
    c_name = names.encrypt_name(keys(), b"y" * 200)
    disk = names.on_disk_name(c_name)
    assert names.is_long(disk) and names.long_name_matches(disk, c_name) and len(disk) < 60


def test_reserved_names_are_not_entries():
    for reserved in (names.DIR_ID_NAME, names.OVERRIDES_NAME, "abc.x", "l.abc.n", "t.1234"):
        assert not names.is_entry(reserved)


@pytest.mark.parametrize("bad", [b"", b".", b"..", b"a/b", b"a\0b", b"x" * 256])
def test_invalid_plaintext_names_are_refused(bad):
    with pytest.raises(names.InvalidName):
        names.encrypt_name(keys(), bad)


def test_name_encoding_is_rfc4648_base32_and_strict():
    import base64
    for n in range(0, 70):
        data = os.urandom(n)
        text = names._b32(data)
        assert text == base64.b32encode(data).decode().lower().rstrip("=")
        assert names._unb32(text) == data
    # One encoding per name: upper case, padding, impossible lengths, foreign characters
    # and non-zero unused bits are all refused (a second spelling would be a second entry).
    for bad in ["A", "ab=", "abc", "abcdef", "a0", "a1", "a8", "aB", "ab", "mzxw6yr"]:
        with pytest.raises(DamagedStructure):
            names._unb32(bad)
