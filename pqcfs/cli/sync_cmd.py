"""pqcfs sync VAULT: bring stale replicas up to date from VAULT (the primary)."""

from __future__ import annotations

from pqcfs import mirror
from pqcfs.cli import options
from pqcfs.cli.progress import Progress
from pqcfs.errors import DriveError
from pqcfs.format import replica_state as rs
from pqcfs import vault as vault_mod


def add_parser(sub) -> None:
    p = sub.add_parser("sync", help="bring the backup up to date (progress bar); never overwrites newer data")
    p.add_argument("vault", help="the replica to copy from (normally the primary)")
    p.add_argument("--overwrite-diverged", action="store_true",
                   help="after a split brain: make the other replicas copies of VAULT, discarding their changes")
    p.add_argument("--json", action="store_true")
    options.add_unlock_options(p)
    options.add_replica_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    vault = options.unlock(args, require_all=True)
    if len(vault.locations) < 2:
        raise DriveError("no other replica is present to sync with")
    synced = []
    source = vault_mod.read_state(vault.drives[0], vault.root_key)
    for location in vault.locations[1:]:
        relation = rs.compare(source, vault_mod.read_state(vault.drive(location), vault.root_key))
        if relation == rs.SAME:
            continue
        if relation == rs.NEWER:
            raise DriveError(f"{location} is newer than {vault.locations[0]}; run the sync from it instead")
        if relation == rs.DIVERGED and not args.overwrite_diverged:
            raise DriveError(f"{vault.locations[0]} and {location} diverged (split brain); nothing was "
                             "touched. --overwrite-diverged keeps VAULT and discards the other's changes")
        size, files = mirror.totals(vault, vault.locations[0])
        progress = Progress(f"sync {location}", size, files=files)
        stats = mirror.sync_replica(vault, vault.locations[0], location, progress)
        progress.close()
        synced.append({"replica": location, "files_changed": stats.files_changed,
                       "bytes_written": stats.bytes_written, "removed": stats.removed, "damaged": stats.damaged})
        vault.extra["audit"].append("sync", source=vault.locations[0], target=location,
                                    files_changed=stats.files_changed, damaged=stats.damaged,
                                    diverged=relation == rs.DIVERGED)
    text = "\n".join(f"synced {s['replica']}: {s['files_changed']} files changed, "
                     f"{s['bytes_written'] / 2**20:.1f} MiB written, {s['removed']} removed"
                     + (f", {s['damaged']} damaged on the source and not copied (run `pqcfs fsck`)"
                        if s["damaged"] else "") for s in synced)
    options.emit(args, {"synced": synced}, text or "all replicas are up to date")
    return 0
