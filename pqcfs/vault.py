"""A vault: its header, key slots and replicas. Creating, unlocking and re-keying slots.

This is policy over the pure formats; the only I/O is whole-file reads and atomic writes
of the header, the replica state and the root directory's id file, all through the
replica's Drive.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import time
from dataclasses import dataclass, field

from pqcfs.crypto import kem
from pqcfs.crypto.kdf import Argon2Params, calibrate
from pqcfs.crypto.keys import NodeKeys, root_dir_keys
from pqcfs.errors import DamagedStructure, DriveError, NotAVault, PqcfsError, SetupError, WrongKey
from pqcfs.format import dir_table, node_header, replica_state, slots, vault_header
from pqcfs.format.identity import Identity, PublicIdentity
from pqcfs.format.names import DIR_ID_NAME
from pqcfs.store import devices, hostkeys, tpm2
from pqcfs.store.drive import Drive

TREE_DIR = "tree"
DEFAULT_BLOCK_SIZE = 4096
ROOT_KEY_LEN = 32
# Entries a fresh file system may already hold; anything else means "not empty".
# What file systems and desktops put on a fresh drive (fsck, Windows, the trash of GNOME
# and KDE, macOS' Finder, Spotlight and fseventsd): a drive holding only these is empty.
IGNORABLE = {"lost+found", "System Volume Information", "$RECYCLE.BIN", ".Trashes", ".DS_Store", ".Spotlight-V100",
             ".fseventsd", ".TemporaryItems", ".apdisk", "desktop.ini"}


def ignorable(name: str) -> bool:
    return name in IGNORABLE or bool(re.fullmatch(r"\.Trash-\d+", name)) or name.startswith("._")


@dataclass
class Credentials:
    """Key material offered for unlocking; the first that opens a slot wins."""

    passphrase: bytes | None = None
    recovery_code: bytes | None = None
    identity: Identity | None = None
    host: bool = False       # this machine's host keys (store/hostkeys.py)
    tpm2: "Tpm2Unlock | None" = None   # this machine's TPM (store/tpm2.py)


@dataclass
class Tpm2Unlock:
    tcti: str | None = None
    pin: bytes | None = None         # asked for (or read) only when a TPM slot has one
    ask_pin: object = None           # () -> bytes, when no PIN was given and a slot needs one


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def open_location(location: str) -> Drive:
    """The replica at location (the host path where the drive is mounted)."""
    try:
        return Drive(location)
    except (FileNotFoundError, NotADirectoryError):
        raise NotAVault(f"{location}: no such directory (is the drive plugged in and mounted?)") from None
    except PermissionError:
        raise DriveError(f"{location}: permission denied") from None
    except OSError as e:   # a drive pulled or its file system gone (EIO, ENOTCONN)
        raise DriveError(f"{location}: {e.strerror} (was the drive pulled?)") from None


@contextlib.contextmanager
def _using(where: "str | Drive"):
    if isinstance(where, Drive):
        yield where
        return
    with open_location(where) as drive:
        yield drive


def _read(drive: Drive, name: str, cap: int) -> bytes:
    try:
        return drive.read(name, cap)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise NotAVault(f"{drive.location} holds no pqcfs vault") from None


def read_header(where: "str | Drive", name: str = vault_header.FILE_NAME
                ) -> tuple[vault_header.VaultHeader, bytes, bytes]:
    with _using(where) as drive:
        return vault_header.decode(_read(drive, name, vault_header.MAX_FILE))


def holds_vault(location: str) -> bool:
    try:
        with open_location(location) as drive:
            return drive.kind(vault_header.FILE_NAME) == "file"
    except PqcfsError:
        return False


def read_state(where: "str | Drive", root_key: bytes | None) -> replica_state.ReplicaState:
    with _using(where) as drive:
        return replica_state.decode(_read(drive, replica_state.FILE_NAME, replica_state.MAX_FILE), root_key)


def write_state(where: "str | Drive", state: replica_state.ReplicaState, root_key: bytes) -> None:
    with _using(where) as drive:
        drive.write_atomic(replica_state.FILE_NAME, replica_state.encode(state, root_key))


def check_empty(location: str, command: str = "init") -> None:
    """A location a new replica may be written to: an existing directory holding no vault
    and nothing of a user's (lost+found and the like aside)."""
    if not os.path.isdir(location):
        raise NotAVault(f"{location}: no such directory")
    if os.path.lexists(os.path.join(location, vault_header.FILE_NAME)):
        raise PqcfsError(f"{location} already holds a pqcfs vault")
    extra = sorted(name for name in os.listdir(location) if not ignorable(name))
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise PqcfsError(f"{location} is not empty (it holds {shown}); {command} needs an empty drive or directory")


def create(locations: list[str], *, passphrase: bytes | None, kdf: Argon2Params | None = None,
           suite: str = kem.DEFAULT_SUITE, block_size: int = DEFAULT_BLOCK_SIZE,
           identity: PublicIdentity | None = None,
           drive_infos: list[devices.DriveInfo] | None = None,
           format_version: int = vault_header.VERSION,
           recovery: bool = True) -> tuple["UnlockedVault", bytes | None]:
    """Create a vault on every location; returns it unlocked plus the recovery code (None
    without one: an export made for someone else's identity must not leave its maker a
    way in). format_version 1 is for tests of old vaults and of `pqcfs upgrade`."""
    if format_version not in vault_header.READABLE_VERSIONS:
        raise PqcfsError(f"format {format_version} is not one this pqcfs writes")
    kem.get_suite(suite)
    if passphrase is None and identity is None:
        raise PqcfsError("a vault needs a passphrase or an identity")
    for location in locations:
        check_empty(location)
    root_key, vault_id = os.urandom(ROOT_KEY_LEN), os.urandom(16)
    header = vault_header.VaultHeader(vault_id=vault_id, suite=suite, block_size=block_size,
                                      created=_now(), version=format_version)
    if passphrase is not None:
        header.slots.append(slots.passphrase_slot(1, root_key, vault_id, passphrase, kdf or calibrate()))
    code = slots.new_recovery_code() if recovery else None
    if code is not None:
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
        if info is not None and not info.removable:
            # Chosen at init (--allow-fixed): remembered, so no later command asks again.
            header.replicas[-1]["fixed"] = True
    vault = UnlockedVault(header, root_key, list(locations), slot_id=1)
    root_id = node_header.new_node_id()
    root_keys = root_dir_keys(root_key, root_id)
    meta = node_header.Meta(mode=0o40755, uid=os.getuid(), gid=os.getgid())
    root_dir_file = node_header.build(node_header.MAGIC_DIR, root_id, root_keys.meta_key, meta)
    now = time.time_ns()
    _, root_table = dir_table.new_table(root_keys.meta_key, root_id, dir_table.Entry(
        node_id=root_id, mode=meta.mode, uid=meta.uid, gid=meta.gid, nlink=2, atime=now, mtime=now, ctime=now,
        btime=now))
    genesis = "init-" + os.urandom(8).hex()
    for location, replica in zip(locations, header.replicas):
        drive = vault.drive(location)
        drive.mkdir(TREE_DIR, 0o700)
        drive.write_atomic(f"{TREE_DIR}/{DIR_ID_NAME}", root_dir_file)
        if format_version >= 2:
            drive.write_atomic(f"{TREE_DIR}/{dir_table.NAME}", root_table)
        state = replica_state.ReplicaState(vault_id.hex(), replica["id"], lineage=[genesis])
        drive.write_atomic(replica_state.FILE_NAME, replica_state.encode(state, root_key))
    vault.save_header()  # last: a location with a header is a complete vault
    return vault, code


