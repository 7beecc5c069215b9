"""A hard-linked file's times (format 2): `h.links/<node id>.a`, beside its data.

A hard-linked file's other attributes are in its header (mode, owners, rdev, nlink,
write counter), and the directory tables hold only its names; its times are here, so
that what a user sees is pqcfs' own with nanoseconds, never the drive's (exFAT keeps
whole seconds for some fields and does not move ctime on link, unlink or rename).

  12  nonce
  40  AES-256-GCM(meta_key(node), aad = AD || node id):
        version u8 (1), 7 bytes zero, atime, mtime, ctime, btime: i64be nanoseconds
  16  tag
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pqcfs.crypto import aead
from pqcfs.errors import CryptoError, DamagedStructure, UnsupportedVersion

AD = b"pqcfs link attrs v1"
SUFFIX = ".a"
VERSION = 1
_BODY = struct.Struct(">B7xqqqq")
LENGTH = aead.OVERHEAD + _BODY.size      # also the cap on what is read of one


@dataclass(slots=True)
class Times:
    atime: int
    mtime: int
    ctime: int
    btime: int


def encode(meta_key: bytes, node_id: bytes, t: Times) -> bytes:
    return aead.seal(meta_key, _BODY.pack(VERSION, t.atime, t.mtime, t.ctime, t.btime), AD + node_id)


def decode(meta_key: bytes, node_id: bytes, data: bytes) -> Times:
    if len(data) != LENGTH:
        raise DamagedStructure("a hard-linked file's times record has a wrong length")
    try:
        raw = aead.open_sealed(meta_key, data, AD + node_id)
    except CryptoError:
        raise CryptoError("a hard-linked file's times failed authentication") from None
    version, *times = _BODY.unpack(raw)
    if version != VERSION:
        raise UnsupportedVersion(f"hard-linked file times version {version} is not supported")
    return Times(*times)
