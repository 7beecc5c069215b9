"""pqcfs share VAULT PATH --to KEY and pqcfs grants VAULT."""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import sys
import time

from pqcfs import export as export_mod
from pqcfs import lineage, revoke, sharing
from pqcfs.cli import options
from pqcfs.cli.progress import Progress
from pqcfs.session import session as session_mod
from pqcfs.store import devices
from pqcfs.errors import PqcfsError
from pqcfs.format import grants
from pqcfs.format.identity import PUB_PREFIX, PublicIdentity


@contextlib.contextmanager
def _command(sub, name: str, helptext: str, run, json_help: str = "print the result as JSON", drives=False):
    """A command that the owner runs on a vault (unlock and replica options included);
    its own arguments go between VAULT and the options."""
    p = sub.add_parser(name, help=helptext)
    p.add_argument("vault", help="the primary replica (the owner unlocks it)")
    p.set_defaults(func=run)
    yield p
    p.add_argument("--json", action="store_true", help=json_help)
    options.add_unlock_options(p)
    options.add_replica_options(p)
    if drives:
        options.add_drive_options(p)


def _to(p) -> None:
    p.add_argument("--to", required=True, metavar="KEY",
                   help="the recipient: a public-key file, or the string `pqcfs identity export` prints")


def add_parser(sub) -> None:
    with _command(sub, "share", "grant a directory of the vault to another person's identity", run_share,
                       "print the grant as JSON") as p:
        p.add_argument("path", help="the directory inside the vault to share, e.g. projects/acme")
        _to(p)
        p.add_argument("--read-only", action="store_true", help="the recipient may read, not change")
        p.add_argument("--expires", metavar="DATE",
                       help="YYYY-MM-DD[THH:MM] (UTC) or Nd (N days from now); advisory offline, see docs/sharing.md")
        p.add_argument("--label", help="the name the recipient's mount shows (default: the directory's name)")
    with _command(sub, "grants", "list the vault's grants", run_grants, "print the grants as JSON"):
        pass
    with _command(sub, "revoke", "remove a grant and re-key its directory (resumable)", run_revoke,
                       "print what was done as JSON", drives=True) as p:
        p.add_argument("grant", nargs="?", help="the grant id (or its first characters), as `pqcfs grants` lists it")
        p.add_argument("--resume", action="store_true", help="finish a revoke that was cut short")
    with _command(sub, "export", "copy a directory into a new vault that only the recipient's identity opens",
                       run_export, "print what was done as JSON", drives=True) as p:
        p.add_argument("path", help="the directory inside the vault to copy, e.g. projects/acme")
        p.add_argument("dest", nargs="+", metavar="DEST",
                       help="where the new vault goes: its primary, then optionally its backup (empty drives)")
        _to(p)


def recipient(text: str) -> PublicIdentity:
    if text.strip().startswith(PUB_PREFIX + ":"):
        return PublicIdentity.decode(text)
    try:
        with open(text) as f:
            return PublicIdentity.decode(f.read(1 << 16))
    except FileNotFoundError:
        raise PqcfsError(f"--to {text}: no such file, and not a public key string") from None
    except UnicodeDecodeError:
        raise PqcfsError(f"--to {text}: not a public key file") from None


