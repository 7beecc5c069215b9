"""Serving a mount: the FUSE loop (pyfuse3 in trio), signals, the control socket and
online rejoin, around a Session that was prepared. The only module of the session that
imports pyfuse3, and with the control server and rejoin the only ones that import trio."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import inspect
import logging
import os
import signal

import pyfuse3
import trio

from mounttool import mountinfo
from pqcfs.errors import MountError, PqcfsError
from pqcfs.fuse.operations import Operations
from pqcfs.fuse.snapshot_ops import SnapshotOperations
from pqcfs.session import control, control_server, history
from pqcfs.session import offsite
from pqcfs.session import rejoin as rejoin_mod

log = logging.getLogger(__name__)


# Options that let processes other than the mounting user's into a mount.
SHARED = {"allow_other", "allow_root"}


def fuse_options(session, extra: list[str]) -> set[str]:
    opts = set(pyfuse3.default_options)
    opts |= {"fsname=pqcfs", "subtype=pqcfs"}
    if only_root_enters(session, extra):
        # With default_permissions the kernel asks for a directory's attributes again
        # after every create, unlink, rename or mkdir in it (it forgets them at each
        # change and checks the mode before the next): a second request per file for
        # `rm -rf`. A mount only root's processes may enter (FUSE without allow_other
        # lets in nobody else) gains nothing from those checks, which root passes
        # anyway; the one root does not pass, executing a file without an x bit, FUSE
        # makes without them. gocryptfs mounts the same way.
        opts.discard("default_permissions")
    opts |= set(extra)
    if session.read_only:
        # Read-only is not the mount options' to undo: "rw" among them is dropped.
        opts.discard("rw")
        opts.add("ro")
    return opts


def only_root_enters(session, extra: list[str]) -> bool:
    """Whether the mount is root's alone: made by root for no other user (not --user),
    with neither allow_other nor allow_root."""
    return os.geteuid() == 0 and session.owner is None and not SHARED & set(extra)


def _steady_heap() -> None:
    """Keep the buffers of large requests in the heap between requests. glibc's defaults
    give each buffer over 128 KiB (a 1 MiB write's ciphertext) its own mmap and hand a
    freed heap top back at once, so every large request faulted fresh pages in again:
    2,555 brk calls for 1,024 writes of 512 KiB (strace); keeping them took the daemon's
    CPU time for a 512 MiB two-replica write from 2.1 s to 1.0 s. At most 8 MiB more
    stays resident."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 4 << 20)    # M_MMAP_THRESHOLD: requests of up to 4 MiB from the heap
        libc.mallopt(-1, 8 << 20)    # M_TRIM_THRESHOLD: keep up to 8 MiB free at the top
    except (OSError, AttributeError):
        pass                         # not glibc: its defaults stay


# The kernel reads ahead on a FUSE mount by at most its backing device's setting, 128 KiB
# by default, while a request may carry 1 MiB (max_write): a sequential read then cost a
# request, a reply and a worker wake-up per 128 KiB. With 1 MiB, `dd bs=1M` of a cold
# 512 MiB file on two ext4 stand-ins: 0.98 -> 0.91 s (median of 4 alternated mounts), and
# 1.00-1.27 -> 0.47-0.56 s, the daemon's CPU halved, when the drive is fast (the same file
# read again). A read that looks random is not read ahead at all, so small and random
# reads are unchanged.
READ_AHEAD_KB = 1024


def _widen_readahead(mountpoint: str) -> None:
    """Give this mount's FUSE device READ_AHEAD_KB of read-ahead (/sys/class/bdi: root
    only; a mount by an ordinary user keeps the kernel's default)."""
    for mount in reversed(mountinfo.read()):
        if mount.mountpoint == mountpoint and mount.fstype.startswith("fuse"):
            try:
                with open(f"/sys/class/bdi/{mount.device}/read_ahead_kb", "w") as f:
                    f.write(str(READ_AHEAD_KB))
            except OSError as e:
                log.debug("read-ahead of %s left as it was: %s", mountpoint, e)
            return


def serve(session, extra_options: list[str], ready=None) -> None:
    """Mount and serve until unmounted or signalled; ready() runs once mounted."""
    _steady_heap()
    vfs = session.build()
    if session.snapshot is not None:
        ops = SnapshotOperations(vfs)
    else:
        ops = Operations(vfs, audit_files=session.audit_files)
    if session.services:
        session.rejoin = rejoin_mod.Rejoin(session)
        session.offsite = offsite.Offsite(session)
        session.snapshots = history.HistoryService(session)
    if session.owner is not None:
        session._give_top_directory(vfs)
    try:
        with session.owner.real_ids() if session.owner else contextlib.nullcontext():
            target = session.mountpoint if session.mount_fd is None else f"/proc/self/fd/{session.mount_fd}"
            try:
                pyfuse3.init(ops, target, fuse_options(session, extra_options))
            finally:
                if session.mount_fd is not None:
                    os.close(session.mount_fd)
                    session.mount_fd = None
    except RuntimeError as e:
        session._finish()
        raise MountError(f"mounting {session.mountpoint} failed: {e}") from None
    session.write_runtime()
    session._ready = ready
    try:
        trio.run(functools.partial(_main, session))
    finally:
        try:
            pyfuse3.close(unmount=True)
        except Exception:  # already unmounted from outside (fusermount3 -u)
            pass
        session._finish()
        session._remove_runtime()
        session.unlock()


async def _announce_ready(session) -> None:
    # Ready means answering: a stat of the mountpoint is a request this loop serves.
    try:
        await trio.to_thread.run_sync(session.owner.stat_as if session.owner else os.stat, session.mountpoint)
    except OSError:
        if session._ready:
            raise
        return           # nobody waits for it, and the read-ahead is only a speed-up
    # The kernel sets the mount's read-ahead when FUSE's INIT is answered, which this
    # loop did before the stat could be.
    _widen_readahead(session.mountpoint)
    if session._ready:
        session._ready()


async def _main(session) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_signals, session, nursery.cancel_scope)
        nursery.start_soon(_announce_ready, session)
        if session.services:
            nursery.start_soon(control_server.serve, session, control.socket_path(session.runtime_path))
            interval = float(os.environ.get("PQCFS_REJOIN_INTERVAL", "3"))
            if interval > 0:
                nursery.start_soon(session.rejoin.watch, interval)
            push_interval = float(os.environ.get("PQCFS_PUSH_INTERVAL", "60"))
            if push_interval > 0:
                nursery.start_soon(session.offsite.watch, push_interval)
            history_interval = float(os.environ.get("PQCFS_HISTORY_INTERVAL", "3600"))
            if history_interval > 0:
                nursery.start_soon(session.snapshots.watch, history_interval)
        hold_interval = float(os.environ.get("PQCFS_HOLD_INTERVAL", str(HOLD_INTERVAL)))
        if hold_interval > 0 and not session.read_only:    # a read-only tree holds nothing back
            nursery.start_soon(_write_held, session, hold_interval)
        # One worker: handlers never await, so more would only cost dispatch.
        await pyfuse3.main(min_tasks=1, max_tasks=1, **_main_options())
        nursery.cancel_scope.cancel()


