"""Identity files and public keys.

Identity file (JSON): {"format":1,"type":"pqcfs-identity","suite","public","kdf",
"sealed"} where sealed = nonce || AES-256-GCM(Argon2id(passphrase), kem_seed(32) ||
mldsa_seed(32), aad = "pqcfs identity v1" || public string).

Public key string: "pqcfs-pub1:<suite>:<base64url(kem pk)>:<base64url(ML-DSA-65 pk)>".
Fingerprint: first 16 bytes of BLAKE3(kem pk || ML-DSA pk), hex.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

import blake3
from cryptography.hazmat.primitives.asymmetric import mldsa

from pqcfs.crypto import aead, kem
from pqcfs.crypto.kdf import Argon2Params, argon2id
from pqcfs.errors import CryptoError, DamagedStructure, UnsupportedVersion, WrongKey

VERSION = 1
PUB_PREFIX = "pqcfs-pub1"
SEED_LEN = 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class PublicIdentity:
    suite: str
    kem_pk: bytes
    sign_pk: bytes

    def encode(self) -> str:
        return f"{PUB_PREFIX}:{self.suite}:{_b64(self.kem_pk)}:{_b64(self.sign_pk)}"

    @property
    def fingerprint(self) -> str:
        return blake3.blake3(self.kem_pk + self.sign_pk).digest()[:16].hex()

    @classmethod
    def decode(cls, text: str) -> "PublicIdentity":
        parts = text.strip().split(":")
        if len(parts) != 4 or parts[0] != PUB_PREFIX:
            raise DamagedStructure("not a pqcfs public key (expected pqcfs-pub1:...)")
        try:
            suite = kem.get_suite(parts[1])
            pub = cls(parts[1], _unb64(parts[2]), _unb64(parts[3]))
        except Exception as e:  # base64 or suite errors all mean the same to the user
            raise DamagedStructure(f"malformed public key: {e}") from None
        if len(pub.kem_pk) != suite.pk_len:
            raise DamagedStructure("public key has the wrong length for its suite")
        return pub


@dataclass(frozen=True)
class Identity:
    public: PublicIdentity
    kem_seed: bytes
    sign_seed: bytes

    @classmethod
    def generate(cls, suite: str = kem.DEFAULT_SUITE) -> "Identity":
        kem_seed, sign_seed = kem.generate_seed(), kem.generate_seed()
        return cls.from_seeds(suite, kem_seed, sign_seed)

    @classmethod
    def from_seeds(cls, suite: str, kem_seed: bytes, sign_seed: bytes) -> "Identity":
        sign_pk = mldsa.MLDSA65PrivateKey.from_seed_bytes(sign_seed).public_key().public_bytes_raw()
        return cls(PublicIdentity(suite, kem.public_key(suite, kem_seed), sign_pk), kem_seed, sign_seed)

    def signing_key(self) -> mldsa.MLDSA65PrivateKey:
        return mldsa.MLDSA65PrivateKey.from_seed_bytes(self.sign_seed)


def _aad(public: str) -> bytes:
    return b"pqcfs identity v1" + public.encode()


def encode_file(identity: Identity, passphrase: bytes, params: Argon2Params) -> bytes:
    public = identity.public.encode()
    sealed = aead.seal(argon2id(passphrase, params), identity.kem_seed + identity.sign_seed, _aad(public))
    return json.dumps({"format": VERSION, "type": "pqcfs-identity", "suite": identity.public.suite,
                       "public": public, "kdf": params.to_dict(), "sealed": sealed.hex()},
                      indent=1).encode() + b"\n"


def read_public(data: bytes) -> PublicIdentity:
    return PublicIdentity.decode(_load(data)["public"])


def _load(data: bytes) -> dict:
    try:
        doc = json.loads(data)
        if doc.get("type") != "pqcfs-identity":
            raise ValueError("not an identity file")
    except (ValueError, AttributeError) as e:
        raise DamagedStructure(f"identity file is malformed: {e}") from None
    if doc.get("format") != VERSION:
        raise UnsupportedVersion(f"identity file format {doc.get('format')} is not supported")
    if not (isinstance(doc.get("public"), str) and isinstance(doc.get("kdf"), dict)
            and isinstance(doc.get("sealed"), str)):
        raise DamagedStructure("identity file is malformed: wrong field types")
    return doc


def decode_file(data: bytes, passphrase: bytes) -> Identity:
    doc = _load(data)
    public = PublicIdentity.decode(doc["public"])
    try:
        sealed = bytes.fromhex(doc["sealed"])
    except ValueError:
        raise DamagedStructure("identity file is malformed: sealed is not hex") from None
    try:
        seeds = aead.open_sealed(argon2id(passphrase, Argon2Params.from_dict(doc["kdf"])), sealed, _aad(doc["public"]))
    except CryptoError:
        raise WrongKey("wrong passphrase for this identity (or the file is damaged)") from None
    if len(seeds) != 2 * SEED_LEN:
        raise DamagedStructure("identity file is malformed: wrong secret length")
    identity = Identity.from_seeds(public.suite, seeds[:SEED_LEN], seeds[SEED_LEN:])
    if identity.public != public:
        raise DamagedStructure("identity file's public key does not match its secret")
    return identity
