"""Encrypted names that survive exFAT and FAT32.

c_name = base32-lowercase-unpadded(AES-SIV(name_key(dir), pad16(p_name), ad=[dir_id]))

Lowercase base32 uses only [a-z2-7]: valid on every USB file system, and injective even on
case-insensitive ones, so two plaintext names can never collide on the drive. Every name
pqcfs reserves for itself contains a dot, which base32 never produces. A c_name longer
than MAX_SHORT becomes "l." + base32(SHA-256(c_name)) and its full form is kept in a
sidecar "<that>.n" (like gocryptfs' longname files).
"""

from __future__ import annotations

import hashlib

from pqcfs.crypto import aead
from pqcfs.crypto.keys import NodeKeys
from pqcfs.errors import CryptoError, DamagedStructure

PAD = 16
MAX_P_NAME = 255
MAX_SHORT = 240          # leaves room for the ".x"/".n" sidecar suffixes under 255
LONG_PREFIX = "l."
LONG_SUFFIX = ".n"
LONG_NAME_CAP = 4096      # a long-name sidecar holds one base32 name: what is read of one
XATTR_SUFFIX = ".x"
DIR_ID_NAME = "d.id"
OVERRIDES_NAME = "d.ov"
TEMP_PREFIX = "t."


class InvalidName(ValueError):
    """A plaintext name the file system can not hold (empty, '.', '..', '/', NUL, too long)."""


_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # 10 bits -> 2 characters


def _b32(data: bytes) -> str:
    """RFC 4648 base32, lowercase, unpadded. base64.b32encode is pure Python and was a
    tenth of every lookup; this does 40 bits per step through a 1024-entry table."""
    out = []
    pairs = _PAIRS
    for i in range(0, len(data), 5):
        chunk = data[i:i + 5]
        bits = int.from_bytes(chunk.ljust(5, b"\0"), "big")
        out.append(pairs[bits >> 30] + pairs[(bits >> 20) & 1023] + pairs[(bits >> 10) & 1023] + pairs[bits & 1023])
    return "".join(out)[: -(-len(data) * 8 // 5)]


# base32 digits as int() reads them (0-9a-v), and a table that deletes every valid one.
_TO_INT_DIGITS = str.maketrans(_ALPHABET, "0123456789abcdefghijklmnopqrstuv")
_VALID = str.maketrans("", "", _ALPHABET)
_TAIL_OK = {0, 2, 4, 5, 7}     # lengths mod 8 a whole number of bytes encodes to


def _unb32(text: str) -> bytes:
    """The inverse of _b32, strictly: only the lowercase alphabet, a possible length, and
    zero unused bits (one name, one encoding). base64.b32decode is pure Python and was
    most of every name decryption; int() parses base 32 in C."""
    bits = len(text) * 5
    if text.translate(_VALID) or len(text) % 8 not in _TAIL_OK:
        raise DamagedStructure(f"not an encrypted name: {text!r}")
    value = int(text.translate(_TO_INT_DIGITS), 32) if text else 0
    unused = bits % 8
    if value & ((1 << unused) - 1):
        raise DamagedStructure(f"not an encrypted name: {text!r}")
    return (value >> unused).to_bytes(bits // 8, "big")


def check_p_name(p_name: bytes) -> None:
    if not p_name or p_name in (b".", b"..") or b"/" in p_name or b"\0" in p_name:
        raise InvalidName(p_name)
    if len(p_name) > MAX_P_NAME:
        raise InvalidName(p_name)


def encrypt_name(dir_keys: NodeKeys, p_name: bytes) -> str:
    """The full (possibly long) encrypted form of p_name inside the directory."""
    check_p_name(p_name)
    pad = PAD - len(p_name) % PAD
    sealed = dir_keys.name_siv.encrypt(p_name + bytes([pad]) * pad, [dir_keys.node_id])
    return _b32(sealed)


def decrypt_name(dir_keys: NodeKeys, full_c_name: str) -> bytes:
    padded = aead.siv_open_with(dir_keys.name_siv, _unb32(full_c_name), [dir_keys.node_id])
    pad = padded[-1] if padded else 0
    if not 1 <= pad <= PAD or padded[-pad:] != bytes([pad]) * pad:
        raise CryptoError("bad name padding")
    p_name = padded[:-pad]
    check_p_name(p_name)
    return p_name


def on_disk_name(full_c_name: str) -> str:
    """The directory entry name for a full c_name (short names are used as they are)."""
    if len(full_c_name) <= MAX_SHORT:
        return full_c_name
    return LONG_PREFIX + _b32(hashlib.sha256(full_c_name.encode("ascii")).digest())


def is_long(disk_name: str) -> bool:
    return disk_name.startswith(LONG_PREFIX) and "." not in disk_name[len(LONG_PREFIX):]


def is_entry(disk_name: str) -> bool:
    """True for names that stand for a plaintext entry (not pqcfs' own files)."""
    return "." not in disk_name or is_long(disk_name)


def long_name_matches(disk_name: str, full_c_name: str) -> bool:
    return on_disk_name(full_c_name) == disk_name
