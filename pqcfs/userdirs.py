"""Where pqcfs keeps its own files on this machine, per user.

root: /var/lib/pqcfs (state) and /run/pqcfs (runtime: mounts' runtime files, control
sockets, daemon logs). Anyone else: $XDG_STATE_HOME/pqcfs (~/.local/state/pqcfs) and
$XDG_RUNTIME_DIR/pqcfs (/run/user/UID/pqcfs). PQCFS_STATE_DIR and PQCFS_RUNTIME_DIR
override both (tests). A mount root made for a user also leaves that user a copy of its
runtime file (shared_runtime_dir).
"""

from __future__ import annotations

import os

from pqcfs.errors import PqcfsError


def state_dir() -> str:
    if os.environ.get("PQCFS_STATE_DIR"):
        return os.environ["PQCFS_STATE_DIR"]
    if os.geteuid() == 0:
        return "/var/lib/pqcfs"
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "pqcfs")


def open_private(path: str, mode: str = "w"):
    """A file of ours under a state or runtime directory, 0600 whatever the umask (and made
    0600 if an older pqcfs left it readable): it names vaults, grants and what failed."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if mode == "a" else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
    except OSError:
        os.close(fd)
        raise
    return os.fdopen(fd, mode)


ROOT_RUNTIME = "/run/pqcfs"


def runtime_dir() -> str:
    if os.environ.get("PQCFS_RUNTIME_DIR"):
        return os.environ["PQCFS_RUNTIME_DIR"]
    if os.geteuid() == 0:
        return ROOT_RUNTIME
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.geteuid()}"
    if not os.path.isdir(base):
        raise PqcfsError(f"there is no runtime directory for this user ({base} is missing; a login session makes "
                         "it, or set XDG_RUNTIME_DIR to a private directory)")
    return os.path.join(base, "pqcfs")


def shared_runtime_dir(uid: int) -> str:
    """Where root's daemon of a mount that belongs to user uid (`mount --user`) leaves the
    user a copy of its runtime file when the user has no login session's runtime
    directory: /run/pqcfs/users/UID (the two levels above are root's, traverse-only)."""
    return os.path.join(ROOT_RUNTIME, "users", str(uid))
