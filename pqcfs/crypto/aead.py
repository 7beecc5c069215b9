"""Authenticated encryption helpers: nonce-prefixed AES-256-GCM and AES-SIV wrapping."""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, AESSIV

from pqcfs.errors import CryptoError

NONCE_LEN = 12
TAG_LEN = 16
OVERHEAD = NONCE_LEN + TAG_LEN


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """nonce || AES-256-GCM(key, nonce, plaintext, aad)."""
    nonce = os.urandom(NONCE_LEN)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    if len(sealed) < OVERHEAD:
        raise CryptoError("sealed value too short")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_LEN], sealed[NONCE_LEN:], aad)
    except InvalidTag:
        raise CryptoError("authentication failed") from None


def siv_seal(key64: bytes, plaintext: bytes, ad: list[bytes]) -> bytes:
    """Deterministic AES-SIV: same input, same output (names, key wrapping)."""
    return AESSIV(key64).encrypt(plaintext, ad)


def siv_open(key64: bytes, ciphertext: bytes, ad: list[bytes]) -> bytes:
    return siv_open_with(AESSIV(key64), ciphertext, ad)


def siv_open_with(siv: AESSIV, ciphertext: bytes, ad: list[bytes]) -> bytes:
    try:
        return siv.decrypt(ciphertext, ad)
    except (InvalidTag, ValueError):
        raise CryptoError("authentication failed") from None
