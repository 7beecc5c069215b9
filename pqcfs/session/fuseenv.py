"""Whether this process can mount with FUSE at all, asked before anything else happens
(no passphrase asked, no drive marked in use), with what to do about it when not."""

from __future__ import annotations

import os
import shutil
import stat

from pqcfs.errors import MountError

DEVICE = "/dev/fuse"


def check_usable() -> None:
    if not os.path.exists(DEVICE):
        raise MountError(f"FUSE is not available: {DEVICE} is missing (load the module: `modprobe fuse`; in a "
                         "container, pass the device in)")
    if not os.access(DEVICE, os.R_OK | os.W_OK):
        st = os.stat(DEVICE)
        raise MountError(f"FUSE is not usable by this user: {DEVICE} (mode {stat.S_IMODE(st.st_mode):o}, group "
                         f"{_group(st.st_gid)}) is not readable and writable for you; an administrator can allow it "
                         f"(`chmod 0666 {DEVICE}`, Debian's default, or add you to its group)")
    if os.geteuid() == 0:
        return
    helper = shutil.which("fusermount3") or next((p for p in ("/usr/bin/fusermount3", "/bin/fusermount3")
                                                  if os.path.exists(p)), None)
    if helper is None:
        raise MountError("FUSE can not be mounted by an ordinary user here: fusermount3 is missing "
                         "(`apt-get install fuse3`)")
    st = os.stat(helper)
    if not st.st_mode & stat.S_ISUID or st.st_uid != 0:
        raise MountError(f"FUSE can not be mounted by an ordinary user here: {helper} is not setuid root "
                         f"(`chmod u+s {helper}` as root, as Debian installs it)")


def _group(gid: int) -> str:
    import grp
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)
