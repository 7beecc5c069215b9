"""Options several subcommands share: unlocking, finding replicas, drive checks, config paths."""

from __future__ import annotations

import argparse
import json
import os
import sys

from pqcfs import mirror, sharing
from pqcfs import vault as vault_mod
from pqcfs.cli import secrets
from pqcfs.audit import host
from pqcfs.audit.writer import AuditLog
from pqcfs.errors import DamagedStructure, DriveError, MountError, PqcfsError, WrongKey
from pqcfs.format import identity as identity_fmt
from pqcfs.format import slots
from pqcfs import grantee_log, state_heal
from pqcfs.store.lock import VaultLock
from pqcfs.vault import Credentials, Tpm2Unlock


def config_dir() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "pqcfs")


def default_identity_path() -> str:
    return os.path.join(config_dir(), "identity.json")


def add_secret_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--passfile", metavar="FILE", help="read the passphrase from the first line of FILE")
    p.add_argument("--extpass", metavar="CMD", help="run CMD and read the passphrase from its first line")


def add_tpm2_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tcti", metavar="TCTI",
                   help="which TPM (a tpm2-tools TCTI: device:/dev/tpmrm0 (default), swtpm:host=H,port=P, tabrmd)")
    p.add_argument("--pin-file", metavar="FILE", help="the TPM slot's PIN, from the first line of FILE")


def add_unlock_options(p: argparse.ArgumentParser, slot_option: bool = True, tpm2_option: bool = True) -> None:
    add_secret_options(p)
    add_tpm2_options(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--identity", nargs="?", const=default_identity_path(), metavar="FILE",
                       help="unlock with an identity (default: %(const)s); the passphrase is the identity's")
    group.add_argument("--recovery", action="store_true", help="unlock with the recovery code (asked for)")
    group.add_argument("--recovery-code-file", metavar="FILE", help="unlock with the recovery code in FILE")
    group.add_argument("--host-key", action="store_true",
                       help="unlock with this machine's host key, unattended (a slot made by `keys add --host`)")
    if tpm2_option:
        group.add_argument("--tpm2", action="store_true",
                           help="unlock with this machine's TPM (a slot made by `keys add --tpm2`; its PIN from "
                                "--pin-file, or asked at a terminal)")
    if slot_option:
        p.add_argument("--slot", dest="unlock_slot", type=int, metavar="N",
                       help="try only key slot N (by default at most 4 passphrase slots are tried)")


def add_replica_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backup", metavar="PATH", help="the backup replica (default: found from the vault header)")
    add_drive_options(p)


def allow_fixed(args, header) -> bool:
    """--allow-fixed given now, or chosen at init (the header remembers fixed drives)."""
    return bool(getattr(args, "allow_fixed", False) or any(r.get("fixed") for r in header.replicas))


def add_drive_options(p: argparse.ArgumentParser) -> None:
    if "--allow-fixed" in p._option_string_actions:
        return      # every command that takes a vault accepts them once
    p.add_argument("--allow-fixed", action="store_true",
                   help="allow locations that are not on removable drives (internal disks, tests); init "
                   "remembers the choice, so later commands need it only for drives not chosen then")
    p.add_argument("--allow-same-device", action="store_true",
                   help="allow replicas on the same device (tests only: a mirror on one drive protects nothing)")


def load_identity(path: str, passphrase: bytes) -> identity_fmt.Identity:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise PqcfsError(f"no identity at {path} (create one with `pqcfs identity new`)") from None
    return identity_fmt.decode_file(data, passphrase)


def credentials(args) -> Credentials:
    if getattr(args, "host_key", False):
        return Credentials(host=True)
    if getattr(args, "tpm2", False) and getattr(args, "keys_cmd", None) != "add":
        pin = secrets.from_file(args.pin_file) if args.pin_file else None
        ask = (lambda: secrets.prompt("TPM PIN", False)) if sys.stdin.isatty() else None
        return Credentials(tpm2=Tpm2Unlock(tcti=args.tcti, pin=pin, ask_pin=ask))
    if getattr(args, "identity", None):
        pw = secrets.passphrase(args.passfile, args.extpass, f"Passphrase for identity {args.identity}")
        return Credentials(identity=load_identity(args.identity, pw))
    if getattr(args, "recovery_code_file", None):
        return Credentials(recovery_code=slots.parse_recovery_code(secrets.from_file(args.recovery_code_file).decode()))
    if getattr(args, "recovery", False):
        return Credentials(recovery_code=slots.parse_recovery_code(secrets.prompt("Recovery code", False).decode()))
    return Credentials(passphrase=secrets.passphrase(args.passfile, args.extpass, "Vault passphrase"))


