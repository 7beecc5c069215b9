"""Appending audit records to every replica's log (the same records on each)."""

from __future__ import annotations

import datetime as dt
import logging
import os

import blake3

from pqcfs import vault as vault_mod
from pqcfs.audit import log as audit_log
from pqcfs.audit.log import AuditKeys

log = logging.getLogger(__name__)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class AuditLog:
    def __init__(self, vault: vault_mod.UnlockedVault, healthy=None):
        self.vault = vault
        self.keys = AuditKeys.from_root(vault.root_key)
        self.vault_id = vault.header.vault_id
        self._healthy = healthy or (lambda: list(range(len(vault.locations))))
        self._fds: dict[int, int] = {}
        data = self._read(0)
        try:
            records = audit_log.parse(data)
        except audit_log.Malformed as e:
            # A torn last record (crash while appending): keep the intact prefix.
            records = audit_log.parse(data[: self._offset_of(data, e.index)])
            self._truncate_all(self._offset_of(data, e.index))
            log.warning("dropped a torn audit record at the end of the log")
        self.seq = len(records)
        self.prev = records[-1].mac if records else audit_log.ZERO
        self.chain = audit_log.chain_hashes(records)[-1] if records else audit_log.ZERO

    @staticmethod
    def _offset_of(data: bytes, index: int) -> int:
        pos = 0
        for _ in range(index):
            pos += 4 + int.from_bytes(data[pos:pos + 4], "big")
        return pos

    def _path(self, n: int) -> str:
        return os.path.join(self.vault.locations[n], audit_log.FILE_NAME)

    def _read(self, n: int) -> bytes:
        try:
            with open(self._path(n), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def _truncate_all(self, length: int) -> None:
        for n in self._healthy():
            if os.path.exists(self._path(n)):
                os.truncate(self._path(n), length)

    def _fd(self, n: int) -> int:
        # Kept open for the session: an open/close per record would cost more than the record.
        fd = self._fds.get(n)
        if fd is None:
            fd = self._fds[n] = os.open(self._path(n), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return fd

    def _append(self, record: bytes) -> None:
        for n in self._healthy():
            try:
                os.write(self._fd(n), record)
            except OSError as e:
                if n == 0:
                    raise
                log.warning("could not append to the audit log on replica %d: %s", n, e)
        self.chain = blake3.blake3(self.chain + record).digest()

    def close(self) -> None:
        for fd in self._fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._fds = {}

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
        for n in self._healthy():
            try:
                if n in self._fds:
                    os.fsync(self._fds[n])
                location = self.vault.locations[n]
                state = vault_mod.read_state(location, self.vault.root_key)
                state.audit_head = self.head()
                vault_mod.write_state(location, state, self.vault.root_key)
            except OSError as e:
                if n == 0:
                    raise
                log.warning("could not sync the audit log on replica %d: %s", n, e)
