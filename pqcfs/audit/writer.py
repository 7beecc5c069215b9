"""Appending audit records to every replica's log (the same records on each)."""

from __future__ import annotations

import datetime as dt
import logging

import blake3

from pqcfs import vault as vault_mod
from pqcfs.audit import log as audit_log
from pqcfs.audit.log import AuditKeys
from pqcfs.store.append_file import ReplicatedAppendFile

log = logging.getLogger(__name__)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class AuditLog:
    def __init__(self, vault: vault_mod.UnlockedVault, healthy=None):
        self.vault = vault
        self.keys = AuditKeys.from_root(vault.root_key)
        self.vault_id = vault.header.vault_id
        self.file = ReplicatedAppendFile(vault.locations, audit_log.FILE_NAME,
                                         healthy or (lambda: list(range(len(vault.locations)))))
        data = self._read_primary()
        try:
            records = audit_log.parse(data)
        except audit_log.Malformed as e:
            # A torn last record (crash while appending): keep the intact prefix.
            intact = audit_log.offset_of(data, e.index)
            records = audit_log.parse(data[:intact])
            self.file.truncate(intact)
            log.warning("dropped a torn audit record at the end of the log")
        self.seq = len(records)
        self.prev = records[-1].mac if records else audit_log.ZERO
        self.chain = audit_log.chain_hashes(records)[-1] if records else audit_log.ZERO

    def follow(self, healthy) -> None:
        """Write only to the replicas healthy() names (a mount session's replica set)."""
        self.file.healthy = healthy

    def _read_primary(self) -> bytes:
        try:
            with open(self.file.path(0), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def _append(self, record: bytes) -> None:
        self.file.append(record)
        self.chain = blake3.blake3(self.chain + record).digest()

    def close(self) -> None:
        self.file.close()

    def append(self, event: str, **details) -> None:
        record = audit_log.encode_event(self.keys, self.vault_id, self.seq, self.prev,
                                        {"time": now(), "event": event, **details})
        self._append(record)
        self.prev = record[-audit_log.MAC_LEN:]
        self.seq += 1

    def checkpoint(self, identity) -> None:
        record = audit_log.encode_checkpoint(self.keys, self.vault_id, self.seq, self.prev, self.chain,
                                             identity.public.fingerprint, identity.signing_key())
        self._append(record)
        self.prev = record[-audit_log.MAC_LEN:]
        self.seq += 1

    def head(self) -> dict | None:
        return {"seq": self.seq - 1, "mac": self.prev.hex()} if self.seq else None

    def sync(self) -> None:
        """fsync the logs and record the head in each replica's (authenticated) state."""
        self.file.fsync()
        for n in self.file.healthy():
            location = self.vault.locations[n]
            try:
                state = vault_mod.read_state(location, self.vault.root_key)
                state.audit_head = self.head()
                vault_mod.write_state(location, state, self.vault.root_key)
            except OSError as e:
                if n == 0:
                    raise
                log.warning("could not record the audit head on replica %d: %s", n, e)
