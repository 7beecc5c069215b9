"""A snapshot's files written out as plain files (`restore --to`, or into a mounted vault
through its mountpoint), and what differs between two trees (`diff`).

Writing: contents (holes stay holes), symlinks, FIFOs and device nodes, modes, owners
(root only; others keep their own), times and extended attributes; hard links within
what is restored stay hard links. Nothing that exists is replaced: every name is made
with O_EXCL (mkdir, symlink and mknod fail on an existing name), and no path is
followed through a symlink the restore did not make itself.
"""

from __future__ import annotations

import errno
import logging
import os
import stat

from pqcfs.errors import PqcfsError

log = logging.getLogger(__name__)
CHUNK = 1 << 20


class Writer:
    def __init__(self, tree, progress=None):
        self.tree, self.progress = tree, progress
        self.files = self.bytes = 0
        self.links: dict[bytes, str] = {}
        self.skipped: list[str] = []     # attributes this user may not set (owners, trusted.* xattrs)

    def restore(self, node, dest: str) -> None:
        """node (a file or a directory's whole subtree) as the new name dest."""
        if not node.is_dir:
            self._entry(node, dest)
            return
        os.mkdir(dest, 0o700)
        done = [(node, dest)]
        for p_path, kid in self.tree.walk(node):
            path = os.path.join(dest, os.fsdecode(p_path))
            if kid.is_dir:
                os.mkdir(path, 0o700)
                done.append((kid, path))
            else:
                self._entry(kid, path)
        for here, path in reversed(done):        # deepest first: contents change a directory's times
            self._attrs(here, path)

    def _entry(self, node, path: str) -> None:
        mode = node.entry.mode
        self.files += 1
        if self.progress:
            self.progress(0, files=1)
        if node.hard_linked and node.keys.node_id in self.links:
            os.link(self.links[node.keys.node_id], path, follow_symlinks=False)
            return
        if stat.S_ISLNK(mode):
            os.symlink(self.tree.read_all(node), path)
        elif stat.S_ISREG(mode):
            self._contents(node, path)
        elif stat.S_ISFIFO(mode):
            os.mkfifo(path, 0o600)
        elif stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            try:
                os.mknod(path, stat.S_IFMT(mode) | 0o600, node.entry.rdev)
            except PermissionError:
                self.skipped.append(f"{path}: a device node (only root can make one)")
                return
        if node.hard_linked:
            self.links[node.keys.node_id] = path
        self._attrs(node, path)

    def _contents(self, node, path: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            content, size = self.tree.open(node), node.size
            for offset in range(0, size, CHUNK):
                chunk = content.read(offset, min(CHUNK, size - offset))
                if chunk.count(0) != len(chunk):        # a hole stays a hole
                    os.pwrite(fd, chunk, offset)
                self.bytes += len(chunk)
                if self.progress:
                    self.progress(len(chunk))
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def _attrs(self, node, path: str) -> None:
        e = node.entry
        for name, value in self.tree.xattrs(node).items():
            try:
                os.setxattr(path, name, value, follow_symlinks=False)
            except OSError as err:
                self.skipped.append(f"{path}: extended attribute {name.decode(errors='replace')} ({err.strerror})")
        try:
            os.chown(path, e.uid, e.gid, follow_symlinks=False)
        except PermissionError:
            if os.geteuid() == 0:
                raise
        if not stat.S_ISLNK(e.mode):
            os.chmod(path, stat.S_IMODE(e.mode))
        os.utime(path, ns=(e.atime, e.mtime), follow_symlinks=False)


def free_name(parent: str, name: str, tag: str) -> str:
    """name, or when it is taken, `name.restored-TAG` (then -2, -3, ...)."""
    candidate = name
    for n in range(1, 1000):
        if not os.path.lexists(os.path.join(parent, candidate)):
            return candidate
        candidate = f"{name}.restored-{tag}" + (f"-{n}" if n > 1 else "")
    raise PqcfsError(f"no free name for {name} in {parent}")


# --- diff ---------------------------------------------------------------------------------

def _counter(node) -> int:
    """A file's write counter: its table entry's (a snapshot's entry, resolved for hard
    links, or a live file's), else its header's (a live hard-linked file)."""
    entry = getattr(node, "entry", None)
    return entry.counter if entry is not None else node.meta.counter


def signatures(tree, top) -> dict[bytes, tuple]:
    """plaintext path -> what tells two versions of it apart (type and mode, owner, size,
    mtime, node id and write counter)."""
    out, pending = {}, [(top, b"")]
    while pending:
        here, prefix = pending.pop()
        for p_name, _ in tree.listdir(here):
            try:
                kid = tree.lookup(here, p_name)
            except (OSError, PqcfsError) as e:
                if getattr(e, "errno", None) == errno.ENOENT:
                    continue
                raise
            path = prefix + b"/" + p_name if prefix else p_name
            m = kid.meta
            times = tree.times(kid)
            if kid.is_dir:
                out[path] = (m.mode, m.uid, m.gid, 0, 0, kid.keys.node_id, 0)
                pending.append((kid, path))
            else:
                out[path] = (m.mode, m.uid, m.gid, tree.size_of(kid), times[1] if times else 0,
                             kid.keys.node_id, _counter(kid))
    return out


def diff(old: dict[bytes, tuple], new: dict[bytes, tuple]) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """(added, changed, removed) paths from old to new."""
    added = sorted(p for p in new if p not in old)
    removed = sorted(p for p in old if p not in new)
    changed = sorted(p for p in new if p in old and new[p] != old[p])
    return added, changed, removed
