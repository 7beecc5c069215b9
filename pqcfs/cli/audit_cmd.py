"""pqcfs audit show|verify|checkpoint"""

from __future__ import annotations


from pqcfs import vault as vault_mod
from pqcfs import grantee_log, sharing
from pqcfs.audit import log as audit_log
from pqcfs.session import grantee
from pqcfs.cli import exitcodes, options
from pqcfs.errors import PqcfsError
from pqcfs.format.identity import PublicIdentity


def add_parser(sub) -> None:
    p = sub.add_parser("audit", help="show and verify the vault's tamper-evident audit log")
    asub = p.add_subparsers(dest="audit_cmd", required=True, metavar="show|verify|checkpoint",
                            help="what to do with the log")
    show = asub.add_parser("show", help="decrypt and list audit records")
    show.add_argument("vault", help="the vault: where its primary (or any) replica is, e.g. /media/usb1")
    show.add_argument("--since", metavar="ISO-TIME",
                      help="only records at or after this time, e.g. 2026-11-01 or 2026-11-01T12:00")
    show.add_argument("--until", metavar="ISO-TIME", help="only records before this time")
    show.add_argument("--event", action="append", help="only these events (repeatable)")
    show.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    verify = asub.add_parser("verify", help="check the chain on every replica (exit 0 intact, 10 broken)")
    verify.add_argument("vault", help="the vault: where its primary (or any) replica is, e.g. /media/usb1")
    verify.add_argument("--public-key", metavar="PUBFILE",
                        help="verify without the vault key, up to the last checkpoint signed by this identity")
    verify.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    cp = asub.add_parser("checkpoint", help="sign the log so far with your identity (needs --identity)")
    cp.add_argument("vault", help="the vault: where its primary (or any) replica is, e.g. /media/usb1")
    for q in (show, verify, cp):
        options.add_unlock_options(q)
        options.add_replica_options(q)
    p.set_defaults(func=run)


def _read(drive) -> bytes:
    try:
        return drive.read(audit_log.FILE_NAME, audit_log.MAX_FILE)
    except FileNotFoundError:
        return b""


def run(args) -> int:
    if args.audit_cmd == "verify" and args.public_key:
        return _verify_public(args)
    # Reading the log must not change it: no unlock record for show/verify.
    vault = options.unlock(args, require_all=False, audit=args.audit_cmd == "checkpoint")
    keys = audit_log.AuditKeys.from_root(vault.root_key)
    vid = vault.header.vault_id
    if args.audit_cmd == "checkpoint":
        identity = vault.identity
        if identity is None:
            raise PqcfsError("a checkpoint is signed with an identity: use --identity")
        vault.audit.checkpoint(identity)
        print(f"checkpoint signed by {identity.public.fingerprint} after record {vault.audit.seq - 2}")
        return 0
    if args.audit_cmd == "verify":
        results, logs = [], []
        for location in vault.locations:
            drive = vault.drive(location)
            data = _read(drive)
            logs.append(data)
            head = vault_mod.read_state(drive, vault.root_key).audit_head
            v = audit_log.verify(data, keys, vid, head)
            # A log that was once found damaged stays reported: its segment record says so.
            results.append({"replica": location, "records": v.records, "intact": v.intact and not v.damage,
                            "first_bad_record": v.first_bad if not v.damage else 0,
                            "reason": v.reason or v.damage, "checkpoints": v.checkpoints})
        consistent = all(a.startswith(b) or b.startswith(a) for a in logs for b in logs)
        intact = all(r["intact"] for r in results) and consistent
        lines = [f"{r['replica']}: {r['records']} records, "
                 + ("intact" if r["intact"] else f"BROKEN at record {r['first_bad_record']}: {r['reason']}")
                 for r in results]
        if not consistent:
            lines.append("the replicas' logs disagree (one is not a prefix of the other)")
        granted = _verify_grantee_logs(vault, _tampered_grantee_logs(keys, vid, logs[0]))
        for g in granted:
            lines.append(f"grant {g['grant']} on {g['replica']}: {g['records']} records, "
                         + (f"intact ({', '.join(g['events']) or 'no sessions'})" if g["intact"]
                            else f"BROKEN: {g['reason']}"))
        intact = intact and all(g["intact"] for g in granted)
        options.emit(args, {"intact": intact, "replicas": results, "consistent": consistent, "grants": granted},
                     "\n".join(lines))
        return exitcodes.OK if intact else exitcodes.CRYPTO
    data = _read(vault.drives[0])
    verdict = audit_log.verify(data, keys, vid, vault_mod.read_state(vault.drives[0], vault.root_key).audit_head)
    intact = len(data)
    if not verdict.intact and verdict.first_bad is not None:
        intact = audit_log.offset_of(data, verdict.first_bad)   # show only the intact prefix
    records = audit_log.parse(data[:intact])
    shown = []
    for r in records:
        entry = {"seq": r.seq, **audit_log.decrypt(keys, vid, r)}
        t = entry.get("time", "")
        if (args.since and t < args.since) or (args.until and t > args.until):
            continue
        if args.event and entry.get("event") not in args.event:
            continue
        shown.append(entry)
    text = "\n".join(f"{e['seq']:>6} {e.get('time', ''):<29} {e['event']:<18} "
                     + " ".join(f"{k}={v}" for k, v in e.items() if k not in ("seq", "time", "event"))
                     for e in shown)
    if not verdict.intact:
        text += f"\nWARNING: the log is not intact from record {verdict.first_bad}: {verdict.reason}"
    elif verdict.damage:
        text += f"\nWARNING: {verdict.damage}"
    intact = verdict.intact and not verdict.damage
    options.emit(args, {"records": shown, "intact": intact}, text or "no records")
    return exitcodes.OK if intact else exitcodes.CRYPTO


