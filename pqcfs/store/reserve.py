"""Room for the vault's own records on a full drive, like ext4's reserved blocks.

Each replica holds `pqcfs.reserve`, a file of zeros (1 % of the drive, at least 1 MiB and
at most 16 MiB) that takes the room the vault's bookkeeping may need at the worst moment:
a table record for a change already made, the replica state marked clean at unmount, an
intent or audit record, a heal, a sync's or fsck's own files. Files written through the
mount never use it: when a drive is full they get ENOSPC first. When one of pqcfs' own
writes finds the drive full, the reserve is given back to the drive and the write done
again; from then on writers get ENOSPC at once (a full drive is not made fuller), until
space is freed and the reserve is whole again (each mount, and each removal in the vault,
tries). A drive full by other files (beside the vault) is covered the same way.
"""

from __future__ import annotations

import errno
import logging
import os

from pqcfs.errors import NoSpace

log = logging.getLogger(__name__)
FILE_NAME = "pqcfs.reserve"
LEAST, MOST = 1 << 20, 16 << 20
CHUNK = 1 << 20
ROOM_TO_CREATE = 64 << 10    # a new name is refused with less than this free beside the reserve


def size_for(drive) -> int:
    st = drive.statvfs()
    return max(LEAST, min(MOST, st.f_blocks * st.f_frsize // 100))


def is_full(error: BaseException) -> bool:
    return isinstance(error, NoSpace) or getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT)


def fill(drive) -> bool:
    """Make the drive's reserve whole; True when it is (False: the drive has no room for
    it, and writers through the mount are refused until it has)."""
    if drive.read_only:
        return True
    if drive.kind(FILE_NAME) not in (None, "file"):
        drive.quarantine(FILE_NAME, "not the vault's reserve (a planted link, FIFO or directory)")
    want = size_for(drive)
    try:
        fd = drive.open(FILE_NAME, os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError as e:
        if is_full(e):
            drive.reserve_in_use = True
            return False
        raise
    try:
        have = os.fstat(fd).st_size
        if have < want:
            # Allocated, not written, where the file system can (ext4): instant. The room
            # is taken when the call returns; no fsync is needed for that (after a crash
            # the next mount makes the file whole again).
            try:
                os.posix_fallocate(fd, have, want - have)
                have = want
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS) and not is_full(e):
                    raise
                have = os.fstat(fd).st_size
        zeros = bytes(CHUNK)
        while have < want:
            n = os.pwrite(fd, zeros[:min(CHUNK, want - have)], have)
            have += n
        drive.reserve_in_use = False
        return True
    except OSError as e:
        if not is_full(e):
            raise
        # What did fit stays: it is room the next release gives back.
        drive.reserve_in_use = True
        return False
    finally:
        os.close(fd)


def release(drive) -> bool:
    """Give the reserve back to a full drive (True when there was any to give)."""
    try:
        fd = drive.open(FILE_NAME, os.O_WRONLY)
    except FileNotFoundError:
        drive.reserve_in_use = True
        return False
    try:
        had = os.fstat(fd).st_size
        os.ftruncate(fd, 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    drive.reserve_in_use = True
    if had:
        log.warning("%s is full: its reserve now holds the vault's own records; writes through the mount get "
                    "'no space' until some space is freed (delete files in the vault)", drive.location)
    return had > 0


def retrying(drive, fn):
    """fn() for one of pqcfs' own writes; a full drive gives back its reserve once and
    fn runs again."""
    try:
        return fn()
    except (OSError, NoSpace) as e:
        if not is_full(e) or not release(drive):
            raise
    return fn()
