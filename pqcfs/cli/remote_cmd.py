"""pqcfs remote add|list|remove, pqcfs push, pqcfs recover: a third copy of the ciphertext
on any rclone remote (docs/offsite.md)."""

from __future__ import annotations

import os
import sys
import tempfile
import time

import blake3

from pqcfs import vault as vault_mod
from pqcfs.audit import host
from pqcfs.cli import options
from pqcfs.cli.progress import Progress
from pqcfs.errors import (CryptoError, DamagedStructure, DriveError, MountError, PqcfsError, RemoteError,
                          RolledBack, SetupError)
from pqcfs.format import replica_state as rs
from pqcfs.format import vault_header
from pqcfs.remote import registry
from pqcfs.remote.push import EPOCHS, HEADER, Pusher, recovered_lineage, replica_state_fields
from pqcfs.remote.rclone import Remote
from pqcfs.remote import restore
from pqcfs.store import devices
from pqcfs.store.drive import Drive


def add_parser(sub) -> None:
    p = sub.add_parser("remote", help="offsite remotes (any rclone remote) that hold a third copy of the ciphertext")
    rsub = p.add_subparsers(dest="remote_cmd", required=True, metavar="add|list|remove", help="what to do")
    add = rsub.add_parser("add", help="push this vault to an rclone remote too (checked, nothing sent yet)")
    add.add_argument("vault", help="the vault: where its primary (or any) replica is")
    add.add_argument("path", metavar="REMOTE:PATH",
                     help="an rclone path: a remote of your rclone config (offsite:vaults/v1) or a connection string "
                          "(:sftp,host=...,user=...:vaults/v1)")
    add.add_argument("--name", help="what pqcfs calls it (default: the rclone remote's name)")
    add.add_argument("--rclone-config", metavar="FILE", help="the rclone config file to use (default: rclone's own)")
    add.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    ls = rsub.add_parser("list", help="this vault's remotes and their last push (no unlock needed)")
    ls.add_argument("vault", help="the vault: where its primary (or any) replica is")
    ls.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    rm = rsub.add_parser("remove", help="stop pushing to a remote (what it holds is left there)")
    rm.add_argument("vault", help="the vault: where its primary (or any) replica is")
    rm.add_argument("name", help="the remote's name, as `pqcfs remote list` shows it")
    p.set_defaults(func=run_remote)

    push = sub.add_parser("push", help="bring the vault's remotes up to date now (only what changed; progress bar)")
    push.add_argument("vault", help="the vault: where its primary replica is")
    push.add_argument("--remote", metavar="NAME", help="only this remote (default: every remote of the vault)")
    push.add_argument("--bwlimit", metavar="RATE", help="rclone's --bwlimit (e.g. 1M, or \"08:00,512k 19:00,off\")")
    push.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    options.add_unlock_options(push)
    options.add_replica_options(push)
    push.set_defaults(func=run_push)

    rec = sub.add_parser("recover", help="write a complete vault onto new drives from a remote (after losing both)")
    rec.add_argument("path", metavar="REMOTE:PATH", help="the rclone path the vault was pushed to")
    rec.add_argument("primary", metavar="NEW_PRIMARY", help="an empty directory on the new primary drive")
    rec.add_argument("backup", metavar="NEW_BACKUP", nargs="?", help="an empty directory on the new backup drive")
    rec.add_argument("--rclone-config", metavar="FILE", help="the rclone config file to use (default: rclone's own)")
    rec.add_argument("--accept-older", action="store_true",
                     help="recover even an epoch older than this machine pushed (the remote was rolled back), "
                          "or the newest one that authenticates when a newer one does not")
    rec.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    options.add_unlock_options(rec)
    options.add_drive_options(rec)
    rec.set_defaults(func=run_recover)


# --- remote add | list | remove ---

