"""A snapshot's tree, opened from its manifest: every directory record reached from the
root (the owner) or from one directory (a grantee), each authenticated under its own key."""

from __future__ import annotations

import stat
from dataclasses import dataclass, field

from pqcfs.crypto.keys import NodeKeys, root_dir_keys
from pqcfs.errors import DamagedStructure
from pqcfs.format import snapshot as fmt
from pqcfs.format.dir_table import FLAG_LINKED


@dataclass
class Manifest:
    snap_id: bytes
    head: fmt.Head | None                         # None: opened by a grantee (no head key)
    top: bytes                                    # the directory it was opened from
    dirs: dict[bytes, fmt.DirRecord] = field(default_factory=dict)
    dir_keys: dict[bytes, NodeKeys] = field(default_factory=dict)

    def files(self):
        """(node id, write counter, plaintext size, hard-linked) of every file-like entry;
        a hard-linked node once per name."""
        for rec in self.dirs.values():
            for child in rec.children:
                e = child.entry
                if not stat.S_ISDIR(e.mode):
                    yield e.node_id, e.counter, e.size, bool(e.flags & FLAG_LINKED)


def _walk(data: bytes, snap_id: bytes, secret: bytes, located: dict, top: NodeKeys, manifest: Manifest) -> Manifest:
    pending = [top]
    while pending:
        keys = pending.pop()
        rec_key = fmt.record_key(keys.meta_key, secret)
        where = located.pop(fmt.locator(rec_key, snap_id), None)
        if where is None:
            raise DamagedStructure(f"snapshot {snap_id.hex()[:12]}: a directory's record is missing")
        off, n = where
        rec = fmt.decode_record(rec_key, snap_id, keys.node_id, bytes(data[off:off + n]))
        if rec.dir_id in manifest.dirs:
            raise DamagedStructure(f"snapshot {snap_id.hex()[:12]}: a directory is named twice")
        manifest.dirs[rec.dir_id] = rec
        manifest.dir_keys[rec.dir_id] = keys
        for child in rec.children:
            if stat.S_ISDIR(child.entry.mode):
                pending.append(NodeKeys(child.entry.node_id, child.key))
    return manifest


def load(data: bytes, snap_key: bytes, vault_id: bytes, root_key: bytes, snap_id: bytes) -> Manifest:
    """The owner's view: the head authenticates, every record is reached from the root
    exactly once, and there is no record the tree does not reach."""
    head, start = fmt.decode_head(snap_key, vault_id, data, snap_id)
    located = fmt.split_records(data, start)
    if len(located) != head.records:
        raise DamagedStructure(f"snapshot {snap_id.hex()[:12]}: {len(located)} records, its head names {head.records}")
    manifest = _walk(data, snap_id, head.secret, located, root_dir_keys(root_key, head.root_id),
                     Manifest(snap_id=snap_id, head=head, top=head.root_id))
    if located:
        raise DamagedStructure(f"snapshot {snap_id.hex()[:12]}: records that no directory of it names")
    return manifest


def load_subtree(data: bytes, top: NodeKeys) -> tuple[Manifest, int] | None:
    """A grantee's view from the directory whose key it holds, and when the snapshot was
    taken: None when the snapshot holds no wrap for that directory (taken before the
    grant, or after a revoke re-keyed it). Nothing here is authenticated by the owner's
    head (a grantee has not its key): each wrap and record by the directory's own key."""
    snap_id = fmt.manifest_id(data)
    where = fmt.split_wraps(data).get(fmt.wrap_locator(top.meta_key, snap_id))
    if where is None:
        return None
    off, n = where
    secret, created = fmt.open_wrap(top.meta_key, snap_id, top.node_id, bytes(data[off:off + n]))
    located = fmt.split_records(data, fmt.records_start(data))
    manifest = _walk(data, snap_id, secret, located, top, Manifest(snap_id=snap_id, head=None, top=top.node_id))
    return manifest, created