@dataclass
class UnlockedVault:
    header: vault_header.VaultHeader
    root_key: bytes
    locations: list[str]
    slot_id: int
    # What the command that unlocked it holds alongside (set by the CLI, used below it):
    lock: object = None             # the VaultLock, held until the command ends
    audit: object = None            # the AuditLog the command (or its session) appends to
    audit_served: bool = False      # a mount's session writes the log until unmount (see end_command)
    identity: object = None         # the identity that unlocked it, to sign audit checkpoints
    headers_healed: list = field(default_factory=list)    # (location, why) rewritten at unlock
    damaged_headers_seen: list = field(default_factory=list)   # (location, why) left for --repair
    grantee_log_problems: list = field(default_factory=list)
    _drives: dict = field(default_factory=dict, repr=False)
    # (location, why) of each replica whose copy of the header did not decode or authenticate
    damaged_headers: list = field(default_factory=list)
    # locations with no spare copy of the header yet (made before spares existed)
    spares_missing: list = field(default_factory=list)

    @property
    def tables(self) -> bool:
        """Format 2: directories keep their entries and attributes in tables (d.t)."""
        return self.header.version >= 2

    def drive(self, location: str) -> Drive:
        """The Drive of one of this vault's locations (opened once, kept for the session)."""
        if location not in self._drives:
            self._drives[location] = open_location(location)
        return self._drives[location]

    def adopt_drives(self, drives: dict[str, Drive], replace: bool = False) -> None:
        """Use Drives the caller already opened (and locked); with replace, instead of
        any this vault had open there (a drive that came back)."""
        for location, drive in drives.items():
            if replace:
                self._drives[location] = drive
            else:
                self._drives.setdefault(location, drive)

    @property
    def drives(self) -> list[Drive]:
        return [self.drive(location) for location in self.locations]

    def end_command(self) -> None:
        """The end of the command that unlocked it: the audit log's head recorded in each
        replica's state and the log closed (unless a mount's session writes it until
        unmount, in the daemon), the lock released, the drives closed."""
        try:
            if self.audit is not None and not self.audit_served:
                self.audit.sync()
                self.audit.close()
        finally:
            if self.lock is not None:
                self.lock.release()
            self.close()

    def close(self) -> None:
        for drive in self._drives.values():
            drive.close()
        self._drives.clear()

    def refresh_replica_hints(self) -> list[str]:
        """Record where each present replica is now (a drive mounted somewhere else this
        time), so the next command finds it directly; returns the replica ids moved. Only
        an authenticated state names the replica: a drive's word steers no header write."""
        moved = []
        for location in self.locations:
            try:
                replica_id = read_state(self.drive(location), self.root_key).replica_id
            except PqcfsError:
                continue
            here = os.path.realpath(location)
            for replica in self.header.replicas:
                if replica["id"] == replica_id and replica.get("path_hint") != here:
                    replica["path_hint"] = here
                    moved.append(replica_id)
        if moved:
            try:
                self.save_header()
            except (OSError, PqcfsError):
                return []   # a read-only drive: the hint is a convenience, not worth failing for
        return moved

    def heal_headers(self) -> list[tuple[str, str]]:
        """Rewrite each damaged copy of the header with the authenticated one (the bad one
        is kept in pqcfs.quarantine/ on its drive, never deleted); returns what was healed."""
        healed, data = [], vault_header.encode(self.header, self.root_key)
        for location, why in self.damaged_headers:
            drive = self.drive(location)
            for name in (vault_header.FILE_NAME, vault_header.SPARE_NAME):
                if drive.kind(name) == "file":
                    if drive.read(name, vault_header.MAX_FILE) == data:
                        continue
                    drive.quarantine(name, f"a damaged vault header ({why})")
                drive.write_atomic(name, data)
            healed.append((location, why))
        for location in self.spares_missing:
            self.drive(location).write_atomic(vault_header.SPARE_NAME, data)
        self.damaged_headers, self.spares_missing = [], []
        return healed

    def save_header(self, only: list[int] | None = None) -> None:
        """Write the header to every replica (only: to these replica indexes, a session's
        healthy ones; a sync brings the others the header with the rest)."""
        data = vault_header.encode(self.header, self.root_key)
        for n, drive in enumerate(self.drives):
            if only is None or n in only:
                drive.write_atomic(vault_header.FILE_NAME, data)
                drive.write_atomic(vault_header.SPARE_NAME, data)

    def root_dir_keys(self, location: str | None = None) -> NodeKeys:
        """Keys of the root directory, from the first replica whose root id file
        authenticates (a damaged one on the primary must not lock the owner out)."""
        error: Exception | None = None
        for where in ([location] if location else self.locations):
            try:
                data = self.drive(where).read(f"{TREE_DIR}/{DIR_ID_NAME}", node_header.HEADER_LEN)
                keys = root_dir_keys(self.root_key, node_header.parse_prefix(data, node_header.MAGIC_DIR))
                node_header.open_meta(keys.meta_key, data)
                return keys
            except (OSError, PqcfsError) as e:
                error = error or e
        if isinstance(error, PqcfsError):
            raise error
        raise DamagedStructure(f"the root directory of the vault can not be read: {error}")

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

    def add_host(self, label: str = "") -> tuple[int, str, str]:
        """A slot that this machine opens unattended: (slot id, key id, how the secret is kept)."""
        key_id, secret, kept = hostkeys.create(self.header.vault_id.hex())
        slot_id = self.header.next_slot_id()
        self.header.slots.append(slots.host_slot(slot_id, self.root_key, self.header.vault_id, secret, key_id,
                                                 label or os.uname().nodename))
        try:
            self.save_header()
        except BaseException:
            hostkeys.remove(self.header.vault_id.hex(), key_id)
            raise
        return slot_id, key_id, kept

    def add_tpm2(self, tpm: "tpm2.Tpm", pcrs: list[int], pin: bytes | None, label: str = "",
                 kdf: Argon2Params | None = None) -> tuple[int, dict]:
        """A slot whose secret this machine's TPM seals (to pcrs, and a PIN when given)."""
        secret = os.urandom(slots.TPM2_SECRET_LEN)
        params = (kdf or calibrate()) if pin is not None else None
        pin_key = slots.tpm2_pin_key(pin, params) if params else None
        fields = tpm.seal(secret, slots.tpm2_auth(pin_key), pcrs)
        slot_id = self.header.next_slot_id()
        self.header.slots.append(slots.tpm2_slot(slot_id, self.root_key, self.header.vault_id, secret, fields, params,
                                                 pin_key, label or os.uname().nodename))
        try:
            self.save_header()
        except BaseException:
            tpm.evict(fields)
            raise
        return slot_id, fields

    def remove_slot(self, slot_id: int, tpm: "tpm2.Tpm | None" = None) -> bool | None:
        """Remove a slot; for a TPM slot also its sealed key in tpm (returns whether that
        TPM held it: False means a TPM elsewhere may still hold it)."""
        remaining = [s for s in self.header.slots if s["id"] != slot_id]
        if len(remaining) == len(self.header.slots):
            raise PqcfsError(f"there is no key slot {slot_id}")
        if not any(s["type"] in (slots.PASSPHRASE, slots.IDENTITY) for s in remaining):
            raise PqcfsError("refusing to remove the last passphrase or identity slot")
        gone = next(s for s in self.header.slots if s["id"] == slot_id)
        self.header.slots = remaining
        self.save_header()
        if gone["type"] == slots.HOST:    # the machine's copy of the secret goes too, where it is this one
                hostkeys.remove(self.header.vault_id.hex(), gone["key_id"])
        if gone["type"] == slots.TPM2:
            # The sealed key is the slot's only secret: gone from the TPM, no copy of the
            # header (however old) opens the slot again.
            return (tpm or tpm2.Tpm()).evict(gone["tpm"])
        return None

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


