"""`python -m mounttool PROGRAM ARGS...`: what the installed helpers run (see
pqcfs/install.py: the launchers name the interpreter, never a path in a work tree)."""

import sys

from mounttool import helper

PROGRAMS = {"mount.pqcfs": helper.main, "umount.fuse.pqcfs": helper.umount_main,
            "umount.fuse": helper.umount_fuse_main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in PROGRAMS:
        sys.exit(f"usage: python -m mounttool {'|'.join(PROGRAMS)} ARGS...")
    program = sys.argv.pop(1)
    sys.argv[0] = program
    sys.exit(PROGRAMS[program]())
