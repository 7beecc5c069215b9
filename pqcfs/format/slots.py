"""Key slots: the root key wrapped to a passphrase, a recovery code or an identity.

wrapped = nonce || AES-256-GCM(KEK, root_key, aad = "pqcfs slot v1" || vault_id || u32be(id) || type)
  passphrase: KEK = Argon2id(passphrase, params stored in the slot)
  recovery:   KEK = HKDF(code, salt=vault_id, info="pqcfs slot recovery v1")
  identity:   (ss, kem_ct) = Encap(suite, pk); KEK = HKDF(ss, salt=vault_id, info="pqcfs slot kem v1")
"""

from __future__ import annotations

import base64
import os
import struct

from pqcfs.crypto import aead, kem
from pqcfs.crypto.kdf import LABEL_SLOT_KEM, LABEL_SLOT_RECOVERY, Argon2Params, argon2id, hkdf
from pqcfs.errors import CryptoError, DamagedStructure

PASSPHRASE, RECOVERY, IDENTITY = "passphrase", "recovery", "identity"
SLOT_TYPES = (PASSPHRASE, RECOVERY, IDENTITY)
RECOVERY_CODE_LEN = 20  # 160 bits, shown as 32 base32 characters


def _aad(vault_id: bytes, slot_id: int, slot_type: str) -> bytes:
    return b"pqcfs slot v1" + vault_id + struct.pack(">I", slot_id) + slot_type.encode()


def _wrap(kek: bytes, root_key: bytes, vault_id: bytes, slot_id: int, slot_type: str) -> str:
    return aead.seal(kek, root_key, _aad(vault_id, slot_id, slot_type)).hex()


def _unwrap(kek: bytes, slot: dict, vault_id: bytes) -> bytes:
    try:
        wrapped = bytes.fromhex(slot["wrapped"])
    except (KeyError, ValueError, TypeError):
        raise DamagedStructure(f"key slot {slot.get('id')} is malformed") from None
    return aead.open_sealed(kek, wrapped, _aad(vault_id, slot["id"], slot["type"]))


def passphrase_slot(slot_id: int, root_key: bytes, vault_id: bytes, passphrase: bytes,
                    params: Argon2Params) -> dict:
    kek = argon2id(passphrase, params)
    return {"id": slot_id, "type": PASSPHRASE, "kdf": params.to_dict(),
            "wrapped": _wrap(kek, root_key, vault_id, slot_id, PASSPHRASE)}


def open_passphrase_slot(slot: dict, vault_id: bytes, passphrase: bytes) -> bytes:
    kek = argon2id(passphrase, Argon2Params.from_dict(slot["kdf"]))
    return _unwrap(kek, slot, vault_id)


def new_recovery_code() -> bytes:
    return os.urandom(RECOVERY_CODE_LEN)


def format_recovery_code(code: bytes) -> str:
    text = base64.b32encode(code).decode()
    return "-".join(text[i:i + 4] for i in range(0, len(text), 4))


def parse_recovery_code(text: str) -> bytes:
    cleaned = "".join(ch for ch in text.upper() if ch.isalnum())
    try:
        code = base64.b32decode(cleaned)
    except ValueError:
        raise CryptoError("that is not a recovery code") from None
    if len(code) != RECOVERY_CODE_LEN:
        raise CryptoError("that is not a recovery code")
    return code


def recovery_slot(slot_id: int, root_key: bytes, vault_id: bytes, code: bytes) -> dict:
    kek = hkdf(code, LABEL_SLOT_RECOVERY, salt=vault_id)
    return {"id": slot_id, "type": RECOVERY, "wrapped": _wrap(kek, root_key, vault_id, slot_id, RECOVERY)}


def open_recovery_slot(slot: dict, vault_id: bytes, code: bytes) -> bytes:
    return _unwrap(hkdf(code, LABEL_SLOT_RECOVERY, salt=vault_id), slot, vault_id)


def identity_slot(slot_id: int, root_key: bytes, vault_id: bytes, suite: str, kem_pk: bytes,
                  fingerprint: str, label: str) -> dict:
    ss, kem_ct = kem.encapsulate(suite, kem_pk)
    kek = hkdf(ss, LABEL_SLOT_KEM, salt=vault_id)
    return {"id": slot_id, "type": IDENTITY, "suite": suite, "recipient": fingerprint,
            "label": label, "kem_ct": kem_ct.hex(),
            "wrapped": _wrap(kek, root_key, vault_id, slot_id, IDENTITY)}


def open_identity_slot(slot: dict, vault_id: bytes, kem_seed: bytes) -> bytes:
    try:
        kem_ct = bytes.fromhex(slot["kem_ct"])
    except (KeyError, ValueError, TypeError):
        raise DamagedStructure(f"key slot {slot.get('id')} is malformed") from None
    ss = kem.decapsulate(slot["suite"], kem_seed, kem_ct)
    return _unwrap(hkdf(ss, LABEL_SLOT_KEM, salt=vault_id), slot, vault_id)


def describe(slot: dict) -> str:
    if slot["type"] == PASSPHRASE:
        k = slot["kdf"]
        return f"passphrase (argon2id m={k['memory_kib']} KiB t={k['iterations']} p={k['lanes']})"
    if slot["type"] == IDENTITY:
        return f"identity {slot['recipient']} ({slot['suite']}) {slot.get('label', '')}".rstrip()
    return "recovery code"
