"""What the operating system must find of pqcfs, put into the standard places as real
files, and taken away again: `pqcfs system install|uninstall`.

mount(8), util-linux's umount, systemd units and man look in fixed places (/usr/bin,
/usr/sbin, the man and completion directories), never in a Python environment. Each
program there is a small launcher that names the interpreter of the installation that
wrote it (a pip or pipx environment, or a developer's venv), runs it isolated (`-I`: no
current directory, no PYTHON* variable reaches the import path of a program root runs),
and says which version it belongs to. What was written is recorded with its SHA-256 in a
manifest, so that uninstall removes exactly that, and install never overwrites a file it
did not write.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import stat
import sysconfig
from dataclasses import dataclass, field

from pqcfs.errors import PqcfsError

MANIFEST = "var/lib/pqcfs/installed.json"
MARK = "pqcfs launcher"
# Installed path (relative to the root) -> the program the launcher runs.
PROGRAMS = {
    "usr/bin/pqcfs": ("pqcfs", []),
    "usr/sbin/mount.pqcfs": ("pqcfs.cli.helpers", ["mount.pqcfs"]),
    "usr/sbin/umount.fuse.pqcfs": ("pqcfs.cli.helpers", ["umount.fuse.pqcfs"]),
    "usr/sbin/umount.fuse": ("pqcfs.cli.helpers", ["umount.fuse"]),
}
DOCS = {
    "usr/local/share/man/man1/pqcfs.1": "man",
    "usr/share/bash-completion/completions/pqcfs": "bash",
    "usr/local/share/zsh/site-functions/_pqcfs": "zsh",
}
_LAUNCHER = re.compile(rf"^# {MARK} (?P<version>\S+) for (?P<python>.+)$", re.M)


class InstallConflict(PqcfsError):
    """A file in the way that pqcfs did not install."""


@dataclass
class Launcher:
    version: str
    python: str


@dataclass
class Result:
    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)      # changed since installed: left alone


def launcher(python: str, version: str, module: str, args: list[str]) -> str:
    words = " ".join(shlex.quote(w) for w in [python, "-I", "-m", module, *args])
    return (f"#!/bin/sh\n# {MARK} {version} for {python}\n"
            "# Written by `pqcfs system install`, removed by `pqcfs system uninstall`. It runs the pqcfs\n"
            "# installed for that interpreter, isolated from the current directory and PYTHON* variables.\n"
            f'exec {words} "$@"\n')


def parse_launcher(data: bytes) -> Launcher | None:
    """The version and interpreter a launcher names (None: not a pqcfs launcher)."""
    if not data.startswith(b"#!/bin/sh\n") or len(data) > 4096:
        return None
    found = _LAUNCHER.search(data.decode(errors="replace"))
    return Launcher(found["version"], found["python"]) if found else None


def files_for(python: str, version: str, docs: dict[str, str]) -> dict[str, tuple[bytes, int]]:
    """Relative path -> (contents, mode) of everything `system install` writes."""
    out = {rel: (launcher(python, version, module, args).encode(), 0o755)
           for rel, (module, args) in PROGRAMS.items()}
    for rel, kind in DOCS.items():
        out[rel] = (docs[kind].encode(), 0o644)
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(root: str) -> dict | None:
    try:
        with open(os.path.join(root, MANIFEST), "rb") as f:
            doc = json.loads(f.read(1 << 20))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise PqcfsError(f"{os.path.join(root, MANIFEST)} is unreadable ({e}); remove it and install again") from None
    if not (isinstance(doc, dict) and isinstance(doc.get("files"), dict)):
        raise PqcfsError(f"{os.path.join(root, MANIFEST)} is not a pqcfs install manifest")
    return doc


def _current(path: str) -> bytes | None:
    """A regular file's contents (None: absent); anything else in the way raises."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise InstallConflict(path)
    with open(path, "rb") as f:
        return f.read()