# At most this many passphrase slots are tried per unlock (each costs an Argon2id run);
# --slot N names the one to try.
MAX_PASSPHRASE_TRIES = 4


def _try_slot(slot: dict, vault_id: bytes, creds: Credentials) -> bytes | None:
    """The root key if this slot opens with creds, else None: every way a slot can fail
    (wrong key, damaged, refused parameters) is the same answer, so a tampered slot
    tells nothing apart from a wrong passphrase."""
    try:
        if slot["type"] == slots.PASSPHRASE and creds.passphrase is not None:
            return slots.open_passphrase_slot(slot, vault_id, creds.passphrase)
        if slot["type"] == slots.RECOVERY and creds.recovery_code is not None:
            return slots.open_recovery_slot(slot, vault_id, creds.recovery_code)
        if (slot["type"] == slots.IDENTITY and creds.identity is not None
                and slot.get("recipient") == creds.identity.public.fingerprint):
            return slots.open_identity_slot(slot, vault_id, creds.identity.kem_seed)
        if slot["type"] == slots.HOST and creds.host:
            secret = _host_secret(vault_id, slot)
            return None if secret is None else slots.open_host_slot(slot, vault_id, secret)
        if slot["type"] == slots.TPM2 and creds.tpm2 is not None:
            return _open_tpm2(slot, vault_id, creds.tpm2)
    except (HostKeyRefused, tpm2.TpmError, SetupError):
        raise      # the TPM's own answer (wrong PIN and tries left, lockout, PCRs): said, not skipped
    except (PqcfsError, KeyError, TypeError, ValueError):
        return None
    return None


