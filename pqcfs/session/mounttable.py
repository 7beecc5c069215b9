"""Which pqcfs mounts the kernel has, and whether their daemons still live.

The kernel's mount table is the truth: a daemon that crashed or was killed leaves its
mount behind (every access fails with ENOTCONN) and its runtime file too. `status`,
`umount` and `mount` all look here, so a dead mount is named as such and cleaned up
instead of being called "not mounted" or "does not exist".
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass

from mounttool import mountinfo
from pqcfs import userdirs
from pqcfs.errors import PqcfsError
from pqcfs.session import session as session_mod

FSTYPE = "fuse.pqcfs"


@dataclass
class Mount:
    mountpoint: str
    info: dict | None      # the daemon's runtime file, when it has one
    alive: bool            # the daemon still runs
    owner: int | None = None   # the uid FUSE lets in

    @property
    def foreign(self) -> bool:
        """Another user's own mount (root sees it; its runtime file is in that user's
        runtime directory, out of reach): alive as far as anyone here can tell."""
        return self.info is None and self.owner is not None and self.owner != os.geteuid()

    @property
    def dead(self) -> bool:
        return not self.alive


def kernel_mounts() -> list[tuple[str, int | None]]:
    """(mountpoint, owner uid) of every pqcfs mount; the owner is FUSE's user_id= (the
    user the kernel lets in)."""
    found = []
    for mount in mountinfo.read():
        if mount.fstype == FSTYPE:
            opts = dict(o.partition("=")[::2] for o in mount.super_options.split(","))
            uid = int(opts["user_id"]) if opts.get("user_id", "").isdigit() else None
            found.append((mount.mountpoint, uid))
    return found


def alive(pid) -> bool:
    """The process runs: it exists (or exists as another user's) and has not exited (a
    zombie has, and waits only for its parent to reap it)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True     # no /proc to ask: the signal check said it exists


PROBE_SECONDS = 5


def answers(mountpoint: str) -> bool:
    """False only when the kernel says the mount's daemon is gone (a statfs, which the
    kernel never answers from its cache, fails with ENOTCONN). Asked from a child process
    with a time limit: a hung daemon must not hang `status`, and a mount that does not
    answer in time is not called dead."""
    try:
        proc = subprocess.run(["stat", "--file-system", "--format=%i", "--", mountpoint], capture_output=True, text=True,
                              timeout=PROBE_SECONDS, env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    except subprocess.TimeoutExpired:
        return True
    except OSError:
        return True
    return not (proc.returncode != 0 and "not connected" in proc.stderr)


def runtime_info(mountpoint: str, owner: int | None = None) -> dict | None:
    """The daemon's runtime file: in this user's runtime directory, or (for root) in the
    one of the user who mounted it themselves, or (for a user) the copy root's daemon
    left them."""
    name = os.path.basename(session_mod.runtime_file(mountpoint, base=""))
    try:
        paths = [session_mod.runtime_file(mountpoint)]
    except PqcfsError:
        paths = []     # no runtime directory of this user's own (no login session)
    if os.geteuid() == 0 and owner:
        paths.append(os.path.join(f"/run/user/{owner}/pqcfs", name))
    elif os.geteuid() != 0:
        # A mount root made for this user (`mount --user`) leaves them a copy.
        paths.append(os.path.join(userdirs.shared_runtime_dir(os.geteuid()), name))
    for path in paths:
        try:
            # A user's directory may hold anything: never follow a link from there.
            with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as f:
                info = json.loads(f.read(1 << 16))
            if isinstance(info, dict) and info.get("mountpoint") == session_mod.canonical_mountpoint(mountpoint):
                return info
        except (OSError, ValueError):
            continue
    return None


def listing() -> list[Mount]:
    """This user's pqcfs mounts (root: everyone's). Another user's mount is none of an
    ordinary user's business, and its runtime file is not theirs to read."""
    out = []
    me = os.geteuid()
    for mountpoint, owner in kernel_mounts():
        if me != 0 and owner != me:
            continue
        info = runtime_info(mountpoint, owner)
        if info is not None:
            lives = alive(info.get("pid"))
        elif owner is not None and owner != me:
            lives = True     # another user's own mount: the kernel answers only them
        else:
            # No runtime file here (the daemon keeps it in another session's runtime
            # directory, or it is gone): the kernel says which. Only a mount whose
            # connection is gone (ENOTCONN) is dead; one that answers, or hangs, lives.
            lives = answers(mountpoint)
        out.append(Mount(mountpoint, info, lives, owner))
    return out


def find(path: str) -> Mount | None:
    """The pqcfs mount at path (compared without touching path itself: stat on a dead
    FUSE mount fails, on a live one it asks the daemon)."""
    wanted = session_mod.canonical_mountpoint(path)
    return next((m for m in listing() if m.mountpoint == wanted), None)


def clean_dead(mount: Mount) -> None:
    """Detach a mount whose daemon is gone, and forget its runtime file."""
    subprocess.run(["fusermount3", "-u", "-z", mount.mountpoint], capture_output=True)
    try:
        os.unlink(session_mod.runtime_file(mount.mountpoint))
    except (OSError, PqcfsError):
        pass


LOG_DAYS = 14     # a daemon log that said something is kept this long after its mount ended


def prune_runtime() -> int:
    """Forget what ended mounts left in this user's runtime directory: runtime files and
    sockets of daemons that are gone (killed, or the machine's /run survived them) and
    logs older than LOG_DAYS. Returns how many files went."""
    try:
        folder = userdirs.runtime_dir()
        names = os.listdir(folder)
    except (OSError, PqcfsError):
        return 0
    live = {session_mod.runtime_file(m.mountpoint) for m in listing() if m.alive}
    stems = {n.split(".", 1)[0] for n in names if n.startswith("mount-")}
    now, gone = time.time(), 0
    for stem in stems:
        runtime = os.path.join(folder, stem + ".json")
        if runtime in live:
            continue
        for name in (n for n in names if n.split(".", 1)[0] == stem):
            path = os.path.join(folder, name)
            try:
                old = now - os.lstat(path).st_mtime > LOG_DAYS * 86400
                if not name.startswith(stem + ".log") or old:
                    os.unlink(path)
                    gone += 1
            except OSError:
                continue
    return gone
