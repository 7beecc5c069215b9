"""Grants: a subtree's key handed to another person's identity, signed by the owner.

Pure: bytes in, bytes out. A grant is one binary blob (normative in docs/format.md):

  header  = "PQCG" | version u8 (1) | rights u8 (1 read, 2 read-write) | generation u32
            | grant id (16) | vault id (16) | subtree node id (16)
            | not_before u64 | expires u64 (0: never) | created u64        (Unix seconds)
            | recipient fingerprint (16) | owner fingerprint (16)
            | suite length u8 | suite (ASCII) | label length u16
  blob    = header length u16 | header | kem_ct (the suite's length)
            | wrapped (60 + label length) | owner public key (ML-DSA-65, 1952)
            | signature (ML-DSA-65, 3309)

  (ss, kem_ct) = Encap(suite, recipient KEM public key)
  kek          = HKDF(ss, "pqcfs grant kem v1", 32, salt = grant id)
  wrapped      = AES-GCM(kek, subtree key (32) | label (UTF-8), aad = header)
  signature    = ML-DSA-65(owner key, header | kem_ct | wrapped, context "pqcfs grant v1")

The label (the name the recipient's mount shows) travels encrypted: a drive shows who
a grant is for, not what it is called. Every length is exact (checked before anything is parsed further, as age does), the
signature covers everything but the public key it is checked with, and that key must hash
to the owner fingerprint the header names. The owner's signing key derives from the
vault's root key (HKDF "pqcfs owner sign v1" as an ML-DSA-65 seed): whoever can unlock
the vault as its owner can grant, nobody else can.
"""

from __future__ import annotations

import hmac
import os
import struct
import time
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mldsa

from pqcfs.crypto import aead, kem
from pqcfs.crypto.kdf import LABEL_GRANT_KEM, LABEL_OWNER_SIGN, hkdf
from pqcfs.crypto.keys import KEY_LEN, NODE_ID_LEN
from pqcfs.errors import CryptoError, DamagedStructure, GrantRefused, PqcfsError, UnsupportedVersion  # noqa: F401 - GrantRefused is part of this API
from pqcfs.format.identity import Identity, PublicIdentity

MAGIC = b"PQCG"
VERSION = 1
READ, READ_WRITE = 1, 2
RIGHTS = {READ: "read-only", READ_WRITE: "read-write"}
SIGN_CONTEXT = b"pqcfs grant v1"
FPR_LEN = 16
WRAPPED_LEN = aead.NONCE_LEN + KEY_LEN + aead.TAG_LEN   # plus the label
OWNER_PK_LEN = 1952      # ML-DSA-65
SIG_LEN = 3309           # ML-DSA-65
MAX_LABEL = 255          # bytes of UTF-8: a label names a directory in the recipient's mount
MAX_BLOB = 8192
MAX_GRANTS = 256       # live grants in one vault
MAX_RECORDS = 1024     # grant records in one vault header, revoked ones included
_FIXED = struct.Struct(">4sBBI16s16s16sQQQ16s16s")


def owner_signing_key(root_key: bytes) -> mldsa.MLDSA65PrivateKey:
    return mldsa.MLDSA65PrivateKey.from_seed_bytes(hkdf(root_key, LABEL_OWNER_SIGN))


def owner_public(root_key: bytes) -> bytes:
    return owner_signing_key(root_key).public_key().public_bytes_raw()


def fingerprint(public_key: bytes) -> bytes:
    return blake3.blake3(public_key).digest()[:FPR_LEN]


@dataclass(frozen=True)
class Grant:
    grant_id: bytes
    vault_id: bytes
    node_id: bytes
    generation: int
    rights: int
    not_before: int
    expires: int          # 0: never
    created: int
    recipient: bytes      # fingerprint of the recipient's public identity (16 bytes)
    owner: bytes          # fingerprint of the owner's signing key (16 bytes)
    suite: str
    label: str | None     # None until the grant is opened: it travels encrypted
    label_len: int = 0

    @property
    def read_only(self) -> bool:
        return self.rights == READ

    def header(self) -> bytes:
        suite = self.suite.encode("ascii")
        return (_FIXED.pack(MAGIC, VERSION, self.rights, self.generation, self.grant_id, self.vault_id,
                            self.node_id, self.not_before, self.expires, self.created, self.recipient, self.owner)
                + bytes([len(suite)]) + suite + struct.pack(">H", self.label_len))