def _asks(args) -> bool:
    """The secret comes from a person (a prompt or an asking program such as
    systemd-ask-password), who may mistype: then a wrong one is asked again."""
    return not (getattr(args, "host_key", False) or getattr(args, "recovery_code_file", None)
                or getattr(args, "passfile", None) or getattr(args, "tpm2", False))


def _unlock_tries(args, locations: list[str], vault_id: str | None):
    tries = secrets.TRIES if _asks(args) else 1
    for n in range(1, tries + 1):
        try:
            creds = credentials(args)
            return creds, vault_mod.unlock(locations, creds, slot=getattr(args, "unlock_slot", None))
        except WrongKey as e:
            if n == tries:
                raise
            # Every failed attempt is recorded, not only the last one.
            host.record(vault_id, "unlock-failed", command=args.command, reason="WrongKey")
            print(f"pqcfs: {e}; try {n + 1} of {tries}", file=sys.stderr)


def _in_use(vault_id: str | None, why: str) -> str:
    """Where the vault is mounted, when a mount of this machine holds it."""
    from pqcfs.session import mounttable    # the mount machinery, only when it is needed
    for mount in mounttable.listing():
        if mount.info and mount.info.get("vault_id") == vault_id and mount.alive:
            return (f"the vault is mounted at {mount.mountpoint} (daemon pid {mount.info.get('pid')}); "
                    f"`pqcfs umount {mount.mountpoint}` first")
    return why


def replica_locations(primary: str, backup: str | None, require_all: bool) -> list[str]:
    """The primary plus every other replica the header names that can be found."""
    header, where = vault_mod.header_anywhere(primary, backup)
    found = [primary]
    if backup:
        if where != backup:
            vault_mod.same_vault(backup, header.vault_id)
        return found + [backup]
    primary_real = os.path.realpath(primary)
    primary_state = vault_mod.read_state(primary, None)
    for replica in header.replicas:
        if replica["id"] == primary_state.replica_id:
            continue
        location = vault_mod.find_replica(replica, header.vault_id, primary_real)
        if location:
            found.append(location)
        else:
            if require_all:
                raise DriveError(f"replica {replica['id']} ({replica['role']}, last seen at "
                                 f"{replica.get('path_hint')}) is not plugged in; connect it or name it "
                                 "with --backup")
    return found


def _heal_headers(vault, heal: bool) -> list[tuple[str, str]]:
    """A damaged copy of the header on one drive: rewritten from the good one when the
    command may write (heal), else said, with what rewrites it."""
    if not vault.damaged_headers:
        if heal and vault.spares_missing:
            vault.heal_headers()     # a vault from before spare copies: given them, quietly
        return []
    if not heal:
        for location, why in vault.damaged_headers:
            print(f"pqcfs: warning: the vault header on {location} is damaged ({why}); the copy on another "
                  "drive opened the vault. `pqcfs fsck VAULT --repair` (or a mount) rewrites it", file=sys.stderr)
        vault.damaged_headers_seen = list(vault.damaged_headers)
        return []
    healed = vault.heal_headers()
    for location, why in healed:
        print(f"pqcfs: the vault header on {location} was damaged ({why}); rewritten from the good copy (the "
              "damaged one is kept in pqcfs.quarantine/ on that drive)", file=sys.stderr)
    return healed


def _heal_states(vault, heal: bool) -> list[tuple[str, str, str]]:
    """A replica state that fails authentication: rebuilt from the drive's own audit log
    when the command may write, else the command stops, naming the drive and the fix."""
    damaged = state_heal.damaged(vault)
    if not damaged:
        return []
    if not heal:
        location, why = damaged[0]
        raise DamagedStructure(f"{location}: {why}. `pqcfs fsck VAULT --repair` (or a mount) rebuilds it from that "
                               "drive's audit log")
    rebuilt = state_heal.heal(vault, damaged)
    for location, why, relation in rebuilt:
        print(f"pqcfs: the replica state on {location} was damaged ({why}); rebuilt from that drive's audit log: "
              f"{state_heal.NEXT[relation]} (the damaged file is kept in pqcfs.quarantine/ on that drive)",
              file=sys.stderr)
    return rebuilt


