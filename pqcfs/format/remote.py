"""What an offsite remote holds, as bytes: objects named by a keyed hash, sealed directory
pages and sealed epoch records (docs/offsite.md has the layout and the reasoning).

  objects/<id[:2]>/<id>   a file of a replica (ciphertext, byte for byte) or a sealed page;
                          id = hex(BLAKE3-256(data, key = object_key))
  epochs/<20 digits>      epoch record N: AES-GCM(seal_key, JSON, aad = "pqcfs remote epoch v1"
                          || vault_id || u64be(N)); commits one complete vault
  pqcfs.vault             the vault header, as on a drive (unlock needs it before any key)

A page lists one directory of the replica: {"d": {name: page id}, "f": {name: [object id,
size]}}, sealed with aad "pqcfs remote page v1" || vault_id. The epoch record names the
top page (the replica directory; every other page and object is reached from it, each
checked against its keyed id) and the replica state a recovered drive continues from.

The remote is untrusted: a reader authenticates an epoch record before using a byte of it,
checks a page's and an object's id (keyed: the remote can not make a matching one) and size
before use, and caps every read (below).
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field

import blake3

from pqcfs.crypto.aead import open_sealed, seal
from pqcfs.crypto.kdf import LABEL_REMOTE_OBJECT, LABEL_REMOTE_SEAL, hkdf
from pqcfs.errors import CryptoError, DamagedStructure, UnsupportedVersion

VERSION = 1
EPOCH_CAP = 256 << 10        # an epoch record: the state (lineage: ~10 KiB) and counts
PAGE_CAP = 64 << 20          # a directory page (a directory of ~500,000 entries)
MAX_OBJECT = 1 << 46         # sizes above this are not a replica's file
MAX_NAME = 255
ID_LEN = 64                  # hex of 32 bytes
_ID = re.compile(r"\A[0-9a-f]{64}\Z")
_EPOCH_NAME = re.compile(r"\A[0-9]{20}\Z")
_EPOCH_AAD = b"pqcfs remote epoch v1"
_PAGE_AAD = b"pqcfs remote page v1"


@dataclass(frozen=True)
class RemoteKeys:
    object_key: bytes
    seal_key: bytes

    @classmethod
    def derive(cls, root_key: bytes) -> "RemoteKeys":
        return cls(hkdf(root_key, LABEL_REMOTE_OBJECT), hkdf(root_key, LABEL_REMOTE_SEAL))

    def hasher(self):
        return blake3.blake3(key=self.object_key)

    def object_id(self, data: bytes) -> str:
        return blake3.blake3(data, key=self.object_key).hexdigest()


def object_path(oid: str) -> str:
    return f"{oid[:2]}/{oid}"


def is_object_id(value) -> bool:
    return isinstance(value, str) and _ID.match(value) is not None


def epoch_name(number: int) -> str:
    return f"{number:020d}"


def parse_epoch_name(name: str) -> int | None:
    """The number of an epoch record's name, None for anything else the remote holds."""
    return int(name) if _EPOCH_NAME.match(name) else None


def check_name(name) -> None:
    """A name in a page becomes a path on the new drives at recover: one component."""
    if (not isinstance(name, str) or not name or len(name.encode()) > MAX_NAME or "/" in name or "\0" in name
            or name in (".", "..")):
        raise DamagedStructure(f"a remote directory page names an impossible entry ({name!r:.80})")


@dataclass
class Page:
    dirs: dict[str, str] = field(default_factory=dict)              # name -> page id
    files: dict[str, tuple[str, int]] = field(default_factory=dict)  # name -> (object id, size)

    def plain(self) -> bytes:
        """Canonical bytes: the same directory gives the same bytes (a page that did not
        change is not sealed and sent again)."""
        return json.dumps({"v": VERSION, "d": self.dirs, "f": {k: list(v) for k, v in self.files.items()}},
                          sort_keys=True, separators=(",", ":")).encode()


def seal_page(keys: RemoteKeys, vault_id: bytes, plain: bytes) -> bytes:
    return seal(keys.seal_key, plain, _PAGE_AAD + vault_id)


def open_page(keys: RemoteKeys, vault_id: bytes, data: bytes) -> Page:
    if len(data) > PAGE_CAP:
        raise DamagedStructure(f"a remote directory page is {len(data)} bytes (at most {PAGE_CAP})")
    try:
        raw = json.loads(open_sealed(keys.seal_key, data, _PAGE_AAD + vault_id))
    except CryptoError:
        raise CryptoError("a remote directory page failed authentication") from None
    except ValueError:
        raise DamagedStructure("a remote directory page does not decode") from None
    try:
        if raw["v"] != VERSION:
            raise UnsupportedVersion(f"remote directory page version {raw['v']!r} is not one this pqcfs reads")
        page = Page(dict(raw["d"]), {k: (v[0], v[1]) for k, v in dict(raw["f"]).items()})
    except (KeyError, TypeError, ValueError, IndexError):
        raise DamagedStructure("a remote directory page has the wrong shape") from None
    for name, pid in page.dirs.items():
        check_name(name)
        if not is_object_id(pid):
            raise DamagedStructure("a remote directory page names a page that is not an id")
    for name, (oid, size) in page.files.items():
        check_name(name)
        if name in page.dirs or not is_object_id(oid) or type(size) is not int or not 0 <= size <= MAX_OBJECT:
            raise DamagedStructure("a remote directory page lists a file with an impossible id or size")
    return page


@dataclass
class Epoch:
    number: int
    time: str
    top: str                  # page id of the replica directory
    header: str               # object id of the vault header the epoch was pushed with
    state: dict               # lineage, generation, audit_head, grantee_heads, clean of the pushed replica
    objects: int              # how many objects the epoch needs (pages included; the pages list them)
    files: int = 0
    size: int = 0             # bytes of the replica's files
    format: int = VERSION


def seal_epoch(keys: RemoteKeys, vault_id: bytes, epoch: Epoch) -> bytes:
    body = json.dumps(epoch.__dict__, sort_keys=True, separators=(",", ":")).encode()
    return seal(keys.seal_key, body, _EPOCH_AAD + vault_id + struct.pack(">Q", epoch.number))


def open_epoch(keys: RemoteKeys, vault_id: bytes, number: int, data: bytes) -> Epoch:
    """Epoch record `number`, authenticated: a record moved to another number, or from
    another vault, fails like a changed one."""
    if len(data) > EPOCH_CAP:
        raise DamagedStructure(f"remote epoch record {number} is {len(data)} bytes (at most {EPOCH_CAP})")
    try:
        raw = json.loads(open_sealed(keys.seal_key, data, _EPOCH_AAD + vault_id + struct.pack(">Q", number)))
    except CryptoError:
        raise CryptoError(f"remote epoch record {number} failed authentication (changed, swapped, or "
                          "not this vault's)") from None
    except ValueError:
        raise DamagedStructure(f"remote epoch record {number} does not decode") from None
    try:
        if raw.get("format") != VERSION:
            raise UnsupportedVersion(f"remote epoch record format {raw.get('format')!r} is not one this pqcfs reads")
        epoch = Epoch(**raw)
    except TypeError:
        raise DamagedStructure(f"remote epoch record {number} has the wrong shape") from None
    if (epoch.number != number or not is_object_id(epoch.top) or not is_object_id(epoch.header)
            or not isinstance(epoch.state, dict) or type(epoch.objects) is not int or type(epoch.files) is not int
            or type(epoch.size) is not int):
        raise DamagedStructure(f"remote epoch record {number} has the wrong shape")
    return epoch
