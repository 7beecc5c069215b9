"""Appending audit records to every replica's log (the same records on each)."""

from __future__ import annotations

import datetime as dt
import logging

import blake3

from pqcfs import vault as vault_mod
from pqcfs.audit import log as audit_log
from pqcfs.audit.log import AuditKeys
from pqcfs.errors import PqcfsError
from pqcfs.store.append_file import ReplicatedAppendFile
from pqcfs.store.replicas import drive_failed

log = logging.getLogger(__name__)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class AuditLog:
    """Appends start from the authenticated head only. A log that fails verification is
    healed from a replica whose log verifies, or else set aside whole (quarantined on
    its drive) and continued in a new segment whose first record says so; only a torn
    last record after a crash (a frame cut short by the end of the file, after the
    authenticated head) is dropped, and that is recorded too."""

    def __init__(self, vault: vault_mod.UnlockedVault, healthy=None):
        self.vault = vault
        self.keys = AuditKeys.from_root(vault.root_key)
        self.vault_id = vault.header.vault_id
        self.file = ReplicatedAppendFile(vault.drives, audit_log.FILE_NAME,
                                         healthy or (lambda: list(range(len(vault.locations)))))
        self.pending: list[tuple[str, dict]] = []
        data = self._open_log()
        self._heal_others(data)
        records = audit_log.parse(data)
        self.seq = len(records)
        self.prev = records[-1].mac if records else audit_log.ZERO
        self.chain = audit_log.chain_hashes(records)[-1] if records else audit_log.ZERO
        for event, details in self.pending:
            self.append(event, **details)
        self.pending = []

    def _read(self, n: int) -> bytes:
        try:
            return self.vault.drives[n].read(audit_log.FILE_NAME, audit_log.MAX_FILE)
        except FileNotFoundError:
            return b""

    def _state(self, n: int):
        return vault_mod.read_state(self.vault.drives[n], self.vault.root_key)

    def _open_log(self) -> bytes:
        """The primary's log, made verifiable without losing a byte of evidence."""
        state = self._state(0)
        data = self._read(0)
        verdict = audit_log.verify(data, self.keys, self.vault_id, state.audit_head)
        if verdict.intact:
            return data
        torn = audit_log.torn_tail(data)
        if torn is not None and not state.clean:
            prefix = audit_log.verify(data[:torn], self.keys, self.vault_id, state.audit_head)
            if prefix.intact:
                # The same crash may have torn the same record on every replica.
                for n in range(len(self.vault.locations)):
                    other = data if n == 0 else self._read_safely(n)
                    if other and other != data[:torn] and other.startswith(data[:torn]) \
                            and audit_log.torn_tail(other) == torn:
                        self._set_aside(n, "torn audit tail")
                        self.vault.drives[n].write_atomic(audit_log.FILE_NAME, data[:torn])
                self.pending.append(("audit-torn-tail-dropped", {"bytes": len(data) - torn}))
                log.warning("dropped a torn audit record at the end of the log (crash while appending)")
                return data[:torn]
        for n in range(1, len(self.vault.locations)):
            other = self._read_safely(n)
            if not other:
                continue
            try:
                head = self._state(n).audit_head
            except Exception:  # noqa: BLE001 - an unreadable backup state just disqualifies it
                continue
            if audit_log.verify(other, self.keys, self.vault_id, head).intact and (
                    audit_log.verify(other, self.keys, self.vault_id, state.audit_head).intact):
                kept = self._set_aside(0, "damaged audit log")
                self.vault.drives[0].write_atomic(audit_log.FILE_NAME, other)
                self.pending.append(("self-heal", {"what": "audit log", "source": n, "reason": verdict.reason,
                                                   "kept_as": kept}))
                log.warning("the audit log on the primary was damaged (%s); healed from replica %d",
                            verdict.reason, n)
                return other
        return self._new_segment(data, verdict, state.audit_head)

    def _heal_others(self, data: bytes) -> None:
        """Every other replica's log that verifies neither on its own (against its own
        authenticated head) nor as the start of the primary's: damaged, and replaced by the
        primary's log (the damaged one kept in pqcfs.quarantine/). A log that is behind is
        left for the sync to extend; one that verifies on its own is its drive's history
        (a split brain is the user's to settle), never overwritten."""
        for n in range(1, len(self.vault.locations)):
            other = self._read_safely(n)
            if not other or other == data:
                continue
            if data.startswith(other) and audit_log.verify(other, self.keys, self.vault_id, None).intact:
                continue
            try:
                head = self._state(n).audit_head
            except Exception:  # noqa: BLE001 - an unreadable state: the log alone decides
                head = None
            verdict = audit_log.verify(other, self.keys, self.vault_id, head)
            if verdict.intact:
                continue
            kept = self._set_aside(n, "damaged audit log")
            self.vault.drives[n].write_atomic(audit_log.FILE_NAME, data)
            self.pending.append(("self-heal", {"what": "audit log", "target": n, "source": 0,
                                               "reason": verdict.reason, "kept_as": kept}))
            log.warning("the audit log on %s was damaged (%s); rewritten from the primary's",
                        self.vault.locations[n], verdict.reason)

    def _read_safely(self, n: int) -> bytes | None:
        try:
            return self._read(n)
        except (OSError, PqcfsError):
            return None

    def _set_aside(self, n: int, why: str) -> str | None:
        drive = self.vault.drives[n]
        if not drive.exists(audit_log.FILE_NAME):
            return None
        return drive.quarantine(audit_log.FILE_NAME, why)

    def _new_segment(self, data: bytes, verdict, head: dict | None) -> bytes:
        """Nothing on any replica verifies: keep every damaged log whole, and start a new
        log whose record 0 says what happened (audit verify reports it from then on)."""
        kept = None
        for n in range(len(self.vault.locations)):
            try:
                where = self._set_aside(n, "damaged audit log")
            except (OSError, PqcfsError) as e:
                if n == 0:
                    raise
                log.warning("could not set the damaged audit log aside on replica %d: %s", n, e)
                continue
            kept = kept or where
        record = audit_log.encode_segment(self.keys, self.vault_id, {
            "time": now(), "reason": verdict.reason, "previous_bytes": len(data),
            "previous_blake3": blake3.blake3(data).hexdigest(), "previous_head": head, "kept_as": kept})
        for drive in self.vault.drives:
            try:
                drive.write_atomic(audit_log.FILE_NAME, record)
            except (OSError, PqcfsError) as e:
                if drive is self.vault.drives[0]:
                    raise
                log.warning("could not start the new audit segment on %s: %s", drive.location, e)
        self.pending.append(("audit-log-damaged", {"reason": verdict.reason, "kept_as": kept}))
        log.error("the audit log is damaged on every replica (%s); kept as %s, continuing in a new segment",
                  verdict.reason, kept)
        return record

    def follow(self, healthy, drives: list | None = None) -> None:
        """Write only to the replicas healthy() names (a mount session's replica set),
        indexes into drives (the session's list, which grows when a replica rejoins)."""
        self.file.healthy = healthy
        if drives is not None:
            self.file.drives = drives

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
        healthy = self.file.healthy()
        for n in healthy:
            drive = self.vault.drives[n]
            try:
                state = vault_mod.read_state(drive, self.vault.root_key)
                state.audit_head = self.head()
                vault_mod.write_state(drive, state, self.vault.root_key)
            except (OSError, PqcfsError) as e:
                if n == healthy[0] and not (drive_failed(e) and len(healthy) > 1):
                    raise
                log.warning("could not record the audit head on replica %d: %s", n, e)
