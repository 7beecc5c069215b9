"""Key derivation: HKDF purpose keys with named labels, Argon2id for passphrases.

Every label is a constant here, so `docs/format.md` and the code can be checked against
each other by reading one file.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from argon2.low_level import Type, hash_secret_raw
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pqcfs.errors import ParameterError

# HKDF info labels. One key, one purpose: a new use gets a new label, never a reused one.
LABEL_NAME = b"pqcfs name v1"             # AES-SIV name encryption (64-byte key)
LABEL_WRAP = b"pqcfs override wrap v1"    # AES-SIV override wrapping (64-byte key)
LABEL_CONTENT = b"pqcfs content v1"       # AES-256-GCM content blocks
LABEL_META = b"pqcfs meta v1"             # AES-256-GCM node metadata and xattrs
LABEL_HEADER_MAC = b"pqcfs header mac v1"  # HMAC-SHA256 over the vault header
LABEL_STATE_MAC = b"pqcfs state mac v1"    # HMAC-SHA256 over replica state
LABEL_AUDIT = b"pqcfs audit v1"            # audit log chain key (reserved)
LABEL_SLOT_KEM = b"pqcfs slot kem v1"      # identity slot KEK from the KEM secret
LABEL_SLOT_RECOVERY = b"pqcfs slot recovery v1"  # recovery-code slot KEK
LABEL_SLOT_HOST = b"pqcfs slot host v1"    # host-key slot KEK (a secret kept on one machine)
LABEL_INTENT = b"pqcfs intent v1"          # HMAC-SHA256 over write-intent records
LABEL_SLOT_COMMIT = b"pqcfs slot commit v1"  # key-commitment value of a key slot
LABEL_CHANGES = b"pqcfs changes v1"        # HMAC chain over the change journal
LABEL_SEEN = b"pqcfs seen v2"              # HMAC over the machine's record of the newest state seen
LABEL_NODE = b"pqcfs node"                 # HMAC prefix of the node-key tree
LABEL_GRANT_KEM = b"pqcfs grant kem v1"    # grant KEK from the KEM secret (salt: grant id)
LABEL_OWNER_SIGN = b"pqcfs owner sign v1"  # ML-DSA-65 seed of the vault owner's signing key
LABEL_GRANT_NOTE = b"pqcfs grant note v1"  # AES-GCM of the owner's notes on a grant (its label)
LABEL_GRANTEE_INTENT = b"pqcfs grantee intent v1"  # a read-write grantee session's intent log (salt: grant id)
LABEL_GRANTEE_AUDIT = b"pqcfs grantee audit v1"  # a grant's own audit log, from the subtree key (salt: grant id)
LABEL_SLOT_TPM2 = b"pqcfs slot tpm2 v1"    # TPM2 slot KEK from the unsealed secret (and the PIN's Argon2id)
LABEL_SLOT_TPM2_AUTH = b"pqcfs slot tpm2 auth v1"  # the sealed object's TPM auth value, from the PIN's Argon2id
LABEL_REMOTE_OBJECT = b"pqcfs remote object v1"  # keyed BLAKE3: the name of an object on an offsite remote
LABEL_REMOTE_SEAL = b"pqcfs remote seal v1"      # AES-256-GCM: a remote's epoch records and directory pages
LABEL_REMOTE_INDEX = b"pqcfs remote index v1"    # HMAC-SHA256 over this machine's index of a remote


def hkdf(ikm: bytes, info: bytes, length: int = 32, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


# Argon2id bounds. The floor stops a tampered header from downgrading the KDF; the
# ceiling stops it from making unlock eat the machine's memory or stall for hours: it sits
# at what calibration produces (at most 1 GiB, and never more than half of this machine's
# memory) and caps the work (memory x passes) at 1 GiB x 4 passes: 3-10 s here by lanes.
FLOOR = {"memory_kib": 19 * 1024, "iterations": 2, "lanes": 1}
CEILING = {"memory_kib": 1024 * 1024, "iterations": 16, "lanes": 8}
MAX_WORK_KIB = 4 * 1024 * 1024   # memory_kib * iterations


def _memory_ceiling_kib() -> int:
    try:
        half = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2 // 1024
    except (ValueError, OSError):
        half = CEILING["memory_kib"]
    return max(FLOOR["memory_kib"], min(CEILING["memory_kib"], half))


# The one test-only switch: tests set it to make Argon2id (and calibration) cheap.
TEST_SWITCH = "PQCFS_INSECURE_FAST_KDF"
TEST_PARAMS = {"memory_kib": 64, "iterations": 1, "lanes": 1}
SALT_LEN = 16


def insecure_fast_kdf() -> bool:
    return os.environ.get(TEST_SWITCH) == "1"


@dataclass(frozen=True)
class Argon2Params:
    memory_kib: int
    iterations: int
    lanes: int
    salt: bytes

    def to_dict(self) -> dict:
        return {"alg": "argon2id", "memory_kib": self.memory_kib,
                "iterations": self.iterations, "lanes": self.lanes, "salt": self.salt.hex()}

    @classmethod
    def from_dict(cls, d: dict) -> "Argon2Params":
        if d.get("alg") != "argon2id":
            raise ParameterError(f"unsupported passphrase KDF {d.get('alg')!r}")
        try:
            p = cls(int(d["memory_kib"]), int(d["iterations"]), int(d["lanes"]),
                    bytes.fromhex(d["salt"]))
        except (KeyError, ValueError, TypeError) as e:
            raise ParameterError(f"malformed KDF parameters: {e}") from None
        p.validate()
        return p

    def validate(self) -> None:
        floor = TEST_PARAMS if insecure_fast_kdf() else FLOOR
        ceiling = dict(CEILING, memory_kib=_memory_ceiling_kib())
        for field in ("memory_kib", "iterations", "lanes"):
            value = getattr(self, field)
            if value < floor[field]:
                raise ParameterError(f"KDF {field}={value} is below the floor {floor[field]}")
            if value > ceiling[field]:
                raise ParameterError(f"KDF {field}={value} is above the ceiling {ceiling[field]}")
        if self.memory_kib * self.iterations > MAX_WORK_KIB:
            raise ParameterError(f"KDF work {self.memory_kib} KiB x {self.iterations} passes is above the "
                                 f"ceiling of {MAX_WORK_KIB} KiB-passes")
        if len(self.salt) != SALT_LEN:
            raise ParameterError("KDF salt must be 16 bytes")


def argon2id(secret: bytes, params: Argon2Params, length: int = 32) -> bytes:
    params.validate()
    return hash_secret_raw(secret, params.salt, time_cost=params.iterations,
                           memory_cost=params.memory_kib, parallelism=params.lanes,
                           hash_len=length, type=Type.ID)


def calibrate(target_seconds: float = 1.0, lanes: int = 2) -> Argon2Params:
    """Pick Argon2id parameters that take about target_seconds here (LUKS-style)."""
    salt = os.urandom(SALT_LEN)
    if insecure_fast_kdf():
        return Argon2Params(salt=salt, **TEST_PARAMS)
    memory_kib, iterations = 64 * 1024, 2
    start = time.perf_counter()
    hash_secret_raw(b"calibration", salt, time_cost=iterations, memory_cost=memory_kib,
                    parallelism=lanes, hash_len=32, type=Type.ID)
    elapsed = max(time.perf_counter() - start, 1e-3)
    # Spend the budget on memory first (what hurts attackers most), up to 1 GiB, then time.
    scale = target_seconds / elapsed
    memory_kib = int(min(memory_kib * scale, _memory_ceiling_kib()))
    memory_kib = max(memory_kib, FLOOR["memory_kib"])
    spent = elapsed * memory_kib / (64 * 1024)
    if spent < target_seconds:
        iterations = max(2, int(iterations * target_seconds / spent))
    iterations = min(iterations, CEILING["iterations"], MAX_WORK_KIB // memory_kib)
    return Argon2Params(memory_kib=memory_kib, iterations=iterations, lanes=lanes, salt=salt)
