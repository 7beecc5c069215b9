"""A small sealed bytes->bytes table (directory overrides, extended attributes):

  nonce || AES-256-GCM(key, JSON {hex(k): hex(v)}, aad)
"""

from __future__ import annotations

import json

from pqcfs.crypto import aead


def encode(key: bytes, aad: bytes, table: dict[bytes, bytes]) -> bytes:
    return aead.seal(key, json.dumps({k.hex(): v.hex() for k, v in sorted(table.items())}).encode(), aad)


def decode(key: bytes, aad: bytes, data: bytes) -> dict[bytes, bytes]:
    raw = aead.open_sealed(key, data, aad)
    return {bytes.fromhex(k): bytes.fromhex(v) for k, v in json.loads(raw).items()}
