"""`pqcfs doctor`: what a working set-up needs, each problem named with its fix.

Read-only: it looks at the kernel's FUSE device, the FUSE tools, what `pqcfs system
install` wrote (and whether each launcher still reaches an installation of this version),
the automount units `pqcfs automount enable` wrote (their program, the key or file they
unlock with, the tools their drives need).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from dataclasses import asdict, dataclass

from mounttool import units
from pqcfs import __version__, install
from pqcfs.errors import PqcfsError, SetupError
from pqcfs.store import hostkeys, tpm2


@dataclass
class Check:
    what: str
    ok: bool
    detail: str = ""
    fix: str = ""
    needed: bool = True     # False: worth knowing, not a fault of this set-up

    def to_dict(self) -> dict:
        return asdict(self)


def installed_version(python: str) -> str | None:
    """The pqcfs version the interpreter imports (None: it does not run or has none)."""
    try:
        proc = subprocess.run([python, "-I", "-c", "import pqcfs; print(pqcfs.__version__)"], capture_output=True,
                              text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def check_launcher(path: str, versions: dict[str, str | None]) -> Check:
    """A launcher names an interpreter that exists and imports this very version."""
    if os.path.islink(path):
        if not os.path.exists(path):
            return Check(path, False, f"a link to {os.readlink(path)}, which is gone (a removed checkout?)",
                         "run `pqcfs system install` (as root) from an installed pqcfs")
        return Check(path, False, f"a link to {os.readlink(path)} (a developer set-up that breaks when that "
                     "folder goes)", "run `pqcfs system install` (as root): it writes a launcher instead")
    try:
        with open(path, "rb") as f:
            found = install.parse_launcher(f.read(4097))
    except FileNotFoundError:
        return Check(path, False, "missing", "run `pqcfs system install` (as root)")
    except OSError as e:
        return Check(path, False, str(e), "run `pqcfs system install` (as root)")
    if found is None:
        return Check(path, False, "not a pqcfs launcher", "move it away, then run `pqcfs system install`")
    if found.python not in versions:
        versions[found.python] = installed_version(found.python) if os.access(found.python, os.X_OK) else None
    have = versions[found.python]
    if have is None:
        return Check(path, False, f"its installation ({found.python}) is gone or does not run pqcfs",
                     "reinstall pqcfs (pip/pipx), then run `pqcfs system install` (as root)")
    if have != __version__ or found.version != __version__:
        return Check(path, False, f"runs pqcfs {have} ({found.python}); this is pqcfs {__version__}",
                     "run `pqcfs system install` (as root) with the pqcfs you mean to use")
    return Check(path, True, f"pqcfs {have} ({found.python})")


def _fuse() -> list[Check]:
    out = []
    try:
        st = os.stat("/dev/fuse")
        ok = stat.S_ISCHR(st.st_mode) and os.access("/dev/fuse", os.R_OK | os.W_OK)
        out.append(Check("/dev/fuse", ok, "present" if ok else "present but not usable by this user",
                         "" if ok else "load the fuse module (`modprobe fuse`) and check its permissions"))
    except FileNotFoundError:
        out.append(Check("/dev/fuse", False, "missing", "load the fuse kernel module: `modprobe fuse`"))
    fusermount = shutil.which("fusermount3")
    if fusermount is None:
        out.append(Check("fusermount3", False, "missing", "apt-get install fuse3"))
    else:
        setuid = bool(os.stat(fusermount).st_mode & stat.S_ISUID)
        out.append(Check("fusermount3", setuid or os.geteuid() == 0, fusermount + ("" if setuid else
                                                                                   " (not setuid: only root mounts)"),
                         "" if setuid else "apt-get install --reinstall fuse3"))
    mount_fuse = shutil.which("mount.fuse3") or shutil.which("mount.fuse3", path="/sbin:/usr/sbin")
    out.append(Check("mount.fuse3", mount_fuse is not None, mount_fuse or "missing",
                     "" if mount_fuse else "apt-get install fuse3"))
    return out


def _installation(root: str, versions: dict) -> list[Check]:
    try:
        manifest = install.read_manifest(root)
    except PqcfsError as e:
        return [Check("installation", False, str(e), "run `pqcfs system install` (as root)")]
    out = []
    if manifest is None:
        out.append(Check("installation", False, f"`pqcfs system install` has not run ({os.path.join(root, install.MANIFEST)}"
                         " is missing)", "run `pqcfs system install` (as root)"))
    elif manifest.get("work_tree"):
        out.append(Check("installation", False, f"the programs run the work tree {manifest['work_tree']} (a developer "
                         "set-up): they break when it goes", "install pqcfs with pip or pipx and run `pqcfs system "
                         "install --replace-installed` from it", needed=False))
    for rel in install.PROGRAMS:
        out.append(check_launcher(os.path.join(root, rel), versions))
    for rel in install.DOCS:
        path = os.path.join(root, rel)
        ok = os.path.isfile(path)
        out.append(Check(path, ok, "present" if ok else ("a broken link" if os.path.islink(path) else "missing"),
                         "" if ok else "run `pqcfs system install` (as root)"))
    return out


def _units(root: str, versions: dict) -> list[Check]:
    folder = os.path.join(root, units.CONFIG_DIR)
    out = []
    exfat = False
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(folder, name)) as f:
                doc = json.load(f)
            spec, files = doc["spec"], doc["files"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            out.append(Check(os.path.join(folder, name), False, f"unreadable ({e})",
                             "`pqcfs automount disable VAULT_ID`, then enable it again"))
            continue
        vault_id = spec.get("vault_id", name[:-5])
        what = f"automount of vault {vault_id}"
        missing = [rel for rel in files if not os.path.isfile(os.path.join(root, rel))]
        if missing:
            out.append(Check(what, False, "missing " + ", ".join(missing),
                             f"`pqcfs automount enable` it again (or `pqcfs automount disable {vault_id}`)"))
        program = os.path.join(root, units.PQCFS.lstrip("/"))
        launcher = check_launcher(program, versions)
        out.append(Check(f"{what}: its program {units.PQCFS}", launcher.ok, launcher.detail, launcher.fix))
        unlock = spec.get("unlock")
        if unlock == "host-key":
            held = bool(hostkeys.held(vault_id))
            out.append(Check(f"{what}: unlocks with this machine's host key", held,
                             "a host key of the vault is here" if held else "no host key of this vault on this machine",
                             "" if held else "`pqcfs keys add VAULT --host`, or enable automount with another --unlock"))
        elif unlock == "passfile":
            ok = bool(spec.get("passfile")) and os.path.isfile(spec["passfile"])
            out.append(Check(f"{what}: its passfile", ok, spec.get("passfile") or "none named",
                             "" if ok else "put the passphrase file back, or enable automount again"))
        elif unlock == "identity":
            ok = bool(spec.get("identity")) and os.path.isfile(spec["identity"])
            out.append(Check(f"{what}: its identity file", ok, spec.get("identity") or "none named",
                             "" if ok else "put the identity file back, or enable automount again"))
        elif unlock == "tpm2":
            tcti = spec.get("tcti") or tpm2.default_tcti()
            ok = tpm2.present(spec.get("tcti"))
            out.append(Check(f"{what}: unlocks with the TPM at {tcti}", ok, "it answers" if ok else "no TPM answers",
                             "" if ok else "install tpm2-tools, check the TPM (/dev/tpmrm0), or enable automount "
                             "with another --unlock"))
            if spec.get("pin_file"):
                ok = os.path.isfile(spec["pin_file"])
                out.append(Check(f"{what}: its PIN file", ok, spec["pin_file"],
                                 "" if ok else "put the PIN file back, or enable automount again"))
        exfat |= any(d.get("fs_type") in ("exfat", "exfat-fuse") for d in spec.get("drives", []))
    tools = [t for t in ("mount.exfat-fuse", "fsck.exfat") if shutil.which(t, path="/sbin:/usr/sbin:/usr/bin:/bin")
             is None]
    out.append(Check("exFAT tools", not tools, "present" if not tools else "missing " + ", ".join(tools),
                     "" if not tools else "apt-get install exfat-fuse exfatprogs", needed=exfat))
    return out


def _optional_tools() -> list[Check]:
    """Tools only some features need: said, never a fault."""
    out = []
    for tool, feature, package in (("rclone", "offsite remotes (pqcfs remote, push, recover)", "rclone"),
                                   ("tpm2_unseal", "TPM2 key slots (keys add --tpm2, --tpm2)", "tpm2-tools")):
        found = shutil.which(tool)
        out.append(Check(f"{tool}: {feature}", found is not None, found or "missing",
                         "" if found else f"apt-get install {package}", needed=False))
    return out


def check_program(root: str) -> None:
    """For automount enable: the program its units run exists and is this version."""
    path = os.path.join(root, units.PQCFS.lstrip("/"))
    check = check_launcher(path, {})
    if not check.ok:
        raise SetupError(f"the units would run {units.PQCFS}, and {path}: {check.detail}; {check.fix}")


def run(root: str = "/") -> list[Check]:
    versions: dict[str, str | None] = {}
    return _fuse() + _installation(root, versions) + _units(root, versions) + _optional_tools()


def healthy(checks: list[Check]) -> bool:
    return all(c.ok or not c.needed for c in checks)
