"""pqcfs keys list|add|remove and pqcfs passwd: key slots, no data re-encrypted."""

from __future__ import annotations

import sys

from pqcfs import vault as vault_mod
from pqcfs.cli import options, secrets
from pqcfs.cli.init_cmd import add_kdf_options, kdf_from_args
from pqcfs.errors import PqcfsError
from pqcfs.format import slots
from pqcfs.format.identity import PublicIdentity
from pqcfs.store import tpm2


def _common(p, slot_option: bool = True, tpm2_option: bool = True) -> None:
    p.add_argument("vault", help="the vault: where its primary (or any) replica is, e.g. /media/usb1")
    options.add_unlock_options(p, slot_option, tpm2_option)
    options.add_replica_options(p)


def add_parser(sub) -> None:
    p = sub.add_parser("keys", help="list, add and remove key slots")
    ksub = p.add_subparsers(dest="keys_cmd", required=True, metavar="list|add|remove",
                            help="what to do with the key slots")
    ls = ksub.add_parser("list", help="list key slots (no unlock needed)")
    ls.add_argument("vault", help="the vault: where its primary (or any) replica is, e.g. /media/usb1")
    ls.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    add = ksub.add_parser("add", help="add a passphrase, identity, recovery-code, host-key or TPM2 slot")
    _common(add, tpm2_option=False)
    what = add.add_mutually_exclusive_group(required=True)
    what.add_argument("--passphrase", action="store_true", help="add a passphrase slot")
    what.add_argument("--public-key", metavar="PUBFILE", help="add a slot for this identity's public key")
    what.add_argument("--recovery-code", action="store_true", help="add a new recovery code (printed once)")
    what.add_argument("--host", action="store_true",
                      help="add a host key: this machine unlocks the vault unattended (automount); the secret "
                      "stays root-only here (sealed with the TPM2 when there is one); removing the slot revokes it")
    what.add_argument("--tpm2", action="store_true",
                      help="add a TPM2 slot: this machine's TPM seals the slot's secret (to --pcrs, and a PIN with "
                           "--pin or --pin-file); the vault then unlocks with --tpm2 on this machine only")
    add.add_argument("--pin", action="store_true", help="with --tpm2: ask for a PIN (the TPM counts wrong ones)")
    add.add_argument("--pcrs", default="", metavar="LIST",
                     help="with --tpm2: bind to these PCRs of the sha256 bank, e.g. 7 or 0,7 (default: none)")
    add.add_argument("--new-passfile", metavar="FILE", help="the new passphrase (else asked for)")
    add.add_argument("--label", default="", help="a label for an identity slot")
    add.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    add_kdf_options(add)
    rm = ksub.add_parser("remove", help="remove a key slot")
    _common(rm)
    rm.add_argument("slot", type=int, help="the slot number, as `pqcfs keys list` shows it")
    p.set_defaults(func=run)

    pw = sub.add_parser("passwd", help="change a passphrase (the slot that unlocks, or --slot)")
    _common(pw, slot_option=False)
    pw.add_argument("--slot", type=int, help="the passphrase slot to change")
    pw.add_argument("--new-passfile", metavar="FILE", help="the new passphrase (else asked for)")
    add_kdf_options(pw)
    pw.set_defaults(func=run_passwd)


def _new_passphrase(args) -> bytes:
    return secrets.new_passphrase(args.new_passfile, "New passphrase")