def _verify_public(args) -> int:
    header, _, _ = vault_mod.read_header(args.vault)
    with open(args.public_key) as f:
        public = PublicIdentity.decode(f.read())
    with vault_mod.open_location(args.vault) as drive:
        v = audit_log.verify_public(_read(drive), header.vault_id, public.sign_pk)
    text = (f"intact up to record {v.records - 1} ({v.checkpoints} checkpoint(s) by {public.fingerprint})"
            if v.intact else f"NOT verified: {v.reason}")
    options.emit(args, {"intact": v.intact, "verified_records": v.records if v.intact else None,
                        "first_bad_record": v.first_bad, "reason": v.reason}, text)
    return exitcodes.OK if v.intact else exitcodes.CRYPTO


def _tampered_grantee_logs(keys, vault_id: bytes, data: bytes) -> list[dict]:
    """What earlier unlocks recorded in the owner's log about grantee logs that lost or
    changed records (the recipient holds their log's key; the owner's log keeps the proof)."""
    try:
        records = audit_log.parse(data)
    except audit_log.Malformed as e:
        records = audit_log.parse(data[:audit_log.offset_of(data, e.index)])
    out = []
    for r in records:
        if r.kind != 0:
            continue
        try:
            event = audit_log.decrypt(keys, vault_id, r)
        except PqcfsError:
            continue
        if event.get("event") == "grantee-log-tampered":
            out.append(event)
    return out


def _verify_grantee_logs(vault, recorded: list[dict]) -> list[dict]:
    """Each live grant's own log (what its recipient did), with the subtree key the owner
    derives from the tree, checked against the heads the owner saw (recorded: what
    earlier unlocks found tampered)."""
    if not vault.tables or not any("blob" in r for r in vault.header.grants):
        return []
    vfs = sharing.owner_tree(vault)
    now_found = grantee_log.adopt_logs(vault)
    out = []
    for record in vault.header.grants:
        if "blob" not in record:
            continue
        node = sharing.find_dir(vfs, bytes.fromhex(record["node"]))
        if node is None:
            continue
        key = node.keys.key
        for location in vault.locations:
            verdict, events = grantee.verify_log(vault.drive(location), key, bytes.fromhex(record["id"]),
                                                 vault.header.vault_id)
            # What this unlock found against the heads the owner saw before (deleted,
            # truncated or rewritten by the recipient, who holds the log's key).
            replica_id = vault_mod.read_state(vault.drive(location), vault.root_key).replica_id
            tampered = [p for p in [*now_found, *recorded] if p["grant"] == record["id"]
                         and p["replica"] == replica_id]
            reason = verdict.reason if not tampered else (
                f"{tampered[0]['reason']}: the owner had seen {tampered[0]['seen_records']} record(s), "
                f"{tampered[0]['records_now']} now")
            out.append({"grant": record["id"], "replica": location, "records": verdict.records,
                        "intact": verdict.intact and not tampered, "reason": reason,
                        "events": sorted({e.get("event", "?") for e in events})})
    return out
