"""Audit log tampering: every edit, deletion, reordering, duplication, truncation, swap and
forged checkpoint is detected, and the first bad record is named."""

import os

import pytest
from cryptography.hazmat.primitives.asymmetric import mldsa

from pqcfs.audit import log as audit_log
from pqcfs.audit.log import AuditKeys

VAULT = b"v" * 16


def build(n=8, keys=None, vault_id=VAULT, checkpoint_at=None, sign_seed=b"s" * 32):
    keys = keys or AuditKeys.from_root(b"r" * 32)
    out, prev = [], audit_log.ZERO
    sign = mldsa.MLDSA65PrivateKey.from_seed_bytes(sign_seed)
    for seq in range(n):
        if seq == checkpoint_at:
            chain = audit_log.chain_hashes(audit_log.parse(b"".join(out)))[-1]
            rec = audit_log.encode_checkpoint(keys, vault_id, seq, prev, chain, "owner", sign)
        else:
            rec = audit_log.encode_event(keys, vault_id, seq, prev,
                                         {"event": f"event-{seq}", "path": "/quarterly-secret-report.txt"})
        out.append(rec)
        prev = rec[-32:]
    return keys, out, {"seq": n - 1, "mac": prev.hex()}, sign.public_key().public_bytes_raw()


def check(records, keys, head, expect_bad):
    v = audit_log.verify(b"".join(records), keys, VAULT, head)
    assert not v.intact and v.first_bad == expect_bad, v
    assert f"record {expect_bad}" in v.reason


def test_intact_log_verifies_and_hides_contents():
    keys, recs, head, _ = build()
    v = audit_log.verify(b"".join(recs), keys, VAULT, head)
    assert v.intact and v.records == 8
    # Markers long enough that random ciphertext can not contain them by chance.
    assert b"quarterly-secret-report" not in b"".join(recs) and b"event-3" not in b"".join(recs)
    assert audit_log.decrypt(keys, VAULT, audit_log.parse(recs[3])[0]) == {
        "event": "event-3", "path": "/quarterly-secret-report.txt"}


@pytest.mark.parametrize("k", [0, 3, 7])
def test_edited_record(k):
    keys, recs, head, _ = build()
    edited = bytearray(recs[k])
    edited[20] ^= 1
    recs[k] = bytes(edited)
    check(recs, keys, head, k)


def test_deleted_record():
    keys, recs, head, _ = build()
    del recs[4]
    check(recs, keys, head, 4)


def test_reordered_records():
    keys, recs, head, _ = build()
    recs[2], recs[3] = recs[3], recs[2]
    check(recs, keys, head, 2)


def test_duplicated_record():
    keys, recs, head, _ = build()
    recs.insert(5, recs[4])
    check(recs, keys, head, 5)


def test_truncated_log_is_caught_by_the_head():
    keys, recs, head, _ = build()
    v = audit_log.verify(b"".join(recs[:5]), keys, VAULT, head)
    assert not v.intact and v.first_bad == 5 and "truncated" in v.reason
    # A torn tail (half a record) is named too.
    check([recs[0], recs[1][:10]], keys, head, 1)


def test_log_of_another_vault_or_key_fails_at_record_0():
    keys, recs, head, _ = build()
    _, other, _, _ = build(vault_id=b"w" * 16)
    check(other, keys, head, 0)
    _, other_key, _, _ = build(keys=AuditKeys.from_root(os.urandom(32)))
    check(other_key, keys, head, 0)


def test_public_verification_with_checkpoints():
    keys, recs, head, pk = build(n=10, checkpoint_at=6)
    v = audit_log.verify_public(b"".join(recs), VAULT, pk)
    assert v.intact and v.records == 7 and v.checkpoints == 1
    assert audit_log.verify(b"".join(recs), keys, VAULT, head).intact


def test_forged_or_misplaced_checkpoints_are_refused():
    _, recs, _, pk = build(n=10, checkpoint_at=6)
    _, _, _, other_pk = build(n=10, checkpoint_at=6, sign_seed=b"x" * 32)
    v = audit_log.verify_public(b"".join(recs), VAULT, other_pk)
    assert not v.intact and v.first_bad == 6 and "forged" in v.reason
    edited = bytearray(recs[2])
    edited[30] ^= 1
    tampered = recs[:2] + [bytes(edited)] + recs[3:]
    v = audit_log.verify_public(b"".join(tampered), VAULT, pk)
    assert not v.intact and "checkpoint does not match" in v.reason
    v = audit_log.verify_public(b"".join(recs[:5]), VAULT, pk)
    assert not v.intact and "no checkpoint" in v.reason