def unlock(args, require_all: bool = True, audit: bool = True, heal: bool | None = None) -> vault_mod.UnlockedVault:
    """Unlock, and record it: in the vault's audit log on success (adopting events the
    host logged before), in the host-side log when it fails before the key is known.

    A command that writes (audit=True) takes the vault lock first, before any passphrase
    is asked for: one writer at a time, so nothing races a mounted daemon's audit chain.
    The lock is held until the command ends (main() releases it)."""
    try:
        vault_id = vault_mod.read_header(args.vault)[0].vault_id.hex()
    except PqcfsError:
        vault_id = None
    lock = None
    try:
        locations = replica_locations(args.vault, getattr(args, "backup", None), require_all)
        drives = {location: vault_mod.open_location(location) for location in locations}
        if audit and drives[locations[0]].read_only:
            hint = "; mount it with --ro" if args.command == "mount" else ""
            raise DriveError(f"the primary {locations[0]} is read-only (write-protected?){hint}")
        if audit:
            lock = VaultLock(list(drives.values()))
            try:
                lock.acquire()
            except MountError as e:
                raise MountError(_in_use(vault_id, str(e))) from None
        creds, vault = _unlock_tries(args, locations, vault_id)
    except (WrongKey, DriveError, DamagedStructure) as e:
        host.record(vault_id, "unlock-failed", command=args.command, reason=type(e).__name__)
        if lock is not None:
            lock.release()
        raise
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    vault.adopt_drives(drives)
    vault.lock = lock
    healed = _heal_headers(vault, audit if heal is None else heal)
    vault.headers_healed = healed
    states_rebuilt = _heal_states(vault, audit if heal is None else heal)
    if audit:
        mirror.newest_first(vault)
    else:
        # A command that only reads does not write the vault's log (a mount may own it):
        # its unlock goes to the host log, adopted into the vault's at the next unlock that writes.
        host.record(vault_id, "unlock", command=args.command, slot=vault.slot_id)
    args.unlocked = vault
    if audit:
        log = AuditLog(vault)
        for event in host.take(vault.header.vault_id.hex()):
            event.pop("vault_id", None)
            log.append("host-" + event.pop("event"), **event)
        try:
            vault.grantee_log_problems = grantee_log.adopt_logs(vault, log.append)
        except (OSError, PqcfsError) as e:
            # A recipient's log never stops the owner: said, recorded, and the command goes on.
            log.append("grantee-logs-unreadable", error=str(e))
            print(f"pqcfs: warning: the grantees' logs could not be read ({e})", file=sys.stderr)
        for location, why in healed:
            log.append("header-healed", replica=location, reason=why)
        for location, why, relation in states_rebuilt:
            log.append("replica-state-rebuilt", replica=location, reason=why, relation=relation)
        slot = next(s for s in vault.header.slots if s["id"] == vault.slot_id)
        log.append("unlock", command=args.command, slot=vault.slot_id, slot_type=slot["type"],
                   replicas=len(locations))
        for replica_id in vault.refresh_replica_hints():
            log.append("replica-moved", replica=replica_id)
        back = sharing.revoke_resurrected(vault, writable=True)
        if back:
            log.append("rolled-back-grants-revoked", grants=back)
            print(f"pqcfs: warning: the vault header lists {len(back)} grant(s) this machine saw revoked "
                  f"({', '.join(back)}): the drives hold an older copy of the header; revoked again",
                  file=sys.stderr)
        vault.audit = log
        vault.identity = creds.identity
    return vault


def finish(args) -> None:
    """End of a command: the audit head recorded, the lock released, the drives closed."""
    vault = getattr(args, "unlocked", None)
    if vault is not None:
        args.unlocked = None
        vault.end_command()


def emit(args, data: dict, text: str) -> None:
    if getattr(args, "json", False):
        json.dump(data, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
