"""The udev rule and systemd units that mount a vault when its drives are plugged in.
Pure: a description in, file names and contents out (written by `pqcfs automount`).

For a vault with primary P and backup B (file system UUIDs):
- `run-pqcfs-drives-<P>.mount` and `...<B>.mount` mount each drive's file system under
  /run/pqcfs/drives/<UUID> (systemd does the mounting; udev never mounts);
- `pqcfs-<vault id>.service` (Type=notify) needs P's mount, wants B's, runs `pqcfs mount
  ... --foreground --vault-id ... --wait-backup N` (ready once the FUSE mount answers) and
  `pqcfs umount` when stopped, at shutdown, or when P disappears (BindsTo its device);
- `90-pqcfs-<vault id>.rules`: P's UUID appearing pulls the service, B's pulls B's mount
  (the running daemon then takes B back in and syncs it).
The UUID only triggers: `--vault-id` makes the vault header decide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PQCFS = "/usr/bin/pqcfs"
DRIVES_DIR = "/run/pqcfs/drives"
UNIT_DIR = "etc/systemd/system"
RULES_DIR = "etc/udev/rules.d"
CONFIG_DIR = "etc/pqcfs/automount"
UNLOCK = ("ask", "host-key", "identity", "passfile", "tpm2")
ASK_TIMEOUT = 120    # seconds systemd-ask-password waits for each try
_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:_.")
# What may reach a rule or a unit. A file system UUID is letters, digits and dashes (as
# udev's by-uuid links and blkid print them); a vault id is 32 hex digits; a user name is
# what useradd accepts; a path is printable (no newline starts a new directive), absolute
# and without `..`. Whatever wrote the description, nothing else gets through.
FS_UUID = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,63}")
VAULT_ID = re.compile(r"[0-9a-f]{32}")
USER = re.compile(r"[a-z_][a-z0-9_-]{0,31}\$?")
FUSE_OPTION = re.compile(r"[A-Za-z0-9_.=/-]{1,128}")
# A TPM's TCTI as tpm2-tools takes it: the kernel's devices, a TPM simulator on an address,
# the access broker; nothing else reaches a unit.
TCTI = re.compile(r"device:/dev/tpm(rm)?[0-9]{1,3}|swtpm:host=[0-9A-Za-z.-]{1,64},port=[0-9]{1,5}|tabrmd(:bus_name=[a-z.]{1,64})?")


class UnsafeValue(ValueError):
    """A value that has no safe spelling in a udev rule or a systemd unit."""


@dataclass
class DriveSpec:
    role: str               # "primary" or "backup"
    fs_uuid: str
    subpath: str = "."      # the vault's directory inside the drive's file system
    fs_type: str = "auto"

    @property
    def where(self) -> str:
        return f"{DRIVES_DIR}/{self.fs_uuid}"

    @property
    def location(self) -> str:
        return self.where if self.subpath in ("", ".") else f"{self.where}/{self.subpath}"


@dataclass
class AutomountSpec:
    vault_id: str
    mountpoint: str
    drives: list[DriveSpec]
    unlock: str = "ask"
    passfile: str | None = None
    identity: str | None = None
    wait_backup: int = 30
    fuse_options: list[str] = field(default_factory=list)
    user: str | None = None     # the mount belongs to this user (None: root's)
    tcti: str | None = None     # --unlock tpm2: which TPM (None: the default device)
    pin_file: str | None = None  # --unlock tpm2: a root-only file with the slot's PIN

    @property
    def primary(self) -> DriveSpec:
        return next(d for d in self.drives if d.role == "primary")


def _path_ok(path: str | None, absolute: bool = True) -> bool:
    return (path is not None and 0 < len(path) <= 4096 and path.isprintable()
            and path.startswith("/") == absolute and ".." not in path.split("/"))


def check(spec: AutomountSpec) -> None:
    """Refuse a description with any value outside its grammar (UnsafeValue names it)."""
    problems = []
    if not VAULT_ID.fullmatch(spec.vault_id):
        problems.append("vault id")
    if not _path_ok(spec.mountpoint):
        problems.append("mountpoint")
    for d in spec.drives:
        if d.role not in ("primary", "backup") or not FS_UUID.fullmatch(d.fs_uuid):
            problems.append(f"file system UUID of the {d.role!r} drive")
        if d.subpath not in ("", ".") and not _path_ok(d.subpath, absolute=False):
            problems.append(f"path inside the {d.role!r} drive")
        if not re.fullmatch(r"[a-z0-9.-]{1,32}", d.fs_type):
            problems.append(f"file system type of the {d.role!r} drive")
    if spec.unlock not in UNLOCK:
        problems.append("unlock method")
    if spec.tcti is not None and not TCTI.fullmatch(spec.tcti):
        problems.append("TPM TCTI")
    for name, path in (("passfile", spec.passfile), ("identity file", spec.identity), ("PIN file", spec.pin_file)):
        if path is not None and not _path_ok(path):
            problems.append(name)
    if spec.user is not None and not USER.fullmatch(spec.user):
        problems.append("user name")
    if not all(FUSE_OPTION.fullmatch(o) for o in spec.fuse_options):
        problems.append("FUSE option")
    if not 0 <= spec.wait_backup <= 86400:
        problems.append("backup wait")
    if problems:
        raise UnsafeValue("refused to write units with an unsafe " + ", ".join(problems))


def escape_path(path: str) -> str:
    """systemd-escape --path: the unit name of a path."""
    path = "/".join(p for p in path.split("/") if p)
    if not path:
        return "-"
    out = []
    for n, ch in enumerate(path):
        if ch == "/":
            out.append("-")
        elif ch in _SAFE and not (n == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    return "".join(out)


def _word(text: str) -> str:
    """One ExecStart word, quoted for systemd: specifiers and variables taken literally."""
    text = text.replace("%", "%%").replace("$", "$$")
    if text and all(c not in text for c in ' \t"\'\\;'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def mount_unit_name(drive: DriveSpec) -> str:
    return escape_path(drive.where) + ".mount"


def device_unit_name(drive: DriveSpec) -> str:
    return escape_path(f"/dev/disk/by-uuid/{drive.fs_uuid}") + ".device"


def service_name(spec: AutomountSpec) -> str:
    return f"pqcfs-{spec.vault_id}.service"


def drive_mount_unit(spec: AutomountSpec, drive: DriveSpec) -> str:
    return f"""# Generated by `pqcfs automount enable` for vault {spec.vault_id}; `pqcfs automount disable` removes it.
