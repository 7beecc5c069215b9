"""pqcfs snapshot create|list|delete, pqcfs restore, pqcfs diff, pqcfs history
(docs/snapshots.md). A mounted vault is asked through its daemon's control socket (it
alone writes the drives then); an unmounted one gets a session of its own."""

from __future__ import annotations

import os
import sys
import time

from pqcfs import sharing
from pqcfs.cli import exitcodes, options
from pqcfs.cli.progress import Progress
from pqcfs.errors import MountError, NoSuchPath, PqcfsError
from pqcfs.format import snapshot as fmt
from pqcfs.fs.copier import Copier, exists
from pqcfs.session import control
from pqcfs.session import session as session_mod
from pqcfs.session import snapshot_mount
from pqcfs.session.snapshot_mount import open_snapshot
from pqcfs.snapshots.view import SnapshotTree
from pqcfs.snapshots import plain, policy
from pqcfs.snapshots.history import find
from pqcfs.store import seen


def _command(parent, name: str, help: str, vault_help: str, *, func=None):
    """A subcommand taking VAULT first; its own options follow, then _vault_options."""
    p = parent.add_parser(name, help=help)
    p.add_argument("vault", help=vault_help)
    if func is not None:
        p.set_defaults(func=func)
    return p


def _vault_options(p, grantee: bool = False) -> None:
    """--json, the unlock and replica options (and a grantee's), last in every subcommand."""
    p.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    options.add_unlock_options(p)
    options.add_replica_options(p)
    if grantee:
        _grantee_options(p)


PRIMARY = "the vault: where its primary replica is"
ANY = "the vault: where its primary (or any) replica is"


def add_parser(sub) -> None:
    p = sub.add_parser("snapshot", help="snapshots: the whole vault as it is now, kept read-only (cheap: metadata only)")
    ssub = p.add_subparsers(dest="snapshot_cmd", required=True, metavar="create|list|delete", help="what to do")
    p.set_defaults(func=run_snapshot)
    c = _command(ssub, "create", "take a snapshot now (also while mounted: a consistent point)", PRIMARY)
    c.add_argument("--label", default="", help="a name for it (shown by list; usable instead of its id)")
    _vault_options(c)
    _vault_options(_command(ssub, "list", "the vault's snapshots, oldest first", ANY), grantee=True)
    d = _command(ssub, "delete", "delete snapshots (what only they hold is freed)", PRIMARY)
    d.add_argument("ids", nargs="+", metavar="ID", help="a snapshot's id (or a unique start of it) or label")
    _vault_options(d)

    r = _command(sub, "restore", "take a file or directory back from a snapshot", PRIMARY, func=run_restore)
    r.add_argument("path", help="the path inside the vault (as it was in the snapshot; / for everything)")
    r.add_argument("--snapshot", required=True, metavar="ID", help="the snapshot: id, label or \"latest\"")
    r.add_argument("--to", metavar="DEST",
                   help="write plain files to DEST outside the vault (default: back into the vault, at PATH when "
                        "nothing is there now, else beside it as NAME.restored-ID)")
    _vault_options(r, grantee=True)

    df = _command(sub, "diff", "what changed between a snapshot and another one (or the vault now)", ANY,
                  func=run_diff)
    df.add_argument("old", metavar="ID", help="the older snapshot")
    df.add_argument("new", metavar="ID2", nargs="?", help="the newer snapshot (default: the vault as it is now)")
    _vault_options(df)

    h = _command(sub, "history", "automatic snapshots: at every clean unmount and hourly while mounted, thinned",
                 PRIMARY, func=run_history)
    h.add_argument("--keep", metavar="AGE", help="how long history reaches back (30d, 12h, 8w)")
    h.add_argument("--max-space", metavar="PERCENT", default="20%",
                   help="the share of a drive history may hold before its oldest snapshots go (default 20%%)")
    h.add_argument("--off", action="store_true", help="take no more automatic snapshots (the ones there stay)")
    _vault_options(h)


def _grantee_options(p) -> None:
    p.add_argument("--grant", metavar="ID", help="with --identity, as a grantee: only this grant's directory")
    p.add_argument("--owner", metavar="FINGERPRINT",
                   help="with --identity, as a grantee: the owner key the grant must be signed by")


# --- reaching the vault ---------------------------------------------------------------------