def _open_tpm2(slot: dict, vault_id: bytes, unlock: Tpm2Unlock) -> bytes:
    pin_key = None
    if slot.get("pin") is not None:
        if unlock.pin is None and unlock.ask_pin is not None:
            unlock.pin = unlock.ask_pin()
        if unlock.pin is None:
            raise tpm2.TpmError(f"TPM slot {slot['id']} needs its PIN (--pin-file FILE, or asked at a terminal)")
        pin_key = slots.tpm2_pin_key(unlock.pin, Argon2Params.from_dict(slot["pin"]))
    secret = tpm2.Tpm(unlock.tcti).unseal(slot["tpm"], slots.tpm2_auth(pin_key))
    return slots.open_tpm2_slot(slot, vault_id, secret, pin_key)


class HostKeyRefused(PqcfsError):
    """This machine's own host-key file is unsafe (readable by others): said, not skipped."""


def _host_secret(vault_id: bytes, slot: dict) -> bytes | None:
    try:
        return hostkeys.load(vault_id.hex(), slot["key_id"])
    except DamagedStructure:
        return None       # a malformed key id in the slot: that slot does not open
    except PqcfsError as e:
        raise HostKeyRefused(str(e)) from None


def _candidates(header: vault_header.VaultHeader, creds: Credentials, slot_id: int | None) -> list[dict]:
    if slot_id is not None:
        chosen = [s for s in header.slots if s["id"] == slot_id]
        if not chosen:
            raise WrongKey(f"there is no key slot {slot_id}")
        return chosen
    if creds.passphrase is not None:
        tried = [s for s in header.slots if s["type"] == slots.PASSPHRASE]
        return tried[:MAX_PASSPHRASE_TRIES]
    if creds.tpm2 is not None:
        return [s for s in header.slots if s["type"] == slots.TPM2]
    return list(header.slots)


