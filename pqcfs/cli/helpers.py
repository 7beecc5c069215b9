"""The programs mount(8) and umount(8) run: `mount.pqcfs`, `umount.fuse.pqcfs` and
`umount.fuse` (installed as launchers by `pqcfs system install`, which run
`python -I -m pqcfs.cli.helpers PROGRAM ARGS...`). They parse with mounttool and run the
pqcfs command line; exit codes are pqcfs' own, a bad option is a usage error (2).
"""

from __future__ import annotations

import os
import sys

from mounttool import helper
from mounttool.options import MountOptionError
from pqcfs.cli import main as cli


def mount_main(argv: list[str] | None = None) -> int:
    """mount.pqcfs SOURCE MOUNTPOINT [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]"""
    try:
        args = helper.mount_args(sys.argv[1:] if argv is None else argv)
    except MountOptionError as e:
        print(f"pqcfs: {e}", file=sys.stderr)
        return 2
    return 0 if args is None else cli.main(args)


def _umount_args(argv: list[str] | None, who: str):
    try:
        return helper.umount_args(sys.argv[1:] if argv is None else argv)
    except MountOptionError as e:
        print(f"{who}: {e}", file=sys.stderr)
        return 2


def umount_main(argv: list[str] | None = None) -> int:
    """umount.fuse.pqcfs MOUNTPOINT [-flnrv] [-N NS] [-t TYPE]: `pqcfs umount`, which
    returns once the drives are written out."""
    parsed = _umount_args(argv, "pqcfs")
    if isinstance(parsed, int):
        return parsed
    mountpoint, _, flags = parsed
    return cli.main(helper.umount_command(mountpoint, flags))


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
    if helper.fstype(mountpoint) == "fuse.pqcfs":
        return cli.main(helper.umount_command(mountpoint, flags))
    words = helper.plain_umount(mountpoint, values, flags)
    os.execvp(words[0], words)
    return 1


PROGRAMS = {"mount.pqcfs": mount_main, "umount.fuse.pqcfs": umount_main, "umount.fuse": umount_fuse_main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in PROGRAMS:
        sys.exit(f"usage: python -m pqcfs.cli.helpers {'|'.join(PROGRAMS)} ARGS...")
    program = sys.argv.pop(1)
    sys.argv[0] = program
    sys.exit(PROGRAMS[program]())