def _parse_header(header: bytes) -> Grant:
    if len(header) < _FIXED.size + 3:
        raise DamagedStructure("grant header is truncated")
    (magic, version, rights, generation, grant_id, vault_id, node_id, not_before, expires, created,
     recipient, owner) = _FIXED.unpack_from(header)
    if magic != MAGIC:
        raise DamagedStructure("not a pqcfs grant (wrong magic)")
    if version != VERSION:
        raise UnsupportedVersion(f"grant version {version} is not supported")
    if rights not in RIGHTS:
        raise DamagedStructure(f"grant has unknown rights {rights}")
    at = _FIXED.size
    suite_len = header[at]
    suite = header[at + 1:at + 1 + suite_len]
    at += 1 + suite_len
    if len(header) < at + 2:
        raise DamagedStructure("grant header is truncated")
    (label_len,) = struct.unpack_from(">H", header, at)
    if len(suite) != suite_len or at + 2 != len(header) or not 0 < label_len <= MAX_LABEL:
        raise DamagedStructure("grant header has wrong lengths")
    try:
        suite_name = suite.decode("ascii")
    except UnicodeDecodeError:
        raise DamagedStructure("grant header names a suite that is not ASCII") from None
    return Grant(grant_id, vault_id, node_id, generation, rights, not_before, expires, created, recipient, owner,
                 suite_name, None, label_len)


def check_label(label: str) -> bytes:
    raw = label.encode("utf-8")
    if not 0 < len(raw) <= MAX_LABEL or "/" in label or "\0" in label or label in (".", ".."):
        raise PqcfsError(f"a grant label is a directory name of 1 to {MAX_LABEL} bytes, without '/'")
    return raw


def issue(root_key: bytes, *, vault_id: bytes, node_id: bytes, subtree_key: bytes, generation: int,
          recipient: PublicIdentity, rights: int, label: str, expires: int = 0,
          not_before: int | None = None, now: int | None = None,
          grant_id: bytes | None = None) -> tuple[Grant, bytes]:
    """A new grant of subtree_key to recipient, signed with the vault owner's key
    (grant_id: an existing grant's, when a revoke re-wraps it to the new key)."""
    if len(node_id) != NODE_ID_LEN or len(subtree_key) != KEY_LEN:
        raise ValueError("node id and subtree key have fixed lengths")
    raw_label = check_label(label)
    created = int(time.time()) if now is None else now
    sign_key = owner_signing_key(root_key)
    owner_pk = sign_key.public_key().public_bytes_raw()
    grant = Grant(grant_id or os.urandom(16), vault_id, node_id, generation, rights,
                  created if not_before is None else not_before, expires, created,
                  bytes.fromhex(recipient.fingerprint), fingerprint(owner_pk), recipient.suite, label, len(raw_label))
    header = grant.header()
    ss, kem_ct = kem.encapsulate(recipient.suite, recipient.kem_pk)
    wrapped = aead.seal(hkdf(ss, LABEL_GRANT_KEM, salt=grant.grant_id), subtree_key + raw_label, header)
    signed = header + kem_ct + wrapped
    blob = struct.pack(">H", len(header)) + signed + owner_pk + sign_key.sign(signed, SIGN_CONTEXT)
    return grant, blob


@dataclass(frozen=True)
class Parsed:
    grant: Grant
    header: bytes
    kem_ct: bytes
    wrapped: bytes
    owner_pk: bytes
    signature: bytes


def parse(blob: bytes) -> Parsed:
    """Split a grant into its parts, every length exact; authenticates nothing."""
    if not 2 <= len(blob) <= MAX_BLOB:
        raise DamagedStructure("grant has a wrong length")
    (header_len,) = struct.unpack_from(">H", blob)
    header = blob[2:2 + header_len]
    grant = _parse_header(header)
    try:
        ct_len = kem.get_suite(grant.suite).ct_len
    except PqcfsError:
        raise DamagedStructure(f"grant names an unknown KEM suite {grant.suite!r}") from None
    at = 2 + header_len
    wrapped_len = WRAPPED_LEN + grant.label_len
    if len(blob) != at + ct_len + wrapped_len + OWNER_PK_LEN + SIG_LEN:
        raise DamagedStructure("grant has a wrong length")
    kem_ct = blob[at:at + ct_len]
    wrapped = blob[at + ct_len:at + ct_len + wrapped_len]
    owner_pk = blob[at + ct_len + wrapped_len:at + ct_len + wrapped_len + OWNER_PK_LEN]
    return Parsed(grant, header, kem_ct, wrapped, owner_pk, blob[len(blob) - SIG_LEN:])


