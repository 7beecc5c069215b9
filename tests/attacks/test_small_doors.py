"""Small doors, each tried through the real CLI: the key-commitment field stripped from a
format 2 header, a header changed so that a slot still opens (tamper, not a wrong
passphrase), and what pqcfs leaves on the host readable only by its owner."""

import os
import stat
import subprocess
import sys

import pytest

from pqcfs import userdirs
from pqcfs.audit import host
from pqcfs.cli import exitcodes
from pqcfs.session import grantee
from tests.attacks.forge import forge_everywhere, forge_header

PASS = "small doors passphrase"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pqcfs", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=120)


@pytest.fixture
def vault(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    pw = tmp_path / "pw"
    pw.write_text(PASS + "\n")
    made = cli("init", str(a), str(b), "--passfile", str(pw), "--allow-fixed", "--allow-same-device", "--json")
    assert made.returncode == 0, made.stderr
    code = next(w for w in made.stdout.replace('"', " ").split() if w.count("-") == 7)
    (tmp_path / "code").write_text(code + "\n")
    return str(a), str(b), str(pw), str(tmp_path / "code")


def unlocking(vault, how):
    a, b, pw, code = vault
    return ["fsck", a, "--backup", b, "--allow-same-device",
            *(["--passfile", pw] if how == "passphrase" else ["--recovery-code-file", code])]


@pytest.mark.parametrize("how", ["passphrase", "recovery"])
def test_a_stripped_key_commitment_is_tamper(vault, how):
    # On one drive: the other drive's copy opens the vault, and fsck names the bad one.
    forge_header(vault[0], lambda body: [s.pop("commit") for s in body["slots"]])
    proc = cli(*unlocking(vault, how))
    assert proc.returncode == exitcodes.CRYPTO, proc.stderr
    assert "key commitment" in proc.stdout and vault[0] in proc.stdout and "NOT clean" in proc.stdout
    # On both (the attacker had both drives, and every copy on them): refused as damage.
    forge_everywhere(vault[:2], lambda body: [s.pop("commit", None) for s in body["slots"]])
    proc = cli(*unlocking(vault, how))
    assert proc.returncode == exitcodes.DAMAGED, proc.stderr
    assert "key commitment" in proc.stderr


@pytest.mark.parametrize("how", ["passphrase", "recovery"])
def test_a_slot_that_opens_under_a_changed_header_is_tamper_not_a_wrong_key(vault, how):
    forge_everywhere(vault[:2], lambda body: body.update(created="2000-01-01T00:00:00Z"))
    proc = cli(*unlocking(vault, how))
    assert proc.returncode == exitcodes.DAMAGED, proc.stderr
    assert "failed authentication" in proc.stderr


def test_host_side_files_are_private_whatever_the_umask(tmp_path, monkeypatch):
    monkeypatch.setenv("PQCFS_STATE_DIR", str(tmp_path / "state"))
    old = os.umask(0o022)
    try:
        host.record("00" * 16, "unlock-failed", reason="WrongKey")
        grantee.pin_owner(b"\x01" * 16, b"\x02" * 32, None)
        # A file an older pqcfs left world-readable is made private at its next write.
        os.chmod(host.path(), 0o644)
        host.record("00" * 16, "unlock-failed", reason="WrongKey")
        assert host.take("00" * 16)
        host.record("11" * 16, "unlock-failed", reason="WrongKey")
    finally:
        os.umask(old)
    for name in os.listdir(userdirs.state_dir()):
        mode = stat.S_IMODE(os.stat(os.path.join(userdirs.state_dir(), name)).st_mode)
        assert mode == 0o600, (name, oct(mode))