def run(args) -> int:
    if args.keys_cmd == "list":
        header, _, _ = vault_mod.read_header(args.vault)
        doc = [{"id": s["id"], "type": s["type"], "description": slots.describe(s)} for s in header.slots]
        options.emit(args, {"slots": doc}, "\n".join(f"{s['id']}: {s['description']}" for s in doc))
        return 0
    vault = options.unlock(args)
    if args.keys_cmd == "remove":
        slot = next((s for s in vault.header.slots if s["id"] == args.slot), None)
        # A host key's secret on this machine, a TPM slot's sealed key in this TPM, go with it.
        held = vault.remove_slot(args.slot, tpm2.Tpm(args.tcti) if slot and slot["type"] == slots.TPM2 else None)
        vault.audit.append("key-slot-removed", slot=args.slot, **({"tpm_key_evicted": held} if held is not None
                                                                    else {}))
        print(f"removed key slot {args.slot}")
        if held is False:
            print(f"pqcfs: warning: the TPM at {tpm2.Tpm(args.tcti).tcti} does not hold that slot's sealed key: the "
                  "machine whose TPM does can still open old copies of the header with it. Run `pqcfs keys remove` "
                  "there (or clear that TPM)", file=sys.stderr)
        return 0
    if args.tpm2:
        if args.pin and args.pin_file:
            raise PqcfsError("--pin asks for the PIN, --pin-file reads it: give one")
        pin = secrets.from_file(args.pin_file) if args.pin_file else (
            secrets.new_passphrase(None, "New TPM PIN") if args.pin else None)
        if args.pcrs and not args.tpm2:
            raise PqcfsError("--pcrs goes with --tpm2")
        tpm = tpm2.Tpm(args.tcti)
        slot_id, fields = vault.add_tpm2(tpm, tpm2.parse_pcrs(args.pcrs), pin, args.label,
                                         kdf_from_args(args) if pin is not None else None)
        vault.audit.append("key-slot-added", slot=slot_id, slot_type="tpm2", pcrs=fields["pcrs"], pin=pin is not None)
        options.emit(args, {"slot": slot_id, "handle": hex(fields["handle"]), "pcrs": fields["pcrs"],
                            "pin": pin is not None},
                     f"added TPM2 slot {slot_id}: this machine's TPM ({tpm.tcti}) holds its key at "
                     f"{hex(fields['handle'])}, bound to {'PCRs ' + ','.join(map(str, fields['pcrs'])) if fields['pcrs'] else 'no PCRs'}"
                     f"{' and a PIN' if pin is not None else ''}; unlock with --tpm2")
        return 0
    if args.passphrase:
        slot_id = vault.add_passphrase(_new_passphrase(args), kdf_from_args(args))
        vault.audit.append("key-slot-added", slot=slot_id, slot_type="passphrase")
        options.emit(args, {"slot": slot_id}, f"added passphrase slot {slot_id}")
    elif args.public_key:
        with open(args.public_key) as f:
            public = PublicIdentity.decode(f.read())
        slot_id = vault.add_identity(public, args.label)
        vault.audit.append("key-slot-added", slot=slot_id, slot_type="identity",
                                    recipient=public.fingerprint)
        options.emit(args, {"slot": slot_id}, f"added identity slot {slot_id} for {public.fingerprint}")
    elif args.host:
        slot_id, key_id, kept = vault.add_host(args.label)
        vault.audit.append("key-slot-added", slot=slot_id, slot_type="host", key_id=key_id)
        options.emit(args, {"slot": slot_id, "key_id": key_id},
                     f"added host-key slot {slot_id}: this machine unlocks the vault with --host-key; the secret is "
                     f"{kept}")
    else:
        slot_id, code = vault.add_recovery()
        vault.audit.append("key-slot-added", slot=slot_id, slot_type="recovery")
        shown = slots.format_recovery_code(code)
        options.emit(args, {"slot": slot_id, "recovery_code": shown},
                     f"added recovery slot {slot_id}; the code (shown once):\n\n    {shown}\n")
    return 0


def run_passwd(args) -> int:
    vault: vault_mod.UnlockedVault = options.unlock(args)
    slot_id = args.slot or vault.slot_id
    slot = next((s for s in vault.header.slots if s["id"] == slot_id), None)
    if slot is None or slot["type"] != slots.PASSPHRASE:
        raise PqcfsError(f"key slot {slot_id} is not a passphrase slot (use --slot N)")
    vault.change_passphrase(slot_id, _new_passphrase(args), kdf_from_args(args))
    vault.audit.append("passphrase-changed", slot=slot_id)
    print(f"passphrase of key slot {slot_id} changed")
    return 0
