"""A vault: its header, key slots and replicas. Creating, unlocking and re-keying slots.

This is policy over the pure formats; the only I/O is whole-file reads and atomic writes
of the header, the replica state and the root directory's id file.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field

from pqcfs.crypto import kem
from pqcfs.crypto.kdf import Argon2Params, calibrate
from pqcfs.crypto.keys import NodeKeys, root_dir_keys
from pqcfs.errors import CryptoError, DamagedStructure, DriveError, NotAVault, PqcfsError, WrongKey
from pqcfs.format import node_header, replica_state, slots, vault_header
from pqcfs.format.identity import Identity, PublicIdentity
from pqcfs.format.names import DIR_ID_NAME
from pqcfs.store import devices
from pqcfs.store.atomic import write_atomic

TREE_DIR = "tree"
DEFAULT_BLOCK_SIZE = 4096
ROOT_KEY_LEN = 32
# Entries a fresh file system may already hold; anything else means "not empty".
IGNORABLE = {"lost+found", "System Volume Information", ".Trash-0", "$RECYCLE.BIN"}


@dataclass
class Credentials:
    """Key material offered for unlocking; the first that opens a slot wins."""

    passphrase: bytes | None = None
    recovery_code: bytes | None = None
    identity: Identity | None = None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise NotAVault(f"{os.path.dirname(path)} holds no pqcfs vault") from None
    except IsADirectoryError:
        raise NotAVault(f"{os.path.dirname(path)} holds no pqcfs vault") from None


def read_header(location: str) -> tuple[vault_header.VaultHeader, bytes, bytes]:
    if not os.path.isdir(location):
        raise NotAVault(f"{location}: no such directory (is the drive plugged in and mounted?)")
    return vault_header.decode(_read(os.path.join(location, vault_header.FILE_NAME)))


def read_state(location: str, root_key: bytes | None) -> replica_state.ReplicaState:
    return replica_state.decode(_read(os.path.join(location, replica_state.FILE_NAME)), root_key)


def write_state(location: str, state: replica_state.ReplicaState, root_key: bytes) -> None:
    write_atomic(os.path.join(location, replica_state.FILE_NAME), replica_state.encode(state, root_key))


def _check_empty(location: str) -> None:
    if not os.path.isdir(location):
        raise NotAVault(f"{location}: no such directory")
    if os.path.exists(os.path.join(location, vault_header.FILE_NAME)):
        raise PqcfsError(f"{location} already holds a pqcfs vault")
    extra = set(os.listdir(location)) - IGNORABLE
    if extra:
        raise PqcfsError(f"{location} is not empty ({len(extra)} entries); init needs an empty drive or directory")


def create(locations: list[str], *, passphrase: bytes | None, kdf: Argon2Params | None = None,
           suite: str = kem.DEFAULT_SUITE, block_size: int = DEFAULT_BLOCK_SIZE,
           identity: PublicIdentity | None = None,
           drive_infos: list[devices.DriveInfo] | None = None) -> tuple["UnlockedVault", bytes]:
    """Create a vault on every location; returns it unlocked plus the recovery code."""
    kem.get_suite(suite)
    if passphrase is None and identity is None:
        raise PqcfsError("a vault needs a passphrase or an identity")
    for location in locations:
        _check_empty(location)
    root_key, vault_id = os.urandom(ROOT_KEY_LEN), os.urandom(16)
    header = vault_header.VaultHeader(vault_id=vault_id, suite=suite, block_size=block_size,
                                      created=_now())
    if passphrase is not None:
        header.slots.append(slots.passphrase_slot(1, root_key, vault_id, passphrase, kdf or calibrate()))
    code = slots.new_recovery_code()
    header.slots.append(slots.recovery_slot(header.next_slot_id(), root_key, vault_id, code))
    if identity is not None:
        header.slots.append(slots.identity_slot(header.next_slot_id(), root_key, vault_id, identity.suite,
                                                identity.kem_pk, identity.fingerprint, "owner"))
    for n, location in enumerate(locations):
        info = drive_infos[n] if drive_infos else None
        subpath = os.path.relpath(info.path, info.mountpoint) if info and info.mountpoint else None
        header.replicas.append({"id": os.urandom(8).hex(), "role": "primary" if n == 0 else "backup",
                                "fs_uuid": info.fs_uuid if info else None, "subpath": subpath,
                                "path_hint": os.path.realpath(location)})
    vault = UnlockedVault(header, root_key, list(locations), slot_id=1)
    root_id = node_header.new_node_id()
    root_keys = root_dir_keys(root_key, root_id)
    meta = node_header.Meta(mode=0o40755, uid=os.getuid(), gid=os.getgid())
    root_dir_file = node_header.build(node_header.MAGIC_DIR, root_id, root_keys.meta_key, meta)
    genesis = "init-" + os.urandom(8).hex()
    for location, replica in zip(locations, header.replicas):
        tree = os.path.join(location, TREE_DIR)
        os.mkdir(tree, 0o700)
        write_atomic(os.path.join(tree, DIR_ID_NAME), root_dir_file)
        state = replica_state.ReplicaState(vault_id.hex(), replica["id"], lineage=[genesis])
        write_atomic(os.path.join(location, replica_state.FILE_NAME), replica_state.encode(state, root_key))
    vault.save_header()  # last: a location with a header is a complete vault
    return vault, code


@dataclass
class UnlockedVault:
    header: vault_header.VaultHeader
    root_key: bytes
    locations: list[str]
    slot_id: int
    extra: dict = field(default_factory=dict)

    def save_header(self) -> None:
        data = vault_header.encode(self.header, self.root_key)
        for location in self.locations:
            write_atomic(os.path.join(location, vault_header.FILE_NAME), data)

    def root_dir_keys(self) -> NodeKeys:
        data = _read(os.path.join(self.locations[0], TREE_DIR, DIR_ID_NAME))
        return root_dir_keys(self.root_key, node_header.parse_prefix(data, node_header.MAGIC_DIR))

    # Slot management: every change rewrites the header on every replica.
    def add_passphrase(self, passphrase: bytes, kdf: Argon2Params | None = None) -> int:
        slot_id = self.header.next_slot_id()
        self.header.slots.append(slots.passphrase_slot(slot_id, self.root_key, self.header.vault_id,
                                                       passphrase, kdf or calibrate()))
        self.save_header()
        return slot_id

    def add_recovery(self) -> tuple[int, bytes]:
        slot_id, code = self.header.next_slot_id(), slots.new_recovery_code()
        self.header.slots.append(slots.recovery_slot(slot_id, self.root_key, self.header.vault_id, code))
        self.save_header()
        return slot_id, code

    def add_identity(self, public: PublicIdentity, label: str = "") -> int:
        if any(s["type"] == slots.IDENTITY and s["recipient"] == public.fingerprint for s in self.header.slots):
            raise PqcfsError(f"identity {public.fingerprint} already has a slot")
        slot_id = self.header.next_slot_id()
        self.header.slots.append(slots.identity_slot(slot_id, self.root_key, self.header.vault_id, public.suite,
                                                     public.kem_pk, public.fingerprint, label))
        self.save_header()
        return slot_id

    def remove_slot(self, slot_id: int) -> None:
        remaining = [s for s in self.header.slots if s["id"] != slot_id]
        if len(remaining) == len(self.header.slots):
            raise PqcfsError(f"there is no key slot {slot_id}")
        if not any(s["type"] in (slots.PASSPHRASE, slots.IDENTITY) for s in remaining):
            raise PqcfsError("refusing to remove the last passphrase or identity slot")
        self.header.slots = remaining
        self.save_header()

    def change_passphrase(self, slot_id: int, passphrase: bytes, kdf: Argon2Params | None = None) -> None:
        for n, slot in enumerate(self.header.slots):
            if slot["id"] == slot_id:
                if slot["type"] != slots.PASSPHRASE:
                    raise PqcfsError(f"key slot {slot_id} is not a passphrase slot")
                self.header.slots[n] = slots.passphrase_slot(slot_id, self.root_key, self.header.vault_id,
                                                             passphrase, kdf or calibrate())
                self.save_header()
                return
        raise PqcfsError(f"there is no key slot {slot_id}")


def _try_slot(slot: dict, vault_id: bytes, creds: Credentials) -> bytes | None:
    try:
        if slot["type"] == slots.PASSPHRASE and creds.passphrase is not None:
            return slots.open_passphrase_slot(slot, vault_id, creds.passphrase)
        if slot["type"] == slots.RECOVERY and creds.recovery_code is not None:
            return slots.open_recovery_slot(slot, vault_id, creds.recovery_code)
        if (slot["type"] == slots.IDENTITY and creds.identity is not None
                and slot.get("recipient") == creds.identity.public.fingerprint):
            return slots.open_identity_slot(slot, vault_id, creds.identity.kem_seed)
    except CryptoError:
        return None
    except (KeyError, TypeError):
        raise DamagedStructure(f"key slot {slot.get('id')} is malformed") from None
    return None


def unlock(locations: list[str], creds: Credentials) -> UnlockedVault:
    header, signed, mac = read_header(locations[0])
    for slot in header.slots:
        root_key = _try_slot(slot, header.vault_id, creds)
        if root_key is None:
            continue
        if len(root_key) != ROOT_KEY_LEN or not vault_header.verify_mac(signed, mac, root_key):
            raise DamagedStructure("vault header failed authentication: it was modified without the key")
        vault = UnlockedVault(header, root_key, list(locations), slot_id=slot["id"])
        _check_replica_headers(vault, signed)
        return vault
    raise WrongKey("no key slot opens with that key (wrong passphrase, recovery code or identity)")


def _check_replica_headers(vault: UnlockedVault, signed: bytes) -> None:
    for location in vault.locations[1:]:
        other, other_signed, other_mac = read_header(location)
        if other.vault_id != vault.header.vault_id:
            raise DriveError(f"{location} holds a different vault")
        if not vault_header.verify_mac(other_signed, other_mac, vault.root_key):
            raise DamagedStructure(f"vault header on {location} failed authentication")

