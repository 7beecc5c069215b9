"""docs/cli.md's exit-code table, walked against real runs of the CLI: for every code a
command a person could type, and the code it really exits with. (130, Ctrl-C, needs a
terminal: tests/api/test_prompts.py.)"""

import json
import os
import shutil
import pathlib
import re
import stat
import subprocess
import time

import pytest

from pqcfs.fs.trees import open_tree
from pqcfs import sharing
from pqcfs import vault as vault_mod
from pqcfs.cli import exitcodes
from pqcfs.format.identity import PublicIdentity
from pqcfs.fs.vaultfs import Caller
from tests.api.test_cli import DOCS, pqcfs
from tests.conftest import PASSPHRASE

ROOT = os.geteuid() == 0


@pytest.fixture
def walk(new_vault, tmp_path):
    vault, _ = new_vault
    fs = open_tree(vault)
    shared = fs.mkdir(fs.inodes.root, b"shared", 0o755, Caller(0, 0))
    fs.create_file(shared, b"note", stat.S_IFREG | 0o644, Caller(0, 0), content=b"hello")
    fs.settle()
    pw = tmp_path / "pw"
    pw.write_bytes(PASSPHRASE + b"\n")
    return vault, tmp_path, str(pw)


def documented() -> dict[int, str]:
    return {int(code): name for code, name in re.findall(r"^\|\s*(\d+)\s*\|\s*`(\w+)`", DOCS.read_text(), re.M)}


def test_the_table_is_the_code(walk):
    assert documented() == {value: name for name, value in vars(exitcodes).items()
                            if name.isupper() and isinstance(value, int)}
    assert set(exitcodes.MEANINGS) == set(documented())


