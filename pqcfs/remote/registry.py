"""This machine's side of a vault's remotes: which remotes it pushes to, and for each one an
index of what the remote holds. Nothing here is ever written to a replica: a remote's
address and credentials stay on the host (in rclone's config, or in the path given).

  <state dir>/remotes/<vault id>.json           {"format": 1, "remotes": [{"name", "path", "rclone_config"}]}
  <state dir>/remotes/<vault id>.<name>.index   JSON body "\\n" hex(HMAC(index key, body)) "\\n"
  <state dir>/remotes/<vault id>.<name>.status  the last push, for `pqcfs status` (no key needed)
  <state dir>/remotes/<vault id>.<name>.staging/  objects copied at a push's consistent point

The index holds the epoch this machine last committed (and its record's digest: a record
replaced on the remote is told from ours), each pushed file's stat signature and object
id (an unchanged file is not read again), each directory page, and the objects the last
two epochs need. Its MAC (a key from the root key) makes a damaged or forged index an
error: it is this machine's rollback record for the remote.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field

from pqcfs import userdirs
from pqcfs.crypto.kdf import LABEL_REMOTE_INDEX, hkdf
from pqcfs.errors import DamagedStructure, PqcfsError
from pqcfs.remote.rclone import Remote
from pqcfs.store.atomic import write_atomic

NAME = re.compile(r"\A[a-z0-9][a-z0-9_-]{0,31}\Z")
INDEX_CAP = 512 << 20


def _dir() -> str:
    return os.path.join(userdirs.state_dir(), "remotes")


def _base(vault_id: bytes) -> str:
    return os.path.join(_dir(), vault_id.hex())


@dataclass
class RemoteEntry:
    name: str
    path: str
    rclone_config: str | None = None

    def remote(self, bwlimit: str | None = None) -> Remote:
        return Remote(self.path, self.rclone_config, bwlimit)

    def file(self, vault_id: bytes, suffix: str) -> str:
        return f"{_base(vault_id)}.{self.name}.{suffix}"


def default_name(path: str) -> str:
    """`offsite:vaults/v1` -> "offsite"; a connection string `:sftp,host=...:` -> "sftp"."""
    if path.startswith(":"):                 # a connection string: its backend
        head = re.split(r"[,:]", path[1:], maxsplit=1)[0]
    else:
        head = path.split(":", 1)[0] if ":" in path and not path.startswith(("/", ".")) else "local"
    head = head.lower()
    head = re.sub(r"[^a-z0-9_-]", "-", head)[:32].strip("-")
    return head or "remote"


def load(vault_id: bytes) -> list[RemoteEntry]:
    try:
        with open(_base(vault_id) + ".json", "rb") as f:
            raw = json.loads(f.read(1 << 20))
        return [RemoteEntry(r["name"], r["path"], r.get("rclone_config")) for r in raw["remotes"]]
    except FileNotFoundError:
        return []
    except (ValueError, KeyError, TypeError):
        raise DamagedStructure(f"this machine's list of remotes ({_base(vault_id)}.json) is damaged") from None


def save(vault_id: bytes, entries: list[RemoteEntry]) -> None:
    os.makedirs(_dir(), mode=0o700, exist_ok=True)
    body = json.dumps({"format": 1, "remotes": [e.__dict__ for e in entries]}, indent=1).encode()
    with userdirs.open_private(_base(vault_id) + ".json.new", "wb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(_base(vault_id) + ".json.new", _base(vault_id) + ".json")


def find(vault_id: bytes, name: str) -> RemoteEntry:
    for entry in load(vault_id):
        if entry.name == name:
            return entry
    known = ", ".join(e.name for e in load(vault_id)) or "none"
    raise PqcfsError(f"this vault has no remote named {name!r} on this machine (known: {known}; "
                     "`pqcfs remote add` adds one)")


@dataclass
class Index:
    epoch: int = 0
    epoch_digest: str = ""
    header: str = ""                       # object id of the header last put at the remote's top
    files: dict = field(default_factory=dict)     # rel -> [size, mtime_ns, ctime_ns, ino, object id]
    pages: dict = field(default_factory=dict)     # dir rel -> [plain digest, page id]
    objects: list = field(default_factory=list)   # ids epoch `epoch` needs
    previous: list = field(default_factory=list)  # ids epoch `epoch - 1` needs that `epoch` does not
    pushed_at: float = 0.0


def _mac(root_key: bytes, body: bytes) -> str:
    return hmac.new(hkdf(root_key, LABEL_REMOTE_INDEX), body, hashlib.sha256).hexdigest()


def load_index(entry: RemoteEntry, vault_id: bytes, root_key: bytes) -> Index:
    path = entry.file(vault_id, "index")
    try:
        with open(path, "rb") as f:
            data = f.read(INDEX_CAP + 1)
    except FileNotFoundError:
        return Index()
    try:
        body, mac, rest = data.split(b"\n")
        if rest or not hmac.compare_digest(_mac(root_key, body).encode(), mac):
            raise ValueError("MAC")
        return Index(**json.loads(body))
    except (ValueError, TypeError):
        raise DamagedStructure(f"this machine's index of remote {entry.name!r} ({path}) is damaged; remove it "
                               "and push again (everything is compared once more)") from None


def peek_index(entry: RemoteEntry, vault_id: bytes) -> Index:
    """The index without its MAC checked, for what `pqcfs status` shows without the key
    (how far behind the remote is): never used to decide anything."""
    try:
        with open(entry.file(vault_id, "index"), "rb") as f:
            body = f.read(INDEX_CAP + 1).split(b"\n", 1)[0]
        return Index(**json.loads(body))
    except (OSError, ValueError, TypeError):
        return Index()


def save_index(entry: RemoteEntry, vault_id: bytes, root_key: bytes, index: Index) -> None:
    body = json.dumps(index.__dict__, separators=(",", ":")).encode()
    os.makedirs(_dir(), mode=0o700, exist_ok=True)
    write_atomic(entry.file(vault_id, "index"), body + b"\n" + _mac(root_key, body).encode() + b"\n")
    os.chmod(entry.file(vault_id, "index"), 0o600)


def save_status(entry: RemoteEntry, vault_id: bytes, **fields) -> None:
    """What `pqcfs status` shows without the key: the last push, or why it failed."""
    status = {**load_status(entry, vault_id), **fields, "updated": time.time()}
    with userdirs.open_private(entry.file(vault_id, "status")) as f:
        json.dump(status, f)


def load_status(entry: RemoteEntry, vault_id: bytes) -> dict:
    try:
        with open(entry.file(vault_id, "status"), "rb") as f:
            status = json.loads(f.read(64 << 10))
        return status if isinstance(status, dict) else {}
    except (OSError, ValueError):
        return {}


def forget(entry: RemoteEntry, vault_id: bytes) -> None:
    for suffix in ("index", "status"):
        try:
            os.unlink(entry.file(vault_id, suffix))
        except FileNotFoundError:
            pass
    shutil.rmtree(entry.file(vault_id, "staging"), ignore_errors=True)