# Seconds that files made and removals may wait for their directory's next record (see
# TabledFS.put_unsaved) before this loop writes them: what a crash can lose of them.
HOLD_INTERVAL = 5.0


async def _write_held(session, interval: float) -> None:
    while True:
        await trio.sleep(interval)
        if session.vfs is None:
            continue
        try:
            session.vfs.write_held()
        except (PqcfsError, OSError) as e:
            # The next change of that directory, or the unmount, tries again.
            log.warning("directory records held in memory could not be written yet: %s", e)


def _main_options() -> dict:
    """With pyfuse3 built from patches/ (scripts/dev.sh), the worker waits for the next
    request outside trio's loop: first asking without sleeping for up to 200 us (when
    the last request came that soon), then asleep in poll(2) for up to 1 ms, and only
    then through trio. A program that works through many files sends one request right
    after another; trio's round trip (register, wait, reschedule) cost more than most
    handlers, and being woken by the kernel costs a create a third of its time on this
    2-core VM. PQCFS_SPIN_US changes the first wait (0: never spin).
    docs/benchmarks.md has the measurements."""
    try:
        params = inspect.signature(pyfuse3.main).parameters
    except (TypeError, ValueError):
        return {}
    options = {}
    if "next_request_wait_ms" in params:
        options["next_request_wait_ms"] = 1
    if "next_request_spin_us" in params:
        try:
            spin = int(os.environ.get("PQCFS_SPIN_US", "200"))
        except ValueError:
            spin = 200
        options["next_request_spin_us"] = max(0, min(spin, 10_000))
    return options


async def _signals(session, scope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            session.stopped_by = signum
            pyfuse3.terminate()
            return
