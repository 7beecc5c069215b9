"""A mount session: lock the replicas, mark them in use, serve, and mark them clean.

The lock (flock on pqcfs.lock in every replica) is what makes "already mounted" an error
instead of two daemons writing the same ciphertext. The runtime file under /run/pqcfs
lets `pqcfs umount` and `pqcfs status` find the daemon.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import signal

import pyfuse3
import trio

from pqcfs import vault as vault_mod
from pqcfs.errors import MountError
from pqcfs.format import replica_state
from pqcfs.fs.operations import Operations
from pqcfs.fs.vaultfs import VaultFS
from pqcfs.store.atomic import write_atomic
from pqcfs.store.replicas import ReplicaSet

log = logging.getLogger(__name__)
LOCK_NAME = "pqcfs.lock"
RUNTIME_DIR = os.environ.get("PQCFS_RUNTIME_DIR", "/run/pqcfs")


def canonical_mountpoint(mountpoint: str) -> str:
    # Resolve the parent only: stat-ing the mountpoint itself would ask the FUSE daemon,
    # which may be this very process or a hung one.
    path = os.path.abspath(mountpoint)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def runtime_file(mountpoint: str) -> str:
    digest = hashlib.sha256(canonical_mountpoint(mountpoint).encode()).hexdigest()[:16]
    return os.path.join(RUNTIME_DIR, f"mount-{digest}.json")


def check_mountpoint(mountpoint: str) -> None:
    if not os.path.isdir(mountpoint):
        raise MountError(f"mountpoint {mountpoint} does not exist or is not a directory")
    if os.path.ismount(mountpoint):
        raise MountError(f"{mountpoint} is already a mountpoint (busy)")
    if os.listdir(mountpoint):
        raise MountError(f"mountpoint {mountpoint} is not empty")


class Session:
    def __init__(self, vault: vault_mod.UnlockedVault, mountpoint: str, read_only: bool = False):
        self.vault = vault
        self.mountpoint = canonical_mountpoint(mountpoint)
        self.read_only = read_only
        self._locks: list[int] = []
        # Resolved now: once mounted, any lookup under the mountpoint would wait for this
        # very process to answer, before it serves.
        self.runtime_path = runtime_file(self.mountpoint)

    def lock(self) -> None:
        for location in self.vault.locations:
            fd = os.open(os.path.join(location, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self.unlock()
                raise MountError(f"the vault on {location} is already mounted") from None
            self._locks.append(fd)

    def unlock(self) -> None:
        for fd in self._locks:
            os.close(fd)
        self._locks = []

    def _set_state(self, clean: bool) -> None:
        if self.read_only:
            return
        for location in self.vault.locations:
            state = vault_mod.read_state(location, self.vault.root_key)
            if not clean:
                state.generation += 1
            state.clean = clean
            write_atomic(os.path.join(location, replica_state.FILE_NAME),
                         replica_state.encode(state, self.vault.root_key))

    def build(self) -> Operations:
        trees = [os.path.join(loc, vault_mod.TREE_DIR) for loc in self.vault.locations]
        vfs = VaultFS(ReplicaSet(trees), self.vault.root_dir_keys(), self.vault.header.block_size,
                      read_only=self.read_only)
        return Operations(vfs)

    def fuse_options(self, extra: list[str]) -> set[str]:
        opts = set(pyfuse3.default_options)
        opts |= {"fsname=pqcfs", "subtype=pqcfs"}
        if self.read_only:
            opts.add("ro")
        opts |= set(extra)
        return opts

    def serve(self, extra_options: list[str], ready=None) -> None:
        """Mount and serve until unmounted or signalled; ready() runs once mounted."""
        ops = self.build()
        self._set_state(clean=False)
        try:
            pyfuse3.init(ops, self.mountpoint, self.fuse_options(extra_options))
        except RuntimeError as e:
            self._set_state(clean=True)
            raise MountError(f"mounting {self.mountpoint} failed: {e}") from None
        self._write_runtime()
        if ready:
            ready()
        try:
            trio.run(self._main)
        finally:
            try:
                pyfuse3.close(unmount=True)
            except Exception:  # already unmounted from outside (fusermount3 -u)
                pass
            self._set_state(clean=True)
            self._remove_runtime()
            self.unlock()

    async def _main(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._signals, nursery.cancel_scope)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    async def _signals(self, scope) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            async for signum in signals:
                log.info("signal %d: unmounting", signum)
                pyfuse3.terminate()
                return

    def _write_runtime(self) -> None:
        os.makedirs(RUNTIME_DIR, mode=0o700, exist_ok=True)
        write_atomic(self.runtime_path, json.dumps({
            "pid": os.getpid(), "mountpoint": self.mountpoint, "replicas": self.vault.locations,
            "vault_id": self.vault.header.vault_id.hex(), "read_only": self.read_only}).encode(), sync=False)

    def _remove_runtime(self) -> None:
        try:
            os.unlink(self.runtime_path)
        except FileNotFoundError:
            pass
