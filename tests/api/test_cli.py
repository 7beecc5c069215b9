"""The CLI as a user runs it: documented exit codes, clear messages, never a traceback."""

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from pqcfs import hygiene
from pqcfs.cli import exitcodes

DOCS = pathlib.Path(__file__).parents[2] / "docs" / "cli.md"


def pqcfs(*args, env_extra=None, cwd=None):
    env = {**os.environ, **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-m", "pqcfs", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, stdin=subprocess.DEVNULL, timeout=120)
    # Every command warns while the test-only KDF switch is on; the rest is what it said.
    proc.stderr = proc.stderr.replace(hygiene.WARNING + "\n", "")
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture
def cli_vault(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    pw = tmp_path / "pw"
    pw.write_text("hunter2\n")
    r = pqcfs("init", str(a), str(b), "--passfile", str(pw), "--allow-fixed", "--allow-same-device", "--json")
    assert r.returncode == 0, r.stderr
    return a, b, pw, tmp_path, r.stdout


def test_init_info_and_passfile_unlock(cli_vault):
    a, b, pw, tmp, out = cli_vault
    code = re.search(r'"recovery_code": "([A-Z2-7-]+)"', out).group(1)
    info = pqcfs("info", str(a))
    assert info.returncode == 0 and "mlkem1024-x25519" in info.stdout and "backup" in info.stdout
    # Passfile unlock needs no prompt; the backup is found from the header.
    new = tmp / "new"
    new.write_text("second\n")
    assert pqcfs("keys", "add", str(a), "--passfile", str(pw), "--passphrase", "--new-passfile", str(new)).returncode == 0
    (tmp / "code").write_text(code + "\n")
    r = pqcfs("passwd", str(a), "--recovery-code-file", str(tmp / "code"), "--slot", "1", "--new-passfile", str(new))
    assert r.returncode == 0, r.stderr
    listing = pqcfs("keys", "list", str(b)).stdout
    assert listing.count("passphrase") == 2
    assert pqcfs("keys", "add", str(a), "--extpass", "echo second", "--recovery-code").returncode == 0


@pytest.mark.parametrize("damage,code", [
    ("wrong-pass", exitcodes.WRONG_KEY), ("not-a-vault", exitcodes.NOT_A_VAULT),
    ("missing-dir", exitcodes.NOT_A_VAULT), ("flip-byte", exitcodes.DAMAGED),
    ("newer-format", exitcodes.UNSUPPORTED), ("missing-backup", exitcodes.DRIVE),
])
def test_user_errors_have_their_exit_codes(cli_vault, damage, code):
    a, b, pw, tmp, _ = cli_vault
    target = str(a)
    if damage == "wrong-pass":
        pw.write_text("wrong\n")
    elif damage == "not-a-vault":
        target = str(tmp)
    elif damage == "missing-dir":
        target = str(tmp / "nowhere")
    elif damage == "flip-byte":     # in both of the drive's copies (its spare alone would open it)
        for name in ("pqcfs.vault", "pqcfs.vault.spare"):
            data = bytearray((a / name).read_bytes())
            data[40] ^= 0x20
            (a / name).write_bytes(data)
    elif damage == "newer-format":
        data = bytearray((a / "pqcfs.vault").read_bytes())
        data[9] = 7
        (a / "pqcfs.vault").write_bytes(data)
    elif damage == "missing-backup":
        os.rename(b, tmp / "unplugged")
    r = pqcfs("keys", "add", target, "--passfile", str(pw), "--recovery-code")
    assert r.returncode == code, (r.returncode, r.stderr)
    assert r.stderr.startswith("pqcfs: ") and len(r.stderr.splitlines()) == 1


def test_drive_checks(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    pw = tmp_path / "pw"
    pw.write_text("x\n")
    r = pqcfs("init", str(a), str(a), "--passfile", str(pw), "--allow-fixed")
    assert r.returncode == exitcodes.DRIVE and "same location" in r.stderr
    b = tmp_path / "b"
    b.mkdir()
    r = pqcfs("init", str(a), str(b), "--passfile", str(pw), "--allow-fixed")
    assert r.returncode == exitcodes.DRIVE and "same drive" in r.stderr
    r = pqcfs("init", str(a), "--passfile", str(pw))
    assert r.returncode == exitcodes.DRIVE and "removable" in r.stderr
    r = pqcfs("init", str(tmp_path / "missing"), "--passfile", str(pw), "--allow-fixed")
    # The code every command gives a location that is not there (info, mount, ...).
    assert r.returncode == exitcodes.NOT_A_VAULT == pqcfs("info", str(tmp_path / "missing")).returncode
    assert pqcfs("init").returncode == exitcodes.USAGE


def test_identity_commands_and_identity_unlock(cli_vault):
    a, b, pw, tmp, _ = cli_vault
    env = {"XDG_CONFIG_HOME": str(tmp / "cfg")}
    assert pqcfs("identity", "new", "--passfile", str(pw), env_extra=env).returncode == 0
    assert pqcfs("identity", "new", "--passfile", str(pw), env_extra=env).returncode == exitcodes.ERROR
    show = pqcfs("identity", "show", "--json", env_extra=env)
    assert '"fingerprint"' in show.stdout
    assert pqcfs("identity", "export", "-o", str(tmp / "me.pub"), env_extra=env).returncode == 0
    assert pqcfs("keys", "add", str(a), "--passfile", str(pw), "--public-key", str(tmp / "me.pub")).returncode == 0
    r = pqcfs("keys", "remove", str(a), "--identity", "--passfile", str(pw), "1", env_extra=env)
    assert r.returncode == 0, r.stderr
    assert pqcfs("keys", "add", str(a), "--passfile", str(pw), "--recovery-code").returncode == exitcodes.WRONG_KEY
    (tmp / "bad").write_text("bad\n")
    r = pqcfs("keys", "list", str(a), env_extra=env)
    assert "identity" in r.stdout
    r = pqcfs("keys", "add", str(a), "--identity", "--passfile", str(tmp / "bad"), "--recovery-code", env_extra=env)
    assert r.returncode == exitcodes.WRONG_KEY


def test_every_exit_code_is_documented():
    text = DOCS.read_text()
    for name, value in vars(exitcodes).items():
        if name.isupper() and isinstance(value, int):
            assert re.search(rf"\|\s*{value}\s*\|\s*`{name}`", text), f"{name}={value} missing from docs/cli.md"


def test_a_format_1_vault_is_upgraded_only_when_asked(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    pw = tmp_path / "pw"
    pw.write_text("hunter2\n")
    r = pqcfs("init", str(a), str(b), "--passfile", str(pw), "--allow-fixed", "--allow-same-device", "--format", "1")
    assert r.returncode == 0, r.stderr
    assert "(format 1," in pqcfs("info", str(a)).stdout
    assert not (a / "tree" / "d.t").exists()
    r = pqcfs("upgrade", str(a), "--passfile", str(pw))
    assert r.returncode == 0 and "from format 1 to 2 (1 directories)" in r.stdout, r.stdout + r.stderr
    assert "(format 2," in pqcfs("info", str(b)).stdout and (b / "tree" / "d.t").is_file()
    r = pqcfs("upgrade", str(a), "--passfile", str(pw))
    assert r.returncode == 0 and "already format 2" in r.stdout
    assert pqcfs("fsck", str(a), "--passfile", str(pw)).returncode == 0


def test_a_host_key_unlocks_unattended_until_its_slot_is_removed(cli_vault, tmp_path):
    a, b, pw, tmp, _ = cli_vault
    state = tmp_path / "state"
    env = {"PQCFS_STATE_DIR": str(state)}
    vault = [str(a), "--backup", str(b)]
    r = pqcfs("keys", "add", *vault, "--host", "--label", "this box", "--passfile", str(pw), "--json", env_extra=env)
    assert r.returncode == 0, r.stderr
    key_id = re.search(r'"key_id": "([0-9a-f]+)"', r.stdout).group(1)
    [secret] = list((state / "host-keys").iterdir())
    assert key_id in secret.name and (secret.stat().st_mode & 0o777) == 0o600 and secret.stat().st_size == 32
    slots = pqcfs("keys", "list", str(a)).stdout
    assert f"host key {key_id} this box" in slots
    # No passphrase anywhere: the machine's host key opens the vault.
    assert pqcfs("fsck", *vault, "--host-key", env_extra=env).returncode == 0
    # Another machine (another state directory) holds no host key of it.
    other = pqcfs("fsck", *vault, "--host-key", env_extra={"PQCFS_STATE_DIR": str(tmp_path / "elsewhere")})
    assert other.returncode == exitcodes.WRONG_KEY and "host key" in other.stderr
    # A secret others can read is refused, not used.
    secret.chmod(0o644)
    assert pqcfs("fsck", *vault, "--host-key", env_extra=env).returncode == exitcodes.ERROR
    secret.chmod(0o600)
    # Removing the slot revokes the machine: its secret is gone, and so is the way in.
    slot = re.search(r"(\d+): host key", slots).group(1)
    assert pqcfs("keys", "remove", *vault, slot, "--passfile", str(pw), env_extra=env).returncode == 0
    assert not secret.exists()
    assert pqcfs("fsck", *vault, "--host-key", env_extra=env).returncode == exitcodes.WRONG_KEY


def test_a_mistyped_passphrase_is_asked_again_three_times_and_each_try_is_audited(cli_vault):
    """An asking program (systemd-ask-password for automount) gets three tries; every
    wrong one is recorded (host log first, adopted into the vault's log at the next unlock)."""
    a, b, pw, tmp, _ = cli_vault
    counter = tmp / "asked"
    ask = tmp / "ask.sh"
    ask.write_text(f"#!/bin/sh\nn=$(cat {counter} 2>/dev/null || echo 0)\necho $((n + 1)) > {counter}\n"
                   f'if [ "$n" -lt 2 ]; then echo mistyped; else cat {pw}; fi\n')
    ask.chmod(0o755)
    state = {"PQCFS_STATE_DIR": str(tmp / "state")}
    r = pqcfs("sync", str(a), "--extpass", str(ask), env_extra=state)
    assert r.returncode == 0, r.stderr
    assert counter.read_text().strip() == "3"
    assert "try 2 of 3" in r.stderr and "try 3 of 3" in r.stderr
    shown = pqcfs("audit", "show", str(a), "--passfile", str(pw), env_extra=state).stdout
    assert shown.count("host-unlock-failed") == 2, shown
    counter.unlink()
    always_wrong = pqcfs("audit", "verify", str(a), "--extpass", "echo wrong", env_extra=state)
    assert always_wrong.returncode == exitcodes.WRONG_KEY
    assert always_wrong.stderr.count("try ") == 2
    # A passfile is not a person: one try.
    (tmp / "bad").write_text("wrong\n")
    once = pqcfs("audit", "verify", str(a), "--passfile", str(tmp / "bad"), env_extra=state)
    assert once.returncode == exitcodes.WRONG_KEY and "try " not in once.stderr


def _parsers(parser, path=("pqcfs",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, path + (name,))


def test_every_argument_has_help_and_every_page_says_where_the_exit_codes_are():
    from pqcfs.cli.main import EPILOG, build_parser
    for path, parser in _parsers(build_parser()):
        assert parser.epilog == EPILOG, path
        for action in parser._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
                assert action.help, f"{' '.join(path)} {action.option_strings or action.dest} has no help text"


def test_mistakes_are_reported_by_their_own_command():
    r = pqcfs("mount", "--foo", "a", "b")
    assert r.returncode == exitcodes.USAGE
    assert r.stderr.startswith("usage: pqcfs mount") and "pqcfs: mount: unrecognized arguments: --foo" in r.stderr
    r = pqcfs("keys")
    assert r.returncode == exitcodes.USAGE and "pqcfs: keys: the following arguments are required: list|add|remove" \
        in r.stderr
    r = pqcfs("init", "/x", "--extpass", "false", "--allow-fixed")
    assert r.returncode == exitcodes.NOT_A_VAULT      # the location first, before any secret is asked
    every_line = [line for line in r.stderr.splitlines() if line]
    assert every_line and all(line.startswith("pqcfs: ") for line in every_line), r.stderr


def test_extpass_failures_are_told_in_words(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for command, said in [("false", "the extpass program false failed (exit status 1)"),
                          ("no-such-program-here", "the extpass program no-such-program-here was not found"),
                          ("'unclosed", "--extpass 'unclosed: No closing quotation")]:
        r = pqcfs("init", str(a), str(b), "--extpass", command, "--allow-fixed", "--allow-same-device")
        assert r.returncode == exitcodes.ERROR and f"pqcfs: {said}" in r.stderr and "[" not in r.stderr, r.stderr


def test_the_man_page_and_completions_come_from_the_parser(tmp_path):
    from pqcfs.cli import manpage
    from pqcfs.cli.main import COMMANDS, build_parser
    written = manpage.write_all(build_parser(), str(tmp_path))
    page = (tmp_path / "man1" / "pqcfs.1").read_text()
    commands = [name for path, _ in _parsers(build_parser()) if len(path) == 2 for name in path[1:]]
    assert len(commands) >= len(COMMANDS)
    for name in commands:
        assert f"pqcfs {name}" in page, name
    for code, meaning in exitcodes.MEANINGS.items():
        assert f".B {code}\n" in page and manpage._roff(meaning) in page, code
    rendered = subprocess.run(["man", "-l", str(tmp_path / "man1" / "pqcfs.1")], capture_output=True, text=True,
                              env={**os.environ, "MANWIDTH": "100"})
    assert rendered.returncode == 0 and "EXIT STATUS" in rendered.stdout and "SEE ALSO" in rendered.stdout
    bash = (tmp_path / "bash-completion" / "pqcfs").read_text()
    assert subprocess.run(["bash", "-n", str(tmp_path / "bash-completion" / "pqcfs")]).returncode == 0
    assert all(name in bash for name in commands) and "--passfile" in bash
    assert (tmp_path / "zsh" / "_pqcfs").read_text().startswith("#compdef pqcfs")
    assert len(written) == 3


def test_init_wants_a_backup_or_single_and_ignores_what_desktops_leave(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("a long enough passphrase for pqcfs tests\n")
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for junk in (".Trash-1000", ".Spotlight-V100", ".fseventsd", "lost+found"):
        (a / junk).mkdir()
    (a / ".DS_Store").write_bytes(b"\0")
    r = pqcfs("init", str(a), "--passfile", str(pw), "--allow-fixed")
    assert r.returncode == exitcodes.DRIVE and "--single" in r.stderr and "BACKUP" in r.stderr
    r = pqcfs("init", str(a), "--passfile", str(pw), "--allow-fixed", "--single")
    assert r.returncode == 0, r.stderr
    status = pqcfs("status", str(a), "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["backup"] is False
    assert "no backup" in pqcfs("status", str(a)).stdout
    # Remembered at init: the fixed disk is not questioned again, and every command takes the flag.
    assert json.loads(pqcfs("info", str(a), "--json").stdout)["replicas"][0]["fixed"] is True
    assert pqcfs("fsck", str(a), "--passfile", str(pw), "--allow-fixed").returncode == 0
    (b / "notes.txt").write_text("mine")
    (b / ".Trash-1000").mkdir()
    r = pqcfs("init", str(b), "--passfile", str(pw), "--allow-fixed", "--single")
    assert r.returncode == exitcodes.ERROR and "it holds notes.txt" in r.stderr and "Trash" not in r.stderr


def test_a_weak_new_passphrase_gets_an_estimate(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (tmp_path / "weak").write_text("abc123\n")
    r = pqcfs("init", str(a), str(b), "--passfile", str(tmp_path / "weak"), "--allow-fixed", "--allow-same-device")
    assert r.returncode == 0
    assert "pqcfs: warning: this passphrase is weak" in r.stderr and "Argon2id" in r.stderr
    (tmp_path / "strong").write_text("tangerine orbit cathedral wobbly 93 saxophone\n")
    r = pqcfs("passwd", str(a), "--passfile", str(tmp_path / "weak"), "--new-passfile", str(tmp_path / "strong"))
    assert r.returncode == 0 and "weak" not in r.stderr, r.stderr
