"""The audit log follows the one healing policy: a replica's log that verifies neither
on its own nor as the start of the primary's is replaced by the primary's, the damaged one
kept; a log that is only behind, or that is its drive's own history, is left alone."""

import os
import pathlib

from pqcfs import vault as vault_mod
from pqcfs.audit import log as audit_log
from pqcfs.audit.writer import AuditLog
from pqcfs.store.drive import QUARANTINE_DIR
from pqcfs.vault import Credentials
from tests.conftest import PASSPHRASE


def logged(locations, events=3):
    vault = vault_mod.unlock(list(locations), Credentials(passphrase=PASSPHRASE))
    log = AuditLog(vault)
    for n in range(events):
        log.append("test-event", n=n)
    log.sync()
    log.close()
    return vault


def verifies(vault, location) -> bool:
    data = pathlib.Path(location, audit_log.FILE_NAME).read_bytes()
    keys = audit_log.AuditKeys.from_root(vault.root_key)
    return audit_log.verify(data, keys, vault.header.vault_id, None).intact


def test_a_damaged_backup_log_is_rewritten_and_kept(new_vault, two_dirs):
    primary, backup = two_dirs
    logged(two_dirs)
    path = os.path.join(backup, audit_log.FILE_NAME)
    data = bytearray(pathlib.Path(path).read_bytes())
    data[len(data) // 2] ^= 1
    pathlib.Path(path).write_bytes(data)
    vault = logged(two_dirs, events=1)
    assert verifies(vault, backup)
    assert pathlib.Path(path).read_bytes() == pathlib.Path(primary, audit_log.FILE_NAME).read_bytes()
    assert any(n.endswith(audit_log.FILE_NAME) for n in os.listdir(os.path.join(backup, QUARANTINE_DIR)))


def test_a_log_that_is_only_behind_is_left_for_the_sync(new_vault, two_dirs):
    primary, backup = two_dirs
    logged(two_dirs)
    before = pathlib.Path(backup, audit_log.FILE_NAME).read_bytes()
    logged([primary], events=2)            # the backup was not plugged in
    vault = logged([primary, backup], events=0)
    assert pathlib.Path(backup, audit_log.FILE_NAME).read_bytes().startswith(before)
    assert not os.path.exists(os.path.join(backup, QUARANTINE_DIR))
    assert verifies(vault, backup)
