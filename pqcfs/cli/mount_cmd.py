"""pqcfs mount VAULT MOUNTPOINT and pqcfs umount MOUNTPOINT."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import signal
import subprocess
import sys
import time

import psutil

from mounttool import journal, sdnotify
from pqcfs import hygiene, revoke
from pqcfs import vault as vault_mod
from pqcfs.audit import host
from pqcfs.cli import exitcodes, grantee_mount, options, share_cmd
from pqcfs.cli.progress import Progress
from pqcfs.errors import DriveError, MountError, PqcfsError
from pqcfs.session import fuseenv, mounttable
from pqcfs.session import session as session_mod
from pqcfs.session import snapshot_mount
from pqcfs.snapshots.view import SnapshotTree
from pqcfs.session.owner import MountOwner, open_no_links
from pqcfs.store import devices


LOG_BYTES, LOG_KEEP = 1 << 20, 2     # a daemon log rotates at 1 MiB and keeps two old ones


def add_parser(sub) -> None:
    p = sub.add_parser("mount", help="mount a vault (returns once the mount is ready)")
    p.add_argument("vault", help="the primary replica")
    p.add_argument("mountpoint", help="an empty directory where the vault appears")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("--ro", action="store_true", help="mount read-only")
    p.add_argument("--accept-older", action="store_true",
                   help="mount drives that hold an older state than this machine has mounted (a backup "
                   "that missed sessions while its primary is lost; else refused as a rollback)")
    p.add_argument("-o", dest="fuse_options", action="append", default=[], metavar="OPT[,OPT]",
                   help="FUSE options, e.g. allow_other")
    p.add_argument("--debug", action="store_true", help="log FUSE operations (never keys or names)")
    p.add_argument("--audit-files", action="store_true",
                   help="also record every open, create, rename and removal in the audit log (encrypted)")
    p.add_argument("--snapshot", metavar="ID",
                   help="mount this snapshot instead, read-only (its id, a unique start of it, its label, or "
                   "\"latest\"; `pqcfs snapshot list`); the live vault may be mounted at the same time")
    p.add_argument("--grant", metavar="ID",
                   help="with --identity, when it holds several grants in this vault: the one to mount "
                   "(its id, or the first characters of it)")
    p.add_argument("--wait-backup", type=float, default=0, metavar="SECONDS",
                   help="wait up to SECONDS for the other replicas to appear before mounting degraded "
                   "(automount: the backup is often plugged in a moment after the primary)")
    p.add_argument("--vault-id", metavar="HEX",
                   help="refuse the location unless it holds this vault (automount: a drive's file system "
                   "UUID only triggers the mount; anyone can give a stick that UUID)")
    p.add_argument("--owner", metavar="FINGERPRINT",
                   help="with --identity: the owner key the grant must be signed by (as `pqcfs share` "
                   "printed it); else the first one seen is remembered and any other refused")
    p.add_argument("--user", metavar="NAME",
                   help="root only: the mount belongs to user NAME (only NAME can enter it, a vault made by root "
                   "gives NAME its top directory, a missing mountpoint is made for NAME, and messages also go to "
                   "NAME's journal); automount for a desktop user")
    options.add_unlock_options(p)
    options.add_replica_options(p)
    options.add_drive_options(p)
    p.set_defaults(func=run_mount)
    u = sub.add_parser("umount", help="unmount a vault and wait until it is written out")
    u.add_argument("mountpoint", help="where the vault is mounted")
    u.add_argument("-l", "--lazy", action="store_true",
                   help="detach now even if busy; the vault is written out once the last file is closed")
    u.add_argument("--wait-remote", action="store_true",
                   help="first bring the vault's offsite remotes up to date (a push now, progress bar); when that "
                        "fails the vault stays mounted")
    u.set_defaults(func=run_umount)


def _check_vault_id(location: str, expected: str) -> None:
    found = vault_mod.read_header(location)[0].vault_id.hex()
    if found != expected.lower():
        host.record(expected.lower(), "wrong-drive", location=location, holds=found)
        raise DriveError(f"{location} holds vault {found}, not {expected}: refused (a drive that only carries "
                         "the expected file system UUID)")


def _wait_for_replicas(primary: str, seconds: float) -> None:
    """Until every replica the header names is found, or seconds have passed."""
    header = vault_mod.read_header(primary)[0]
    deadline, said = time.monotonic() + seconds, False
    while len(options.replica_locations(primary, None, require_all=False)) < len(header.replicas):
        if time.monotonic() >= deadline:
            return     # the mount goes on degraded, and says so
        if not said:
            print(f"pqcfs: waiting up to {seconds:.0f} s for the backup", file=sys.stderr)
            said = True
        time.sleep(0.5)


def _split_options(values: list[str]) -> list[str]:
    return [o for v in values for o in v.split(",") if o]


def run_mount(args) -> int:
    if not args.user:
        return _mount(args, None)
    if os.geteuid() != 0:
        raise MountError("--user needs root: the daemon reads the drives as root and gives the mount to the user")
    owner = MountOwner.lookup(args.user)
    user_journal = journal.UserJournal(owner.uid, owner.gid, args.vault_id)
    stderr, sys.stderr = sys.stderr, user_journal.tee(sys.stderr)
    try:
        return _mount(args, owner)
    except (PqcfsError, OSError) as e:
        user_journal.send(f"pqcfs: mounting {args.vault} at {args.mountpoint} failed: {e}", journal.ERR)
        raise
    finally:
        sys.stderr = stderr


def _mount(args, owner: MountOwner | None) -> int:
    fuseenv.check_usable()      # before a passphrase is asked or a drive is marked in use
    mount_fd = None
    if owner is not None:
        owner.make_mountpoint(args.mountpoint)
        # Held from here to the mount: the mount goes through it, not through the path.
        mount_fd = open_no_links(args.mountpoint)
    dead = mounttable.find(args.mountpoint)
    if dead is not None and dead.dead:
        # A crashed daemon's mount is in the way: every access to it fails (ENOTCONN).
        mounttable.clean_dead(dead)
        print(f"pqcfs: {dead.mountpoint} held the dead mount of a crashed daemon; detached it",
              file=sys.stderr)
    mounttable.prune_runtime()
    session_mod.check_mountpoint(args.mountpoint)
    if args.vault_id:
        _check_vault_id(args.vault, args.vault_id)
    if args.wait_backup > 0 and not args.backup:
        _wait_for_replicas(args.vault, args.wait_backup)
    if args.snapshot:
        # Lock-free and read-only: the live vault may be mounted (its daemon owns the lock
        # and the audit log) while a snapshot of it is read.
        if args.identity and grantee_mount.is_grantee(args):
            vault = grantee_mount.open_for_snapshots(args)
            chosen = snapshot_mount.find_grantee_snapshot(snapshot_mount.grantee_snapshots(vault), args.snapshot)
            tree = SnapshotTree(chosen.manifest, vault.drives, vault.header.block_size)
            snap_id = chosen.snap_id
        else:
            vault = options.unlock(args, require_all=False, audit=False)
            tree, listed = snapshot_mount.open_snapshot(vault, args.snapshot, args.accept_older)
            snap_id = listed.snap_id
        session = snapshot_mount.SnapshotSession(vault, args.mountpoint, tree, snap_id, owner=owner)
        session.mount_fd = mount_fd
        return _serve(session, args)
    if args.identity and grantee_mount.is_grantee(args):
        session = grantee_mount.prepare(args)
        session.owner = owner
        session.mount_fd = mount_fd
        return _serve(session, args)
    vault = options.unlock(args, require_all=False, audit=not args.ro)
    vault.audit_served = True   # the mount's session (the daemon) writes and closes the log from here on
    devices.check_locations(vault.locations, options.allow_fixed(args, vault.header), args.allow_same_device)
    _leave_out_read_only(vault, args.ro)
    cut_short = revoke.pending(vault.header.grants)
    if cut_short is not None and not args.ro:
        print(f"pqcfs: finishing the revoke of grant {cut_short['id']}, which was cut short", file=sys.stderr)
        try:
            share_cmd.finish(vault, argparse.Namespace(json=False), cut_short)
        except revoke.RevokeIncomplete as e:
            # The vault is whole (the grant still in force): mounting it is not refused.
            print(f"pqcfs: warning: {e}", file=sys.stderr)
    session = session_mod.Session(vault, args.mountpoint, read_only=args.ro, audit_files=args.audit_files,
                                  accept_older=args.accept_older, owner=owner)
    session.mount_fd = mount_fd
    session.lock()
    try:
        plan = session.prepare(Progress)
    except BaseException:
        session.unlock()
        raise
    if plan.missing:
        print(f"pqcfs: warning: mounted DEGRADED without {len(plan.missing)} replica(s) "
              f"({', '.join(plan.missing)}: not plugged in, read-only or not brought up to date); "
              "`pqcfs sync` brings them up to date later", file=sys.stderr)
    return _serve(session, args)


def _serve(session, args) -> int:
    extra = _split_options(args.fuse_options)
    level = logging.DEBUG if args.debug else logging.INFO
    if args.foreground:
        logging.basicConfig(level=level, format="pqcfs: %(message)s", force=True)
        # Under systemd (Type=notify): ready once the mount answers, stopping when it ends.
        session.serve(extra, lambda: sdnotify.notify("READY=1", f"STATUS=mounted at {session.mountpoint}"))
        sdnotify.notify("STOPPING=1")
        # Ctrl-C ends a foreground mount cleanly, and says so as every interrupted command
        # does; SIGTERM (a service stopping) is a normal end.
        return exitcodes.INTERRUPTED if session.stopped_by == signal.SIGINT else 0
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        session.unlock()  # the child holds its own copies of the lock descriptors
        with os.fdopen(read_end, "rb") as pipe:
            message = pipe.read()
        if message == b"ok":
            return 0
        raise MountError(message.decode(errors="replace") or "the mount daemon died before it was ready")
    # Child: detach from the terminal, serve, report readiness through the pipe.
    os.close(read_end)
    os.setsid()
    hygiene.harden()   # memory locks are not inherited across fork
    session.log_path = session.runtime_path[:-5] + ".log"
    os.makedirs(os.path.dirname(session.log_path), mode=0o700, exist_ok=True)
    # One log per mountpoint, kept across mounts, rotated so it never grows without bound.
    handler = _PrivateLog(session.log_path, maxBytes=LOG_BYTES, backupCount=LOG_KEEP)
    handler.setFormatter(logging.Formatter("%(asctime)s pqcfs[%(process)d]: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    if session.owner is not None:
        logging.getLogger().addHandler(journal.UserJournal(session.owner.uid, session.owner.gid,
                                                           session.vault.header.vault_id.hex()).handler())
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)

    def ready():
        os.write(write_end, b"ok")
        os.close(write_end)

    code = 0
    try:
        session.serve(extra, ready)
    except BaseException as e:  # noqa: BLE001 - the parent shows it; the daemon must exit
        try:
            os.write(write_end, str(e).encode())
        except OSError:
            pass
        logging.getLogger(__name__).exception("mount failed: %s", e)
        code = 1
    if code == 0 and not handler.said_something:
        # A session with nothing to tell leaves no log behind (runtime directories would
        # otherwise fill with one log per mountpoint ever used).
        handler.close()
        for path in [session.log_path] + [f"{session.log_path}.{n}" for n in range(1, LOG_KEEP + 1)]:
            try:
                os.unlink(path)
            except OSError:
                pass
    os._exit(code)


class _PrivateLog(logging.handlers.RotatingFileHandler):
    """The daemon's log, 0600 like everything else in the runtime directory (also each
    file a rotation starts)."""

    said_something = False    # a warning or worse was logged: the log is kept after the mount

    def _open(self):
        return open(os.open(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "a",
                    encoding=self.encoding)

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            self.said_something = True
        super().emit(record)


def holding(mountpoint: str) -> list[tuple[int, str]]:
    """The processes with a file open, a working directory or a root under mountpoint
    (read from /proc, never through the mount itself)."""
    inside = lambda path: path == mountpoint or path.startswith(mountpoint.rstrip("/") + "/")  # noqa: E731
    found = []
    for proc in psutil.process_iter(["pid", "name"]):
        try:
            paths = [proc.cwd(), *(f.path for f in proc.open_files())]
            if any(inside(p) for p in paths):
                found.append((proc.info["pid"], proc.info["name"]))
        except (psutil.Error, OSError):
            continue
    return found


def _leave_out_read_only(vault, read_only: bool) -> None:
    """A read-only backup (write-protected, or a file system that gave up) makes a
    degraded mount, not a refused one (a read-only primary was refused at unlock)."""
    for location in list(vault.locations[1:]):
        if not vault.drive(location).read_only or read_only:
            continue
        print(f"pqcfs: warning: the backup {location} is read-only; mounting without it (DEGRADED)",
              file=sys.stderr)
        vault.locations.remove(location)


def _push_before_unmount(mount) -> None:
    from pqcfs.cli import remote_cmd
    if not mount.info:
        raise MountError(f"{mount.mountpoint}: its daemon's runtime file is not visible to this user, so "
                         "--wait-remote can not reach it")
    args = argparse.Namespace(remote=None, bwlimit=None, json=False)
    try:
        remote_cmd.push_mounted(args, mount.info)
    except PqcfsError as e:
        raise type(e)(f"{e}. {mount.mountpoint} stays mounted; `pqcfs umount` without --wait-remote unmounts it, "
                      "and the next mount goes on with the push") from None


def run_umount(args) -> int:
    mount = mounttable.find(args.mountpoint)
    if mount is None:
        raise MountError(f"{args.mountpoint} is not a pqcfs mount")
    if mount.dead:
        mounttable.clean_dead(mount)
        print(f"pqcfs: the daemon of {mount.mountpoint} had died; its dead mount is detached now "
              "(the next mount repairs the vault)", file=sys.stderr)
        return 0
    if args.wait_remote:
        _push_before_unmount(mount)
    # The daemon: named by its runtime file, else found among the processes (a mount made
    # from another login session); None only when it can not be seen (another user's).
    pid = (mount.info or {}).get("pid") or _daemon_of(mount.mountpoint)
    proc = subprocess.run(["fusermount3", "-u", *(["-z"] if args.lazy else []), mount.mountpoint],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        if "busy" in proc.stderr:
            holders = ", ".join(f"{name} (pid {pid})" for pid, name in holding(mount.mountpoint)) or \
                "no process this user can see"
            raise MountError(f"{mount.mountpoint} is busy: held by {holders}; close those files (or leave that "
                             "directory), or `pqcfs umount --lazy` detaches it now and writes the vault out "
                             "when the last file closes")
        raise MountError(proc.stderr.strip().removeprefix("fusermount3: ") or f"could not unmount {args.mountpoint}")
    if args.lazy:
        print(f"pqcfs: {mount.mountpoint} is detached; the vault is written out when the last open file "
              f"closes (the daemon, pid {pid}, exits then)", file=sys.stderr)
        return 0
    # Wait for the daemon to write the replica state, so the drives can be pulled after.
    deadline = time.monotonic() + 60
    while pid and time.monotonic() < deadline and mounttable.alive(pid):
        time.sleep(0.05)
    if pid and mounttable.alive(pid):
        raise MountError(f"{mount.mountpoint} is unmounted, but its daemon (pid {pid}) is still writing the drives "
                         "out: wait until `pqcfs status VAULT` says clean before pulling them")
    if pid is None:
        print(f"pqcfs: {mount.mountpoint} is unmounted; its daemon is not visible to this user, so this command "
              "could not wait for it: `pqcfs status VAULT` says when the drives are clean", file=sys.stderr)
    _check_clean(mount)
    return 0


def _check_clean(mount) -> None:
    """umount means done: every replica the session wrote is marked clean, or this says
    which is not and what follows (the daemon ended badly)."""
    info = mount.info or {}
    if info.get("read_only"):
        return      # a read-only session writes no state: what the drives say is older than it
    unclean = []
    for location in info.get("replicas", []):
        if location in info.get("failed", []):
            continue
        try:
            if not vault_mod.read_state(location, None).clean:
                unclean.append(location)
        except OSError:
            continue   # not for this user to read (a mount root made for them), or gone: not a verdict
        except PqcfsError:
            unclean.append(location)     # its state is damaged: certainly not marked clean
    if unclean:
        # A drive the daemon could not finish writing (it turned read-only, failed, or its
        # state file was damaged under it): the drive's matter, exit code DRIVE.
        raise DriveError(f"the daemon of {mount.mountpoint} ended without marking {', '.join(unclean)} clean (see "
                         f"its log: {info.get('log') or 'the journal'}); nothing is lost: once the drive is writable "
                         "again, the next mount (or `pqcfs fsck VAULT --repair`) repairs the vault from its "
                         "write-intent log")


def _holds_fuse_device(pid: int) -> bool:
    try:
        return any(os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/fuse" for fd in os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return False


def _daemon_of(mountpoint: str) -> int | None:
    """The pid of the pqcfs daemon serving mountpoint, from the processes' command lines
    (the daemon keeps the command line of the `pqcfs mount` it forked from)."""
    wanted = session_mod.canonical_mountpoint(mountpoint)
    me = os.getpid()
    for proc in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            args = proc.info["cmdline"] or []
            if proc.info["pid"] == me or not any("pqcfs" in a for a in args[:3]):
                continue
            if not _holds_fuse_device(proc.info["pid"]):
                continue
            cwd = proc.info["cwd"] or "/"
            if any(a and not a.startswith("-") and session_mod.canonical_mountpoint(os.path.join(cwd, a)) == wanted
                   for a in args[1:]):
                return proc.info["pid"]
        except (psutil.Error, OSError, ValueError):
            continue
    return None