def unlock(locations: list[str], creds: Credentials, slot: int | None = None) -> UnlockedVault:
    """The vault, unlocked through the first copy of its header that decodes and whose MAC
    holds under the root key a slot of it gives (the primary's first; every replica keeps
    the same header, so a damaged copy on one drive never locks the owner out). Copies
    that fail are listed in vault.damaged_headers (location, why) for heal_headers()."""
    copies, first_error = [], None
    for location in locations:
        try:
            copies.append((location, read_header(location)))
        except (DamagedStructure, NotAVault) as e:
            first_error = first_error or e
            copies.append((location, e))
    readable = [(loc, c) for loc, c in copies if not isinstance(c, Exception)]
    # Each drive's spare copy comes after every first copy: tried only when none opens.
    spares, spares_missing = {}, []
    for location in locations:
        try:
            spares[location] = read_header(location, vault_header.SPARE_NAME)
            readable.append((location, spares[location]))
        except NotAVault:
            spares_missing.append(location)
        except DamagedStructure as e:
            spares[location] = e
    if not readable:
        raise _named(locations[0], first_error)
    damaged = [(loc, str(c)) for loc, c in copies if isinstance(c, Exception)]
    opened_any, tamper, tried, tpm_refused = False, None, [], None
    for where, (header, signed, mac) in readable:
        if any(signed == other for _, other, _ in tried):
            continue      # the same copy: its slots were tried (a wrong passphrase costs one KDF run)
        for candidate in _candidates(header, creds, slot):
            try:
                root_key = _try_slot(candidate, header.vault_id, creds)
            except tpm2.TpmError as e:
                if not e.another_slot_may_open:
                    raise
                tpm_refused = tpm_refused or e
                continue
            if root_key is None:
                continue
            opened_any = True
            if len(root_key) != ROOT_KEY_LEN or not vault_header.verify_mac(signed, mac, root_key):
                # Tampered (or damaged past its checksum): another drive's copy may hold.
                tamper = tamper or DamagedStructure(f"the vault header on {where} failed authentication: it "
                                                    "was modified without the key")
                damaged.append((where, "failed authentication"))
                break      # on the damaged list already: not one of the copies tried below
            for earlier, earlier_signed, earlier_mac in tried:
                # An earlier copy opened nothing. Authentic under this key, it is simply newer
                # (this key's slot was removed there, say by `pqcfs passwd`): refused, never
                # rolled back to. Not authentic: it was changed, and heals from this copy.
                if vault_header.verify_mac(earlier_signed, earlier_mac, root_key):
                    raise WrongKey("no key slot opens with that key (wrong passphrase, recovery code or identity)")
                damaged.append((earlier, "changed without the key (no slot of it opens; another drive's copy does)"))
            vault = UnlockedVault(header, root_key, list(locations), slot_id=candidate["id"])
            vault.damaged_headers = damaged + _check_replica_headers(vault, where, [loc for loc, _ in damaged])
            vault.damaged_headers += _check_spares(vault, spares, [loc for loc, _ in vault.damaged_headers])
            vault.spares_missing = [loc for loc in spares_missing
                                    if loc not in {loc for loc, _ in vault.damaged_headers}]
            for location, _ in vault.damaged_headers:
                _check_ours(vault, location)
            return vault
        if not any(loc == where for loc, _ in damaged):
            tried.append((where, signed, mac))
    if tamper is not None:
        raise tamper
    if tpm_refused is not None:
        raise tpm_refused
    if creds.tpm2 is not None:
        raise WrongKey("the vault has no TPM2 slot (`pqcfs keys add VAULT --tpm2` makes one)")
    if creds.host and not opened_any:
        raise WrongKey("this machine holds no host key of this vault (`pqcfs keys add VAULT --host` makes one; "
                       "removing its slot revokes it)")
    raise WrongKey("no key slot opens with that key (wrong passphrase, recovery code or identity)")


def _check_ours(vault: "UnlockedVault", location: str) -> None:
    """A location whose header copy is bad is healed only when its replica state
    authenticates under this vault's root key (it is one of ours, not another vault)."""
    try:
        state = read_state(location, vault.root_key)
    except (OSError, PqcfsError):
        raise DriveError(f"{location}: its vault header is damaged and its replica state does not authenticate "
                         "under this vault's key (another vault, or damaged beyond repair)") from None
    if state.vault_id != vault.header.vault_id.hex():
        raise DriveError(f"{location} holds a different vault")


def _named(location: str, error: Exception | None) -> Exception:
    """The error of a header no drive has a good copy of, naming the drive."""
    if isinstance(error, DamagedStructure) and location not in str(error):
        return DamagedStructure(f"{location}: {error}")
    return error or NotAVault(f"{location} holds no pqcfs vault")