def run_remote(args) -> int:
    header, _, _ = vault_mod.read_header(args.vault)
    vault_id = header.vault_id
    entries = registry.load(vault_id)
    if args.remote_cmd == "list":
        rows = []
        for entry in entries:
            status = registry.load_status(entry, vault_id)
            rows.append({"name": entry.name, "path": entry.path, "rclone_config": entry.rclone_config, **status})
        text = "\n".join(f"{r['name']}: {r['path']}" + (f" (epoch {r['epoch']}, pushed {_ago(r['pushed_at'])})"
                                                         if r.get("pushed_at") else " (never pushed)")
                         for r in rows)
        options.emit(args, {"remotes": rows}, text or "this vault has no remote on this machine")
        return 0
    if args.remote_cmd == "remove":
        entry = registry.find(vault_id, args.name)
        registry.save(vault_id, [e for e in entries if e.name != args.name])
        registry.forget(entry, vault_id)
        host.record(vault_id.hex(), "remote-removed", name=entry.name)
        print(f"removed remote {entry.name}; what it holds ({entry.path}) was left there")
        return 0
    name = args.name or registry.default_name(args.path)
    if not registry.NAME.match(name):
        raise PqcfsError(f"{name!r} is not a remote name pqcfs accepts (a-z, 0-9, - and _, up to 32); "
                         "choose one with --name")
    if any(e.name == name for e in entries):
        raise PqcfsError(f"this vault already has a remote named {name!r}; choose another with --name")
    config = os.path.abspath(args.rclone_config) if args.rclone_config else None
    if config and not os.path.isfile(config):
        raise PqcfsError(f"{config}: no such rclone config file")
    remote = Remote(args.path, config)
    held = remote.read(HEADER, vault_header.MAX_FILE)       # reaches it: a wrong host or password fails here
    if held is not None:
        other = vault_header.decode(held)[0]
        if other.vault_id != vault_id:
            raise RemoteError(f"{args.path} holds another pqcfs vault ({other.vault_id.hex()[:16]}…); "
                              "choose an empty path")
    elif remote.list_files(""):
        existing = remote.list_files("")
        if not all(p.startswith((EPOCHS + "/", "objects/")) for p in existing):
            raise RemoteError(f"{args.path} is not empty and holds no pqcfs vault; choose an empty path")
    entry = registry.RemoteEntry(name, args.path, config)
    registry.save(vault_id, entries + [entry])
    host.record(vault_id.hex(), "remote-added", name=name)     # the name only: the address stays on this host
    options.emit(args, {"name": name, "path": args.path, "rclone_config": config},
                 f"added remote {name} ({args.path}); `pqcfs push {args.vault}` sends the vault there")
    return 0


def _ago(when: float) -> str:
    seconds = max(0, time.time() - when)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


# --- push ---

def _targets(vault_id: bytes, only: str | None) -> list[registry.RemoteEntry]:
    if only:
        return [registry.find(vault_id, only)]
    entries = registry.load(vault_id)
    if not entries:
        raise PqcfsError("this vault has no remote on this machine; `pqcfs remote add VAULT REMOTE:PATH` adds one")
    return entries


def run_push(args) -> int:
    from pqcfs.cli.sync_cmd import _live_mount     # the one place that knows what a live mount looks like
    info = _live_mount(args.vault)
    if info is not None:
        return push_mounted(args, info)
    vault = options.unlock(args, require_all=False)
    vault_id = vault.header.vault_id
    results = []
    for entry in _targets(vault_id, args.remote):
        pusher = Pusher(entry, vault_id, vault.root_key, args.bwlimit)
        try:
            checked = pusher.check()
            state = vault_mod.read_state(vault.drives[0], vault.root_key)
            staged = pusher.stage(vault.drives[0], checked, replica_state_fields(state))
            progress = Progress(f"push {entry.name}", sum(os.path.getsize(os.path.join(pusher.staging, "objects", p))
                                                           for p in staged.staged))
            try:
                result = pusher.send(checked, staged, lambda done: progress(done - progress.done))
            finally:
                progress.close()
        except (PqcfsError, OSError) as e:
            pusher.failed(e)
            vault.audit.append("remote-push-failed", remote=entry.name, error=type(e).__name__)
            raise
        vault.audit.append("remote-push", remote=entry.name, epoch=result.epoch, objects=result.objects_sent,
                           bytes=result.bytes_sent, removed=result.removed)
        results.append({"remote": entry.name, **result.__dict__})
    options.emit(args, {"pushed": results}, "\n".join(_push_line(r) for r in results))
    return 0


