"""pqcfs system install|uninstall, and pqcfs doctor."""

from __future__ import annotations

import os
import sys

from pqcfs import __version__, doctor, install
from pqcfs.cli import exitcodes, manpage, options
from pqcfs.errors import SetupError


def add_parser(sub) -> None:
    p = sub.add_parser("system", help="put the launcher, mount/umount helpers, man page and completions where the "
                       "system looks for them (as root), or take them away")
    ssub = p.add_subparsers(dest="system_cmd", required=True, metavar="install|uninstall", help="what to do")
    for name, text in (("install", "write /usr/bin/pqcfs, the mount(8)/umount helpers, man page and completions as "
                        "real files that run this installation (idempotent; never over a file it did not write)"),
                       ("uninstall", "remove exactly what `pqcfs system install` wrote")):
        q = ssub.add_parser(name, help=text)
        q.add_argument("--root", default="/", metavar="DIR", help="under DIR instead of / (packaging, tests)")
        q.add_argument("--json", action="store_true", help="print what was done as JSON")
        if name == "install":
            q.add_argument("--replace-installed", action="store_true",
                           help="from a developer's venv: replace an installed pqcfs all the same")
        q.set_defaults(func=run_system)
    d = sub.add_parser("doctor", help="check what a working set-up needs (FUSE, the installed programs and their "
                       "version, automount units and their keys) and name each problem with its fix")
    d.add_argument("--root", default="/", metavar="DIR", help="check under DIR instead of /")
    d.add_argument("--json", action="store_true", help="print the checks as JSON")
    d.set_defaults(func=run_doctor)


def run_system(args) -> int:
    if os.path.realpath(args.root) == "/" and os.geteuid() != 0:
        raise SetupError(f"`pqcfs system {args.system_cmd}` writes to /usr: run it as root (or give --root DIR)")
    if args.system_cmd == "install":
        work = install.work_tree()
        try:
            result = install.install(args.root, sys.executable, __version__, manpage.documents(args.parser),
                                     work, args.replace_installed)
        except install.InstallConflict as e:
            raise SetupError(str(e)) from None
        text = [f"pqcfs {__version__} for {sys.executable}: {len(result.written)} file(s) written, "
                f"{len(result.unchanged)} already current"] + [f"  {p}" for p in result.written]
        if work:
            text.append(f"note: these run the work tree {work}; they break when it goes (`pqcfs doctor` says so)")
    else:
        result = install.uninstall(args.root)
        text = ([f"removed {len(result.removed)} file(s)"] if result.removed
                else ["`pqcfs system install` has installed nothing here"])
        text += [f"  {p}" for p in result.removed]
        text += [f"  kept {p}: changed since it was installed" for p in result.kept]
    options.emit(args, {"written": result.written, "unchanged": result.unchanged, "removed": result.removed,
                        "kept": result.kept}, "\n".join(text))
    return exitcodes.OK


def run_doctor(args) -> int:
    checks = doctor.run(args.root)
    lines = []
    for c in checks:
        mark = "ok  " if c.ok else ("FAIL" if c.needed else "note")
        lines.append(f"{mark} {c.what}: {c.detail}" + (f"\n       fix: {c.fix}" if not c.ok and c.fix else ""))
    good = doctor.healthy(checks)
    lines.append("all good" if good else "problems found: see FAIL above")
    options.emit(args, {"ok": good, "version": __version__, "checks": [c.to_dict() for c in checks]},
                 "\n".join(lines))
    return exitcodes.OK if good else exitcodes.SETUP
