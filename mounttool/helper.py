"""mount(8)'s ways in: `mount.pqcfs`, `pqcfs SOURCE MOUNTPOINT -o OPTIONS` (what Debian's
mount.fuse3 runs for `-t fuse.pqcfs`) and `umount.fuse.pqcfs` (what umount(8) runs for a
`fuse.pqcfs` mount, so that `umount` waits until both drives are written out).

    mount.pqcfs SOURCE MOUNTPOINT [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]
    umount.fuse.pqcfs MOUNTPOINT [-flnrv] [-N NS] [-t TYPE]

Exit codes are pqcfs' own (docs/cli.md); a bad option is a usage error (2).
"""

from __future__ import annotations

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


def umount_main(argv: list[str] | None = None) -> int:
    """umount.fuse.pqcfs: `pqcfs umount`, which returns once the drives are written out."""
    from pqcfs.cli import main as cli
    argv = sys.argv[1:] if argv is None else argv
    try:
        (mountpoint,), _, flags = _parse(argv, 1)
    except MountOptionError as e:
        print(f"pqcfs: {e}", file=sys.stderr)
        return 2
    return cli.main(["umount", mountpoint, *(["--lazy"] if "-l" in flags else [])])