def _mounted(vault_path: str) -> dict | None:
    from pqcfs.cli.sync_cmd import _live_mount     # the one place that knows what a live mount looks like
    return _live_mount(vault_path)


def _ask_daemon(info: dict, message: dict) -> dict:
    socket_path = control.socket_path(session_mod.runtime_file(info["mountpoint"]))
    try:
        answer = control.request(socket_path, {"op": "snapshot", **message})
    except OSError as e:
        raise MountError(f"{info['mountpoint']} is mounted, but its daemon can not be reached ({e}); "
                         "unmount it and run the command again") from None
    if "error" in answer:
        from pqcfs import errors
        kind = getattr(errors, answer.get("kind", ""), None)
        raise (kind if isinstance(kind, type) and issubclass(kind, PqcfsError) else PqcfsError)(answer["error"])
    return answer


def _offline(args, purpose: str, fn):
    """fn(session) in a session of this command's own (the vault is not mounted)."""
    vault = options.unlock(args, require_all=False)
    session = session_mod.OfflineSession(vault, purpose)
    session.start()
    try:
        if session.history is None:
            raise PqcfsError("snapshots need format 2 (directory tables); run `pqcfs upgrade` first")
        return fn(session)
    finally:
        session.end()


def _when(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ns / 1e9))


def _line(s: dict) -> str:
    label = f"  {s['label']}" if s["label"] else ""
    return f"{s['id'][:12]}  {_when(s['created'])}  {s['kind']:<6}  {s['files']:>8} files{label}"


# --- snapshot create | list | delete -----------------------------------------------------

def run_snapshot(args) -> int:
    action = args.snapshot_cmd
    if action == "list":
        return _list(args)
    info = _mounted(args.vault)
    if action == "create":
        if info is not None:
            made = _ask_daemon(info, {"action": "create", "label": args.label})["snapshot"]
        else:
            made = _offline(args, "snapshot", lambda s: s.history.create(s.vfs, label=args.label).to_json())
        options.emit(args, {"snapshot": made}, f"snapshot {made['id'][:12]} taken ({made['files']} files, "
                     f"{made['size'] / 1024:.0f} KiB of metadata){' — ' + made['label'] if made['label'] else ''}")
        return 0
    if info is not None:
        answer = _ask_daemon(info, {"action": "delete", "ids": args.ids})
    else:
        def delete(s):
            gone = [find(s.history.index, ref).snap_id for ref in args.ids]
            files, size = s.history.delete(gone)
            return {"deleted": [g.hex() for g in gone], "freed_files": files, "freed_bytes": size}
        answer = _offline(args, "snapshot-delete", delete)
    options.emit(args, answer, f"deleted {len(answer['deleted'])} snapshot(s); freed {answer['freed_files']} kept "
                 f"file version(s), {answer['freed_bytes'] / 2**20:.1f} MiB")
    return 0


def _grantee(args) -> bool:
    if not getattr(args, "identity", None):
        return False
    from pqcfs.cli import grantee_mount
    return grantee_mount.is_grantee(args)


def _grantee_snapshots(args):
    from pqcfs.cli import grantee_mount
    gv = grantee_mount.open_for_snapshots(args)
    return gv, snapshot_mount.grantee_snapshots(gv)


def _grantee_list(args) -> int:
    """A grantee's snapshots: those holding a directory of theirs, taken while the grant was live."""
    _, snaps = _grantee_snapshots(args)
    data = {"snapshots": [{"id": s.snap_id.hex(), "created": s.created, "grant": s.grant, "directory": s.label}
                          for s in snaps]}
    lines = [f"{s.snap_id.hex()[:12]}  {_when(s.created)}  {s.label} (grant {s.grant[:8]})" for s in snaps]
    options.emit(args, data, "\n".join(lines) or "no snapshots of your granted directories")
    return 0