def _push_line(r: dict) -> str:
    if r["unchanged"]:
        line = f"{r['remote']}: up to date (epoch {r['epoch']}, {r['files']} files)"
    else:
        line = (f"{r['remote']}: epoch {r['epoch']} committed: {r['objects_sent']} objects sent "
                f"({r['bytes_sent'] / 2**20:.1f} MiB), {r['removed']} old ones removed; {r['files']} files")
    if r["adopted"]:
        line += " (the remote held a newer epoch pushed from elsewhere; this one follows it)"
    if r["damaged"]:
        line += f"; {len(r['damaged'])} damaged entries on the primary not pushed (run `pqcfs fsck`)"
    return line


def push_mounted(args, info: dict) -> int:
    from pqcfs.session import control
    from pqcfs.session import session as session_mod
    socket_path = control.socket_path(session_mod.runtime_file(info["mountpoint"]))
    progress = None

    def shown(p: dict) -> None:
        nonlocal progress
        if progress is None:
            progress = Progress(f"push {p['remote']} (online)", p["bytes_total"])
        progress(p["bytes"] - progress.done)
    try:
        answer = control.request(socket_path, {"op": "push", "remote": args.remote, "bwlimit": args.bwlimit}, shown)
    except OSError as e:
        raise MountError(f"{info['mountpoint']} is mounted, but its daemon can not be reached ({e})") from None
    finally:
        if progress:
            progress.close()
    if "error" in answer:
        kind = {"RolledBack": RolledBack, "CryptoError": CryptoError, "DamagedStructure": DamagedStructure,
                "SetupError": SetupError}.get(answer.get("kind"), RemoteError)
        raise kind(f"the mount daemon of {info['mountpoint']}: {answer['error']}")
    options.emit(args, {"pushed": answer["results"]}, "\n".join(_push_line(r) for r in answer["results"]))
    return 0


# --- recover ---

def run_recover(args) -> int:
    locations = [args.primary] + ([args.backup] if args.backup else [])
    for location in locations:
        vault_mod.check_empty(location, "recover")
    devices.check_locations(locations, args.allow_fixed, args.allow_same_device)
    config = os.path.abspath(args.rclone_config) if args.rclone_config else None
    remote = Remote(args.path, config)
    with tempfile.TemporaryDirectory(prefix="pqcfs-recover-") as unlock_dir:
        with open(os.path.join(unlock_dir, vault_header.FILE_NAME), "wb") as f:
            f.write(restore.read_header(remote))
        args.vault = unlock_dir
        unlocked = vault_mod.unlock([unlock_dir], options.credentials(args), slot=getattr(args, "unlock_slot", None))
    vault_id, root_key = unlocked.header.vault_id, unlocked.root_key
    seen = max((registry.load_index(e, vault_id, root_key).epoch for e in registry.load(vault_id)
                if e.path == args.path), default=0)
    before = {}
    for location in locations:
        with Drive(location) as drive:
            before[location] = set(drive.listdir(""))
    os.umask(0o077)     # what rclone downloads onto the new drive is the owner's alone, as a replica's files are
    try:
        epoch, record, tree, written = _recover(args, remote, vault_id, root_key, seen)
    except BaseException:
        # Nothing half-written stays: the directories are as empty as they were, and the
        # same command can run again (after `pqcfs push` mended the remote, say).
        for location, names in before.items():
            with Drive(location) as drive:
                for name in set(drive.listdir("")) - names:
                    if drive.kind(name) == "dir":
                        drive.remove_tree(name)
                    else:
                        drive.unlink(name)
        raise
    return _after_recover(args, vault_id, root_key, remote.config, epoch, record, tree, written)


def _recover(args, remote: Remote, vault_id: bytes, root_key: bytes, seen: int):
    work = os.path.join(args.primary, "pqcfs.recovering")
    os.mkdir(work, 0o700)
    try:
        reader = restore.Reader(remote, vault_id, root_key, work)
        epoch, record = reader.epoch(seen, args.accept_older,
                                     warn=lambda text: print(f"pqcfs: warning: {text}", file=sys.stderr))
        tree = reader.tree(epoch)
        recovery = restore.Recovery(reader, epoch, tree)
        progress = Progress(f"recover epoch {epoch.number}", epoch.size, files=epoch.files)
        try:
            with Drive(args.primary) as drive:
                written = recovery.write(drive, lambda done: progress(done - progress.done))
        finally:
            progress.close()
        header_bytes = recovery.header_bytes()
        header, signed, mac = vault_header.decode(header_bytes)
        if header.vault_id != vault_id or not vault_header.verify_mac(signed, mac, root_key):
            raise DriveError(f"epoch {epoch.number}'s vault header does not authenticate")
    finally:
        restore.cleanup(work)
    _finish_replicas(args, header, header_bytes, root_key, epoch, written)
    return epoch, record, tree, written


def _after_recover(args, vault_id: bytes, root_key: bytes, config, epoch, record, tree, written) -> int:
    locations = [args.primary] + ([args.backup] if args.backup else [])
    entry = next((e for e in registry.load(vault_id) if e.path == args.path), None)
    if entry is None:
        entry = registry.RemoteEntry(_free_name(vault_id, registry.default_name(args.path)), args.path, config)
        registry.save(vault_id, registry.load(vault_id) + [entry])
    registry.save_index(entry, vault_id, root_key, registry.Index(
        epoch=epoch.number, epoch_digest=blake3.blake3(record).hexdigest(), header=epoch.header,
        files=written | {vault_header.FILE_NAME: [0, 0, 0, 0, epoch.header]},
        pages={rel: list(v) for rel, v in tree.pages.items()}, objects=sorted(_ids(tree)), pushed_at=time.time()))
    host.record(vault_id.hex(), "remote-recovered", name=entry.name, epoch=epoch.number)
    options.emit(args, {"epoch": epoch.number, "time": epoch.time, "files": epoch.files, "bytes": epoch.size,
                        "primary": args.primary, "backup": args.backup, "remote": entry.name},
                 f"recovered epoch {epoch.number} (pushed {epoch.time}): {epoch.files} files, "
                 f"{epoch.size / 2**20:.1f} MiB onto {' and '.join(locations)}; changes made after that push "
                 "are not in it. Mount it as usual; `pqcfs push` goes on from this epoch")
    return 0


def _ids(tree) -> set[str]:
    return {oid for _, oid, _ in tree.files} | {pid for _, pid in tree.pages.values()}


def _free_name(vault_id: bytes, name: str) -> str:
    taken = {e.name for e in registry.load(vault_id)}
    n, candidate = 1, name
    while candidate in taken:
        n += 1
        candidate = f"{name[:28]}-{n}"
    return candidate


def _finish_replicas(args, header, header_bytes: bytes, root_key: bytes, epoch, written: dict) -> None:
    """The replica states (the pushed history, continued by a session of its own: a drive
    found again later is a diverged copy, never silently merged), the backup copied from
    the primary, and the headers last."""
    from pqcfs.store import sync as sync_mod
    roles = {r["role"]: r for r in header.replicas}
    if args.backup and "backup" not in roles:
        raise DriveError("this vault was made with a single replica; recover it onto one drive")
    pushed = epoch.state
    # Pushed from inside a mount session, the drives went on in that session after the
    # push: not claiming it keeps those drives, should they turn up again, from looking
    # older than the recovered ones (a sync would overwrite what they hold that the remote
    # does not). The two are diverged, and the user chooses.
    lineage = recovered_lineage(pushed, "recover-" + os.urandom(8).hex())
    targets = [(args.primary, header.replicas[0])]
    if args.backup:
        targets.append((args.backup, next(r for r in header.replicas[1:])))
    with Drive(args.primary) as primary:
        for location, replica in targets:
            if location != args.primary:
                with Drive(location) as backup:
                    sync_mod.sync_tree(primary, backup)
                    for name, kind in primary.scandir(""):
                        if kind == "file" and name.startswith("pqcfs.audit"):
                            backup.copy_from(primary, name)
            state = rs.ReplicaState(header.vault_id.hex(), replica["id"], generation=int(pushed.get("generation", 0)) + 1,
                                    clean=True, lineage=lineage[-rs.ReplicaState.LINEAGE_KEPT:],
                                    audit_head=pushed.get("audit_head"), grantee_heads=pushed.get("grantee_heads") or None)
            if state.grantee_heads:
                state.format = rs.GRANTEE_HEADS_VERSION
            vault_mod.write_state(location, state, root_key)
    for location, _ in targets:
        with Drive(location) as drive:
            drive.write_atomic(vault_header.FILE_NAME, header_bytes)
            drive.write_atomic(vault_header.SPARE_NAME, header_bytes)
    recovered = vault_mod.UnlockedVault(header, root_key, [t[0] for t in targets], slot_id=0)
    try:
        recovered.refresh_replica_hints()
    finally:
        recovered.close()
