"""Mount options as mount(8), /etc/fstab and systemd hand them over, turned into a
`pqcfs mount` command line. Pure: strings in, argument lists out.

Three kinds of option:
- owned by mount(8), systemd or the FUSE mount helper (`noauto`, `nofail`, `_netdev`,
  `x-systemd.*`, `user`, `defaults`, `dev`, `suid`, ...): accepted and ignored, as
  mount.fuse3 does;
- pqcfs' own (`passfile=`, `backup=`, `identity`, `grant=`, `ro`, ...): become
  `pqcfs mount` options;
- FUSE options the kernel takes (`allow_other`, `default_permissions`): passed on.
Anything else is an error that names the option. A passphrase is never an option: it
would sit in /proc/*/cmdline and /etc/fstab for everyone to read.
"""

from __future__ import annotations

IGNORED = {"", "defaults", "auto", "noauto", "nofail", "_netdev", "user", "users", "nouser", "owner", "group",
           "rw", "dev", "nodev", "suid", "nosuid", "exec", "noexec", "atime", "noatime", "relatime",
           "strictatime", "nodiratime", "diratime", "async", "sync", "loud", "silent", "drop_privileges"}
IGNORED_PREFIXES = ("x-systemd.", "x-gvfs-", "x-initrd.", "x-mount.", "comment=", "setuid=", "uhelper=")
FUSE_PASSED = {"allow_other", "allow_root", "default_permissions"}
FLAGS = {"ro": "--ro", "allow_fixed": "--allow-fixed", "allow_same_device": "--allow-same-device",
         "accept_older": "--accept-older", "audit_files": "--audit-files"}
VALUED = {"passfile": "--passfile", "backup": "--backup", "grant": "--grant", "owner": "--owner",
          "slot": "--slot", "extpass": "--extpass"}
SECRETS = {"passphrase", "password", "pass", "key", "recovery_code"}


class MountOptionError(ValueError):
    pass


def translate(options: str) -> list[str]:
    """`pqcfs mount` arguments for a comma-separated option string."""
    args: list[str] = []
    fuse: list[str] = []
    for opt in options.split(","):
        name, has_value, value = opt.partition("=")
        if name in SECRETS:
            raise MountOptionError(f"{name}= is refused: a passphrase in mount options is readable by every "
                                   "user (ps, /etc/fstab); use passfile=FILE (mode 0600)")
        if opt in IGNORED or opt.startswith(IGNORED_PREFIXES):
            continue
        if opt in FUSE_PASSED:
            fuse.append(opt)
        elif opt in FLAGS:
            args.append(FLAGS[opt])
        elif name in VALUED and has_value and value:
            args += [VALUED[name], value]
        elif name == "identity":
            args += ["--identity", value] if has_value and value else ["--identity"]
        elif name in VALUED:
            raise MountOptionError(f"mount option {name} needs a value ({name}=...)")
        else:
            raise MountOptionError(f"unknown mount option {opt!r} (pqcfs takes passfile=, backup=, identity[=], "
                                   "grant=, owner=, ro, allow_other, default_permissions, allow_fixed; see "
                                   "docs/automount.md)")
    if fuse:
        args += ["-o", ",".join(fuse)]
    return args