def _an_old_dev_link(path: str) -> bool:
    """What scripts/dev.sh linked before launchers existed: a symlink into a .venv."""
    return os.path.islink(path) and "/.venv/" in os.readlink(path)


def _write(path: str, data: bytes, mode: int) -> None:
    tmp = f"{path}.pqcfs-new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        os.fchmod(fd, mode)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _makedirs(root: str, rel_dir: str, made: list[str]) -> None:
    parts = rel_dir.split("/")
    for n in range(1, len(parts) + 1):
        rel = "/".join(parts[:n])
        path = os.path.join(root, rel)
        if not os.path.isdir(path):
            os.mkdir(path, 0o755)
            made.append(rel)


def work_tree() -> str | None:
    """The source tree this pqcfs runs from when it is an editable (developer) install,
    else None: a launcher naming it breaks when that tree goes."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    installed = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")}
    return None if os.path.realpath(package) in installed else package


def install(root: str, python: str, version: str, docs: dict[str, str], work: str | None = None,
            replace_installed: bool = False) -> Result:
    """Write every file (idempotent); refuses before writing anything when a file in the
    way is not one this installer wrote (or an old developer link), or when a work tree's
    venv would replace a real installation that still runs (unless replace_installed)."""
    manifest = read_manifest(root) or {"files": {}, "dirs": []}
    previous = manifest.get("python")
    if work and not manifest.get("work_tree") and previous and previous != python and not replace_installed \
            and os.access(previous, os.X_OK):
        raise InstallConflict(f"pqcfs {manifest.get('version')} is installed for {previous}; the venv of the work "
                              f"tree {work} does not replace it (its launchers would break when the work tree goes). "
                              "Use --replace-installed to do it anyway")
    wanted = files_for(python, version, docs)
    conflicts = []
    for rel in wanted:
        path = os.path.join(root, rel)
        if _an_old_dev_link(path) or rel in manifest["files"]:
            continue
        try:
            if _current(path) is not None:
                conflicts.append(path)
        except InstallConflict:
            conflicts.append(path)
    if conflicts:
        raise InstallConflict("not installed by pqcfs, left alone: " + ", ".join(conflicts)
                              + " (remove or move them, then run `pqcfs system install` again)")
    result, made = Result(), list(manifest.get("dirs", []))
    os.makedirs(root, 0o755, exist_ok=True)
    for rel, (data, mode) in wanted.items():
        path = os.path.join(root, rel)
        _makedirs(root, os.path.dirname(rel), made)
        if _an_old_dev_link(path):
            os.unlink(path)
        elif _current(path) == data and stat.S_IMODE(os.lstat(path).st_mode) == mode:
            result.unchanged.append(path)
            continue
        _write(path, data, mode)
        result.written.append(path)
    _makedirs(root, os.path.dirname(MANIFEST), made)
    doc = {"format": 1, "version": version, "python": python, "work_tree": work,
           "files": {rel: _sha(data) for rel, (data, _) in wanted.items()}, "dirs": made}
    _write(os.path.join(root, MANIFEST), json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n", 0o644)
    return result


def uninstall(root: str) -> Result:
    """Remove exactly what install wrote (a file changed since is kept, and said), then
    the directories it made, when empty."""
    manifest = read_manifest(root)
    result = Result()
    if manifest is None:
        return result
    for rel, sha in sorted(manifest["files"].items()):
        path = os.path.join(root, rel)
        try:
            data = _current(path)
        except InstallConflict:
            result.kept.append(path)
            continue
        if data is None:
            continue
        if _sha(data) != sha:
            result.kept.append(path)
            continue
        os.unlink(path)
        result.removed.append(path)
    os.unlink(os.path.join(root, MANIFEST))
    result.removed.append(os.path.join(root, MANIFEST))
    for rel in sorted(manifest.get("dirs", []), key=lambda d: d.count("/"), reverse=True):
        try:
            os.rmdir(os.path.join(root, rel))
        except OSError:
            pass     # not empty (something else lives there now), or gone
    return result
