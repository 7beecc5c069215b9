"""What mount(8)'s ways in are given, parsed (pure: the programs themselves are
pqcfs/cli/helpers.py). The ways in: `mount.pqcfs`, `pqcfs SOURCE MOUNTPOINT -o OPTIONS` (what Debian's
mount.fuse3 runs for `-t fuse.pqcfs`) and `umount.fuse.pqcfs` (what umount(8) runs for a
`fuse.pqcfs` mount, so that `umount` waits until both drives are written out).

    mount.pqcfs SOURCE MOUNTPOINT [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]
    umount.fuse.pqcfs MOUNTPOINT [-flnrv] [-N NS] [-t TYPE]

Exit codes are pqcfs' own (docs/cli.md); a bad option is a usage error (2).
"""

from __future__ import annotations

import os

from mounttool import mountinfo
from mounttool.options import MountOptionError, translate

# Flags mount(8) passes to helpers: -s (sloppy), -f (fake), -n (no mtab), -v (verbose);
# -N and -t take a value. None of them changes what pqcfs does, except -f.
_MOUNT_FLAGS = {"-s", "-n", "-v", "-f"}
_VALUED = {"-N", "-t", "-o"}


def _parse(argv: list[str], positionals: int) -> tuple[list[str], dict[str, str], set[str]]:
    pos, values, flags = [], {}, set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _VALUED:
            if i + 1 == len(argv):
                raise MountOptionError(f"{arg} needs a value")
            values[arg] = (values[arg] + "," if arg == "-o" and arg in values else "") + argv[i + 1]
            i += 2
            continue
        if arg.startswith("-") and len(arg) > 1:
            for ch in arg[1:]:
                flags.add("-" + ch)
        else:
            pos.append(arg)
        i += 1
    if len(pos) != positionals:
        raise MountOptionError(f"expected {positionals} argument(s), got {len(pos)}: {' '.join(pos) or '(none)'}")
    return pos, values, flags


def mount_args(argv: list[str]) -> list[str] | None:
    """The `pqcfs mount` command line for a helper invocation (None: -f, mount nothing)."""
    (source, mountpoint), values, flags = _parse(argv, 2)
    if "-f" in flags:
        return None
    return ["mount", source, mountpoint, *translate(values.get("-o", ""))]


def umount_args(argv: list[str]) -> tuple[str, dict[str, str], set[str]]:
    """(mountpoint, -o values, flags) of an umount helper's command line."""
    (mountpoint,), values, flags = _parse(argv, 1)
    return mountpoint, values, flags


def umount_command(mountpoint: str, flags: set[str]) -> list[str]:
    """The `pqcfs umount` command line (it returns once the drives are written out)."""
    return ["umount", mountpoint, *(["--lazy"] if "-l" in flags else [])]


def plain_umount(mountpoint: str, values: dict[str, str], flags: set[str]) -> list[str]:
    """What umount(8) would have run for a mount that is not pqcfs' (`umount -i`: no helper)."""
    return ["umount", "-i", *sorted(flags - {"-i"}), *[w for k, v in values.items() for w in (k, v)], mountpoint]


def fstype(mountpoint: str) -> str | None:
    """The file system type the kernel's mount table gives mountpoint (the last mount there)."""
    target = os.path.abspath(mountpoint)
    found = [m.fstype for m in mountinfo.read() if m.mountpoint == target]
    return found[-1] if found else None
