"""Key slots: the root key wrapped to a passphrase, a recovery code or an identity.

wrapped = nonce || AES-256-GCM(KEK, root_key, aad = "pqcfs slot v1" || vault_id || u32be(id) || type)
commit  = HKDF(KEK, info = "pqcfs slot commit v1" || aad)   (hex; checked in constant time before
          the AEAD: AES-GCM is not key-committing, so without it one ciphertext could be made to
          open under two passphrases; format 1 slots written before it existed may have none,
          every format 2 slot has one)
  passphrase: KEK = Argon2id(passphrase, params stored in the slot)
  recovery:   KEK = HKDF(code, salt=vault_id, info="pqcfs slot recovery v1")
  identity:   (ss, kem_ct) = Encap(suite, pk); KEK = HKDF(ss, salt=vault_id, info="pqcfs slot kem v1")
  host:       KEK = HKDF(host secret (32 random bytes kept on one machine), salt=vault_id,
              info="pqcfs slot host v1"); the slot names the secret by key_id (8 random bytes, hex)
  tpm2:       KEK = HKDF(secret || pin_key, salt=vault_id, info="pqcfs slot tpm2 v1"), where secret
              (32 random bytes) is sealed in a TPM (store/tpm2.py) and released only to the slot's
              policy (its PCRs) and auth value HKDF(pin_key, info="pqcfs slot tpm2 auth v1");
              pin_key = Argon2id(PIN, the slot's "pin" parameters), empty without a PIN. The slot
              keeps where the TPM holds it ("tpm": handle, name, pcrs, pcr_bank, pcr_values).

A hardware slot is "a device releases a secret to whoever proves something to it": a
FIDO2 hmac-secret slot fits the same shape with no format change — its own type name,
its device fields (credential id, relying party, salt) where "tpm" is, the same optional
"pin", and KEK = HKDF(hmac-secret output || pin_key, info="pqcfs slot fido2 v1").
"""

from __future__ import annotations

import base64
import hmac
import os
import struct

import blake3

from pqcfs.crypto import aead, kem
from pqcfs.crypto.kdf import (LABEL_SLOT_COMMIT, LABEL_SLOT_HOST, LABEL_SLOT_KEM, LABEL_SLOT_RECOVERY,
                              LABEL_SLOT_TPM2, LABEL_SLOT_TPM2_AUTH, Argon2Params, argon2id, hkdf)
from pqcfs.errors import CryptoError, DamagedStructure, WrongKey

PASSPHRASE, RECOVERY, IDENTITY, HOST, TPM2 = "passphrase", "recovery", "identity", "host", "tpm2"
SLOT_TYPES = (PASSPHRASE, RECOVERY, IDENTITY, HOST, TPM2)
TPM2_SECRET_LEN = 32
HOST_SECRET_LEN = 32
RECOVERY_CODE_LEN = 20  # 160 bits, shown as 32 base32 characters (and 8 check characters)


def _aad(vault_id: bytes, slot_id: int, slot_type: str) -> bytes:
    return b"pqcfs slot v1" + vault_id + struct.pack(">I", slot_id) + slot_type.encode()


def _commit(kek: bytes, aad: bytes) -> str:
    return hkdf(kek, LABEL_SLOT_COMMIT + aad).hex()


def _wrap(kek: bytes, root_key: bytes, vault_id: bytes, slot_id: int, slot_type: str) -> dict:
    aad = _aad(vault_id, slot_id, slot_type)
    return {"wrapped": aead.seal(kek, root_key, aad).hex(), "commit": _commit(kek, aad)}


def _unwrap(kek: bytes, slot: dict, vault_id: bytes) -> bytes:
    try:
        wrapped = bytes.fromhex(slot["wrapped"])
        aad = _aad(vault_id, slot["id"], slot["type"])
        commit = slot.get("commit")
        if commit is not None and not isinstance(commit, str):
            raise TypeError("commit")
    except (KeyError, ValueError, TypeError, struct.error, AttributeError):
        raise DamagedStructure(f"key slot {slot.get('id')} is malformed") from None
    if commit is not None and not hmac.compare_digest(commit.encode(), _commit(kek, aad).encode()):
        raise CryptoError("key slot does not open with this key")
    root_key = aead.open_sealed(kek, wrapped, aad)
    if commit is None:
        # A format 1 slot from before commitment: it gets one now that its key is known,
        # kept in memory and written with the header by the owner's next save (format 2
        # requires it; `pqcfs upgrade` saves it even when it refuses to upgrade).
        slot["commit"] = _commit(kek, aad)
    return root_key


def passphrase_slot(slot_id: int, root_key: bytes, vault_id: bytes, passphrase: bytes,
                    params: Argon2Params) -> dict:
    kek = argon2id(passphrase, params)
    return {"id": slot_id, "type": PASSPHRASE, "kdf": params.to_dict(),
            **_wrap(kek, root_key, vault_id, slot_id, PASSPHRASE)}


def open_passphrase_slot(slot: dict, vault_id: bytes, passphrase: bytes) -> bytes:
    kek = argon2id(passphrase, Argon2Params.from_dict(slot["kdf"]))
    return _unwrap(kek, slot, vault_id)


def new_recovery_code() -> bytes:
    return os.urandom(RECOVERY_CODE_LEN)


_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
_GROUP = 4          # data characters per group; printed codes add one check character


def _check_char(index: int, group: str) -> str:
    # One character per group, from a hash of the group and its place: a typo (or two
    # groups swapped) is caught, and the message can say which group it is in.
    return _B32[blake3.blake3(b"pqcfs recovery group v1" + bytes([index]) + group.encode()).digest()[0] % 32]


def format_recovery_code(code: bytes) -> str:
    """Eight groups of four base32 characters (the 160-bit code) and a check character
    each: ABCDx-EFGHy-..."""
    text = base64.b32encode(code).decode()
    groups = [text[i:i + _GROUP] for i in range(0, len(text), _GROUP)]
    return "-".join(g + _check_char(n, g) for n, g in enumerate(groups))


def parse_recovery_code(text: str) -> bytes:
    """The code's bytes; WrongKey naming the group with a typo. Codes printed before the
    check characters (eight groups of four) are accepted as they are."""
    groups = ["".join(ch for ch in g.upper() if ch.isalnum()) for g in text.replace(" ", "-").split("-")]
    groups = [g for g in groups if g]
    if len(groups) == 8 and all(len(g) == _GROUP + 1 for g in groups):
        for n, g in enumerate(groups):
            if _check_char(n, g[:_GROUP]) != g[_GROUP]:
                raise WrongKey(f"group {n + 1} of the recovery code ({g}) has a typo")
        cleaned = "".join(g[:_GROUP] for g in groups)
    else:
        cleaned = "".join(groups)
    try:
        code = base64.b32decode(cleaned)
    except ValueError:
        raise WrongKey("that is not a recovery code (eight groups like ABCD2-EFGH7-…, letters and digits 2-7)") \
            from None
    if len(code) != RECOVERY_CODE_LEN:
        raise WrongKey("that is not a recovery code (eight groups like ABCD2-EFGH7-…, letters and digits 2-7)")
    return code


def recovery_slot(slot_id: int, root_key: bytes, vault_id: bytes, code: bytes) -> dict:
    kek = hkdf(code, LABEL_SLOT_RECOVERY, salt=vault_id)
    return {"id": slot_id, "type": RECOVERY, **_wrap(kek, root_key, vault_id, slot_id, RECOVERY)}


def open_recovery_slot(slot: dict, vault_id: bytes, code: bytes) -> bytes:
    return _unwrap(hkdf(code, LABEL_SLOT_RECOVERY, salt=vault_id), slot, vault_id)


def identity_slot(slot_id: int, root_key: bytes, vault_id: bytes, suite: str, kem_pk: bytes,
                  fingerprint: str, label: str) -> dict:
    ss, kem_ct = kem.encapsulate(suite, kem_pk)
    kek = hkdf(ss, LABEL_SLOT_KEM, salt=vault_id)
    return {"id": slot_id, "type": IDENTITY, "suite": suite, "recipient": fingerprint,
            "label": label, "kem_ct": kem_ct.hex(),
            **_wrap(kek, root_key, vault_id, slot_id, IDENTITY)}


def open_identity_slot(slot: dict, vault_id: bytes, kem_seed: bytes) -> bytes:
    try:
        kem_ct = bytes.fromhex(slot["kem_ct"])
    except (KeyError, ValueError, TypeError):
        raise DamagedStructure(f"key slot {slot.get('id')} is malformed") from None
    ss = kem.decapsulate(slot["suite"], kem_seed, kem_ct)
    return _unwrap(hkdf(ss, LABEL_SLOT_KEM, salt=vault_id), slot, vault_id)


