"""Process hygiene for everything that holds keys: no core dumps, no ptrace by other
users' processes, key memory kept out of swap where the limits allow, and a loud warning
when the test-only KDF switch is on."""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import sys

from pqcfs.crypto.kdf import TEST_SWITCH, insecure_fast_kdf

log = logging.getLogger(__name__)
PR_SET_DUMPABLE = 4
MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4
WARNING = (f"pqcfs: WARNING: {TEST_SWITCH}=1 is set: passphrases are protected by a trivial KDF "
           "(for tests only; never use such a vault for real secrets)")


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def harden() -> dict:
    """Call before any secret is read (and again in a forked daemon: memory locks are not
    inherited). Returns what took effect, for tests and --debug."""
    done = {"core": False, "dumpable": False, "mlock": False}
    try:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        done["core"] = True
    except (ValueError, OSError):
        pass
    libc = _libc()
    # Not dumpable: no core file, and /proc/PID/mem and ptrace are root-only.
    done["dumpable"] = libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    # Locking every page keeps keys out of swap. MCL_FUTURE makes later allocations fail
    # once over RLIMIT_MEMLOCK, so it is only used where no such limit binds (root has
    # CAP_IPC_LOCK; or the limit is infinite). MCL_ONFAULT locks pages as they are used,
    # not the whole address space up front.
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if os.geteuid() == 0 or soft == resource.RLIM_INFINITY:
        done["mlock"] = libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) == 0
    if not done["mlock"]:
        log.debug("key memory is not locked against swapping (RLIMIT_MEMLOCK %s)", soft)
    return done


def warn_if_insecure() -> None:
    if insecure_fast_kdf():
        print(WARNING, file=sys.stderr)
