"""Domain exceptions. errno is chosen at the FUSE boundary, exit codes at the CLI boundary."""


class PqcfsError(Exception):
    """Base of every error pqcfs raises on purpose."""


class CryptoError(PqcfsError):
    """A ciphertext, tag or key failed to authenticate."""


class WrongKey(PqcfsError):
    """No key slot opened with the key material that was offered."""


class NotAVault(PqcfsError):
    """The location holds no pqcfs vault."""


class UnsupportedVersion(PqcfsError):
    """The vault or structure was written by a newer (or retired) format version."""


class DamagedStructure(PqcfsError):
    """A persisted structure is malformed or fails its checksum."""


class NoGoodTable(DamagedStructure):
    """No replica holds a copy of a directory's table that authenticates (fsck --repair
    can make it again from the drive's entries)."""


class ParameterError(PqcfsError):
    """KDF or format parameters out of the accepted range (downgrade or DoS guard)."""


class DriveError(PqcfsError):
    """A drive is missing, not removable, or two locations are the same drive."""


class MountError(PqcfsError):
    """A mountpoint is missing, busy, or the vault is already mounted."""


class NoSpace(PqcfsError):
    """A drive ran out of space."""


class RolledBack(CryptoError):
    """The drives hold an older state of the vault than this machine has already seen."""


class GrantRefused(PqcfsError):
    """A grant that must not be used: forged, damaged, expired, not yet valid, revoked or
    for someone else."""


class NoSuchPath(PqcfsError):
    """A path inside the vault that does not exist (or is not a directory where one must be)."""


class SetupError(PqcfsError):
    """This machine's set-up is missing something pqcfs needs (a program, a helper)."""


class RemoteError(PqcfsError):
    """An offsite remote could not be reached, refused, or holds something pqcfs did not
    write (its rclone exit code, when rclone gave one)."""

    def __init__(self, message: str, rclone_code: int | None = None):
        super().__init__(message)
        self.rclone_code = rclone_code


class NoSuchSnapshot(PqcfsError):
    """No snapshot of the vault has that id or label."""
