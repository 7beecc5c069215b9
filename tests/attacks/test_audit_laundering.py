"""An attacker edits the audit log on the drives, then the owner uses the vault as usual.
The session may heal the log from a replica that verifies, but nothing it does may make
a log that verifies nowhere verify again, and nothing is trimmed away unrecorded.

PQCFS_AUDIT_FUZZ=N sets how many random corruptions are tried (default 60)."""

import os
import random

import pytest

from pqcfs import vault as vault_mod
from pqcfs.audit import log as audit_log
from pqcfs.audit.writer import AuditLog
from pqcfs.store.drive import QUARANTINE_DIR
from tests.conftest import PASSPHRASE

FUZZ = int(os.environ.get("PQCFS_AUDIT_FUZZ", "60"))


def session(locations, events=3):
    """What every command and mount does with the log: open, append, record the head."""
    vault = vault_mod.unlock(list(locations), vault_mod.Credentials(passphrase=PASSPHRASE))
    log = AuditLog(vault)
    for n in range(events):
        log.append("test-event", n=n)
    log.sync()
    log.close()
    vault.close()


def verdicts(locations):
    vault = vault_mod.unlock(list(locations), vault_mod.Credentials(passphrase=PASSPHRASE))
    keys = audit_log.AuditKeys.from_root(vault.root_key)
    out = []
    for drive in vault.drives:
        data = drive.read(audit_log.FILE_NAME, audit_log.MAX_FILE)
        head = vault_mod.read_state(drive, vault.root_key).audit_head
        v = audit_log.verify(data, keys, vault.header.vault_id, head)
        out.append((v.intact and not v.damage, v, data))   # what `pqcfs audit verify` reports
    vault.close()
    return out


def decrypted(locations, data):
    vault = vault_mod.unlock(list(locations), vault_mod.Credentials(passphrase=PASSPHRASE))
    keys = audit_log.AuditKeys.from_root(vault.root_key)
    return [audit_log.decrypt(keys, vault.header.vault_id, r) for r in audit_log.parse(data)]


@pytest.fixture
def used_vault(new_vault):
    vault, _ = new_vault
    session(vault.locations, events=10)
    assert all(ok for ok, _, _ in verdicts(vault.locations))
    return vault.locations


def read(path):
    with open(path, "rb") as f:
        return f.read()


def rewrite(locations, fn, which=(0, 1)):
    for n in which:
        path = os.path.join(locations[n], audit_log.FILE_NAME)
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(fn(data))


def length_byte(data):
    offset = audit_log.offset_of(data, 3)
    edited = bytearray(data)
    edited[offset + 3] ^= 0x01
    return bytes(edited)


def cut_at_boundary(data):
    return data[:audit_log.offset_of(data, 4)]


@pytest.mark.parametrize("damage", [length_byte, cut_at_boundary], ids=["length-byte", "cut-at-record"])
def test_damage_on_every_replica_stays_reported(used_vault, damage):
    rewrite(used_vault, damage)
    assert not any(ok for ok, _, _ in verdicts(used_vault))
    for _ in range(2):                     # ordinary sessions afterwards
        session(used_vault)
    results = verdicts(used_vault)
    assert not any(ok for ok, _, _ in results)
    assert all("found damaged" in v.damage for _, v, _ in results)
    # The damaged log was set aside whole, never trimmed or deleted.
    for location in used_vault:
        kept = os.listdir(os.path.join(location, QUARANTINE_DIR))
        assert any(name.endswith(audit_log.FILE_NAME) for name in kept)


def test_damage_on_one_replica_heals_from_the_other_and_says_so(used_vault):
    rewrite(used_vault, length_byte, which=(0,))
    session(used_vault)
    results = verdicts(used_vault)
    assert all(ok for ok, _, _ in results)
    events = decrypted(used_vault, results[0][2])
    assert any(e["event"] == "self-heal" and e.get("what") == "audit log" for e in events)
    assert os.listdir(os.path.join(used_vault[0], QUARANTINE_DIR))


def test_a_torn_tail_after_a_crash_is_dropped_and_recorded(used_vault):
    # A crash in the middle of an append: the last frame runs past the end of the file,
    # and the replicas were not cleanly unmounted.
    for location in used_vault:
        vault = vault_mod.unlock(list(used_vault), vault_mod.Credentials(passphrase=PASSPHRASE))
        state = vault_mod.read_state(location, vault.root_key)
        state.clean = False
        vault_mod.write_state(location, state, vault.root_key)
        vault.close()
    rewrite(used_vault, lambda data: data + data[audit_log.offset_of(data, 2):][:20])   # a frame's first bytes
    session(used_vault)
    results = verdicts(used_vault)
    assert all(ok for ok, _, _ in results)
    events = decrypted(used_vault, results[0][2])
    assert any(e["event"] == "audit-torn-tail-dropped" for e in events)


def test_random_corruptions_never_launder(new_vault, tmp_path):
    vault, _ = new_vault
    session(vault.locations, events=12)
    pristine = {n: read(os.path.join(loc, audit_log.FILE_NAME)) for n, loc in enumerate(vault.locations)}
    states = {n: read(os.path.join(loc, "pqcfs.state")) for n, loc in enumerate(vault.locations)}
    rng = random.Random(20261122)
    laundered = 0
    for trial in range(FUZZ):
        data = bytearray(pristine[0])
        how = rng.choice(["flip", "flip", "cut", "insert"])
        at = rng.randrange(len(data))
        if how == "flip":
            data[at] ^= 1 << rng.randrange(8)
        elif how == "cut":
            del data[at:]
        else:
            data[at:at] = os.urandom(rng.randrange(1, 64))
        for n, loc in enumerate(vault.locations):
            for name in os.listdir(loc):
                if name == QUARANTINE_DIR:
                    for q in os.listdir(os.path.join(loc, name)):
                        os.unlink(os.path.join(loc, name, q))
            with open(os.path.join(loc, audit_log.FILE_NAME), "wb") as f:
                f.write(bytes(data))        # the same damage on both drives
            with open(os.path.join(loc, "pqcfs.state"), "wb") as f:
                f.write(states[n])
        detected = not any(ok for ok, _, _ in verdicts(vault.locations))
        session(vault.locations, events=1)
        after = verdicts(vault.locations)
        if detected and any(ok for ok, _, _ in after):
            laundered += 1
        assert detected, f"trial {trial}: {how} at {at} was not detected"
    assert laundered == 0
