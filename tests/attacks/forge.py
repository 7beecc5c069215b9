"""What an attacker who holds a drive can write without any key."""

import json
import os
import struct

import blake3

from pqcfs.format import vault_header


def forge_header(location: str, mutate) -> None:
    """What an attacker can do without the key: rewrite the body and its (unkeyed)
    checksum; the MAC stays the old one and fails only after a slot opened."""
    path = os.path.join(location, vault_header.FILE_NAME)
    with open(path, "rb") as f:
        data = f.read()
    _, version, length = struct.unpack_from(">8sHI", data)
    body = json.loads(data[14:14 + length])
    mutate(body)
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    signed = data[:8] + struct.pack(">HI", version, len(raw)) + raw
    with open(path, "wb") as f:
        f.write(signed + blake3.blake3(signed).digest() + data[-32:])


def forge_everywhere(locations: list[str], mutate) -> None:
    """The same change on every drive and every copy of the header there (the attacker had
    them all: each drive's spare copy too)."""
    for location in locations:
        forge_header(location, mutate)
        with open(os.path.join(location, vault_header.FILE_NAME), "rb") as f:
            forged = f.read()
        with open(os.path.join(location, vault_header.SPARE_NAME), "wb") as f:
            f.write(forged)
