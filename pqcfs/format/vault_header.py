"""The vault header (pqcfs.vault), identical on every replica.

  magic "PQCFSVLT" (8) | version u16be | body length u32be | body (canonical JSON, UTF-8)
  | checksum BLAKE3-256(all preceding bytes) (32) | mac HMAC-SHA256(header_mac_key, same) (32)

The checksum lets `pqcfs info` and unlock tell accidental damage apart from a wrong
passphrase before any key is known; the MAC, checked right after unlock, makes the whole
header (slots, KDF parameters, suite, grants, replicas) tamper-evident.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import struct
from dataclasses import dataclass, field

import blake3

from pqcfs.crypto.kdf import LABEL_HEADER_MAC, hkdf
from pqcfs.format import grants, slots
from pqcfs.errors import DamagedStructure, NotAVault, UnsupportedVersion

MAGIC = b"PQCFSVLT"
VERSION = 2                 # the version this code writes (2: directory tables)
READABLE_VERSIONS = {1, 2}  # the versions this code reads (and keeps writing: 1 stays 1 until `pqcfs upgrade`)
KNOWN_FEATURES: frozenset[str] = frozenset()
FILE_NAME = "pqcfs.vault"
# Each drive keeps a second copy of the header, written after the first (like LUKS2's
# secondary header): one flipped byte in the only drive of a --single vault, or in both
# drives' first copies, still leaves a copy that opens the vault. Vaults made before it
# existed get it at their next writing command.
SPARE_NAME = "pqcfs.vault.spare"
_PREFIX = struct.Struct(">8sHI")
_DIGEST = 32
MAX_BODY = 1 << 20
MAX_FILE = _PREFIX.size + MAX_BODY + 2 * _DIGEST   # cap on the bytes read from a drive


@dataclass
class VaultHeader:
    vault_id: bytes
    suite: str
    block_size: int
    created: str
    slots: list[dict] = field(default_factory=list)
    grants: list[dict] = field(default_factory=list)
    replicas: list[dict] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    version: int = VERSION

    def body(self) -> dict:
        return {"format": self.version, "vault_id": self.vault_id.hex(), "suite": self.suite,
                "block_size": self.block_size, "created": self.created,
                "features": self.features, "slots": self.slots, "grants": self.grants,
                "replicas": self.replicas}

    def next_slot_id(self) -> int:
        return max((s["id"] for s in self.slots), default=0) + 1


def mac_key(root_key: bytes) -> bytes:
    return hkdf(root_key, LABEL_HEADER_MAC)


def _signed_part(body: dict) -> bytes:
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return _PREFIX.pack(MAGIC, body["format"], len(raw)) + raw


def encode(header: VaultHeader, root_key: bytes) -> bytes:
    signed = _signed_part(header.body())
    return signed + blake3.blake3(signed).digest() + hmac.new(mac_key(root_key), signed, hashlib.sha256).digest()


def decode(data: bytes) -> tuple[VaultHeader, bytes, bytes]:
    """Parse and checksum-verify; return (header, signed bytes, mac) for verify_mac()."""
    if len(data) < _PREFIX.size or data[:8] != MAGIC:
        raise NotAVault("no pqcfs vault header here")
    _, version, length = _PREFIX.unpack_from(data)
    if version not in READABLE_VERSIONS:
        raise UnsupportedVersion(
            f"vault format {version} is not supported by this pqcfs (reads {sorted(READABLE_VERSIONS)})")
    end = _PREFIX.size + length
    if length > MAX_BODY or len(data) != end + 2 * _DIGEST:
        raise DamagedStructure("vault header is truncated or has trailing bytes")
    signed, checksum, mac = data[:end], data[end:end + _DIGEST], data[end + _DIGEST:]
    if not hmac.compare_digest(blake3.blake3(signed).digest(), checksum):
        raise DamagedStructure("vault header is damaged (checksum mismatch)")
    try:
        body = json.loads(signed[_PREFIX.size:])
        if not all(isinstance(body[k], list) for k in ("slots", "grants", "replicas", "features")):
            raise TypeError("slots, grants, replicas and features must be lists")
        header = VaultHeader(
            vault_id=bytes.fromhex(body["vault_id"]), suite=body["suite"],
            block_size=int(body["block_size"]), created=body["created"],
            slots=list(body["slots"]), grants=list(body["grants"]),
            replicas=list(body["replicas"]), features=list(body["features"]),
            version=int(body["format"]))
    except (ValueError, KeyError, TypeError) as e:
        raise DamagedStructure(f"vault header body is malformed: {e}") from None
    if header.version != version:
        raise DamagedStructure("vault header versions disagree")
    _check_shape(header)
    unknown = set(header.features) - KNOWN_FEATURES
    if unknown:
        raise UnsupportedVersion(f"vault uses features this pqcfs does not know: {sorted(unknown)}")
    if header.block_size not in (4096, 8192, 16384, 32768, 65536):
        raise DamagedStructure(f"unsupported block size {header.block_size}")
    if len(header.vault_id) != 16:
        raise DamagedStructure("vault id must be 16 bytes")
    return header, signed, mac


def _check_shape(header: VaultHeader) -> None:
    """Every field of the right type before anything uses it: a drive may hold a header
    whose JSON parses but whose values are lists where strings belong."""
    if len(header.slots) > slots.MAX_SLOTS:
        raise DamagedStructure(f"vault header has {len(header.slots)} key slots (at most {slots.MAX_SLOTS})")
    for slot in header.slots:
        slots.check_shape(slot)
        if header.version >= 2 and "commit" not in slot:
            # Stripping it would let a slot made to open under two keys through.
            raise DamagedStructure(f"key slot {slot['id']} has no key commitment, which format 2 requires "
                                   "(removed without the key)")
    if len({s["id"] for s in header.slots}) != len(header.slots):
        raise DamagedStructure("vault header has two key slots with one id")
    if not (isinstance(header.suite, str) and isinstance(header.created, str)
            and all(isinstance(f, str) for f in header.features)
            and all(isinstance(g, dict) for g in header.grants)):
        raise DamagedStructure("vault header body is malformed")
    grants.check_records(header.grants)
    for r in header.replicas:
        if not (isinstance(r, dict) and isinstance(r.get("id"), str) and isinstance(r.get("role"), str)
                and all(isinstance(r.get(k), (str, type(None))) for k in ("fs_uuid", "subpath", "path_hint"))):
            raise DamagedStructure("vault header lists a malformed replica")
        check_replica_fields(r)


# A file system UUID as udev and blkid print them (ext4 8-4-4-4-12 hex, exFAT/vfat
# XXXX-XXXX, NTFS 16 hex): letters, digits and dashes only, so it can never carry a quote,
# a newline or an assignment into a udev rule or a unit, whoever wrote the header.
FS_UUID = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,63}")
MAX_PATH = 4096


def is_fs_uuid(value: object) -> bool:
    return isinstance(value, str) and FS_UUID.fullmatch(value) is not None


def is_clean_path(value: str) -> bool:
    """Bounded, and printable throughout: no control character (a newline ends a line of a
    unit, a rule or fstab), no line separator, no lone surrogate (bytes that are not UTF-8)."""
    return len(value) <= MAX_PATH and value.isprintable()


def check_replica_fields(r: dict) -> None:
    """The replica fields the header carries unauthenticated until unlock (automount,
    finding a backup): refused unless they match their grammar."""
    if r.get("fs_uuid") is not None and not is_fs_uuid(r["fs_uuid"]):
        raise DamagedStructure("vault header names a replica by an impossible file system UUID")
    sub = r.get("subpath")
    if sub is not None and (not is_clean_path(sub) or sub.startswith("/") or ".." in sub.split("/")):
        raise DamagedStructure("vault header names a replica by an impossible path inside its drive")
    hint = r.get("path_hint")
    if hint is not None and (not is_clean_path(hint) or not hint.startswith("/")):
        raise DamagedStructure("vault header names a replica by an impossible path")


def verify_mac(signed: bytes, mac: bytes, root_key: bytes) -> bool:
    return hmac.compare_digest(hmac.new(mac_key(root_key), signed, hashlib.sha256).digest(), mac)
