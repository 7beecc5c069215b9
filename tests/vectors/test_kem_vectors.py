"""Known answers: official X-Wing vectors, our own mlkem1024-x25519 vectors, and ML-KEM
checked both ways against an independent implementation (kyber-py)."""

import json
import pathlib

import pytest
from cryptography.hazmat.primitives.asymmetric import mlkem
from kyber_py.ml_kem import ML_KEM_768, ML_KEM_1024

from pqcfs.crypto import kem
from pqcfs.errors import CryptoError

HERE = pathlib.Path(__file__).parent
XWING = json.loads((HERE / "xwing-test-vectors.json").read_text())
OURS = json.loads((HERE / "mlkem1024-x25519.json").read_text())


@pytest.mark.parametrize("v", XWING, ids=range(len(XWING)))
def test_xwing_keygen_and_decapsulation_match_official_vectors(v):
    seed = bytes.fromhex(v["seed"])
    assert kem.public_key("xwing", seed).hex() == v["pk"]
    assert kem.decapsulate("xwing", seed, bytes.fromhex(v["ct"])).hex() == v["ss"]


@pytest.mark.parametrize("v", OURS, ids=range(len(OURS)))
def test_mlkem1024_x25519_known_answers(v):
    seed = bytes.fromhex(v["seed"])
    assert kem.public_key("mlkem1024-x25519", seed).hex() == v["pk"]
    assert kem.decapsulate("mlkem1024-x25519", seed, bytes.fromhex(v["ct"])).hex() == v["ss"]


@pytest.mark.parametrize("suite", sorted(kem.SUITES))
def test_round_trip(suite):
    seed = kem.generate_seed()
    ss, ct = kem.encapsulate(suite, kem.public_key(suite, seed))
    assert len(ct) == kem.get_suite(suite).ct_len
    assert kem.decapsulate(suite, seed, ct) == ss


def test_suites_never_agree_on_a_secret():
    # Same seed, the labels differ: a secret can not be replayed across suites.
    seed = bytes(32)
    assert kem.public_key("xwing", seed) != kem.public_key("mlkem1024-x25519", seed)


@pytest.mark.parametrize("suite", sorted(kem.SUITES))
def test_all_zero_x25519_share_is_rejected(suite):
    s = kem.get_suite(suite)
    seed = kem.generate_seed()
    pk = kem.public_key(suite, seed)
    # A low-order point (here: zero) as the peer's X25519 key forces an all-zero secret.
    with pytest.raises(CryptoError, match="all-zero"):
        kem.encapsulate(suite, pk[: s.mlkem_pk_len] + bytes(32))
    _, ct = kem.encapsulate(suite, pk)
    with pytest.raises(CryptoError, match="all-zero"):
        kem.decapsulate(suite, seed, ct[: s.mlkem_ct_len] + bytes(32))


@pytest.mark.parametrize("suite", sorted(kem.SUITES))
def test_wrong_lengths_are_rejected(suite):
    seed = kem.generate_seed()
    with pytest.raises(CryptoError):
        kem.encapsulate(suite, kem.public_key(suite, seed)[:-1])
    with pytest.raises(CryptoError):
        kem.decapsulate(suite, seed, b"\0" * 10)


CROSS = [(mlkem.MLKEM768PrivateKey, mlkem.MLKEM768PublicKey, ML_KEM_768),
         (mlkem.MLKEM1024PrivateKey, mlkem.MLKEM1024PublicKey, ML_KEM_1024)]


@pytest.mark.parametrize("ours,ours_pub,theirs", CROSS, ids=["768", "1024"])
def test_mlkem_interoperates_with_kyber_py(ours, ours_pub, theirs):
    seed = bytes(range(64))
    # Same seed, same keys.
    ek, dk = theirs.key_derive(seed)
    sk = ours.from_seed_bytes(seed)
    assert sk.public_key().public_bytes_raw() == ek
    # kyber-py encapsulates, cryptography decapsulates.
    ss, ct = theirs.encaps(ek)
    assert sk.decapsulate(ct) == ss
    # cryptography encapsulates, kyber-py decapsulates.
    ss2, ct2 = ours_pub.from_public_bytes(ek).encapsulate()
    assert theirs.decaps(dk, ct2) == ss2
