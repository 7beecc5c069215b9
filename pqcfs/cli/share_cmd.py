"""pqcfs share VAULT PATH --to KEY and pqcfs grants VAULT."""

from __future__ import annotations

import datetime as dt
import re
import sys

from pqcfs import sharing
from pqcfs.cli import options
from pqcfs.errors import PqcfsError
from pqcfs.format import grants
from pqcfs.format.identity import PUB_PREFIX, PublicIdentity


def add_parser(sub) -> None:
    p = sub.add_parser("share", help="grant a directory of the vault to another person's identity")
    p.add_argument("vault", help="the primary replica (the owner unlocks it)")
    p.add_argument("path", help="the directory inside the vault to share, e.g. projects/acme")
    p.add_argument("--to", required=True, metavar="KEY",
                   help="the recipient: a public-key file, or the string `pqcfs identity export` prints")
    p.add_argument("--read-only", action="store_true", help="the recipient may read, not change")
    p.add_argument("--expires", metavar="DATE",
                   help="YYYY-MM-DD[THH:MM] (UTC) or Nd (N days from now); advisory offline, see docs/sharing.md")
    p.add_argument("--label", help="the name the recipient's mount shows (default: the directory's name)")
    p.add_argument("--json", action="store_true", help="print the grant as JSON")
    options.add_unlock_options(p)
    options.add_replica_options(p)
    p.set_defaults(func=run_share)
    g = sub.add_parser("grants", help="list the vault's grants (the owner unlocks)")
    g.add_argument("vault", help="the primary replica")
    g.add_argument("--json", action="store_true", help="print the grants as JSON")
    options.add_unlock_options(g)
    options.add_replica_options(g)
    g.set_defaults(func=run_grants)


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
    grant = sharing.share(vault, args.path, public, read_only=args.read_only, label=args.label, expires=expires)
    owner = grants.fingerprint(grants.owner_public(vault.root_key)).hex()
    vault.extra["audit"].append("share", grant=grant.grant_id.hex(), path=args.path, recipient=public.fingerprint,
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
