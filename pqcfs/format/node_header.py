"""The node header: first bytes of every file-like node and the whole of a directory's
id file (d.id). Holds the node id (written once) and the sealed metadata slot (rewritten
in place by chmod/chown).

  0   4  magic   "PQCF" (file, symlink, fifo, device), "PQCD" (directory id file) or
                 "PQCL" (hard-link stub: the node's data lives in h.links/)
  4   1  version (1)
  5   1  flags   (0; readers reject others)
  6   2  header length, u16be (88)
  8  16  node id
 24  12  meta nonce
 36  36  meta ciphertext: mode u32, uid u32, gid u32, rdev u64, flags u32, nlink u32,
                 write counter u64 (format 2: rises once per session that writes the file; 0 before)
 72  16  meta tag        AES-256-GCM(meta_key(node), aad = bytes 0..24)
 88      file content blocks start here
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from pqcfs.crypto import aead
from pqcfs.crypto.keys import NODE_ID_LEN
from pqcfs.errors import CryptoError, DamagedStructure, UnsupportedVersion

MAGIC_FILE = b"PQCF"
MAGIC_DIR = b"PQCD"
MAGIC_LINK = b"PQCL"
VERSION = 1
READABLE_VERSIONS = {1}
_PREFIX = struct.Struct(">4sBBH16s")
_META = struct.Struct(">IIIQIIQ")
META_FLAG_XATTRS = 1
META_OFFSET = _PREFIX.size
SEALED_META_LEN = aead.NONCE_LEN + _META.size + aead.TAG_LEN
HEADER_LEN = _PREFIX.size + SEALED_META_LEN


@dataclass(slots=True)
class Meta:
    mode: int
    uid: int
    gid: int
    rdev: int = 0
    flags: int = 0
    nlink: int = 1   # names of a file-like node (more than one only for hard-linked nodes)
    counter: int = 0  # format 2: the directory table holds the least value a current copy has


def new_node_id() -> bytes:
    return os.urandom(NODE_ID_LEN)


def _prefix(magic: bytes, node_id: bytes) -> bytes:
    return _PREFIX.pack(magic, VERSION, 0, HEADER_LEN, node_id)


def seal_meta(meta_key: bytes, prefix: bytes, meta: Meta) -> bytes:
    packed = _META.pack(meta.mode, meta.uid, meta.gid, meta.rdev, meta.flags, meta.nlink, meta.counter)
    return aead.seal(meta_key, packed, prefix)


def build(magic: bytes, node_id: bytes, meta_key: bytes, meta: Meta) -> bytes:
    prefix = _prefix(magic, node_id)
    return prefix + seal_meta(meta_key, prefix, meta)


def parse_prefix(data: bytes, magic: bytes | tuple[bytes, ...]) -> bytes:
    """Validate the unauthenticated prefix and return the node id."""
    if len(data) < HEADER_LEN:
        raise DamagedStructure("node header is truncated")
    got_magic, version, flags, length, node_id = _PREFIX.unpack_from(data)
    if got_magic not in (magic if isinstance(magic, tuple) else (magic,)):
        raise DamagedStructure("node header has a wrong magic")
    if version not in READABLE_VERSIONS:
        raise UnsupportedVersion(f"node header version {version} is not supported")
    if flags != 0 or length != HEADER_LEN:
        raise DamagedStructure("node header has unknown flags or length")
    return node_id


def open_meta(meta_key: bytes, data: bytes) -> Meta:
    try:
        raw = aead.open_sealed(meta_key, data[META_OFFSET:HEADER_LEN], data[:META_OFFSET])
    except CryptoError:
        raise CryptoError("node metadata failed authentication") from None
    return Meta(*_META.unpack(raw))