def parse_expiry(text: str | None, now: float | None = None) -> int:
    if not text:
        return 0
    now = dt.datetime.now(dt.timezone.utc).timestamp() if now is None else now
    days = re.fullmatch(r"(\d{1,5})d", text.strip())
    if days:
        return int(now) + int(days.group(1)) * 86400
    try:
        when = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise PqcfsError(f"--expires {text}: not a date (YYYY-MM-DD, YYYY-MM-DDTHH:MM or Nd)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return int(when.timestamp())


def _iso(seconds: int | None) -> str:
    if not seconds:
        return "never"
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def run_share(args) -> int:
    public = recipient(args.to)
    expires = parse_expiry(args.expires)
    vault = options.unlock(args)
    _rekey_escaped(vault, args)
    grant = sharing.share(vault, args.path, public, read_only=args.read_only, label=args.label, expires=expires)
    owner = grants.fingerprint(grants.owner_public(vault.root_key)).hex()
    vault.audit.append("share", grant=grant.grant_id.hex(), path=args.path, recipient=public.fingerprint,
                                rights=grants.RIGHTS[grant.rights], expires=expires or None,
                                generation=grant.generation)
    doc = {"grant": grant.grant_id.hex(), "recipient": public.fingerprint, "rights": grants.RIGHTS[grant.rights],
           "label": grant.label, "expires": expires or None, "owner": owner}
    options.emit(args, doc, grant.grant_id.hex())
    if not args.json:
        # The grant id alone on stdout (for scripts); what happened, for people, on stderr.
        print(f"pqcfs: shared {args.path} with {public.fingerprint} ({grants.RIGHTS[grant.rights]}, label "
              f"{grant.label!r}, expires {_iso(expires)}); give them the owner key {owner} to check it",
              file=sys.stderr)
    return 0


def _rekey_escaped(vault, args) -> None:
    """Nodes that were moved out of the directory before it is shared still hold keys
    derived from its key, which the grant hands over: re-keyed first, in a session of
    their own (the mount's crash safety)."""
    if not vault.tables:
        return
    vfs = sharing.owner_tree(vault)
    if not lineage.escaped(vfs, sharing.resolve(vfs, args.path)):
        return
    session = session_mod.OfflineSession(vault, "share")
    vfs, plan = session.start(Progress)
    try:
        count = lineage.rekey_escaped(vfs, sharing.resolve(vfs, args.path), session.event)
    finally:
        session.end()
    print(f"pqcfs: {count} entr(ies) moved out of {args.path} earlier still had keys derived from it: re-keyed "
          "before sharing", file=sys.stderr)


def run_grants(args) -> int:
    vault = options.unlock(args)
    views = sharing.list_grants(vault)
    owner = grants.fingerprint(grants.owner_public(vault.root_key)).hex()
    lines = [f"owner key {owner}"]
    for v in views:
        lines.append(f"{v.grant_id}  {v.path or '(deleted)'}  label {v.label!r}  to {v.recipient}  {v.rights}  "
                     f"expires {_iso(v.expires)}  created {_iso(v.created)}")
    if not views:
        lines.append("no grants")
    options.emit(args, {"owner": owner, "grants": [v.as_dict() for v in views]}, "\n".join(lines))
    return 0


def run_revoke(args) -> int:
    if not args.grant and not args.resume:
        raise PqcfsError("name the grant to revoke (`pqcfs grants VAULT` lists them), or --resume")
    vault = options.unlock(args, require_all=False)
    devices.check_locations(vault.locations, options.allow_fixed(args, vault.header), args.allow_same_device)
    cut_short = revoke.pending(vault.header.grants)
    if cut_short is not None:
        if args.grant and not cut_short["id"].startswith(args.grant.lower()):
            print(f"pqcfs: first finishing the revoke of grant {cut_short['id']}, which was cut short",
                  file=sys.stderr)
        finish(vault, args, cut_short)
    if args.grant and (cut_short is None or not cut_short["id"].startswith(args.grant.lower())):
        record = revoke.find(vault.header.grants, args.grant)
        if record is None:
            options.emit(args, {"revoked": None, "already": args.grant}, f"grant {args.grant} is already revoked")
        else:
            finish(vault, args, record)
    elif cut_short is None:
        options.emit(args, {"revoked": None}, "no revoke was cut short; nothing to resume")
    return 0


def finish(vault, args, record) -> "revoke.Result":
    """Run one revoke in a session of its own (the mount's crash safety), then report it."""
    started = time.monotonic()
    session = session_mod.OfflineSession(vault, "revoke")
    if not vault.tables:
        raise PqcfsError("sharing needs format 2 (directory tables); run `pqcfs upgrade` first")
    vfs, plan = session.start(Progress)
    try:
        if plan.missing:
            print(f"pqcfs: warning: re-keying without {len(plan.missing)} replica(s) ({', '.join(plan.missing)}); "
                  "the next mount or `pqcfs sync` brings them up to date", file=sys.stderr)
        result = revoke.revoke(vault, vfs, record, session.event,
                               lambda label, total, files: Progress(label, total, files=files),
                               save_header=lambda: vault.save_header(only=session.replicas.healthy))
    finally:
        session.end()     # the tables written and every drive synced: part of the time measured
    result.seconds = time.monotonic() - started
    rate = result.bytes / result.seconds / 1e6 if result.seconds else 0.0
    doc = {"revoked": result.grant_id, "path": result.path, "bytes": result.bytes, "files": result.files,
           "seconds": round(result.seconds, 3), "rewrapped": result.rewrapped}
    options.emit(args, doc, f"revoked grant {result.grant_id}; re-keyed {result.path or '(directory gone)'}: "
                 f"{result.files} files, {result.bytes / 1e6:.1f} MB in {result.seconds:.1f} s ({rate:.1f} MB/s); "
                 f"{result.rewrapped} other grant(s) re-wrapped to the new key")
    return result


def run_export(args) -> int:
    public = recipient(args.to)
    if len(args.dest) > 4:
        raise PqcfsError("an export goes to a primary and at most three backups")
    infos = devices.check_locations(args.dest, args.allow_fixed, args.allow_same_device)
    vault = options.unlock(args, require_all=False)
    started = time.monotonic()
    vault_id, copier = export_mod.export(vault, args.path, args.dest, public, drive_infos=infos,
                                      progress_factory=lambda label, total, files: Progress(label, total, files=files))
    seconds = time.monotonic() - started
    vault.audit.append("export", path=args.path, recipient=public.fingerprint, vault=vault_id.hex(),
                                files=copier.files, bytes=copier.bytes)
    doc = {"vault_id": vault_id.hex(), "replicas": args.dest, "recipient": public.fingerprint, "files": copier.files,
           "bytes": copier.bytes, "seconds": round(seconds, 3)}
    options.emit(args, doc, f"exported {args.path} ({copier.files} files, {copier.bytes / 1e6:.1f} MB) into a new "
                 f"vault {vault_id.hex()} on {', '.join(args.dest)}; it opens with identity {public.fingerprint} "
                 "only (`pqcfs mount DEST MOUNTPOINT --identity`)")
    return 0
