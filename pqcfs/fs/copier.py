"""A plaintext copy of a directory tree from one file system into another (or the same):
what a revoke's re-key and an export are made of. Through VaultFS on both sides, so the
copy gets the target's crash safety and mirroring, and every byte read authenticates."""

from __future__ import annotations

import errno
import stat

from pqcfs.fs.common import Caller, FsError

CHUNK = 1 << 20


class Copier:
    """Contents (holes stay holes), mode, owner, times, xattrs, symlinks, special files and
    hard links (within the copied tree)."""

    def __init__(self, src, dst, progress=None):
        self.src, self.dst, self.progress = src, dst, progress
        self.links: dict[bytes, object] = {}   # node id of a hard-linked source -> its copy
        self.bytes = self.files = 0

    def mkdir(self, node, dst_parent, p_name: bytes):
        return self.dst.mkdir(dst_parent, p_name, stat.S_IMODE(node.meta.mode), Caller(node.meta.uid, node.meta.gid))

    def tree(self, source, copy) -> None:
        """Everything in source into the (new, empty) directory copy, then source's own
        attributes onto copy (a directory's once all inside it is copied: copying would
        change its times). Iterative: a tree of any depth is copied."""
        pending = [(source, copy, False)]
        while pending:
            here, there, filled = pending.pop()
            if filled:
                self.attrs(here, there)
                continue
            pending.append((here, there, True))
            for p_name, _ in sorted(self.src.listdir(here), reverse=True):
                node = self.src.lookup(here, p_name)
                if node.is_dir:
                    pending.append((node, self.mkdir(node, there, p_name), False))
                else:
                    self.entry(node, there, p_name)

    def entry(self, node, copy_dir, p_name: bytes) -> None:
        src, dst = self.src, self.dst
        self.files += 1
        if self.progress:
            self.progress(0, files=1)
        if node.hard_linked and node.keys.node_id in self.links:
            dst.link(self.links[node.keys.node_id], copy_dir, p_name)
            return
        meta = node.meta
        caller = Caller(meta.uid, meta.gid)
        if stat.S_ISLNK(meta.mode):
            new = dst.create_file(copy_dir, p_name, meta.mode, caller, content=src.read_all(node))
        elif stat.S_ISREG(meta.mode):
            new = dst.create(copy_dir, p_name, meta.mode, caller)
            self._contents(node, new)
        else:
            new = dst.create_file(copy_dir, p_name, meta.mode, caller, rdev=meta.rdev)
        if node.hard_linked:
            self.links[node.keys.node_id] = new
        self.attrs(node, new)

    def _contents(self, node, new) -> None:
        target = new.content     # open since its create
        try:
            source = self.src.open(node, False)
            try:
                size = source.size
                for offset in range(0, size, CHUNK):
                    chunk = source.read(offset, min(CHUNK, size - offset))
                    if chunk.count(0) != len(chunk):      # a hole stays a hole
                        target.write(offset, chunk)
                    self.bytes += len(chunk)
                    if self.progress:
                        self.progress(len(chunk))
                if target.size != size:
                    target.truncate(size)
            finally:
                self.src.release(node)
        finally:
            self.dst.release(new)

    def attrs(self, node, new) -> None:
        dst = self.dst
        for name, value in self.src.xattrs(node).items():
            dst.set_xattr(new, name, value)
        if not stat.S_ISLNK(node.meta.mode):
            dst.set_mode(new, node.meta.mode)
        dst.set_owner(new, node.meta.uid, node.meta.gid)
        times = self.src.times(node)
        if times is not None:
            dst.set_times(new, times[0], times[1])


def exists(vfs, parent, p_name: bytes) -> bool:
    try:
        vfs.lookup(parent, p_name)
        return True
    except FsError as e:
        if e.errno == errno.ENOENT:
            return False
        raise


def remove_tree(vfs, parent, p_name: bytes) -> None:
    """The entry and, for a directory, all below it (deepest first; iterative: any depth)."""
    pending = [(parent, p_name, False)]
    while pending:
        where, name, emptied = pending.pop()
        node = vfs.lookup(where, name)
        if not node.is_dir:
            vfs.unlink(where, name)
        elif emptied:
            vfs.rmdir(where, name)
        else:
            pending.append((where, name, True))
            pending.extend((node, child, False) for child, _ in vfs.listdir(node))
