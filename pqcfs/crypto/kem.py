"""Hybrid post-quantum KEM suites: ML-KEM + X25519 with the X-Wing combiner.

Both suites share one construction (draft-connolly-cfrg-xwing-kem): a 32-byte seed is
expanded with SHAKE256 into the ML-KEM (d, z) seed and the X25519 private key, and the
shared secret is SHA3-256(ss_M || ss_X || ct_X || pk_X || label). `xwing` is X-Wing
exactly (ML-KEM-768, 6-byte label hex 5c2e2f2f5e5c); `mlkem1024-x25519` swaps in ML-KEM-1024 and a
label of its own, so a secret from one suite can never be confused with the other's.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from pqcfs.errors import CryptoError

SEED_LEN = 32
X25519_LEN = 32
SS_LEN = 32


@dataclass(frozen=True)
class Suite:
    name: str
    label: bytes
    mlkem_private: type
    mlkem_public: type
    mlkem_pk_len: int
    mlkem_ct_len: int

    @property
    def pk_len(self) -> int:
        return self.mlkem_pk_len + X25519_LEN

    @property
    def ct_len(self) -> int:
        return self.mlkem_ct_len + X25519_LEN


XWING = Suite("xwing", bytes.fromhex("5c2e2f2f5e5c"),  # the 6 bytes \.//^\
               mlkem.MLKEM768PrivateKey, mlkem.MLKEM768PublicKey, 1184, 1088)
MLKEM1024_X25519 = Suite(
    "mlkem1024-x25519", b"pqcfs mlkem1024-x25519 v1",
    mlkem.MLKEM1024PrivateKey, mlkem.MLKEM1024PublicKey, 1568, 1568,
)
SUITES = {s.name: s for s in (MLKEM1024_X25519, XWING)}
DEFAULT_SUITE = MLKEM1024_X25519.name


def get_suite(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise CryptoError(f"unknown KEM suite {name!r}") from None


def _expand(suite: Suite, seed: bytes):
    if len(seed) != SEED_LEN:
        raise CryptoError("KEM seed must be 32 bytes")
    expanded = hashlib.shake_256(seed).digest(96)
    sk_m = suite.mlkem_private.from_seed_bytes(expanded[:64])
    sk_x = x25519.X25519PrivateKey.from_private_bytes(expanded[64:96])
    return sk_m, sk_x


def public_key(suite_name: str, seed: bytes) -> bytes:
    """pk = pk_M || pk_X, derived from the 32-byte decapsulation seed."""
    suite = get_suite(suite_name)
    sk_m, sk_x = _expand(suite, seed)
    return sk_m.public_key().public_bytes_raw() + sk_x.public_key().public_bytes_raw()


def generate_seed() -> bytes:
    return os.urandom(SEED_LEN)


def _combine(suite: Suite, ss_m: bytes, ss_x: bytes, ct_x: bytes, pk_x: bytes) -> bytes:
    # All-zero X25519 output means a low-order point: the classical half would add nothing.
    if hmac.compare_digest(ss_x, bytes(X25519_LEN)):
        raise CryptoError("X25519 produced an all-zero shared secret")
    return hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + suite.label).digest()


def _split_pk(suite: Suite, pk: bytes) -> tuple[bytes, bytes]:
    if len(pk) != suite.pk_len:
        raise CryptoError(f"{suite.name} public key must be {suite.pk_len} bytes")
    return pk[: suite.mlkem_pk_len], pk[suite.mlkem_pk_len :]


def _x25519(private: x25519.X25519PrivateKey, peer: bytes) -> bytes:
    try:
        return private.exchange(x25519.X25519PublicKey.from_public_bytes(peer))
    except ValueError:
        # cryptography refuses the all-zero result itself; report it the same way.
        raise CryptoError("X25519 produced an all-zero shared secret") from None


def encapsulate(suite_name: str, pk: bytes) -> tuple[bytes, bytes]:
    """Return (shared_secret, ciphertext) for the hybrid public key pk."""
    suite = get_suite(suite_name)
    pk_m, pk_x = _split_pk(suite, pk)
    try:
        ss_m, ct_m = suite.mlkem_public.from_public_bytes(pk_m).encapsulate()
    except ValueError as e:
        raise CryptoError(f"invalid ML-KEM public key: {e}") from None
    ek_x = x25519.X25519PrivateKey.generate()
    ct_x = ek_x.public_key().public_bytes_raw()
    ss_x = _x25519(ek_x, pk_x)
    return _combine(suite, ss_m, ss_x, ct_x, pk_x), ct_m + ct_x


def decapsulate(suite_name: str, seed: bytes, ct: bytes) -> bytes:
    """Recover the shared secret from ct with the 32-byte decapsulation seed."""
    suite = get_suite(suite_name)
    if len(ct) != suite.ct_len:
        raise CryptoError(f"{suite.name} ciphertext must be {suite.ct_len} bytes")
    sk_m, sk_x = _expand(suite, seed)
    ct_m, ct_x = ct[: suite.mlkem_ct_len], ct[suite.mlkem_ct_len :]
    try:
        ss_m = sk_m.decapsulate(ct_m)
    except ValueError as e:
        raise CryptoError(f"invalid ML-KEM ciphertext: {e}") from None
    pk_x = sk_x.public_key().public_bytes_raw()
    ss_x = _x25519(sk_x, ct_x)
    return _combine(suite, ss_m, ss_x, ct_x, pk_x)
