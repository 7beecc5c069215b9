"""journald's native protocol, as mounttool.journal writes it for a user's mount."""

import io
import os
import socket
import struct

from mounttool import journal


def test_fields_are_encoded_as_journald_reads_them():
    data = journal.encode({"MESSAGE": "pqcfs: mounted", "PRIORITY": "6"})
    assert data == b"MESSAGE=pqcfs: mounted\nPRIORITY=6\n"
    # A value with a newline: name, newline, 64-bit little-endian length, value, newline.
    data = journal.encode({"MESSAGE": "two\nlines"})
    assert data == b"MESSAGE\n" + struct.pack("<Q", 9) + b"two\nlines\n"


def test_entries_carry_the_users_credentials_and_whole_lines(tmp_path):
    path = str(tmp_path / "socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        server.bind(path)
        server.settimeout(2)
        uid = 4242 if os.geteuid() == 0 else os.getuid()   # only root may speak for another user
        user = journal.UserJournal(uid, os.getgid(), "ab" * 16, path=path)
        out = io.StringIO()
        tee = user.tee(out)
        tee.write("pqcfs: waiting up to 30 s")
        tee.write(" for the backup\npqcfs: warning: mounted DEGRADED\nsync 40%\rsync 100%\n")
        got = []
        for _ in range(3):
            data, anc, _, _ = server.recvmsg(4096, socket.CMSG_SPACE(12))
            creds = next(struct.unpack("iII", d) for level, kind, d in anc if kind == socket.SCM_CREDENTIALS)
            got.append((creds[1], dict(line.split("=", 1) for line in data.decode().splitlines())))
    assert out.getvalue().endswith("sync 100%\n")          # standard error keeps everything
    assert [g[0] for g in got] == [uid] * 3
    assert [(f["MESSAGE"], f["PRIORITY"]) for _, f in got] == [
        ("pqcfs: waiting up to 30 s for the backup", "6"), ("pqcfs: warning: mounted DEGRADED", "4"),
        ("sync 100%", "6")]
    assert all(f["SYSLOG_IDENTIFIER"] == "pqcfs" and f["PQCFS_VAULT_ID"] == "ab" * 16 for _, f in got)


def test_no_journal_loses_nothing(tmp_path):
    user = journal.UserJournal(os.getuid(), os.getgid(), path=str(tmp_path / "none"))
    assert user.send("pqcfs: nobody listens") is False
