"""A damaged replica state is rebuilt from the drive's own audit log, and how the drive
stands to the other one (same, older, newer, split) is read from the sessions that log
shows, never guessed: an older drive must never become the source of a sync."""

import os

import pytest

from pqcfs import mirror, state_heal
from pqcfs import vault as vault_mod
from pqcfs.audit.writer import AuditLog
from pqcfs.crypto.kdf import calibrate
from pqcfs.format import replica_state as rs
from pqcfs.session.session import Session
from pqcfs.store.drive import QUARANTINE_DIR
from pqcfs.vault import Credentials
from tests.conftest import PASSPHRASE


def unlock(locations):
    return vault_mod.unlock(list(locations), Credentials(passphrase=PASSPHRASE))


def session(locations, tmp_path):
    """A mount session (no FUSE) on these drives, with its audit log, ended cleanly."""
    vault = unlock(locations)
    vault.audit = AuditLog(vault)
    s = Session(vault, str(tmp_path / "mnt"))
    s.prepare()
    s.build()
    s._finish()
    vault.close()


def damage(location, name=rs.FILE_NAME):
    path = os.path.join(location, name)
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        data[len(data) // 2] ^= 1
        f.seek(0)
        f.write(data)


def rebuilt(locations):
    vault = unlock(locations)
    bad = state_heal.damaged(vault)
    assert [loc for loc, _ in bad] == [locations[-1]]
    [(_, _, relation)] = state_heal.heal(vault, bad)
    assert state_heal.damaged(vault) == []
    states = [vault_mod.read_state(vault.drive(loc), vault.root_key) for loc in locations]
    vault.close()
    return relation, states


@pytest.fixture
def two(new_vault, two_dirs, tmp_path):
    session(two_dirs, tmp_path)
    return two_dirs


def test_the_same_history_is_rebuilt_as_the_same(two, tmp_path):
    primary, backup = two
    damage(backup)
    relation, (ref, state) = rebuilt([primary, backup])
    assert relation == "same" and rs.compare(ref, state) == rs.SAME and state.clean
    assert any(n.endswith(rs.FILE_NAME) for n in os.listdir(os.path.join(backup, QUARANTINE_DIR)))


@pytest.mark.parametrize("went_on,relation,compared", [("primary", "stale", rs.STALE), ("backup", "newer", rs.NEWER)])
def test_a_drive_that_missed_sessions_or_went_on_alone_is_rebuilt_as_such(two, tmp_path, went_on, relation,
                                                                          compared):
    """The worst guess would make a newer drive older: a sync would then overwrite its
    newer files. The older one is brought up to date; the newer one serves."""
    primary, backup = two
    session([primary if went_on == "primary" else backup], tmp_path)
    damage(backup)
    got, (ref, state) = rebuilt([primary, backup])
    assert got == relation and rs.compare(ref, state) == compared
    vault = unlock([primary, backup])
    if went_on == "backup":
        assert mirror.newest_first(vault) == backup
    else:
        assert mirror.plan(vault)[0].stale == [backup]


def test_without_its_log_a_drive_is_a_split_brain_left_to_the_user(two, tmp_path):
    primary, backup = two
    session([backup], tmp_path)
    damage(backup)
    damage(backup, "pqcfs.audit")
    relation, (ref, state) = rebuilt([primary, backup])
    assert relation == "diverged"
    with pytest.raises(Exception, match="split brain"):
        mirror.plan(unlock([primary, backup]))


def test_a_single_drive_keeps_its_history_and_is_checked_at_the_next_session(tmp_path):
    only = str(tmp_path / "only")
    os.mkdir(only)
    vault_mod.create([only], passphrase=PASSPHRASE, kdf=calibrate())
    session([only], tmp_path)
    before = vault_mod.read_state(only, None).lineage
    damage(only)
    relation, [state] = rebuilt([only])
    assert relation == "alone" and state.head == before[-1] and not state.clean