[Unit]
Description=pqcfs {drive.role} drive {drive.fs_uuid} of vault {spec.vault_id}
Documentation=man:mount(8)
BindsTo={device_unit_name(drive)}
After={device_unit_name(drive)}

[Mount]
What=/dev/disk/by-uuid/{drive.fs_uuid}
Where={drive.where}
Type={drive.fs_type}
Options=nosuid,nodev,noexec
DirectoryMode=0700
TimeoutSec=60
"""


def _unlock_words(spec: AutomountSpec) -> list[str]:
    ask = ["--extpass", f"systemd-ask-password --timeout={ASK_TIMEOUT} --id=pqcfs:{spec.vault_id} "
                        f"'Passphrase for the pqcfs vault {spec.vault_id[:8]} ({spec.mountpoint})'"]
    if spec.unlock == "passfile":
        return ["--passfile", spec.passfile or ""]
    if spec.unlock == "host-key":
        return ["--host-key"]
    if spec.unlock == "tpm2":
        return (["--tpm2"] + (["--tcti", spec.tcti] if spec.tcti else [])
                + (["--pin-file", spec.pin_file] if spec.pin_file else []))
    if spec.unlock == "identity":
        return ["--identity", spec.identity or "", *ask]
    return ask


def exec_start(spec: AutomountSpec) -> list[str]:
    words = [PQCFS, "mount", spec.primary.location, spec.mountpoint, "--foreground", "--vault-id", spec.vault_id,
             "--wait-backup", str(spec.wait_backup), *_unlock_words(spec)]
    if spec.user:
        words += ["--user", spec.user]
    if spec.fuse_options:
        words += ["-o", ",".join(spec.fuse_options)]
    return words


def start_timeout(spec: AutomountSpec) -> int:
    """The backup's wait, every passphrase try (`pqcfs mount` asks up to three times) and
    a sync of the backup at mount."""
    tries = 3 if spec.unlock in ("ask", "identity") else 0
    return spec.wait_backup + tries * ASK_TIMEOUT + 180


def service_unit(spec: AutomountSpec) -> str:
    primary = spec.primary
    backups = [d for d in spec.drives if d.role != "primary"]
    wants = "".join(f"Wants={mount_unit_name(d)}\n" for d in backups)
    return f"""# Generated by `pqcfs automount enable` for vault {spec.vault_id}; `pqcfs automount disable` removes it.
[Unit]
Description=pqcfs vault {spec.vault_id} at {spec.mountpoint}
Documentation=man:pqcfs(1)
Requires={mount_unit_name(primary)}
After={mount_unit_name(primary)}
BindsTo={device_unit_name(primary)}
{wants}RequiresMountsFor={_word(spec.mountpoint)}

[Service]
Type=notify
NotifyAccess=main
ExecStart={" ".join(_word(w) for w in exec_start(spec))}
ExecStop={_word(PQCFS)} umount {_word(spec.mountpoint)}
TimeoutStartSec={start_timeout(spec)}
TimeoutStopSec=300
KillMode=mixed
"""


def udev_rule(spec: AutomountSpec) -> str:
    lines = [f"# Generated by `pqcfs automount enable` for vault {spec.vault_id}; `pqcfs automount disable` "
             "removes it.",
             "# A drive's file system UUID only triggers: the vault header decides (pqcfs mount --vault-id)."]
    for d in spec.drives:
        wanted = service_name(spec) if d.role == "primary" else mount_unit_name(d)
        lines.append(f'ACTION=="add", SUBSYSTEM=="block", ENV{{ID_FS_UUID}}=="{d.fs_uuid}", TAG+="systemd", '
                     f'ENV{{SYSTEMD_WANTS}}+="{wanted}"')
    return "\n".join(lines) + "\n"


def files(spec: AutomountSpec) -> dict[str, str]:
    """Relative path (under the root directory) -> contents of every file to write."""
    check(spec)
    out = {f"{UNIT_DIR}/{service_name(spec)}": service_unit(spec),
           f"{RULES_DIR}/90-pqcfs-{spec.vault_id}.rules": udev_rule(spec)}
    for d in spec.drives:
        out[f"{UNIT_DIR}/{mount_unit_name(d)}"] = drive_mount_unit(spec, d)
    return out
