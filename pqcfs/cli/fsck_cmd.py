"""pqcfs fsck VAULT [--repair]"""

from __future__ import annotations

from pqcfs import fsck, mirror
from pqcfs.cli import exitcodes, options
from pqcfs.cli.progress import Progress
from pqcfs.errors import PqcfsError
from pqcfs.session import session as session_mod


def add_parser(sub) -> None:
    p = sub.add_parser("fsck", help="authenticate everything on every replica, compare them, repair")
    p.add_argument("vault", help="the vault: where its primary (or any) replica is, e.g. /media/usb1")
    p.add_argument("--repair", action="store_true", help="repair damaged copies from a good replica")
    p.add_argument("--remote", nargs="?", const="", metavar="NAME",
                   help="check the vault's remotes instead (or the one named): the newest epoch authenticated, "
                        "every object downloaded and checked")
    p.add_argument("--sample", type=float, metavar="PERCENT",
                   help="with --remote: check this share of the objects, chosen at random (every page always)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    options.add_unlock_options(p)
    options.add_replica_options(p)
    p.set_defaults(func=run)


def _settle(args, vault) -> None:
    """What a mount would do first: a session that ended uncleanly (a crash, a pulled
    drive) is recovered and a stale replica brought up to date, so that the check below
    judges the vault as the next mount will see it, not a half-written session."""
    plan, _ = mirror.plan(vault)
    if not (plan.unclean or plan.stale):
        return
    session = session_mod.OfflineSession(vault, "fsck-repair")
    session.start(Progress)
    session.end()       # only after a start that went through: an end says "clean"


def run_remote(args) -> int:
    """fsck --remote: what each remote holds, checked against its keyed ids; nothing is written."""
    from pqcfs.remote import registry, restore
    vault = options.unlock(args, require_all=False, audit=False)
    vault_id = vault.header.vault_id
    entries = [registry.find(vault_id, args.remote)] if args.remote else registry.load(vault_id)
    if not entries:
        raise PqcfsError("this vault has no remote on this machine; `pqcfs remote add VAULT REMOTE:PATH` adds one")
    reports, lines = [], []
    for entry in entries:
        seen = registry.load_index(entry, vault_id, vault.root_key).epoch
        report = restore.check_remote(entry.remote(), vault_id, vault.root_key, seen, args.sample)
        reports.append({"remote": entry.name, "epoch": report.epoch, "files": report.files, "checked": report.checked,
                        "missing": report.missing, "changed": report.changed, "clean": report.ok})
        lines.append(f"{entry.name}: epoch {report.epoch}, {report.checked} of {report.files} files checked"
                     + ("" if args.sample is None else f" ({args.sample:g} % sample)"))
        lines += [f"  MISSING {m}" for m in report.missing] + [f"  CHANGED {c}" for c in report.changed]
        lines.append("  clean" if report.ok else "  NOT clean: `pqcfs push` sends what is missing or changed again")
    options.emit(args, {"remotes": reports}, "\n".join(lines))
    return exitcodes.OK if all(r["clean"] for r in reports) else exitcodes.CRYPTO


def run(args) -> int:
    if args.remote is not None:
        return run_remote(args)
    if args.sample is not None:
        raise PqcfsError("--sample goes with --remote")
    # Takes the vault lock (fsck never races a mount); a damaged header copy heals only with --repair.
    vault = options.unlock(args, require_all=False, heal=args.repair)
    if args.repair:
        _settle(args, vault)
    total = sum(mirror.totals(vault, loc)[0] for loc in vault.locations)
    progress = Progress("fsck", total)
    report = fsck.run(vault, repair=args.repair, progress=progress)
    progress.finish()
    for location, why in vault.headers_healed:
        report.problems.insert(0, fsck.Problem(location, "pqcfs.vault", f"vault header: {why}", repaired=True))
    for location, why in vault.damaged_headers_seen:
        report.problems.insert(0, fsck.Problem(location, "pqcfs.vault", f"vault header: {why}"))
    vault.audit.append(
        "fsck", clean=report.clean, problems=len(report.problems),
        repaired=sum(p.repaired for p in report.problems), differing_files=report.differing_files,
        findings=[f"{p.replica}: {p.c_path}: {p.what}{' (repaired)' if p.repaired else ''}"
                  for p in report.problems][:100])
    lines = [f"checked {report.nodes} nodes, {report.bytes_checked / 2**20:.1f} MiB on "
             f"{len(report.replicas)} replica(s)"]
    for p in report.problems:
        lines.append(f"  {'REPAIRED' if p.repaired else 'DAMAGED '} {p.replica}: {p.c_path}: {p.what}")
    if report.differing_files:
        lines.append(f"  replicas differ in {report.differing_files} file(s) (run `pqcfs sync`)")
    lines.append("clean" if report.clean else "NOT clean")
    options.emit(args, report.to_dict(), "\n".join(lines))
    if report.clean:
        return exitcodes.OK
    if not any(not p.repaired for p in report.problems):
        return exitcodes.DEGRADED     # nothing damaged: a replica is only behind (`pqcfs sync`)
    return exitcodes.CRYPTO
