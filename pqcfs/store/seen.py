"""The machine's record of the newest state of each vault it has mounted (CryFS-style):
the root directory table's sequence number at the last unmount. Drives that come back
holding an older root table have been rolled back as a whole (both drives alike), which
nothing on the drives themselves can show.

  <state dir>/<vault id hex>.seen = JSON {"format": 1, "root_seq": N} "\\n" hex(HMAC) "\\n"

The HMAC (key from the vault's root key) makes a damaged or forged record an error, not
a silent pass. The state directory is /var/lib/pqcfs for root, else
$XDG_STATE_HOME/pqcfs (~/.local/state/pqcfs); PQCFS_STATE_DIR overrides both.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os

from pqcfs.crypto.kdf import LABEL_SEEN, hkdf
from pqcfs.errors import DamagedStructure, RolledBack
from pqcfs.store.atomic import write_atomic

CAP = 4096


def state_dir() -> str:
    if os.environ.get("PQCFS_STATE_DIR"):
        return os.environ["PQCFS_STATE_DIR"]
    if os.geteuid() == 0:
        return "/var/lib/pqcfs"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "pqcfs")


def _path(vault_id: bytes) -> str:
    return os.path.join(state_dir(), vault_id.hex() + ".seen")


def _mac(root_key: bytes, body: bytes) -> str:
    return hmac.new(hkdf(root_key, LABEL_SEEN), body, hashlib.sha256).hexdigest()


def read(vault_id: bytes, root_key: bytes) -> int:
    """The newest root sequence number this machine has seen (0: never mounted here)."""
    try:
        with open(_path(vault_id), "rb") as f:
            data = f.read(CAP + 1)
    except FileNotFoundError:
        return 0
    try:
        body, mac, rest = data.split(b"\n")
        if rest or not hmac.compare_digest(_mac(root_key, body).encode(), mac):
            raise ValueError("MAC")
        record = json.loads(body)
        return int(record["root_seq"])
    except (ValueError, KeyError, TypeError):
        raise DamagedStructure(f"this machine's record of the vault ({_path(vault_id)}) is damaged; "
                               "remove it to accept the drives as they are") from None


def check(vault_id: bytes, root_key: bytes, root_seq: int) -> None:
    seen = read(vault_id, root_key)
    if root_seq < seen:
        raise RolledBack(f"the drives hold an older state of this vault than this machine has mounted "
                         f"(root table {root_seq} < {seen}): both drives were rolled back or replaced by "
                         f"old copies. If that was you, remove {_path(vault_id)} to accept them.")


def record(vault_id: bytes, root_key: bytes, root_seq: int) -> None:
    if root_seq <= read_or_zero(vault_id, root_key):
        return
    os.makedirs(state_dir(), mode=0o700, exist_ok=True)
    body = json.dumps({"format": 1, "root_seq": root_seq}, sort_keys=True).encode()
    write_atomic(_path(vault_id), body + b"\n" + _mac(root_key, body).encode() + b"\n")


def read_or_zero(vault_id: bytes, root_key: bytes) -> int:
    try:
        return read(vault_id, root_key)
    except DamagedStructure:
        return 0
