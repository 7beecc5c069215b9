"""pqcfs automount enable|disable|status: the udev rule and systemd units of a vault."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

from mounttool import units
from pqcfs import doctor
from pqcfs import vault as vault_mod
from pqcfs.cli import options
from pqcfs.errors import PqcfsError
from pqcfs.format import vault_header
from pqcfs.session import mounttable
from pqcfs.session.owner import MountOwner
from pqcfs.store import devices, hostkeys, tpm2
from pqcfs.store.atomic import write_atomic


def add_parser(sub) -> None:
    p = sub.add_parser("automount", help="mount a vault when its drives are plugged in (udev + systemd)")
    asub = p.add_subparsers(dest="automount_cmd", required=True, metavar="enable|disable|status", help="what to do")
    en = asub.add_parser("enable", help="write the udev rule and systemd units of a vault")
    en.add_argument("vault", help="the vault's primary replica (plugged in; no unlock needed)")
    en.add_argument("--at", required=True, metavar="MOUNTPOINT", help="where the vault is mounted")
    en.add_argument("--unlock", choices=units.UNLOCK, default="ask",
                    help="ask: systemd-ask-password (default); host-key: this machine's host key, unattended "
                    "(`pqcfs keys add VAULT --host` first); tpm2: this machine's TPM, unattended (`pqcfs keys add "
                    "VAULT --tpm2` first; the secret can not leave the machine); identity: an identity file and its passphrase (asked); "
                    "passfile: a root-only file holding the passphrase")
    en.add_argument("--passfile", metavar="FILE", help="with --unlock passfile: the file")
    en.add_argument("--tcti", metavar="TCTI", help="with --unlock tpm2: which TPM (default: device:/dev/tpmrm0)")
    en.add_argument("--pin-file", metavar="FILE", help="with --unlock tpm2: a root-only file with the slot's PIN")
    en.add_argument("--identity-file", metavar="FILE", help="with --unlock identity: the identity file")
    en.add_argument("--user", metavar="NAME",
                    help="the mount belongs to user NAME: only NAME sees inside it (their file manager shows it), "
                    "and failures also reach NAME's journal")
    en.add_argument("--wait-backup", type=int, default=30, metavar="SECONDS",
                    help="how long to wait for the backup before mounting degraded (default 30)")
    en.add_argument("-o", dest="fuse_options", action="append", default=[], metavar="OPT[,OPT]",
                    help="FUSE options for the mount, e.g. allow_other")
    en.add_argument("--root", default="/", metavar="DIR", help="write under DIR instead of / (packaging, tests)")
    en.add_argument("--json", action="store_true", help="print the files written as JSON")
    dis = asub.add_parser("disable", help="remove the udev rule and systemd units of a vault")
    dis.add_argument("vault_id", help="the vault id (as `pqcfs automount status` lists it)")
    dis.add_argument("--root", default="/", metavar="DIR", help="remove under DIR instead of /")
    st = asub.add_parser("status", help="the vaults set up for automount, their drives and mounts")
    st.add_argument("--root", default="/", metavar="DIR", help="read under DIR instead of /")
    st.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=run)


def _fs_type(fs_uuid: str | None) -> str:
    """What the drive's mount unit says in Type= (exFAT goes through exfat-fuse on a kernel
    without an exfat driver)."""
    if not fs_uuid:
        return "auto"
    proc = subprocess.run(["blkid", "-o", "value", "-s", "TYPE", "-t", f"UUID={fs_uuid}"], capture_output=True,
                          text=True)
    fs_type = proc.stdout.split()[0] if proc.returncode == 0 and proc.stdout.split() else "auto"
    if fs_type == "exfat":
        with open("/proc/filesystems") as f:
            if "exfat" not in f.read().split():
                return "exfat-fuse"
    return fs_type


def _primary_drive(location: str, header) -> units.DriveSpec:
    """The primary as the kernel sees it: the file system UUID of the block device the
    location lives on and the location's path inside it. The header (unauthenticated
    without an unlock) only has to agree."""
    info = devices.inspect(location)
    if not info.fs_uuid or not info.mountpoint:
        raise PqcfsError(f"{location} is not on a drive with a file system UUID: automount needs drives")
    if not vault_header.is_fs_uuid(info.fs_uuid):
        raise PqcfsError(f"the drive of {location} has a file system UUID udev can not match safely "
                         f"({info.fs_uuid!r})")
    named = next((r for r in header.replicas if r["role"] == "primary"), None)
    if named is None or named.get("fs_uuid") != info.fs_uuid:
        raise PqcfsError(f"{location} is not the vault's primary drive (its header names another); give the "
                         "primary's location")
    subpath = os.path.relpath(info.path, info.mountpoint)
    return units.DriveSpec("primary", info.fs_uuid, subpath, _fs_type(info.fs_uuid))


def _backup_drive(replica: dict, vault_id: bytes, primary: str) -> units.DriveSpec:
    """A backup named by the header is written into a rule only once the kernel shows a
    plugged-in file system with that UUID holding this same vault."""
    fs_uuid = replica.get("fs_uuid")
    if not vault_header.is_fs_uuid(fs_uuid):
        raise PqcfsError(f"the {replica['role']} replica has no file system UUID in the vault header (made on a "
                         "plain directory?): automount needs drives")
    location = vault_mod.find_replica(replica, vault_id, exclude=os.path.realpath(primary))
    if location is None:
        raise PqcfsError(f"the backup drive (file system UUID {fs_uuid}) is not plugged in: plug in both drives "
                         "to set up automount, so that what the units name is checked on the drives themselves")
    seen = devices.inspect(location).fs_uuid
    if seen != fs_uuid:
        raise PqcfsError(f"the backup at {location} is on a drive with file system UUID {seen}, not the {fs_uuid} "
                         "its vault header names: refused (a changed header, or a reformatted drive)")
    return units.DriveSpec(replica["role"], fs_uuid, replica.get("subpath") or ".", _fs_type(fs_uuid))


def _check_host_key(header) -> None:
    """--unlock host-key: the vault has a host-key slot and this machine holds its secret
    (else every insertion would fail to unlock)."""
    vault_id = header.vault_id.hex()
    host_slots = [s for s in header.slots if s["type"] == "host"]
    for slot in host_slots:
        try:
            if hostkeys.load(vault_id, slot["key_id"]) is not None:
                return
        except PqcfsError:
            continue
    what = "has no host-key slot" if not host_slots else "has host-key slots, but none whose secret this machine holds"
    raise PqcfsError(f"the vault {what}: `pqcfs keys add VAULT --host` first, then enable automount with "
                     "--unlock host-key")


def spec_for(args) -> units.AutomountSpec:
    header = vault_mod.read_header(args.vault)[0]
    drives = [_primary_drive(args.vault, header)]
    drives += [_backup_drive(r, header.vault_id, args.vault) for r in header.replicas if r["role"] != "primary"]
    if args.unlock == "host-key":
        _check_host_key(header)
        if tpm2.present(args.tcti):
            print("pqcfs: this machine has a TPM: a TPM2 slot (`pqcfs keys add VAULT --tpm2`, then --unlock tpm2) "
                  "keeps the secret in it, where a copy of /etc or of the disk can not take it along",
                  file=sys.stderr)
    if args.unlock == "tpm2" and not any(s["type"] == "tpm2" for s in header.slots):
        raise PqcfsError("the vault has no TPM2 slot: `pqcfs keys add VAULT --tpm2` first, then enable automount "
                         "with --unlock tpm2")
    if (args.tcti or args.pin_file) and args.unlock != "tpm2":
        raise PqcfsError("--tcti and --pin-file go with --unlock tpm2")
    if args.unlock == "passfile" and not args.passfile:
        raise PqcfsError("--unlock passfile needs --passfile FILE")
    if args.unlock == "identity" and not args.identity_file:
        raise PqcfsError("--unlock identity needs --identity-file FILE")
    mountpoint = os.path.abspath(args.at)
    user = MountOwner.lookup(args.user).name if args.user else None
    spec = units.AutomountSpec(header.vault_id.hex(), mountpoint, drives, args.unlock,
                               os.path.abspath(args.passfile) if args.passfile else None,
                               os.path.abspath(args.identity_file) if args.identity_file else None,
                               args.wait_backup, options_list(args.fuse_options), user, args.tcti,
                               os.path.abspath(args.pin_file) if args.pin_file else None)
    try:
        units.check(spec)
    except units.UnsafeValue as e:
        raise PqcfsError(str(e)) from None
    return spec


def options_list(values: list[str]) -> list[str]:
    return [o for v in values for o in v.split(",") if o]


def _manifest(root: str, vault_id: str) -> str:
    return os.path.join(root, units.CONFIG_DIR, f"{vault_id}.json")


def _reload(root: str) -> list[str]:
    """Tell systemd and udev (only for the real root, and only where they run)."""
    if os.path.realpath(root) != "/":
        return []
    notes = []
    for cmd in (["systemctl", "daemon-reload"], ["udevadm", "control", "--reload"]):
        if shutil.which(cmd[0]) is None:
            notes.append(f"{cmd[0]} is not installed: reload it yourself")
            continue
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            notes.append(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.returncode}")
    return notes


def run(args) -> int:
    if args.automount_cmd == "enable":
        spec = spec_for(args)
        doctor.check_program(args.root)
        written = []
        for rel, text in units.files(spec).items():
            path = os.path.join(args.root, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_atomic(path, text.encode())
            written.append(path)
        manifest = {"format": 1, "spec": dataclasses.asdict(spec), "files": sorted(units.files(spec))}
        os.makedirs(os.path.dirname(_manifest(args.root, spec.vault_id)), mode=0o700, exist_ok=True)
        write_atomic(_manifest(args.root, spec.vault_id), json.dumps(manifest, indent=1).encode())
        for note in _reload(args.root):
            print(f"pqcfs: warning: {note}", file=sys.stderr)
        options.emit(args, {"vault_id": spec.vault_id, "files": written},
                     f"automount of vault {spec.vault_id} at {spec.mountpoint}: wrote\n  " + "\n  ".join(written))
        return 0
    if args.automount_cmd == "disable":
        path = _manifest(args.root, args.vault_id.lower())
        try:
            with open(path) as f:
                manifest = json.load(f)
        except FileNotFoundError:
            raise PqcfsError(f"vault {args.vault_id} is not set up for automount ({path} is missing)") from None
        for rel in manifest["files"]:
            try:
                os.unlink(os.path.join(args.root, rel))
            except FileNotFoundError:
                pass
        os.unlink(path)
        for note in _reload(args.root):
            print(f"pqcfs: warning: {note}", file=sys.stderr)
        print(f"automount of vault {args.vault_id} removed ({len(manifest['files'])} files)")
        return 0
    return _status(args)


def _status(args) -> int:
    folder = os.path.join(args.root, units.CONFIG_DIR)
    rows = []
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not name.endswith(".json"):
            continue
        with open(os.path.join(folder, name)) as f:
            spec = json.load(f)["spec"]
        drives = [{"role": d["role"], "fs_uuid": d["fs_uuid"], "plugged_in": bool(devices.find_by_uuid(d["fs_uuid"]))}
                  for d in spec["drives"]]
        mount = mounttable.find(spec["mountpoint"])
        rows.append({"vault_id": spec["vault_id"], "mountpoint": spec["mountpoint"], "unlock": spec["unlock"],
                     "user": spec.get("user"),
                     "mounted": mount is not None and not mount.dead, "drives": drives})
    lines = [f"{r['vault_id']}  {r['mountpoint']}  {'mounted' if r['mounted'] else 'not mounted'}  unlock {r['unlock']}  "
             + (f"for {r['user']}  " if r["user"] else "")
             + ", ".join(f"{d['role']} {d['fs_uuid']} {'plugged in' if d['plugged_in'] else 'absent'}"
                         for d in r["drives"]) for r in rows] or ["no vault is set up for automount"]
    options.emit(args, {"vaults": rows}, "\n".join(lines))
    return 0