def host_slot(slot_id: int, root_key: bytes, vault_id: bytes, secret: bytes, key_id: str, label: str) -> dict:
    kek = hkdf(secret, LABEL_SLOT_HOST, salt=vault_id)
    return {"id": slot_id, "type": HOST, "key_id": key_id, "label": label, **_wrap(kek, root_key, vault_id, slot_id, HOST)}


def open_host_slot(slot: dict, vault_id: bytes, secret: bytes) -> bytes:
    if len(secret) != HOST_SECRET_LEN:
        raise CryptoError("a host key has the wrong length")
    return _unwrap(hkdf(secret, LABEL_SLOT_HOST, salt=vault_id), slot, vault_id)


def tpm2_pin_key(pin: bytes, params: Argon2Params) -> bytes:
    return argon2id(pin, params)


def tpm2_auth(pin_key: bytes | None) -> bytes | None:
    """What the TPM checks (and counts against its lockout): derived from the PIN's
    Argon2id, so the PIN itself never reaches the TPM or its bus."""
    return None if pin_key is None else hkdf(pin_key, LABEL_SLOT_TPM2_AUTH)


def _tpm2_kek(secret: bytes, pin_key: bytes | None, vault_id: bytes) -> bytes:
    if len(secret) != TPM2_SECRET_LEN:
        raise CryptoError("the TPM released a secret of the wrong length")
    return hkdf(secret + (pin_key or b""), LABEL_SLOT_TPM2, salt=vault_id)


def tpm2_slot(slot_id: int, root_key: bytes, vault_id: bytes, secret: bytes, tpm: dict,
              pin: Argon2Params | None, pin_key: bytes | None, label: str) -> dict:
    return {"id": slot_id, "type": TPM2, "tpm": tpm, "pin": pin.to_dict() if pin else None, "label": label,
            **_wrap(_tpm2_kek(secret, pin_key, vault_id), root_key, vault_id, slot_id, TPM2)}


def open_tpm2_slot(slot: dict, vault_id: bytes, secret: bytes, pin_key: bytes | None) -> bytes:
    return _unwrap(_tpm2_kek(secret, pin_key, vault_id), slot, vault_id)


MAX_SLOTS = 32
_FIELDS = {PASSPHRASE: {"kdf": dict}, RECOVERY: {},
           IDENTITY: {"suite": str, "recipient": str, "kem_ct": str, "label": str},
           HOST: {"key_id": str, "label": str}, TPM2: {"tpm": dict, "label": str}}


def check_shape(slot) -> None:
    """Refuse a slot whose fields have the wrong types (before anything uses them)."""
    ok = (isinstance(slot, dict) and type(slot.get("id")) is int and 0 < slot["id"] < 1 << 31
          and slot.get("type") in SLOT_TYPES and isinstance(slot.get("wrapped"), str)
          and isinstance(slot.get("commit", ""), str)
          and all(isinstance(slot.get(k), t) for k, t in _FIELDS[slot["type"]].items())
          and (slot["type"] != TPM2 or (slot.get("pin") is None or isinstance(slot["pin"], dict))
               and isinstance(slot["tpm"].get("pcrs", []), list)))
    if not ok:
        raise DamagedStructure(f"key slot {slot.get('id') if isinstance(slot, dict) else '?'} is malformed")


def describe(slot: dict) -> str:
    if slot["type"] == PASSPHRASE:
        k = slot["kdf"]
        return f"passphrase (argon2id m={k.get('memory_kib')} KiB t={k.get('iterations')} p={k.get('lanes')})"
    if slot["type"] == IDENTITY:
        return f"identity {slot['recipient']} ({slot['suite']}) {slot.get('label', '')}".rstrip()
    if slot["type"] == HOST:
        return f"host key {slot['key_id']} {slot.get('label', '')}".rstrip()
    if slot["type"] == TPM2:
        pcrs = slot["tpm"].get("pcrs") or []
        policy = f"PCRs {','.join(map(str, pcrs))} ({slot['tpm'].get('pcr_bank', 'sha256')})" if pcrs else "no PCRs"
        return (f"tpm2 {hex(slot['tpm'].get('handle', 0))}: {policy}, {'PIN' if slot.get('pin') else 'no PIN'} "
                f"{slot.get('label', '')}").rstrip()
    return "recovery code"
