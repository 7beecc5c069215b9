"""`pqcfs mount VAULT MNT --identity` for a recipient: the directory a grant opens."""

from __future__ import annotations

import sys

from pqcfs import sharing
from pqcfs import vault as vault_mod
from pqcfs.audit import host
from pqcfs.cli import options, secrets
from pqcfs.errors import DamagedStructure, DriveError, GrantRefused, PqcfsError, WrongKey
from pqcfs.format import grants
from pqcfs.format import identity as identity_fmt
from pqcfs.format import slots
from pqcfs.session import grantee
from pqcfs.store.lock import VaultLock


def _public(args) -> identity_fmt.PublicIdentity:
    try:
        with open(args.identity, "rb") as f:
            return identity_fmt.read_public(f.read(1 << 16))
    except FileNotFoundError:
        raise PqcfsError(f"no identity at {args.identity} (create one with `pqcfs identity new`)") from None


def is_grantee(args) -> bool:
    """The identity has no key slot of its own in this vault: it can only open grants."""
    header = vault_mod.read_header(args.vault)[0]
    mine = _public(args).fingerprint
    return not any(s["type"] == slots.IDENTITY and s.get("recipient") == mine for s in header.slots)


def _choose(args, header, public) -> list[dict]:
    found = sharing.grants_for(header.grants, public)
    if args.grant:
        found = [(r, p) for r, p in found if r["id"].startswith(args.grant.lower())]
    if not found:
        raise WrongKey(f"this vault has no key slot and no grant for identity {public.fingerprint}"
                       + (f" with id {args.grant}" if args.grant else ""))
    return [r for r, _ in found]


def prepare(args) -> grantee.GranteeSession:
    """Every grant of this identity (or the one --grant names), each a top-level directory
    named by its label; a grant that is refused (expired, revoked, forged) is left out with
    a warning, and only when none is left does the mount fail."""
    return _open(args, for_snapshots=False)


def open_for_snapshots(args) -> grantee.GranteeVault:
    """The grants of this identity, opened to read snapshots of their directories: no lock
    and nothing written (the vault may be mounted meanwhile), as the owner's snapshot reads."""
    return _open(args, for_snapshots=True)


def _open(args, for_snapshots: bool):
    header = vault_mod.read_header(args.vault)[0]
    vault_id = header.vault_id
    public = _public(args)
    records = _choose(args, header, public)
    locations = options.replica_locations(args.vault, getattr(args, "backup", None), require_all=False)
    drives = [vault_mod.open_location(location) for location in locations]
    lock = VaultLock(drives)
    if not for_snapshots:
        lock.acquire()   # before the passphrase: "in use" is said first
    try:
        pw = secrets.passphrase(args.passfile, args.extpass, f"Passphrase for identity {args.identity}")
        try:
            identity = options.load_identity(args.identity, pw)
        except (WrongKey, DamagedStructure) as e:
            host.record(vault_id.hex(), "grantee-unlock-failed", recipient=public.fingerprint, reason=type(e).__name__)
            raise
        owner = bytes.fromhex(args.owner) if args.owner else None
        opened, refused = [], []
        for record in records:
            try:
                o = sharing.open_grant(drives[0], record, vault_id, identity, owner)
                if grantee.pin_owner(vault_id, o.grant.owner, owner):
                    print(f"pqcfs: trusting the owner key {o.grant.owner.hex()} of this vault from now on "
                          "(compare it with the one the owner gave you)", file=sys.stderr)
                opened.append(o)
            except (GrantRefused, DamagedStructure, DriveError) as e:
                host.record(vault_id.hex(), "grantee-unlock-failed", grant=record["id"],
                            recipient=public.fingerprint, reason=f"{type(e).__name__}: {e}")
                if getattr(e, "opened", None) is not None and not for_snapshots:   # expired or not yet valid
                    grantee.record([d for d in drives if not d.read_only], e.opened, vault_id,
                                   "grantee-unlock-failed", recipient=public.fingerprint, reason=str(e))
                refused.append((record, e))
        if not opened:
            raise refused[0][1]
        for record, e in refused:
            print(f"pqcfs: warning: grant {record['id']} left out: {e}", file=sys.stderr)
        if for_snapshots:
            return grantee.GranteeVault(header, locations, opened, drives, lock=None)
        read_only = args.ro or any(o.grant.read_only for o in opened)
        if read_only and not args.ro and not all(o.grant.read_only for o in opened):
            print("pqcfs: warning: some of these grants are read-only, so the mount is; mount a read-write "
                  "grant alone (--grant ID) to change it", file=sys.stderr)
        if not read_only:
            _check_writable(header, locations, drives)
        writable = [d for d in drives if not d.read_only]
        for o in opened:
            grantee.record(writable, o, vault_id, "grantee-unlock", recipient=public.fingerprint,
                           rights=grants.RIGHTS[o.grant.rights], read_only=read_only)
        gv = grantee.GranteeVault(header, locations, opened, drives, lock=lock)
        return grantee.GranteeSession(gv, args.mountpoint, read_only=read_only)
    except BaseException:
        if not for_snapshots:
            lock.release()
        for drive in drives:
            drive.close()
        raise


def _check_writable(header, locations: list[str], drives: list) -> None:
    """A read-write grantee session writes every replica of the vault: it cannot record a
    missing one the way the owner does (that record is authenticated by the root key)."""
    if len(locations) < len(header.replicas):
        raise DriveError(f"a read-write grant is mounted with every drive of the vault present ({len(locations)} "
                         f"of {len(header.replicas)} found); plug in the others, or mount with --ro")
    for location, drive in zip(locations, drives):
        if drive.read_only:
            raise DriveError(f"{location} is read-only; mount with --ro")
        # Unauthenticated (the state's MAC needs the root key), and only a refusal: the
        # owner's crashed session is repaired by the owner's next mount, not by us.
        if not vault_mod.read_state(drive, None).clean:
            raise DriveError("the owner's last session on these drives did not end cleanly; the owner mounts "
                             "the vault once to repair it, then the grant can be mounted read-write "
                             "(or now with --ro)")
