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
        out = subprocess.run(shlex.split(command), stdout=subprocess.PIPE, check=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        raise SecretError(f"extpass program failed: {e}") from None
    return _first_line(out.stdout, "extpass program")


def prompt(label: str, confirm: bool) -> bytes:
    if not sys.stdin.isatty():
        raise SecretError(f"{label}: no terminal to ask on; use --passfile or --extpass")
    for n in range(1, TRIES + 1):
        first = getpass.getpass(f"{label}: ").encode()
        if not first:
            problem = "the passphrase is empty"
        elif confirm and getpass.getpass(f"{label} (again): ").encode() != first:
            problem = "the passphrases did not match"
        else:
            return first
        if n == TRIES:
            raise SecretError(problem)
        print(f"pqcfs: {problem}; try {n + 1} of {TRIES}", file=sys.stderr)
    raise AssertionError("unreachable")


def passphrase(passfile: str | None, extpass: str | None, label: str, confirm: bool = False) -> bytes:
    if passfile:
        return from_file(passfile)
    if extpass:
        return from_program(extpass)
    return prompt(label, confirm)
