"""Messages of a mount that belongs to a user, in that user's journal.

An automount service runs as root, so its output lands in the system journal, which a
desktop user may not read. journald files a message under the user whose credentials
came with it (SCM_CREDENTIALS on its native socket; root may name any user there), so
the user sees "the backup is full" with `journalctl --user -t pqcfs`, or
`journalctl _UID=$(id -u) -t pqcfs` where journald keeps one journal for everyone.

The native protocol: one datagram per entry, KEY=value lines; a value holding a newline
is sent as KEY, newline, its length as 64-bit little endian, the value, newline.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import struct

SOCKET = "/run/systemd/journal/socket"
IDENTIFIER = "pqcfs"
ERR, WARNING, NOTICE, INFO = 3, 4, 5, 6


def encode(fields: dict[str, str]) -> bytes:
    out = bytearray()
    for key, value in fields.items():
        data = value.encode(errors="replace")
        if b"\n" in data:
            out += key.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"
        else:
            out += key.encode() + b"=" + data + b"\n"
    return bytes(out)


class UserJournal:
    def __init__(self, uid: int, gid: int, vault_id: str | None = None, path: str | None = None):
        self.uid, self.gid, self.vault_id = uid, gid, vault_id
        self.path = path or os.environ.get("PQCFS_JOURNAL_SOCKET", SOCKET)

    def send(self, message: str, priority: int = INFO) -> bool:
        """False when there is no journal to send to (no journald: nothing is lost, the
        message went to standard error as well)."""
        fields = {"MESSAGE": message, "PRIORITY": str(priority), "SYSLOG_IDENTIFIER": IDENTIFIER}
        if self.vault_id:
            fields["PQCFS_VAULT_ID"] = self.vault_id
        creds = struct.pack("iII", os.getpid(), self.uid, self.gid)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendmsg([encode(fields)], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, creds)], 0, self.path)
            return True
        except OSError:
            return False

    def tee(self, stream) -> "_Tee":
        return _Tee(stream, self)

    def handler(self, level: int = logging.WARNING) -> logging.Handler:
        return _Handler(self, level)


def priority_of(line: str) -> int:
    return WARNING if "warning" in line.lower() else INFO


class _Tee(io.TextIOBase):
    """Standard error as it was, and each whole line also to the user's journal."""

    def __init__(self, stream, journal: UserJournal):
        self.stream, self.journal, self._partial = stream, journal, ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            # A progress bar redraws with carriage returns: only its last state counts.
            line = line.rsplit("\r", 1)[-1].strip()
            if line:
                self.journal.send(line, priority_of(line))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()


class _Handler(logging.Handler):
    def __init__(self, journal: UserJournal, level: int):
        super().__init__(level)
        self.journal = journal

    def emit(self, record: logging.LogRecord) -> None:
        priority = ERR if record.levelno >= logging.ERROR else WARNING if record.levelno >= logging.WARNING else INFO
        self.journal.send(record.getMessage(), priority)