def test_every_exit_code_is_what_a_real_run_gives(walk):
    vault, tmp, pw = walk
    a, b = vault.locations
    vault.close()
    fixed = ["--allow-fixed", "--allow-same-device"]
    got: dict[int, list[str]] = {}

    def expect(code, *args, said=None, env_extra=None, report=False):
        r = pqcfs(*args, env_extra=env_extra)
        assert r.returncode == code, (args, r.returncode, r.stderr)
        if code not in (exitcodes.OK, exitcodes.DEGRADED, exitcodes.CRYPTO) and not report:
            # (status, audit verify and doctor report on standard output: their report is the result)
            assert r.stderr.strip().splitlines()[-1].startswith("pqcfs: "), r.stderr
        if said:
            assert said in r.stderr, r.stderr
        got.setdefault(code, []).append(" ".join(args))

    expect(exitcodes.OK, "info", a)
    full = tmp / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    expect(exitcodes.ERROR, "init", str(full), "--single", "--passfile", pw, "--allow-fixed", said="notes.txt")
    expect(exitcodes.USAGE, "info", a, "--no-such-flag")
    expect(exitcodes.NOT_A_VAULT, "info", str(tmp / "nowhere"))

    # A copy of the vault to damage in two ways.
    damaged = tmp / "damaged"
    damaged.mkdir()
    header = pathlib.Path(a, "pqcfs.vault").read_bytes()
    (damaged / "pqcfs.vault").write_bytes(header[:9] + b"\x07" + header[10:])
    for name in os.listdir(a):
        if name != "pqcfs.vault" and os.path.isfile(f"{a}/{name}"):
            (damaged / name).write_bytes(pathlib.Path(a, name).read_bytes())
    expect(exitcodes.UNSUPPORTED, "info", str(damaged))
    (damaged / "pqcfs.vault").write_bytes(header[:40] + bytes([header[40] ^ 0x20]) + header[41:])
    expect(exitcodes.DAMAGED, "keys", "list", str(damaged))

    wrong = tmp / "wrong"
    wrong.write_text("not the passphrase\n")
    expect(exitcodes.WRONG_KEY, "sync", a, "--passfile", str(wrong))
    os.rename(b, tmp / "unplugged")
    expect(exitcodes.DRIVE, "sync", a, "--passfile", pw, said="not plugged in")
    os.rename(tmp / "unplugged", b)
    expect(exitcodes.MOUNT, "mount", a, str(tmp / "no-mountpoint"), "--passfile", pw, *fixed,
           said="does not exist")
    (tmp / "p1").mkdir(), (tmp / "p2").mkdir()
    # (The test-only fast KDF takes any parameters: switched off for this one run.)
    expect(exitcodes.PARAMETERS, "init", str(tmp / "p1"), str(tmp / "p2"), "--passfile", pw, "--kdf-memory", "1",
           *fixed, env_extra={"PQCFS_INSECURE_FAST_KDF": "0"})

    # The audit log with one byte changed: verification fails (ciphertext authentication).
    expect(exitcodes.OK, "sync", a, "--passfile", pw)          # a command that writes starts the log
    log_path = pathlib.Path(a, "pqcfs.audit")
    data = bytearray(log_path.read_bytes())
    original = bytes(data)
    data[len(data) // 2] ^= 1
    log_path.write_bytes(data)
    expect(exitcodes.CRYPTO, "audit", "verify", a, "--passfile", pw)
    log_path.write_bytes(original)

    os.rename(b, tmp / "unplugged")
    expect(exitcodes.DEGRADED, "status", a)
    os.rename(tmp / "unplugged", b)
    expect(exitcodes.OK, "status", a)

    # The set-up: nothing installed under a root, or a file in the way of the install.
    expect(exitcodes.SETUP, "doctor", "--root", str(tmp / "bare-root"), report=True)
    (tmp / "taken" / "usr" / "bin").mkdir(parents=True)
    (tmp / "taken" / "usr" / "bin" / "pqcfs").write_text("#!/bin/sh\n")
    expect(exitcodes.SETUP, "system", "install", "--root", str(tmp / "taken"), said="not installed by pqcfs")

    # An offsite remote nothing answers at: rclone's error, exit 16.
    if shutil.which("rclone"):
        expect(exitcodes.REMOTE, "remote", "add", a, ":webdav,url='http://127.0.0.1:1/':v", said="connection refused",
               env_extra={"RCLONE_CONTIMEOUT": "2s", "RCLONE_LOW_LEVEL_RETRIES": "1"})

    # A snapshot that is not there (the vault has none yet).
    expect(exitcodes.NO_SUCH_SNAPSHOT, "restore", a, "shared", "--snapshot", "yesterday", "--to", str(tmp / "back"),
           "--passfile", pw, said="no snapshot")

    # Grants: an expired one refused at the recipient's mount, a path that is not there.
    bob, bob_pw = str(tmp / "bob.json"), tmp / "bob-pw"
    bob_pw.write_text("bob's own long passphrase here\n")
    pqcfs("identity", "new", "--file", bob, "--passfile", str(bob_pw))
    pqcfs("identity", "export", "--file", bob, "-o", bob + ".pub")
    expect(exitcodes.NO_SUCH_PATH, "share", a, "nowhere", "--to", bob + ".pub", "--passfile", pw)
    with open(bob + ".pub") as f:
        public = PublicIdentity.decode(f.read())
    owner = vault_mod.unlock([a, b], vault_mod.Credentials(passphrase=PASSPHRASE))
    sharing.share(owner, "shared", public, read_only=True, expires=int(time.time()) + 1)
    owner.close()
    time.sleep(1.5)
    (tmp / "bob-mnt").mkdir()
    expect(exitcodes.GRANT, "mount", a, str(tmp / "bob-mnt"), "--identity", bob, "--passfile", str(bob_pw),
           *fixed, said="expired")
    expect(exitcodes.GRANT, "revoke", a, "0badc0de", "--passfile", pw, *fixed, said="no grant 0badc0de")

    if ROOT:
        # A full drive: a small tmpfs filled up before init.
        small = tmp / "small"
        small.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], check=True)
        try:
            (small / "vault").mkdir()
            fd = os.open(small / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                while True:
                    os.write(fd, b"\0" * 4096)
            except OSError:
                pass
            finally:
                os.close(fd)
            (tmp / "q").mkdir()
            expect(exitcodes.NO_SPACE, "init", str(small / "vault"), str(tmp / "q"), "--passfile", pw, "--allow-fixed",
                   said="no space")
        finally:
            subprocess.run(["umount", str(small)], check=True)
    missing = set(documented()) - set(got) - {exitcodes.INTERRUPTED} - ({exitcodes.NO_SPACE} if not ROOT else set()) \
        - ({exitcodes.REMOTE} if not shutil.which("rclone") else set())
    assert not missing, f"no run gave {sorted(missing)}"
    assert json.dumps(got)
