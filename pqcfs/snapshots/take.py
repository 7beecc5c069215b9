"""Taking a snapshot of a live tree (format 2): the consistent point, and its manifest.

The caller makes sure nothing else runs on the tree meanwhile (the mount takes it in the
trio loop between two requests, as an offsite push does). What only memory holds is
written out first, as at unmount; then every directory table is read (from memory where
it is loaded) and written into the manifest with each child's key. No file's contents are
read or copied: they stay where they are until the live tree changes them (keeper.py).
"""

from __future__ import annotations

import os
import stat
import time

from pqcfs.format import snapshot as fmt
from pqcfs.format.dir_table import FLAG_LINKED, FLAG_XATTRS, Entry


def _resolved(vfs, node, e: Entry) -> Entry:
    """A hard-linked name's entry with the shared node's own attributes (the table holds
    only a stub's)."""
    m = node.meta
    times = vfs.times(node) or (0, 0, 0)
    return Entry(node_id=e.node_id, mode=m.mode, uid=m.uid, gid=m.gid, rdev=m.rdev, nlink=m.nlink, flags=e.flags,
                 size=vfs.size_of(node), atime=times[0], mtime=times[1], ctime=times[2], btime=times[1],
                 counter=m.counter, p_name=e.p_name, disk_name=e.disk_name)


def records(vfs, snap_id: bytes, secret: bytes, created: int) -> tuple[list[bytes], list[bytes], int, int, dict]:
    """(the sealed records, the grant wraps, files, plaintext bytes, node id -> (write
    counter, plaintext size) of every file). A directory a live grant opens gets a wrap: its grantee reads
    this snapshot of it."""
    out, wraps, files, size, held = [], [], 0, 0, {}
    pending = [vfs.inodes.root]
    while pending:
        dir_node = pending.pop()
        table = vfs.table_of(dir_node)
        rec = fmt.DirRecord(dir_id=dir_node.keys.node_id, c_path=dir_node.c_path,
                            self_attrs=table.self_attrs.copy())
        if table.self_attrs.flags & FLAG_XATTRS:
            rec.xattrs = dict(vfs.xattrs(dir_node))
        for e in sorted(table.entries.values(), key=lambda x: x.disk_name):
            node = None
            if stat.S_ISDIR(e.mode) or e.flags & (FLAG_LINKED | FLAG_XATTRS):
                node = vfs.lookup(dir_node, e.p_name)
            entry = _resolved(vfs, node, e) if e.flags & FLAG_LINKED else e.copy()
            keys = node.keys if node is not None else vfs.child_keys(dir_node, e.node_id)
            child = fmt.Child(entry=entry, key=keys.key)
            if e.flags & (FLAG_XATTRS | FLAG_LINKED):     # a hard-linked node's table flags say nothing of them
                child.xattrs = dict(vfs.xattrs(node))
            rec.children.append(child)
            if stat.S_ISDIR(e.mode):
                pending.append(node)
            else:
                files += 1
                size += entry.size
                held[e.node_id] = (entry.counter, entry.size)
                if node is not None:
                    vfs.inodes.maybe_drop(node)     # looked up only for this: not kept in memory
        out.append(fmt.encode_record(fmt.record_key(dir_node.keys.meta_key, secret), snap_id, rec))
        if dir_node.keys.node_id in vfs.grant_roots:
            wraps.append(fmt.encode_wrap(dir_node.keys.meta_key, snap_id, dir_node.keys.node_id, secret, created))
        if dir_node is not vfs.inodes.root:
            vfs.inodes.maybe_drop(dir_node)         # its children hold it while they are known
    return out, wraps, files, size, held


def take(vfs, snap_key: bytes, vault_id: bytes, label: str, kind: str) -> tuple[fmt.Head, bytes, dict[bytes, int]]:
    """(the head, the manifest file, what it holds) of a snapshot of vfs now. Afterwards
    every open file raises its write counter again on its next change, so the keeper
    sees that change coming (a snapshot ends every open write session, as a close would)."""
    vfs.settle()
    snap_id, secret, created = os.urandom(fmt.ID_LEN), os.urandom(fmt.SECRET_LEN), time.time_ns()
    recs, wraps, files, size, held = records(vfs, snap_id, secret, created)
    head = fmt.Head(snap_id=snap_id, created=created, label=label, kind=kind,
                    root_id=vfs.inodes.root.keys.node_id, files=files, bytes=size, secret=secret)
    data = fmt.encode_manifest(snap_key, vault_id, head, recs, wraps)
    for node in vfs.inodes.nodes():
        node.bumped = False
    return head, data, held