def verify(blob: bytes, vault_id: bytes, owner: bytes | None = None) -> Parsed:
    """The grant, if the owner's signature over it holds and it belongs to vault_id.
    owner: the owner fingerprint the caller trusts (None: the one the grant names,
    which the caller must then pin)."""
    parsed = parse(blob)
    grant = parsed.grant
    if fingerprint(parsed.owner_pk) != grant.owner:
        raise GrantRefused(f"grant {grant.grant_id.hex()} carries a key that is not its owner's")
    if owner is not None and not _same(owner, grant.owner):
        raise GrantRefused(f"grant {grant.grant_id.hex()} is signed by {grant.owner.hex()}, "
                           f"not by the vault owner {owner.hex()}")
    try:
        mldsa.MLDSA65PublicKey.from_public_bytes(parsed.owner_pk).verify(
            parsed.signature, parsed.header + parsed.kem_ct + parsed.wrapped, SIGN_CONTEXT)
    except (InvalidSignature, ValueError):
        raise GrantRefused(f"grant {grant.grant_id.hex()} has a signature that does not verify") from None
    if not _same(grant.vault_id, vault_id):
        raise GrantRefused(f"grant {grant.grant_id.hex()} belongs to another vault")
    return parsed


def check_time(grant: Grant, now: int | None = None) -> None:
    """Expiry and not-before, against this machine's clock (advisory: a holder can set
    the clock back; revocation is what ends access)."""
    now = int(time.time()) if now is None else now
    if grant.expires and now >= grant.expires:
        raise GrantRefused(f"grant {grant.grant_id.hex()} expired at {_iso(grant.expires)}")
    if now < grant.not_before:
        raise GrantRefused(f"grant {grant.grant_id.hex()} is not valid before {_iso(grant.not_before)}")


def open_key(parsed: Parsed, identity: Identity) -> tuple[bytes, str]:
    """The subtree key and the grant's label, for the recipient's identity."""
    grant = parsed.grant
    if not _same(grant.recipient, bytes.fromhex(identity.public.fingerprint)) or grant.suite != identity.public.suite:
        raise GrantRefused(f"grant {grant.grant_id.hex()} is for another identity")
    try:
        ss = kem.decapsulate(grant.suite, identity.kem_seed, parsed.kem_ct)
        payload = aead.open_sealed(hkdf(ss, LABEL_GRANT_KEM, salt=grant.grant_id), parsed.wrapped, parsed.header)
    except (CryptoError, ValueError):
        raise GrantRefused(f"grant {grant.grant_id.hex()} does not open with this identity") from None
    try:
        label = payload[KEY_LEN:].decode("utf-8")
        check_label(label)
    except (UnicodeDecodeError, PqcfsError):
        raise GrantRefused(f"grant {grant.grant_id.hex()} has a label that is not a directory name") from None
    return payload[:KEY_LEN], label


def _same(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


def _iso(seconds: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def check_records(records: list) -> None:
    """Shape of the header's grant records, before anything uses them."""
    if len(records) > MAX_RECORDS:
        raise DamagedStructure(f"vault header has {len(records)} grant records (at most {MAX_RECORDS})")
    for r in records:
        ok = (isinstance(r, dict) and isinstance(r.get("id"), str) and isinstance(r.get("node"), str)
              and type(r.get("generation")) is int and 0 <= r["generation"] < 1 << 32)
        if ok and "revoked" in r:
            ok = type(r["revoked"]) is int
        elif ok:
            ok = (isinstance(r.get("blob"), str) and isinstance(r.get("note"), str) and isinstance(r.get("to"), str)
                  and isinstance(r.get("rekey", ""), str)
                  and isinstance(r.get("locator"), list) and all(isinstance(n, str) for n in r["locator"]))
        if not ok:
            raise DamagedStructure("vault header lists a malformed grant")
