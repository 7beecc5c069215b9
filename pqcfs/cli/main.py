"""Entry point: parse, dispatch, and turn domain errors into messages and exit codes."""

from __future__ import annotations

import argparse
import logging
import errno
import os
import sys

from mounttool import helper
from mounttool.options import MountOptionError
from pqcfs import __version__, hygiene
from pqcfs.cli import (audit_cmd, automount_cmd, exitcodes, options, fsck_cmd, identity_cmd, info_cmd, init_cmd,
                       keys_cmd, mount_cmd, progress, remote_cmd, share_cmd, snapshot_cmd, status_cmd, sync_cmd, system_cmd,
                       upgrade_cmd)
from pqcfs.errors import PqcfsError
from pqcfs.format.names import InvalidName

COMMANDS = [identity_cmd, init_cmd, info_cmd, keys_cmd, mount_cmd, status_cmd, sync_cmd, fsck_cmd, audit_cmd, upgrade_cmd,
            share_cmd, snapshot_cmd, remote_cmd, automount_cmd, system_cmd]


EPILOG = "Exit codes: see EXIT STATUS in `man pqcfs`, or docs/cli.md. Documentation: docs/ in the pqcfs sources."


class Parser(argparse.ArgumentParser):
    """Every help page ends by saying where the exit codes are; a mistake is reported by the
    (sub)command it was made in, with that command's usage, as one `pqcfs:` line."""

    def __init__(self, *args, **kw):
        kw.setdefault("epilog", EPILOG)
        super().__init__(*args, **kw)

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and self._subparsers is None:
            # A command of its own: its mistake, its usage (not the top level's).
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras

    def error(self, message):
        self.print_usage(sys.stderr)
        where = self.prog.removeprefix("pqcfs").strip()
        self.exit(exitcodes.USAGE, f"pqcfs: {where + ': ' if where else ''}{message}\n")


def build_parser() -> Parser:
    parser = Parser(prog="pqcfs", description="Post-quantum encrypted, mirrored file system.")
    parser.add_argument("--version", action="version", version=f"pqcfs {__version__}")
    parser.set_defaults(parser=parser)     # for `system install`: the man page is made from it
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="the command (`pqcfs COMMAND --help` explains each)")
    for module in COMMANDS:
        module.add_parser(sub)
    return parser


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    return {name for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name in action.choices}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if len(argv) >= 2 and not argv[0].startswith("-") and argv[0] not in _commands(parser):
        # `pqcfs SOURCE MOUNTPOINT -o OPTIONS`: how mount.fuse3 runs a fuse.pqcfs mount.
        try:
            argv = helper.mount_args(argv)
        except MountOptionError as e:
            print(f"pqcfs: {e}", file=sys.stderr)
            return exitcodes.USAGE
        if argv is None:
            return exitcodes.OK      # -f: mount(8) only pretends
    args = parser.parse_args(argv)
    # Warnings from inside (a quarantined entry, a healed copy) reach the user as one
    # prefixed line each; the mount daemon sets up its own log.
    handler = progress.LineHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("pqcfs: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
    hygiene.harden()
    hygiene.warn_if_insecure()
    try:
        try:
            return args.func(args)
        finally:
            options.finish(args)
    except KeyboardInterrupt:
        print("pqcfs: interrupted", file=sys.stderr)
        return exitcodes.INTERRUPTED
    except (PqcfsError, InvalidName) as e:
        print(f"pqcfs: {e}", file=sys.stderr)
        return exitcodes.for_exception(e)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            print(f"pqcfs: {where}the drive is full ({e.strerror}); free some space on it (or plug in a bigger "
                  "one) and run the command again", file=sys.stderr)
        else:
            print(f"pqcfs: {where}{e.strerror}", file=sys.stderr)
        return exitcodes.for_exception(e)
    except Exception as e:  # noqa: BLE001 - a bug: say so in one line; PQCFS_DEBUG=1 shows where
        if os.environ.get("PQCFS_DEBUG") == "1":
            raise
        print(f"pqcfs: internal error ({type(e).__name__}: {e}); please report it "
              "(PQCFS_DEBUG=1 shows the traceback)", file=sys.stderr)
        return exitcodes.ERROR


if __name__ == "__main__":
    sys.exit(main())