def same_vault(location: str, vault_id: bytes) -> None:
    try:
        other, _, _ = read_header(location)
    except DamagedStructure:
        # A damaged copy of the header: its replica state names the vault (checked with
        # the root key at unlock, before the copy is healed from a good one).
        if read_state(location, None).vault_id == vault_id.hex():
            return
        raise
    if other.vault_id != vault_id:
        raise DriveError(f"{location} holds a different vault")


def find_replica(replica: dict, vault_id: bytes, exclude: str) -> str | None:
    """Where a replica (a header entry) is plugged in now: where it was last seen, else on
    the drive with its file system UUID (mounted anywhere); never the location exclude.
    Unauthenticated: the caller checks what it found with the root key before use."""
    candidates = [replica.get("path_hint")]
    if replica.get("fs_uuid"):
        candidates += [os.path.join(mp, replica.get("subpath") or ".")
                       for mp in devices.find_by_uuid(replica["fs_uuid"])]
    for location in candidates:
        if not location or os.path.realpath(location) == exclude:
            continue
        try:
            same_vault(location, vault_id)
            if read_state(location, None).replica_id == replica["id"]:
                return os.path.normpath(location)
        except (OSError, PqcfsError):
            continue
    return None


def header_anywhere(location: str, backup: str | None = None):
    """The header for finding a vault's replicas, before any unlock: the location's own
    copy, or when that one is damaged, the copy of another replica of the same vault (the
    --backup given, or a mounted drive holding a vault with the id the location's replica
    state names). Unauthenticated, like every copy before unlock. Returns (header, where)."""
    try:
        return read_header(location)[0], location
    except DamagedStructure as damage:
        try:
            return read_header(location, vault_header.SPARE_NAME)[0], location
        except (OSError, PqcfsError):
            pass
        try:
            vault_id = read_state(location, None).vault_id
        except (OSError, PqcfsError):
            raise _named(location, damage) from None
        for other in ([backup] if backup else []) + _mounted_roots():
            if os.path.realpath(other) == os.path.realpath(location):
                continue
            try:
                header = read_header(other)[0]
            except (OSError, PqcfsError):
                continue
            if header.vault_id.hex() == vault_id:
                return header, other
        raise DamagedStructure(f"the vault header on {location} is damaged ({damage}), and no other drive of the "
                               "vault with a good copy is plugged in (plug in the backup, or give it with --backup)"
                               ) from None


def _mounted_roots(limit: int = 2000) -> list[str]:
    """Where a replica may be: each mounted file system's root and its directories one
    level down (bounded)."""
    out = []
    for mountpoint in devices.mountpoints():
        out.append(mountpoint)
        try:
            with os.scandir(mountpoint) as it:
                for entry in it:
                    if len(out) >= limit:
                        return out
                    if entry.is_dir(follow_symlinks=False) and not entry.name.startswith("."):
                        out.append(entry.path)
        except OSError:
            continue
    return out


def _check_spares(vault: UnlockedVault, spares: dict, known: list[str]) -> list[tuple[str, str]]:
    """Spare copies that do not decode or authenticate, on drives whose first copy is good."""
    bad = []
    for location, spare in spares.items():
        if location in known:
            continue
        if isinstance(spare, Exception):
            bad.append((location, f"its spare copy: {spare}"))
        elif not vault_header.verify_mac(spare[1], spare[2], vault.root_key):
            bad.append((location, "its spare copy failed authentication"))
    return bad


def _check_replica_headers(vault: UnlockedVault, used: str, known: list[str]) -> list[tuple[str, str]]:
    """The other replicas' copies of the header: a different vault is refused; a copy that
    does not decode or authenticate is returned (location, why), to be healed."""
    bad = []
    for location in vault.locations:
        if location == used or location in known:
            continue
        try:
            other, other_signed, other_mac = read_header(location)
        except (DamagedStructure, NotAVault) as e:
            bad.append((location, str(e)))
            continue
        if other.vault_id != vault.header.vault_id:
            raise DriveError(f"{location} holds a different vault")
        if not vault_header.verify_mac(other_signed, other_mac, vault.root_key):
            bad.append((location, "failed authentication"))
    return bad


