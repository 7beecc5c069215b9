"""pqcfs init PRIMARY [BACKUP...]"""

from __future__ import annotations

import os

from pqcfs import vault as vault_mod
from pqcfs.audit.writer import AuditLog
from pqcfs.cli import options, secrets
from pqcfs.crypto import kem
from pqcfs.crypto.kdf import SALT_LEN, Argon2Params, calibrate
from pqcfs.errors import DriveError, PqcfsError
from pqcfs.format import slots, vault_header
from pqcfs.format.identity import PublicIdentity
from pqcfs.store import devices


def add_kdf_options(p) -> None:
    p.add_argument("--kdf-time", type=float, default=1.0, metavar="SECONDS",
                   help="calibrate Argon2id to take about this long here (default 1)")
    p.add_argument("--kdf-memory", type=int, metavar="MIB", help="fixed Argon2id memory instead of calibrating")
    p.add_argument("--kdf-iterations", type=int, default=3, metavar="N", help="with --kdf-memory (default 3)")


def kdf_from_args(args) -> Argon2Params:
    if args.kdf_memory:
        params = Argon2Params(args.kdf_memory * 1024, args.kdf_iterations, 2, os.urandom(SALT_LEN))
        params.validate()
        return params
    return calibrate(args.kdf_time)


def add_parser(sub) -> None:
    p = sub.add_parser("init", help="create a vault on a primary and backup drive")
    p.add_argument("primary",
                   help="where the primary replica goes: an empty directory on the first drive, e.g. /media/usb1")
    p.add_argument("backups", nargs="*", metavar="BACKUP",
                   help="where the backup replica goes: an empty directory on a second drive")
    p.add_argument("--suite", default=kem.DEFAULT_SUITE, choices=sorted(kem.SUITES),
                   help="the hybrid KEM that wraps the root key (default: %(default)s)")
    p.add_argument("--block-size", type=int, default=vault_mod.DEFAULT_BLOCK_SIZE,
                   choices=(4096, 8192, 16384, 32768, 65536),
                   help="bytes of plaintext per encrypted block (default: %(default)s; larger suits big files)")
    p.add_argument("--owner", metavar="PUBFILE", help="also add an identity slot for this public key")
    p.add_argument("--format", type=int, default=vault_header.VERSION, choices=sorted(vault_header.READABLE_VERSIONS),
                   help=f"on-disk format (default {vault_header.VERSION}; 1 opens with older pqcfs, without "
                   "directory tables; `pqcfs upgrade` converts it later)")
    p.add_argument("--single", action="store_true",
                   help="a vault on one drive only, without a backup (status says so); else BACKUP is required")
    p.add_argument("--json", action="store_true", help="print the result (with the recovery code) as JSON")
    options.add_secret_options(p)
    options.add_drive_options(p)
    add_kdf_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    locations = [args.primary, *args.backups]
    infos = devices.check_locations(locations, args.allow_fixed, args.allow_same_device)
    if len(locations) == 1 and not args.single:
        raise DriveError(f"only one location given: a vault is mirrored to a backup drive (`pqcfs init {args.primary} "
                         "BACKUP`); --single makes a vault on one drive, with no copy if it fails")
    if len(locations) > 1 and args.single:
        raise PqcfsError("--single is for a vault on one drive, but a backup was given too")
    owner = None
    if args.owner:
        with open(args.owner) as f:
            owner = PublicIdentity.decode(f.read())
    passphrase = secrets.passphrase(args.passfile, args.extpass, "New vault passphrase", confirm=True)
    vault, code = vault_mod.create(locations, passphrase=passphrase, kdf=kdf_from_args(args),
                                   suite=args.suite, block_size=args.block_size, identity=owner,
                                   drive_infos=infos, format_version=args.format)
    log = AuditLog(vault)
    log.append("init", replicas=len(locations), suite=args.suite, block_size=args.block_size,
               slots=[s["type"] for s in vault.header.slots])
    log.sync()
    log.close()
    shown = slots.format_recovery_code(code)
    doc = {"vault_id": vault.header.vault_id.hex(), "replicas": locations, "recovery_code": shown}
    options.emit(args, doc, (
        f"Created vault {vault.header.vault_id.hex()} on {', '.join(locations)}\n\n"
        f"Recovery code (shown once; write it down and keep it away from the drives):\n\n    {shown}\n"))
    return 0
