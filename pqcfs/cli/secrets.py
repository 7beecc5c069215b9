"""Where secrets come from: a prompt, --passfile FILE or --extpass CMD (gocryptfs' rules).

A passfile's first line is the passphrase (the newline is not part of it); an extpass
program's first line of standard output likewise. Secrets are never logged or echoed.
"""

from __future__ import annotations

import getpass
import shlex
import subprocess
import sys

from pqcfs.errors import PqcfsError


TRIES = 3


class SecretError(PqcfsError):
    pass


def _first_line(data: bytes, origin: str) -> bytes:
    line = data.split(b"\n", 1)[0].rstrip(b"\r")
    if not line:
        raise SecretError(f"{origin} gave an empty passphrase")
    return line


def from_file(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return _first_line(f.read(), f"passfile {path}")
    except OSError as e:
        raise SecretError(f"cannot read passfile {path}: {e.strerror}") from None


def from_program(command: str) -> bytes:
    try:
        words = shlex.split(command)
        if not words:
            raise ValueError("no program given")
        out = subprocess.run(words, stdout=subprocess.PIPE, timeout=300)
    except ValueError as e:
        raise SecretError(f"--extpass {command}: {e}") from None
    except FileNotFoundError:
        raise SecretError(f"the extpass program {words[0]} was not found") from None
    except OSError as e:
        raise SecretError(f"the extpass program {words[0]} could not run: {e.strerror}") from None
    except subprocess.TimeoutExpired:
        raise SecretError(f"the extpass program {words[0]} gave no passphrase within 300 s") from None
    if out.returncode != 0:
        raise SecretError(f"the extpass program {words[0]} failed (exit status {out.returncode}); no passphrase")
    return _first_line(out.stdout, "the extpass program")


def _ask(text: str) -> bytes:
    try:
        return getpass.getpass(text).encode()
    except (KeyboardInterrupt, EOFError):
        # The prompt's line is still open: end it, so "interrupted" gets a line of its own.
        sys.stderr.write("\n")
        raise KeyboardInterrupt from None


def prompt(label: str, confirm: bool) -> bytes:
    if not sys.stdin.isatty():
        raise SecretError(f"{label}: no terminal to ask on; use --passfile or --extpass")
    for n in range(1, TRIES + 1):
        first = _ask(f"{label}: ")
        if not first:
            problem = "the passphrase is empty"
        elif confirm and _ask(f"{label} (again): ") != first:
            problem = "the passphrases did not match"
        else:
            return first
        if n == TRIES:
            raise SecretError(problem)
        print(f"pqcfs: {problem}; try {n + 1} of {TRIES}", file=sys.stderr)
    raise AssertionError("unreachable")


def passphrase(passfile: str | None, extpass: str | None, label: str, confirm: bool = False) -> bytes:
    """confirm: a new passphrase (asked twice at a prompt, and judged for strength)."""
    if passfile:
        secret = from_file(passfile)
    elif extpass:
        secret = from_program(extpass)
    else:
        secret = prompt(label, confirm)
    if confirm:
        warn_if_weak(secret)
    return secret


def new_passphrase(passfile: str | None, label: str) -> bytes:
    return passphrase(passfile, None, label, confirm=True)


def strength(secret: bytes) -> dict:
    """zxcvbn's estimate (a maintained estimator: dictionaries, keyboard patterns, dates,
    l33t; not a rule of ours): score 0-4, and how long an offline attack at 10,000
    guesses per second would take, which is about what Argon2id allows on one machine."""
    import zxcvbn   # only where a passphrase is chosen: loading its dictionaries takes time
    result = zxcvbn.zxcvbn(secret.decode(errors="replace")[:100])
    return {"score": result["score"], "guesses": result["guesses"],
            "crack_time": result["crack_times_display"]["offline_slow_hashing_1e4_per_second"],
            "warning": result["feedback"].get("warning") or "",
            "suggestions": result["feedback"].get("suggestions") or []}


def warn_if_weak(secret: bytes) -> None:
    judged = strength(secret)
    if judged["score"] >= 3:
        return
    why = f" ({judged['warning'].rstrip('.')})" if judged["warning"] else ""
    hint = f" {judged['suggestions'][0]}" if judged["suggestions"] else ""
    print(f"pqcfs: warning: this passphrase is weak{why}; guessing it through Argon2id would take someone with "
          f"the drives: {judged['crack_time']}.{hint} It is used anyway; `pqcfs passwd` changes it.", file=sys.stderr)