def _list(args) -> int:
    if _grantee(args):
        return _grantee_list(args)
    vault = options.unlock(args, require_all=False, audit=False)
    from pqcfs.snapshots.history import History
    from pqcfs.snapshots.store import SnapshotStore
    store = SnapshotStore(vault.drives, vault.header.vault_id, vault.root_key, writable=False)
    history = History(store, vault.header.vault_id, vault.root_key, accept_older=True)
    recorded = seen.snapshots(vault.header.vault_id, vault.root_key)
    if history.index.seq < recorded:      # listed all the same: what is left is still the user's
        store.problems.append(f"the snapshot list is older than this machine has seen (sequence "
                              f"{history.index.seq} < {recorded}): snapshots were removed behind pqcfs' back "
                              "or the drives were rolled back")
    snaps = [s.to_json() for s in history.index.snapshots]
    kept = sum(store.kept().values()) if snaps else 0
    p = history.index.policy
    data = {"snapshots": snaps, "kept_bytes": kept, "history": p.to_json() if p else None,
            "problems": store.problems}
    lines = [_line(s) for s in snaps] or ["no snapshots"]
    lines.append(f"kept file versions: {kept / 2**20:.1f} MiB; automatic history: "
                 + (f"on (keep {p.keep_s // 86400} days, at most {p.max_space_pct:g}% of a drive)" if p else "off"))
    lines += [f"problem: {x}" for x in store.problems]
    options.emit(args, data, "\n".join(lines))
    return exitcodes.DAMAGED if store.problems else 0


# --- restore --------------------------------------------------------------------------------

def run_restore(args) -> int:
    if _grantee(args):
        if not args.to:
            raise PqcfsError("a grantee restores to plain files: give --to DEST")
        gv, snaps = _grantee_snapshots(args)
        chosen = snapshot_mount.find_grantee_snapshot(snaps, args.snapshot)
        tree = SnapshotTree(chosen.manifest, gv.drives, gv.header.block_size)
        listed = fmt.Listed(snap_id=chosen.snap_id, created=chosen.created, label="", kind="", digest=b"", size=0)
        return _restore_plain(args, tree, listed, tree.resolve(args.path))
    info = None if args.to else _mounted(args.vault)
    if args.to or info is not None:
        vault = options.unlock(args, require_all=False, audit=False)
        tree, listed = open_snapshot(vault, args.snapshot)
        node = tree.resolve(args.path)
        if args.to:
            return _restore_plain(args, tree, listed, node)
        dest = _into_mount(info["mountpoint"], args.path, listed)
        if os.path.lexists(dest):
            raise PqcfsError(f"{dest} exists; restore writes only new names")
        writer = plain.Writer(tree, _progress(tree, node, "restore"))
        writer.restore(node, dest)
        return _restored(args, listed, dest, writer.files, writer.bytes, writer.skipped)
    return _offline(args, "restore", lambda session: _into_vault(args, session))


def _restore_plain(args, tree, listed, node) -> int:
    """node as plain files at --to (into it, when it is a directory and node is not the top)."""
    dest = os.path.abspath(args.to)
    if os.path.isdir(dest) and args.path.strip("/"):
        dest = os.path.join(dest, os.path.basename(args.path.rstrip("/")))
    if os.path.lexists(dest) and not (os.path.isdir(dest) and not os.listdir(dest) and node.is_dir):
        raise PqcfsError(f"{dest} exists; restore writes only new names (give another --to)")
    if os.path.isdir(dest):
        os.rmdir(dest)            # an empty directory named as the destination: filled instead
    writer = plain.Writer(tree, _progress(tree, node, "restore"))
    writer.restore(node, dest)
    return _restored(args, listed, dest, writer.files, writer.bytes, writer.skipped)


def _into_vault(args, session) -> int:
    """Unmounted: through the tree of a session of the command's own, as a copy (new node
    ids, the keys of where it lands)."""
    tree, listed = open_snapshot(session.vault, args.snapshot)
    node = tree.resolve(args.path)
    parts = [p for p in args.path.split("/") if p and p != "."]
    if not parts:
        raise PqcfsError("restoring the whole vault into itself: give --to DEST, or restore its directories "
                         "one by one")
    live = session.vfs
    parent = sharing.resolve(live, "/".join(parts[:-1]))
    name = _free_in_vault(live, parent, parts[-1], listed)
    copier = Copier(tree, live, _progress(tree, node, "restore"))
    if node.is_dir:
        copier.tree(node, copier.mkdir(node, parent, name.encode()))
    else:
        copier.entry(node, parent, name.encode())
    where = "/".join(parts[:-1] + [name])
    session.event("snapshot-restored", snapshot=listed.snap_id.hex(), files=copier.files)
    return _restored(args, listed, "/" + where, copier.files, copier.bytes, [])


