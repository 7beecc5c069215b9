"""The grant format: issue, verify, open; every way a grant can be wrong is refused."""

import os

import pytest

from pqcfs.errors import DamagedStructure, PqcfsError, UnsupportedVersion
from pqcfs.format import grants
from pqcfs.format.identity import Identity, PublicIdentity

ROOT_KEY = bytes(range(32))
VAULT_ID = bytes(16)
NODE_ID = bytes.fromhex("11" * 16)
SUBTREE_KEY = os.urandom(32)


@pytest.fixture(scope="module")
def bob():
    return Identity.generate()


@pytest.fixture(scope="module")
def issued(bob):
    return grants.issue(ROOT_KEY, vault_id=VAULT_ID, node_id=NODE_ID, subtree_key=SUBTREE_KEY, generation=3,
                        recipient=bob.public, rights=grants.READ_WRITE, label="acme", expires=2_000_000_000,
                        now=1_700_000_000)


def test_round_trip(bob, issued):
    grant, blob = issued
    parsed = grants.verify(blob, VAULT_ID, owner=grants.fingerprint(grants.owner_public(ROOT_KEY)))
    assert parsed.grant.header() == grant.header()
    assert parsed.grant.label is None   # it travels encrypted
    assert b"acme" not in blob
    assert (grant.node_id, grant.generation, grant.rights) == (NODE_ID, 3, grants.READ_WRITE)
    assert grants.open_key(parsed, bob) == (SUBTREE_KEY, "acme")
    grants.check_time(grant, now=1_800_000_000)


def test_both_suites(bob):
    for suite in ("xwing", "mlkem1024-x25519"):
        who = Identity.generate(suite)
        _, blob = grants.issue(ROOT_KEY, vault_id=VAULT_ID, node_id=NODE_ID, subtree_key=SUBTREE_KEY, generation=0,
                               recipient=who.public, rights=grants.READ, label="x")
        assert grants.open_key(grants.verify(blob, VAULT_ID), who) == (SUBTREE_KEY, "x")


def test_every_flipped_byte_is_refused(bob, issued):
    _, blob = issued
    for at in range(len(blob)):
        bad = bytearray(blob)
        bad[at] ^= 0x01
        with pytest.raises((PqcfsError, DamagedStructure, UnsupportedVersion)):
            parsed = grants.verify(bytes(bad), VAULT_ID, owner=grants.fingerprint(grants.owner_public(ROOT_KEY)))
            grants.open_key(parsed, bob)


def test_truncated_and_extended_are_refused(issued):
    _, blob = issued
    for bad in (blob[:-1], blob + b"\0", b"", blob[:100]):
        with pytest.raises(DamagedStructure):
            grants.verify(bad, VAULT_ID)


def test_signed_by_someone_else(bob, issued):
    _, forged = grants.issue(os.urandom(32), vault_id=VAULT_ID, node_id=NODE_ID, subtree_key=SUBTREE_KEY,
                             generation=3, recipient=bob.public, rights=grants.READ_WRITE, label="acme")
    trusted = grants.fingerprint(grants.owner_public(ROOT_KEY))
    with pytest.raises(grants.GrantRefused, match="not by the vault owner"):
        grants.verify(forged, VAULT_ID, owner=trusted)


def test_owner_key_swapped_in(issued):
    # A valid signature by another key, with that key put in: the fingerprint in the
    # signed header still names the real owner.
    _, blob = issued
    other = grants.owner_public(os.urandom(32))
    parsed = grants.parse(blob)
    at = len(blob) - grants.SIG_LEN - grants.OWNER_PK_LEN
    with pytest.raises(grants.GrantRefused, match="not its owner"):
        grants.verify(blob[:at] + other + parsed.signature, VAULT_ID)


def test_other_vault_and_other_identity(bob, issued):
    _, blob = issued
    with pytest.raises(grants.GrantRefused, match="another vault"):
        grants.verify(blob, bytes([1]) * 16)
    with pytest.raises(grants.GrantRefused, match="another identity"):
        grants.open_key(grants.verify(blob, VAULT_ID), Identity.generate())


def test_expiry_and_not_before(issued):
    grant, _ = issued
    with pytest.raises(grants.GrantRefused, match="expired"):
        grants.check_time(grant, now=2_000_000_000)
    with pytest.raises(grants.GrantRefused, match="not valid before"):
        grants.check_time(grant, now=1_600_000_000)


def test_malformed_recipient_key_is_refused():
    with pytest.raises(DamagedStructure):
        PublicIdentity.decode("pqcfs-pub1:mlkem1024-x25519:AAAA:BBBB")
    with pytest.raises(DamagedStructure):
        PublicIdentity.decode("not a key")


@pytest.mark.parametrize("label", ["x" * 256, "", "a/b", ".", "..", "nul\0"])
def test_label_limits(bob, label):
    with pytest.raises(PqcfsError):
        grants.issue(ROOT_KEY, vault_id=VAULT_ID, node_id=NODE_ID, subtree_key=SUBTREE_KEY, generation=0,
                     recipient=bob.public, rights=grants.READ, label=label)
