"""The host-side log: events before the root key is known (wrong passphrase, missing
drive). Kept under the user's state directory and adopted into the vault's own log at
the next successful unlock. It holds vault ids and reasons, never secrets."""

from __future__ import annotations

import json
import os

from pqcfs import userdirs
from pqcfs.audit.writer import now


def path() -> str:
    return os.path.join(userdirs.state_dir(), "host-audit.jsonl")


def record(vault_id: str | None, event: str, **details) -> None:
    try:
        with userdirs.open_private(path(), "a") as f:
            f.write(json.dumps({"time": now(), "vault_id": vault_id, "event": event, **details}) + "\n")
    except OSError:
        pass  # the host log is best effort; the command's own error still reaches the user


def take(vault_id: str) -> list[dict]:
    """Remove and return this vault's pending host events."""
    try:
        with open(path()) as f:
            lines = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return []
    mine = [e for e in lines if e.get("vault_id") == vault_id]
    if mine:
        rest = [e for e in lines if e.get("vault_id") != vault_id]
        tmp = path() + ".tmp"
        with userdirs.open_private(tmp) as f:
            f.writelines(json.dumps(e) + "\n" for e in rest)
        os.replace(tmp, path())
    return mine
