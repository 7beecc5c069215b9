"""Exit codes. Scripts rely on these: never renumber, only add (docs/cli.md lists them)."""

import errno

from pqcfs import errors

OK = 0
ERROR = 1            # anything not listed below
USAGE = 2            # bad command line (argparse)
NOT_A_VAULT = 3      # location missing or holds no vault
UNSUPPORTED = 4      # newer or unknown format version or feature
DAMAGED = 5          # a structure is damaged or failed authentication
WRONG_KEY = 6        # wrong passphrase, recovery code or identity
DRIVE = 7            # drive missing, not removable, or two locations on one drive
MOUNT = 8            # mountpoint missing, not a directory, busy, or already mounted
NO_SPACE = 9         # a drive is full
CRYPTO = 10          # ciphertext failed authentication (corruption or tampering)
PARAMETERS = 11      # KDF parameters outside the accepted range
DEGRADED = 12        # status/fsck: a vault runs degraded, a replica is missing or stale, or a mount is dead
GRANT = 13           # a grant refused (expired, not yet valid, forged, revoked, for another identity) or unknown
NO_SUCH_PATH = 14    # a path inside the vault does not exist, or is not a directory
SETUP = 15           # the set-up is broken: a program or helper missing, gone or another version (doctor)
REMOTE = 16          # an offsite remote can not be reached or refused (rclone's error is shown)
NO_SUCH_SNAPSHOT = 17  # no snapshot has that id or label
INTERRUPTED = 130    # Ctrl-C

# What each code means, for the man page and `--help` (docs/cli.md has the same table).
MEANINGS = {
    OK: "success",
    ERROR: "any other error",
    USAGE: "bad command line",
    NOT_A_VAULT: "the location is missing or holds no pqcfs vault",
    UNSUPPORTED: "a newer or unknown format version or feature",
    DAMAGED: "a header or state file is damaged or failed authentication",
    WRONG_KEY: "wrong passphrase, recovery code or identity",
    DRIVE: "a drive is missing, not removable, or two replicas are on one drive",
    MOUNT: "the mountpoint is missing, not empty or busy, or the vault is in use",
    NO_SPACE: "a drive is full",
    CRYPTO: "file system data failed authentication (corruption or tampering)",
    PARAMETERS: "KDF parameters outside the accepted range",
    DEGRADED: "status or fsck: a vault runs degraded, a replica is missing or stale, or a mount is dead",
    GRANT: "a grant refused (expired, not yet valid, forged, revoked, for another identity) or unknown",
    NO_SUCH_PATH: "a path inside the vault does not exist, or is not a directory",
    SETUP: "the set-up is broken: a program or helper is missing, gone or another version (see `pqcfs doctor`)",
    REMOTE: "an offsite remote can not be reached or refused (rclone's own error is shown)",
    NO_SUCH_SNAPSHOT: "no snapshot of the vault has that id or label (see `pqcfs snapshot list`)",
    INTERRUPTED: "interrupted (Ctrl-C)",
}

_BY_EXCEPTION = [
    (errors.WrongKey, WRONG_KEY),
    (errors.NotAVault, NOT_A_VAULT),
    (errors.UnsupportedVersion, UNSUPPORTED),
    (errors.DamagedStructure, DAMAGED),
    (errors.ParameterError, PARAMETERS),
    (errors.DriveError, DRIVE),
    (errors.MountError, MOUNT),
    (errors.NoSpace, NO_SPACE),
    (errors.GrantRefused, GRANT),
    (errors.NoSuchPath, NO_SUCH_PATH),
    (errors.SetupError, SETUP),
    (errors.RemoteError, REMOTE),
    (errors.NoSuchSnapshot, NO_SUCH_SNAPSHOT),
    (errors.CryptoError, CRYPTO),
]


def for_exception(exc: BaseException) -> int:
    exc = getattr(exc, "cause", None) or exc     # an error that wraps the one that decides
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT):     # an OSError, or a file system error
        return NO_SPACE
    for cls, code in _BY_EXCEPTION:
        if isinstance(exc, cls):
            return code
    return ERROR
