"""A mount that belongs to one user (`pqcfs mount --user NAME`, automount for a desktop).

The daemon runs as root (it reads the drives), but the FUSE mount is the user's: the
kernel lets only that user into it (not other users, not root; that is FUSE without
allow_other), so the user's file manager shows it and nobody else sees inside.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
import subprocess
from dataclasses import dataclass

from pqcfs import userdirs
from pqcfs.errors import MountError


@dataclass(frozen=True)
class MountOwner:
    name: str
    uid: int
    gid: int

    @classmethod
    def lookup(cls, name: str) -> "MountOwner":
        try:
            entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
        except KeyError:
            raise MountError(f"there is no user {name!r} on this machine") from None
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)

    @contextlib.contextmanager
    def real_ids(self):
        """libfuse gives the kernel getuid()/getgid() as the mount's owner. Only the real
        ids change; the effective ids stay root's, so the mount itself is still allowed and
        the daemon keeps its rights. Restored at once."""
        os.setresgid(self.gid, 0, 0)
        os.setresuid(self.uid, 0, 0)
        try:
            yield
        finally:
            os.setresuid(0, 0, 0)
            os.setresgid(0, 0, 0)

    def make_mountpoint(self, path: str) -> None:
        """Create a missing mountpoint for the user (automount: /media/NAME/Vault); the
        parent must exist. An existing one is left as it is. The parent is reached without
        following a link at any component: a user who can write /media/NAME could
        otherwise make root create (and give them) a directory anywhere."""
        parent_fd = open_no_links(os.path.dirname(os.path.abspath(path)))
        name = os.path.basename(os.path.abspath(path))
        try:
            try:
                os.mkdir(name, 0o700, dir_fd=parent_fd)
            except FileExistsError:
                return
            # Through a descriptor of the directory just made, never through its path.
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
            try:
                os.fchown(fd, self.uid, self.gid)
            finally:
                os.close(fd)
        finally:
            os.close(parent_fd)

    def stat_as(self, path: str) -> None:
        """A stat of path by the user. Ready means the mount answers; only its owner's
        requests reach the daemon, so the check must be the owner's."""
        proc = subprocess.run(["stat", "--format=%i", "--", path], user=self.uid, group=self.gid, extra_groups=[],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise MountError(f"the mount does not answer its owner {self.name}: {proc.stderr.strip()}")

    def runtime_dir_fd(self) -> int | None:
        """The user's copy of the mount's runtime file goes to their login session's
        runtime directory (/run/user/UID/pqcfs), else to /run/pqcfs/users/UID, so that
        `pqcfs status` and `umount` as the user find the mount. The last directory is the
        user's and they control what is in it: opened without following links and
        checked to be theirs before root writes there."""
        try:
            base = os.open(f"/run/user/{self.uid}", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            shared = userdirs.shared_runtime_dir(self.uid)
            try:
                # Root's: traverse-only for others, so a user reaches only their own below.
                os.makedirs(os.path.dirname(shared), mode=0o711, exist_ok=True)
                for path in (userdirs.ROOT_RUNTIME, os.path.dirname(shared)):
                    os.chmod(path, 0o711)
                base = os.open(os.path.dirname(shared), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            except OSError:
                return None
            name = str(self.uid)
        else:
            name = "pqcfs"
        try:
            try:
                os.mkdir(name, 0o700, dir_fd=base)
                os.chown(name, self.uid, self.gid, dir_fd=base, follow_symlinks=False)
            except FileExistsError:
                pass
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=base)
        except OSError:
            return None
        finally:
            os.close(base)
        if os.fstat(fd).st_uid != self.uid:
            os.close(fd)
            return None
        return fd

    def write_runtime(self, name: str, data: bytes) -> None:
        fd = self.runtime_dir_fd()
        if fd is None:
            return
        tmp = f".{name}.{os.getpid()}"
        try:
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd)
            try:
                os.fchown(out, self.uid, self.gid)
                os.write(out, data)
            finally:
                os.close(out)
            os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except OSError:
            pass     # the user's view of the mount; the mount itself does not depend on it
        finally:
            os.close(fd)

    def remove_runtime(self, name: str) -> None:
        fd = self.runtime_dir_fd()
        if fd is None:
            return
        try:
            os.unlink(name, dir_fd=fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def open_no_links(path: str) -> int:
    """An O_PATH descriptor of the directory path, walked from / one component at a time
    without following a link at any of them (MountError names the link). A mount made
    through /proc/self/fd/N of it lands on that directory even if a path component is
    swapped for a link in between."""
    path = os.path.abspath(path)
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY)
    walked = ""
    try:
        for part in [p for p in path.split("/") if p]:
            walked += "/" + part
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                raise MountError(f"{walked} does not exist") from None
            if stat.S_ISLNK(st.st_mode):
                raise MountError(f"{walked} is a symbolic link: give the mountpoint's real path (a mount for a "
                                 "user never follows links, which the user could point anywhere)")
            try:
                child = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except (NotADirectoryError, OSError) as e:
                raise MountError(f"{walked} is not a directory ({e.strerror})") from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise
