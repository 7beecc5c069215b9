"""mount(8)'s ways in: `mount.pqcfs`, `pqcfs SOURCE MOUNTPOINT -o OPTIONS` (what Debian's
mount.fuse3 runs for `-t fuse.pqcfs`) and `umount.fuse.pqcfs` (what umount(8) runs for a
`fuse.pqcfs` mount, so that `umount` waits until both drives are written out).

    mount.pqcfs SOURCE MOUNTPOINT [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]
    umount.fuse.pqcfs MOUNTPOINT [-flnrv] [-N NS] [-t TYPE]

Exit codes are pqcfs' own (docs/cli.md); a bad option is a usage error (2).
"""

from __future__ import annotations

import os
import re
import sys

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


def main(argv: list[str] | None = None) -> int:
    """mount.pqcfs, and `pqcfs SOURCE MOUNTPOINT -o OPTIONS`."""
    from pqcfs.cli import main as cli
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = mount_args(argv)
    except MountOptionError as e:
        print(f"pqcfs: {e}", file=sys.stderr)
        return 2
    if args is None:
        return 0
    return cli.main(args)


def _umount_args(argv: list[str] | None, who: str):
    """(mountpoint, -o values, flags) of an umount helper's command line, or an exit code."""
    try:
        (mountpoint,), values, flags = _parse(sys.argv[1:] if argv is None else argv, 1)
    except MountOptionError as e:
        print(f"{who}: {e}", file=sys.stderr)
        return 2
    return mountpoint, values, flags


def umount_main(argv: list[str] | None = None) -> int:
    """umount.fuse.pqcfs: `pqcfs umount`, which returns once the drives are written out."""
    from pqcfs.cli import main as cli
    parsed = _umount_args(argv, "pqcfs")
    if isinstance(parsed, int):
        return parsed
    mountpoint, _, flags = parsed
    return cli.main(["umount", mountpoint, *(["--lazy"] if "-l" in flags else [])])


def _fstype(mountpoint: str) -> str | None:
    """The file system type the kernel's mount table gives mountpoint (the last mount there)."""
    found = None
    target = os.path.abspath(mountpoint)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                before, _, after = line.partition(" - ")
                fields = before.split(" ")
                if len(fields) > 4 and _unescape(fields[4]) == target and after.split():
                    found = after.split()[0]
    except OSError:
        return None
    return found


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def umount_fuse_main(argv: list[str] | None = None) -> int:
    """umount.fuse: what umount(8) runs for every FUSE mount. util-linux knows a FUSE mount
    only as "fuse" (from statfs, without reading the mount table), so it never looks for
    umount.fuse.pqcfs: this helper asks the kernel's mount table which FUSE file system it
    is. A pqcfs mount goes to `pqcfs umount` (which returns once both drives are written
    out and marked clean); any other is unmounted exactly as umount(8) would have done
    without a helper (`umount -i`)."""
    parsed = _umount_args(argv, "umount.fuse")
    if isinstance(parsed, int):
        return parsed
    mountpoint, values, flags = parsed
    if _fstype(mountpoint) == "fuse.pqcfs":
        return umount_main(argv)
    words = ["umount", "-i", *sorted(flags - {"-i"}), *[w for k, v in values.items() for w in (k, v)], mountpoint]
    os.execvp("umount", words)
    return 1