def _progress(tree, node, what: str):
    if not sys.stderr.isatty():
        return None
    size = sum(kid.size for _, kid in tree.walk(node)) if node.is_dir else node.size
    return Progress(what, size)


def _into_mount(mountpoint: str, p_path: str, listed: fmt.Listed) -> str:
    parts = [p for p in p_path.split("/") if p and p != "."]
    if not parts:
        raise PqcfsError("restoring the whole vault into itself: give --to DEST, or restore its directories one "
                         "by one")
    parent = os.path.join(mountpoint, *parts[:-1])
    if not os.path.isdir(parent):
        raise NoSuchPath(f"{'/'.join(parts[:-1])}: not a directory in the vault now (restore it first)")
    return os.path.join(parent, plain.free_name(parent, parts[-1], listed.snap_id.hex()[:8]))


def _free_in_vault(vfs, parent, name: str, listed: fmt.Listed) -> str:
    candidate, n = name, 1
    while exists(vfs, parent, candidate.encode()):
        n += 1
        candidate = f"{name}.restored-{listed.snap_id.hex()[:8]}" + (f"-{n - 1}" if n > 2 else "")
    return candidate


def _restored(args, listed, dest: str, files: int, size: int, skipped: list[str]) -> int:
    data = {"snapshot": listed.snap_id.hex(), "restored_to": dest, "files": files, "bytes": size, "skipped": skipped}
    text = f"restored {files} file(s), {size / 2**20:.1f} MiB, from snapshot {listed.snap_id.hex()[:12]} " \
           f"({_when(listed.created)}) to {dest}"
    text += "".join(f"\nnot restored: {s}" for s in skipped)
    options.emit(args, data, text)
    return 0


# --- diff -------------------------------------------------------------------------------------

def run_diff(args) -> int:
    vault = options.unlock(args, require_all=False, audit=False)
    old_tree, old = open_snapshot(vault, args.old)
    before = plain.signatures(old_tree, old_tree.root)
    if args.new:
        new_tree, new = open_snapshot(vault, args.new)
        after = plain.signatures(new_tree, new_tree.root)
        against = new.snap_id.hex()[:12]
    else:
        live = sharing.owner_tree(vault)
        after = plain.signatures(live, live.inodes.root)
        against = "now"
    added, changed, removed = plain.diff(before, after)
    show = lambda p: "/" + p.decode("utf-8", "surrogateescape")  # noqa: E731
    data = {"from": old.snap_id.hex(), "to": against, "added": [show(p) for p in added],
            "changed": [show(p) for p in changed], "removed": [show(p) for p in removed]}
    lines = [f"+ {show(p)}" for p in added] + [f"M {show(p)}" for p in changed] + [f"- {show(p)}" for p in removed]
    lines.append(f"{len(added)} added, {len(changed)} changed, {len(removed)} removed "
                 f"(snapshot {old.snap_id.hex()[:12]} -> {against})")
    options.emit(args, data, "\n".join(lines))
    return 0


# --- history ------------------------------------------------------------------------------------

def run_history(args) -> int:
    if args.off and args.keep:
        raise PqcfsError("--off and --keep: one or the other")
    if args.off:
        wanted = None
    elif args.keep:
        try:
            wanted = fmt.Policy(keep_s=policy.parse_duration(args.keep),
                                max_space_pct=policy.parse_percent(args.max_space))
        except ValueError as e:
            raise PqcfsError(str(e)) from None
    else:
        raise PqcfsError("say --keep AGE (and --max-space PERCENT) to turn automatic history on, --off to stop it")
    body = wanted.to_json() if wanted else None
    info = _mounted(args.vault)
    if info is not None:
        answer = _ask_daemon(info, {"action": "policy", "policy": body})
    else:
        def apply(s):
            s.history.set_policy(wanted)
            thinned = s.history.thin() if wanted else []
            return {"policy": body, "thinned": [t.hex() for t in thinned]}
        answer = _offline(args, "history", apply)
    if wanted:
        text = (f"automatic history on: a snapshot at every clean unmount and hourly while mounted, kept "
                f"{args.keep}, at most {wanted.max_space_pct:g}% of a drive")
        if answer["thinned"]:
            text += f"; {len(answer['thinned'])} older automatic snapshot(s) thinned out"
    else:
        text = "automatic history off (the snapshots taken so far stay until deleted)"
    options.emit(args, answer, text)
    return 0
