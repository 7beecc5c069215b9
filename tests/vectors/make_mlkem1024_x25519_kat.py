"""Regenerate tests/vectors/mlkem1024-x25519.json, independently of pqcfs' own code.

ML-KEM-1024 comes from the pure-Python kyber-py (deterministic FIPS 203 internals), X25519
from `cryptography`, the combiner is written out here from docs/format.md. Run it only to
extend the vectors; the checked-in file is what the tests trust.

    .venv/bin/python tests/vectors/make_mlkem1024_x25519_kat.py > tests/vectors/mlkem1024-x25519.json
"""

import hashlib
import json

from cryptography.hazmat.primitives.asymmetric import x25519
from kyber_py.ml_kem import ML_KEM_1024

LABEL = b"pqcfs mlkem1024-x25519 v1"


def vector(n: int) -> dict:
    seed = hashlib.sha256(b"pqcfs kat seed %d" % n).digest()
    eseed = hashlib.sha512(b"pqcfs kat eseed %d" % n).digest()
    expanded = hashlib.shake_256(seed).digest(96)
    ek_m, _ = ML_KEM_1024.key_derive(expanded[:64])
    sk_x = x25519.X25519PrivateKey.from_private_bytes(expanded[64:])
    pk_x = sk_x.public_key().public_bytes_raw()
    ss_m, ct_m = ML_KEM_1024._encaps_internal(ek_m, eseed[:32])
    ek_x = x25519.X25519PrivateKey.from_private_bytes(eseed[32:])
    ct_x = ek_x.public_key().public_bytes_raw()
    ss_x = ek_x.exchange(x25519.X25519PublicKey.from_public_bytes(pk_x))
    ss = hashlib.sha3_256(ss_m + ss_x + ct_x + pk_x + LABEL).digest()
    return {"seed": seed.hex(), "eseed": eseed.hex(), "pk": (ek_m + pk_x).hex(),
            "ct": (ct_m + ct_x).hex(), "ss": ss.hex()}


if __name__ == "__main__":
    print(json.dumps([vector(n) for n in range(3)], indent=1))
