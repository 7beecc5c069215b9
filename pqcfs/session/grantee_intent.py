"""A grantee's write-intent log (`pqcfs.intent.<grant id>`): what a recipient's
read-write session that did not end cleanly left, and how it is repaired or set aside.
The log is a grantee's writing: it steers nothing it does not vouch for (see recover).
Used by the grantee's next session and by the owner's mount alike, so it knows neither.
"""

from __future__ import annotations

import logging

from pqcfs.crypto.kdf import LABEL_GRANTEE_INTENT, hkdf
from pqcfs.errors import PqcfsError
from pqcfs.fs import recovery
from pqcfs.fs.inodes import LINKS_DIR
from pqcfs.store import intent as intent_mod

log = logging.getLogger(__name__)


def intent_name(grant_id: bytes) -> str:
    return intent_mod.FILE_NAME + "." + grant_id.hex()


def intent_key(subtree_key: bytes, grant_id: bytes) -> bytes:
    return hkdf(subtree_key, LABEL_GRANTEE_INTENT, salt=grant_id)


def unclean(drives: list) -> list[bytes]:
    """Grant ids whose last read-write session did not end cleanly (its intent log is
    still on some drive)."""
    found = set()
    for drive in drives:
        try:
            for name, kind in drive.scandir(""):
                if kind == "file" and name.startswith(intent_mod.FILE_NAME + "."):
                    try:
                        found.add(bytes.fromhex(name[len(intent_mod.FILE_NAME) + 1:]))
                    except ValueError:
                        continue
        except (OSError, PqcfsError):
            continue
    return sorted(g for g in found if len(g) == 16)


INTENT_CAP = 16 << 20    # a grantee's intent log: refused unread above this size


def set_aside(drives: list, grant_id: bytes, problem: str) -> None:
    """A grantee's intent log that is not acted on goes to pqcfs.quarantine/ (evidence),
    so it is reported once and never steers a later mount."""
    name = intent_name(grant_id)
    log.warning("the intent log of grant %s is set aside, not acted on: %s", grant_id.hex(), problem)
    for drive in drives:
        try:
            if drive.exists(name):
                drive.quarantine(name, f"a grantee's intent log that is not acted on ({problem})")
        except (OSError, PqcfsError) as e:
            log.warning("could not set aside %s on %s: %s", name, drive.location, e)


def _within(rel: str, c_path: str) -> bool:
    # The shared store holds hard-linked files (a grantee's links inside the grant too).
    return rel in (c_path, LINKS_DIR) or rel.startswith((c_path + "/", LINKS_DIR + "/"))


def recover(drives: list, subtree_key: bytes, grant_id: bytes, c_path: str, block_size: int, vfs) -> str | None:
    """Repair what a crashed read-write session left half done, from the intent log it
    kept under this grant's name (the grantee's next session, or the owner's mount, with
    vfs its view of the tree); the caller makes sure every replica is present: the log is
    the only record of what a missing one lacks.

    The log is a grantee's writing, so it steers nothing it does not vouch for: every line
    must authenticate under the grant's intent key, name a path inside the granted
    directory (c_path) and the log must fit its cap. Anything else (empty, junk, too big,
    a path outside) is set aside in pqcfs.quarantine/ and nothing is repaired or rebuilt.
    Returns None when repaired, else why the log was set aside."""
    name = intent_name(grant_id)
    key = intent_key(subtree_key, grant_id)
    intents: set[tuple[str, str]] = set()
    problem = None
    for drive in drives:
        try:
            found = intent_mod.read_strict(drive, key, name, INTENT_CAP)
        except FileNotFoundError:
            continue
        except (intent_mod.Untrusted, OSError, PqcfsError) as e:
            problem = str(e)
            break
        outside = [rel for _, rel in found if not _within(rel, c_path)]
        if outside:
            problem = f"it names {len(outside)} path(s) outside the granted directory"
            break
        intents |= found
    if problem is not None:
        set_aside(drives, grant_id, problem)
        return problem
    repaired = recovery.recover_intents(vfs, drives[0], drives[1:], intents, block_size)
    log.warning("repaired after a grantee session of grant %s that did not end cleanly (%d blocks)",
                grant_id.hex(), repaired)
    for drive in drives:
        try:
            drive.unlink(name)
        except FileNotFoundError:
            pass
    return None
