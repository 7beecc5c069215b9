"""Key lineage: nodes whose keys a grant's recipient can derive, wherever they are now.

A node keeps its key when it moves (the new parent wraps it in an override), so a node
created under a directory S and later moved out still has a key derived from K(S).
Whoever holds K(S) (a grant of S) derives it from the node's id, which every header shows,
and a revoke, which re-keys S, would not reach it. From now on such a move is refused with
EXDEV while S is granted (namespace._check_lineage); nodes that left S before (before it
was shared, or under an older pqcfs) are found here, by trying every override outside S
against the keys of S's directories, and re-keyed: copied beside themselves (the copy's
keys derive from its new place) and swapped in. A node whose original parent was deleted
since can not be recognised this way (docs/security.md says so).
"""

from __future__ import annotations

import hmac
import logging
import stat
from collections import deque

from pqcfs.errors import PqcfsError
from pqcfs.format import dir_table
from pqcfs.fs.common import FsError
from pqcfs.fs.copier import Copier, exists, remove_tree
from pqcfs.sharing import p_path

log = logging.getLogger(__name__)
TEMP_PREFIX = b".pqcfs-lineage-"


def _dirs(vfs, top, skip: set[bytes]) -> list:
    """Every directory under top (top included), none under a node id in skip."""
    out, queue = [], deque([top])
    while queue:
        node = queue.popleft()
        if node.keys.node_id in skip and node is not top:
            continue
        out.append(node)
        for p_name, entry in list(vfs.table_of(node).by_name.items()):
            if stat.S_ISDIR(entry.mode):
                try:
                    queue.append(vfs.lookup(node, p_name))
                except (FsError, PqcfsError, OSError) as e:
                    log.warning("a directory could not be read while tracing key lineage: %s", e)
    return out


def escaped(vfs, top) -> list[tuple[object, bytes]]:
    """(directory, name) of every node outside top whose key derives from top's or from a
    directory's below it (also through a node that escaped before it)."""
    tainted = [d.keys for d in _dirs(vfs, top, set())]
    walls = {top.keys.node_id}
    found: list[tuple[object, bytes]] = []
    while tainted:
        fresh = []
        for d in _dirs(vfs, vfs.inodes.root, walls):
            overrides = vfs.overrides_of(d)
            if not overrides:
                continue
            for p_name, entry in list(vfs.table_of(d).by_name.items()):
                if entry.node_id not in overrides or entry.node_id in walls or entry.flags & dir_table.FLAG_LINKED:
                    continue
                key = vfs.child_keys(d, entry.node_id).key
                if any(hmac.compare_digest(k.child(entry.node_id).key, key) for k in tainted):
                    found.append((d, p_name))
                    walls.add(entry.node_id)
                    node = vfs.lookup(d, p_name)
                    if node.is_dir:
                        fresh += [x.keys for x in _dirs(vfs, node, set())]
        tainted = fresh
    return found


def rekey(vfs, parent, p_name: bytes) -> None:
    """The node at parent/p_name gets keys of its place: copied beside itself, swapped in,
    the old one removed. A leftover of a re-key cut short is only removed."""
    if p_name.startswith(TEMP_PREFIX):
        remove_tree(vfs, parent, p_name)
        return
    node = vfs.lookup(parent, p_name)
    temp = TEMP_PREFIX + node.keys.node_id.hex()[:16].encode()
    if exists(vfs, parent, temp):
        remove_tree(vfs, parent, temp)
    copier = Copier(vfs, vfs)
    if node.is_dir:
        copier.tree(node, copier.mkdir(node, parent, temp))
    else:
        copier.entry(node, parent, temp)
    vfs.rename(parent, p_name, parent, temp, exchange=True)
    remove_tree(vfs, parent, temp)


def rekey_escaped(vfs, top, event) -> int:
    """Re-key every node that escaped top with a key derived from it; returns how many."""
    done = 0
    for parent, p_name in escaped(vfs, top):
        rekey(vfs, parent, p_name)
        event("lineage-rekeyed", path=p_path(parent).rstrip("/") + "/" + p_name.decode("utf-8", "replace"))
        done += 1
    return done
