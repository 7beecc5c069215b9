"""pqcfs sync VAULT: bring stale replicas up to date from VAULT (the primary); while
VAULT is mounted, the mount daemon does it online (session/rejoin.py)."""

from __future__ import annotations

import os

from pqcfs import mirror
from pqcfs.cli import exitcodes, options
from pqcfs.cli.progress import Progress
from pqcfs.errors import DriveError, MountError, NoSpace
from pqcfs.session import control, mounttable
from pqcfs.session import session as session_mod
from pqcfs.format import replica_state as rs
from pqcfs import vault as vault_mod


def add_parser(sub) -> None:
    p = sub.add_parser("sync", help="bring the backup up to date (only what changed; progress bar); never "
                       "overwrites newer data; on a mounted vault the daemon does it online")
    p.add_argument("vault", help="the replica to copy from (normally the primary)")
    p.add_argument("--overwrite-diverged", action="store_true",
                   help="after a split brain: make the other replicas copies of VAULT, discarding their changes")
    p.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    options.add_unlock_options(p)
    options.add_replica_options(p)
    p.set_defaults(func=run)


def _live_mount(vault_path: str) -> dict | None:
    """The runtime record of a live mount that serves this replica."""
    here = os.path.realpath(vault_path)
    for mount in mounttable.listing():
        if mount.alive and mount.info and here in (os.path.realpath(r) for r in mount.info.get("replicas", [])):
            return mount.info
    return None


def _sync_mounted(args, info: dict) -> int:
    """The vault is mounted: its daemon holds the lock and the keys, and brings the
    missing replicas back while it serves."""
    progress = None

    def shown(p: dict) -> None:
        nonlocal progress
        if progress is None:
            progress = Progress(f"sync {p['replica']} (online)", p["bytes_total"], files=p["files_total"])
        progress(p["bytes"] - progress.done, files=p["files"] - progress.files_done)
    socket_path = control.socket_path(session_mod.runtime_file(info["mountpoint"]))
    backup = os.path.abspath(args.backup) if args.backup else None
    try:
        answer = control.request_sync(socket_path, backup, shown)
    except OSError as e:
        raise MountError(f"{info['mountpoint']} is mounted, but its daemon can not be reached ({e}); "
                         "unmount it and run `pqcfs sync` again") from None
    finally:
        if progress:
            progress.close()
    if "error" in answer:
        raise DriveError(f"the mount daemon of {info['mountpoint']} refused: {answer['error']}")
    results = answer["results"]
    failed = [r for r in results if not r["ok"]]
    synced = [r for r in results if r["ok"]]
    lines = [f"synced {r['location']} online ({'incremental' if r['incremental'] else 'full compare'}): "
             f"{r['files_changed']} files changed, {r['bytes_written'] / 2**20:.1f} MiB written, "
             f"{r['removed']} removed; it is mirrored again" for r in synced]
    if not results:
        lines.append(f"{info['mountpoint']} has all its replicas" if not answer["missing"] else
                     f"still missing: {', '.join(answer['missing'])} (not plugged in; name it with --backup)")
    options.emit(args, {"mountpoint": info["mountpoint"], "synced": synced, "failed": failed,
                        "missing": answer["missing"]}, "\n".join(lines))
    if failed:
        first = failed[0]
        error = NoSpace if first.get("no_space") else DriveError
        raise error(f"{first['location']}: {first['error']}")
    if answer["missing"] and args.backup:
        raise DriveError(f"{args.backup} did not rejoin {info['mountpoint']}")
    if answer["missing"]:
        # Nothing was brought up to date: not a success, whatever was shown above.
        raise DriveError(f"{info['mountpoint']} still runs without {', '.join(answer['missing'])}: that drive is not "
                         "plugged in (plug it in, or name where it is with --backup)")
    return 0


def run(args) -> int:
    info = _live_mount(args.vault)
    if info is not None:
        return _sync_mounted(args, info)
    vault = options.unlock(args, require_all=True)
    if len(vault.header.replicas) < 2:
        options.emit(args, {"synced": [], "single": True},
                     f"{vault.locations[0]} is the only replica of this vault (made with --single): nothing to sync")
        return exitcodes.OK
    if len(vault.locations) < 2:
        absent = [r.get("path_hint") or r["id"] for r in vault.header.replicas[1:]]
        raise DriveError(f"no other replica of the vault at {vault.locations[0]} is plugged in (last seen at "
                         f"{', '.join(absent)}); plug it in, or give it with --backup")
    synced = []
    source = vault_mod.read_state(vault.drives[0], vault.root_key)
    for location in vault.locations[1:]:
        relation = rs.compare(source, vault_mod.read_state(vault.drive(location), vault.root_key))
        if relation == rs.SAME:
            continue
        if relation == rs.DIVERGED and not args.overwrite_diverged:
            raise DriveError(f"{vault.locations[0]} and {location} diverged (split brain); nothing was "
                             "touched. --overwrite-diverged keeps VAULT and discards the other's changes")
        paths = mirror.sync_plan(vault, vault.locations[0], location)
        size, files = mirror.sync_totals(vault, vault.locations[0], paths)
        progress = Progress(f"sync {location}", size, files=files)
        try:
            stats = mirror.sync_replica(vault, vault.locations[0], location, progress, paths)
        finally:
            progress.close()
        synced.append({"replica": location, "incremental": paths is not None, "files_changed": stats.files_changed,
                       "bytes_written": stats.bytes_written, "removed": stats.removed, "damaged": stats.damaged})
        vault.audit.append("sync", source=vault.locations[0], target=location,
                                    files_changed=stats.files_changed, damaged=stats.damaged,
                                    diverged=relation == rs.DIVERGED)
    text = "\n".join(f"synced {s['replica']}: {s['files_changed']} files changed, "
                     f"{s['bytes_written'] / 2**20:.1f} MiB written, {s['removed']} removed"
                     + (f", {s['damaged']} damaged on the source and not copied (run `pqcfs fsck`)"
                        if s["damaged"] else "") for s in synced)
    options.emit(args, {"synced": synced}, text or "all replicas are up to date")
    return 0
