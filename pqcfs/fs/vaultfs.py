"""The vault as a file system: names, nodes, metadata and contents over the replica set.

Plain Python (no pyfuse3 requests, no trio): the Operations class translates kernel
requests into these calls, and tests call them directly. Errors are FsError(errno).

VaultFS is what every tree shares; what a directory format decides is declared below
(`what a format decides`) and made by its two types: ListedFS (format 1, listed.py: a
directory's entries are its names on the drives, a node's attributes its header) and
TabledFS (format 2, tables.py: authenticated directory tables). A grantee's view is a
TabledFS whose root is pqcfs' own (GranteeFS, grantee_tree.py). Namespace changes
(create, link, unlink, rename, ...) read on their own in namespace.py. trees.open_tree
makes the right one for a vault.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
from collections.abc import Mapping
from types import MappingProxyType

from pqcfs.crypto.keys import NodeKeys
from pqcfs.errors import CryptoError, DamagedStructure, NoSpace, PqcfsError
from pqcfs.format import names, node_header, sealed_table
from pqcfs.format.dir_table import FLAG_XATTRS
from pqcfs.format.node_header import HEADER_LEN, MAGIC_DIR, MAGIC_FILE, MAGIC_LINK, Meta
from pqcfs.fs.common import Caller, FsError, full_c_name, now_ns, without_setid  # noqa: F401 - Caller, FsError are part of this API
from pqcfs.fs.content import FileContent
from pqcfs.fs.inodes import InodeTable, Node
from pqcfs.fs.namespace import NamespaceOps
from pqcfs.fs.scan_ahead import HEAD_BYTES, ScanAhead
from pqcfs.store.intent import DIRECTORY, FILE, NoIntent
from pqcfs.store import devices, reserve
from pqcfs.store.replicas import FALLOC_FL_KEEP_SIZE, MirroredFile, ReplicaSet

log = logging.getLogger(__name__)
XATTR_AD = b"pqcfs xattr v1"
OVERRIDES_AD = b"pqcfs overrides v1"
TABLE_CAP = 8 << 20       # xattr and override tables: far above what the kernel lets one write
DAMAGE = (CryptoError, DamagedStructure, OSError)
NO_XATTRS: Mapping[bytes, bytes] = MappingProxyType({})   # one shared empty table, never changed


class VaultFS(NamespaceOps):
    NEW_FILE_COUNTER = 0     # a new file's write counter (format 2 counts from 1)

    def __init__(self, replicas: ReplicaSet, block_size: int, read_only: bool = False, on_event=None,
                 intent=None):
        """The state every tree shares; each type makes its root (self.inodes)."""
        self.replicas = replicas
        self.intent = intent or NoIntent()
        self.on_event = on_event or (lambda event, **details: None)
        self.block_size = block_size
        self.read_only = read_only
        self.heal_events = 0
        self.refused_writes = 0               # changes asked of a read-only session
        self._room_tried = 0.0                # check_room: the last try to make a reserve whole
        # Node ids of the directories live grants open (the owner's view): nothing moves
        # out of one with its key (namespace._check_lineage).
        self.grant_roots: set[bytes] = set()
        # (the drives serving, the bytes the smallest of them holds without holes): EFBIG beyond
        self._capacity: tuple | None = None
        # Told before a file a snapshot may hold changes or leaves (snapshots/history.py);
        # None: the vault keeps no history (or this is a grantee's or a format 1 tree).
        self.history = None
        self.scan_ahead = ScanAhead()
        self.inodes: InodeTable

    def _owner_root(self, root_keys: NodeKeys) -> Node:
        return Node(parent=None, p_name=b"", disk_name="", keys=root_keys, meta=self._root_meta(root_keys))

    # --- what a format decides ------------------------------------------------------

    def _lookup_entry(self, dir_node: Node, p_name: bytes) -> Node:
        """The node p_name names in dir_node (not cached yet), or FsError(ENOENT)."""
        raise NotImplementedError

    def _entry_node(self, dir_node: Node, p_name: bytes, disk_name: str) -> Node:
        """The node of a listed entry (p_name, disk_name) of dir_node (not cached yet)."""
        raise NotImplementedError

    def _list(self, dir_node: Node) -> list[tuple[bytes, str]]:
        """(p_name, disk_name) of every entry of dir_node, in a stable order."""
        raise NotImplementedError

    def _count_subdirs(self, node: Node) -> int:
        raise NotImplementedError

    def _heal_missing_entry(self, parent: Node, disk_name: str):
        """For open_file: what restores an entry a backup lacks (n -> None)."""
        raise NotImplementedError

    def _save_meta(self, node: Node) -> None:
        """Mode or owner changed (node.meta): make it so on the drives."""
        raise NotImplementedError

    def _name_taken(self, dir_node: Node, p_name: bytes, disk_name: str) -> bool:
        raise NotImplementedError

    def _file_made(self, dir_node: Node, node: Node, keep_open: bool) -> None:
        """After a file-like node's entry is on the drives (keep_open: its create opened it)."""

    def _dir_made(self, dir_node: Node, node: Node) -> None:
        """After a directory's entry and id file are on the drives."""

    def _link_made(self, dir_node: Node, node: Node, p_name: bytes, disk_name: str) -> None:
        """After a new hard-link stub is on the drives."""

    def _now_hard_linked(self, node: Node) -> None:
        """node's data moved to the link store (node.hard_linked is set); its old name is
        now a stub."""

    def _entry_gone(self, dir_node: Node, disk_name: str) -> None:
        """After an entry left the drives (unlink, rmdir)."""

    def _dir_leaving(self, node: Node) -> None:
        """Before a directory's files leave the drives (rmdir, replaced by a rename)."""

    def _entries_renamed(self, node: Node, old_dir: Node, old_disk: str, new_dir: Node, new_disk: str,
                         new_name: bytes) -> None:
        """After a rename moved node's entry on the drives."""

    def _entries_exchanged(self, a: Node, dir_a: Node, a_disk: str, a_name: bytes,
                           b: Node, dir_b: Node, b_disk: str, b_name: bytes) -> None:
        """After an exchange swapped two entries' contents on the drives."""

    def verify_file(self, node: Node, fds: dict | None = None) -> bool:
        """Before a file opens: what refers to it agrees with it (healed when it can be).
        fds: where the file is open already. True when a copy was replaced (reopen it)."""
        return False

    def times(self, node: Node) -> tuple[int, int, int] | None:
        """(atime, mtime, ctime) in nanoseconds where pqcfs keeps them; None: the drive's."""
        return None

    def _may_have_xattr_file(self, node: Node) -> bool:
        """Whether a file's xattr side file may exist (removing one that does not costs a
        failed unlink on every replica: format 1 can not tell)."""
        return True

    def check_times(self, node: Node) -> None:
        """For fsck: where the format keeps a node's times in a record of its own, that
        record authenticates on this tree's replicas (raises what fails)."""

    def rebuild_times(self, node: Node, drives: list | None = None) -> None:
        """For fsck --repair, when no replica has a good copy of that record."""

    def _keep_times(self, node: Node, atime_ns: int | None, mtime_ns: int | None) -> bool:
        """utimensat where pqcfs keeps the node's times (True), else the drive keeps them."""
        return False

    def accessed(self, node: Node) -> None:
        """A read: atime may move (where the format keeps it)."""

    def wrote(self, node: Node) -> None:
        """Before a change of an open file's contents."""

    def save_attrs(self, node: Node, hold: bool = False) -> None:
        """Attributes held in memory reach the drives (hold: the caller is a release,
        and a file made since its directory's last record may wait for the next)."""

    def sync_attrs(self, node: Node) -> None:
        """fsync: as save_attrs, and durably."""

    def write_held(self) -> None:
        """What waits in memory for a directory's next record reaches the drives (a
        format without such waiting has nothing to write)."""

    def settle(self) -> int:
        """Before unmount: what is only in memory reaches the drives. Returns the tree's
        rollback counter (the root table's sequence number; 0 where there is none)."""
        return 0

    def settle_on(self, replicas: ReplicaSet, in_flux) -> int:
        """After a crash: the directories in flux made whole again on replicas (the
        repaired primary first). Returns how many were settled."""
        return 0

    def tree_seq(self) -> int | None:
        """The number that covers the whole tree against rollback (None: the format has none)."""
        return None

    def listing_problems(self, dir_node: Node, entries: list, named: list[str]) -> list[tuple[str, list[str], object]]:
        """For fsck: how dir_node's entries on the drive (named) differ from what
        authenticates (entries): (what, stray disk names, a rebuild or None) each."""
        return []

    # --- the tree's top: the owner's root, or a grantee's granted directories ------

    def tops(self) -> list[Node]:
        """The directories whose c_paths the tree's paths start from."""
        return [self.inodes.root]

    def _check_namespace(self, *dirs: Node) -> None:
        """Where names may be made, removed or moved (the owner: anywhere)."""

    def _root_meta(self, root_keys: NodeKeys) -> Meta:
        """The root directory's metadata; a root id file that fails on the primary heals
        from a replica where it authenticates, like every other header."""
        def read(replica: int) -> Meta:
            data = self.replicas.read_file(names.DIR_ID_NAME, replica=replica, cap=HEADER_LEN)
            if node_header.parse_prefix(data, MAGIC_DIR) != root_keys.node_id:
                raise DamagedStructure("the root directory id file belongs to another directory")
            return node_header.open_meta(root_keys.meta_key, data)

        def heal(first: int, source: int, meta: Meta, why: Exception) -> None:
            self.replicas.copy_one(source, first, names.DIR_ID_NAME)
            self._heal_event("root directory id", names.DIR_ID_NAME, source)
        try:
            return self.replicas.first_good(read, None if self.read_only else heal, DAMAGE)[0]
        except DAMAGE as e:
            raise DamagedStructure(f"the root directory fails authentication on every replica ({e})") from None

    def _heal_event(self, what: str, c_path: str, source: int) -> None:
        self.heal_events += 1
        self.on_event("self-heal", what=what, c_path=c_path or ".", source=source)
        log.warning("healed %s on the primary from replica %d", what, source)

    # --- paths and metadata files ---------------------------------------------------

    @staticmethod
    def _join(*parts: str) -> str:
        return "/".join(p for p in parts if p)

    def _meta_path(self, node: Node) -> str:
        """The file holding the node header: the file itself, or a directory's d.id."""
        return self._join(node.c_path, names.DIR_ID_NAME) if node.is_dir else node.data_path

    def _xattr_path(self, node: Node) -> str:
        if node.is_dir:
            return self._join(node.c_path, "d" + names.XATTR_SUFFIX)
        return node.data_path + names.XATTR_SUFFIX

    def _entry_rel(self, dir_node: Node, p_name: bytes, node: Node | None = None) -> str:
        """The backing entry of the name p_name in dir_node (for a hard-linked node, each
        of its names has its own stub entry; node.c_path names only one of them). node,
        when it is what p_name names: its one name needs no encrypting again."""
        if node is not None and not node.hard_linked and node.parent is dir_node and node.p_name == p_name:
            return self._join(dir_node.c_path, node.disk_name)
        return self._join(dir_node.c_path, names.on_disk_name(full_c_name(dir_node, p_name)))

    def check_room_to_create(self) -> None:
        """A new name (file, directory, link, xattr) is written with pqcfs' own writes,
        which may use a full drive's reserve: it is refused first unless the drives have
        room beside the reserve."""
        self.check_room()
        for n in self.replicas.healthy:
            drive = self.replicas.drives[n]
            try:
                room = drive.has_room(reserve.ROOM_TO_CREATE)
            except OSError:
                continue
            if not room:
                raise NoSpace(f"{drive.location} is full; free some space in the vault")

    def check_room(self) -> None:
        """Writers through the mount never take a drive's reserve (store/reserve.py): once
        a full drive gave it to the vault's own records, they get ENOSPC until space is
        freed and the reserve is whole again (tried after each removal in the vault, else
        at most four times a second)."""
        short = [n for n in self.replicas.healthy if self.replicas.drives[n].reserve_in_use]
        if not short:
            return
        now = time.monotonic()
        if now - self._room_tried >= 0.25:
            self._room_tried = now
            for n in short:
                try:
                    reserve.fill(self.replicas.drives[n])
                except (OSError, PqcfsError) as e:
                    log.warning("the reserve of %s could not be made whole: %s", self.replicas.drives[n].location, e)
            short = [n for n in short if self.replicas.drives[n].reserve_in_use]
        if short:
            raise NoSpace(f"{self.replicas.drives[short[0]].location} is full (its reserve holds the vault's own "
                          "records); free some space in the vault")

    def refuse_write(self) -> None:
        """A change asked of a read-only session: refused here whatever the kernel let
        through (a mount option, another program on /dev/fuse), and the first one of the
        session recorded (a read-only recipient's goes into their grant's log, which the
        owner's next unlock copies into the owner's)."""
        self.refused_writes += 1
        if self.refused_writes == 1:
            self.on_event("write-refused", error="read-only")
        raise FsError(errno.EROFS)

    def _check_writable(self, node: Node | None = None) -> None:
        if self.read_only:
            self.refuse_write()

    # --- overrides: keys of nodes moved here from another parent ----------------------

    def overrides_of(self, dir_node: Node) -> dict[bytes, bytes]:
        if dir_node.overrides is None:
            dir_node.overrides = self._read_table(self._join(dir_node.c_path, names.OVERRIDES_NAME),
                                                  dir_node.keys.meta_key, OVERRIDES_AD + dir_node.keys.node_id)
        return dir_node.overrides

    def _read_table(self, path: str, key: bytes, aad: bytes) -> dict[bytes, bytes]:
        try:
            data = self.replicas.read_file(path, cap=TABLE_CAP)
        except FileNotFoundError:
            return {}
        return sealed_table.decode(key, aad, data)

    def _save_overrides(self, dir_node: Node) -> None:
        self.intent.note(DIRECTORY, dir_node.c_path)
        path = self._join(dir_node.c_path, names.OVERRIDES_NAME)
        table = dir_node.overrides or {}
        if not table:
            self.replicas.unlink(path, missing_ok=True)
            return
        self.replicas.write_atomic(path, sealed_table.encode(dir_node.keys.meta_key,
                                                             OVERRIDES_AD + dir_node.keys.node_id, table))

    def child_keys(self, dir_node: Node, node_id: bytes) -> NodeKeys:
        wrapped = self.overrides_of(dir_node).get(node_id)
        if wrapped is not None:
            return dir_node.keys.unwrap_override(node_id, wrapped)
        return dir_node.keys.child(node_id)

    # --- lookup and listing ---------------------------------------------------------

    def lookup(self, dir_node: Node, p_name: bytes) -> Node:
        if not dir_node.is_dir:
            raise FsError(errno.ENOTDIR)
        if len(p_name) > names.MAX_P_NAME:
            # ext4 says so for every operation on such a name, not "no such file" (which
            # the kernel would also cache as a negative entry).
            raise FsError(errno.ENAMETOOLONG)
        cached = dir_node.children.get(p_name)
        if cached is not None:
            return cached
        return self._lookup_entry(dir_node, p_name)

    def _add_name(self, node: Node, dir_node: Node, p_name: bytes) -> Node:
        dir_node.children[p_name] = node
        node.name_set().add((dir_node, p_name))
        return node

    def _read_header(self, dir_node: Node, rel: str, magic) -> tuple[bytes, bytes, NodeKeys, Meta]:
        """Header, node id, keys and metadata of a node; a header that fails on the primary
        is read from another replica and the primary's copy repaired (self-healing)."""
        def read(replica: int) -> tuple[bytes, bytes, NodeKeys, Meta]:
            header = self.replicas.read_file(rel, HEADER_LEN, replica)
            node_id = node_header.parse_prefix(header, magic)
            keys = self.child_keys(dir_node, node_id)
            meta = node_header.open_meta(keys.meta_key, header)
            return header, node_id, keys, (Meta(0, 0, 0) if header[:4] == MAGIC_LINK else meta)

        def heal(first: int, source: int, found: tuple, why: Exception) -> None:
            try:
                self.replicas.write_one(first, rel, found[0])
                self._heal_event("node header", rel, source)
            except FileNotFoundError:
                pass   # the primary lacks the entry: the listing heals it
        return self.replicas.first_good(read, None if self.read_only else heal, DAMAGE)[0]

    def listdir(self, dir_node: Node) -> list[tuple[bytes, str]]:
        """(p_name, disk_name) of every entry, in a stable order. Kept until the directory
        changes (pqcfs is the only writer of its replicas while mounted): a second `ls`
        decrypts no name again."""
        if dir_node.listing is None:
            dir_node.listing = self._list(dir_node)
        return dir_node.listing

    def entry(self, dir_node: Node, p_name: bytes, disk_name: str) -> Node:
        cached = dir_node.children.get(p_name)
        if cached is not None:
            return cached
        return self._entry_node(dir_node, p_name, disk_name)

    # --- attributes -----------------------------------------------------------------

    def backing_stat(self, node: Node) -> os.stat_result:
        # A lookup's own stat is used once (the reply right after it), then never again.
        st, node.stat = node.stat, None
        if st is not None:
            return st
        # Through the open descriptor when there is one: an unlinked file has no path.
        if node.content is not None:
            return node.content.backing_stat()
        return self.replicas.lstat(node.data_path)

    def nlink(self, node: Node) -> int:
        """As ext4 counts: a file's names; a directory's 2 plus one per subdirectory."""
        if not node.is_dir:
            return 0 if node.unlinked else node.meta.nlink
        if node.subdirs is None:
            node.subdirs = self._count_subdirs(node)
        return 2 + node.subdirs

    def _write_header_meta(self, node: Node) -> None:
        """Rewrite the sealed metadata in its header, in place. chmod and chown change a
        node's ctime, never its mtime: the backing times are put back after the write
        (which sets the backing ctime to now), and a directory's own ctime is bumped the
        same way."""
        self.intent.note(FILE, self._meta_path(node))
        prefix = node_header.build(MAGIC_DIR if node.is_dir else MAGIC_FILE, node.keys.node_id,
                                   node.keys.meta_key, node.meta)
        if node.content is not None:
            times = node.content.backing_stat()
            node.content.write_header(prefix)
            node.content.set_backing_times((times.st_atime_ns, times.st_mtime_ns))
            return
        mf = self.replicas.open_file(self._meta_path(node))
        try:
            times = mf.stat()
            mf.pwrite(prefix, 0)
            mf.utime((times.st_atime_ns, times.st_mtime_ns))
        finally:
            mf.close()
        if node.is_dir:
            st = self.replicas.lstat(node.c_path)
            self.replicas.utime(node.c_path, (st.st_atime_ns, st.st_mtime_ns))

    def set_mode(self, node: Node, mode: int) -> None:
        self._check_writable(node)
        node.meta.mode = stat.S_IFMT(node.meta.mode) | stat.S_IMODE(mode)
        self._save_meta(node)

    def set_owner(self, node: Node, uid: int | None, gid: int | None) -> None:
        """chown(2). A file that is not a directory loses its set-ID bits as on Linux,
        whoever asks (see without_setid)."""
        self._check_writable(node)
        if uid is not None:
            node.meta.uid = uid
        if gid is not None:
            node.meta.gid = gid
        if not node.is_dir:
            node.meta.mode = without_setid(node.meta.mode)
        self._save_meta(node)

    def drop_setid(self, node: Node) -> None:
        """What a write or truncation by a caller without CAP_FSETID does to the file's
        mode (the kernel marks such requests, and leaves this to the file system, under
        FUSE_HANDLE_KILLPRIV_V2)."""
        mode = without_setid(node.meta.mode)
        if mode != node.meta.mode:
            self.set_mode(node, mode)

    def set_times(self, node: Node, atime_ns: int | None, mtime_ns: int | None) -> None:
        self._check_writable(node)
        if self._keep_times(node, atime_ns, mtime_ns):
            return
        self.intent.note(FILE, node.data_path)
        st = self.backing_stat(node)
        ns = (atime_ns if atime_ns is not None else st.st_atime_ns,
              mtime_ns if mtime_ns is not None else st.st_mtime_ns)
        if node.content is not None:
            node.content.set_backing_times(ns)
        else:
            self.replicas.utime(node.data_path, ns)

    # --- contents -------------------------------------------------------------------

    def open(self, node: Node, writable: bool) -> FileContent:
        if writable and not self.read_only:
            self.intent.note(FILE, node.data_path)
            if node.entry is not None and node.parent is not None:
                self.intent.note(DIRECTORY, node.parent.c_path)   # its table follows at release
        if node.content is None:
            parent = None if node.hard_linked else node.parent
            heal = None if parent is None else self._heal_missing_entry(parent, node.disk_name)
            # Opened to be read, a file is opened on the serving replica alone until a
            # change, a heal or a failing drive needs the others.
            file = self.replicas.open_file(node.data_path, writable=not self.read_only, heal_missing=heal,
                                           lazy=not writable)
            try:
                if self.verify_file(node, file.fds):
                    file.close()
                    file = self.replicas.open_file(node.data_path, writable=not self.read_only, lazy=not writable)
            except BaseException:
                file.close()
                raise
            node.bumped = False
            node.content = self._file_content(node, file)
            if not writable and node.parent is not None and not node.hard_linked:
                parent = node.parent
                ahead = self.scan_ahead.opened(parent.keys.node_id, parent.listing, node.disk_name)
                if ahead:
                    self.replicas.read_ahead(self._files_among(parent, ahead), HEAD_BYTES)
        node.opens += 1
        return node.content

    def _files_among(self, dir_node: Node, disk_names: list[str]) -> list[str]:
        """The data paths of the regular files among a directory's entries (what a scan
        of it opens next): none where the format does not tell kinds from the listing."""
        return []

    def _file_content(self, node: Node, file: MirroredFile) -> FileContent:
        history, block_size = self.history, self.block_size
        on_blocks = None if history is None else \
            (lambda first, last: history.before_blocks(node.keys.node_id, node.data_path, first, last, block_size))
        return FileContent(node.cipher(self.block_size), file, node.size, on_heal=self._healed,
                           on_change=lambda: self.wrote(node), on_blocks=on_blocks)

    def read(self, node: Node, offset: int, length: int) -> memoryview:
        """A read through an open handle (relatime: the access may move atime): a view of
        the plaintext, not a copy (pyfuse3 replies from any buffer)."""
        self.accessed(node)
        return node.content.read_view(offset, length)

    def write(self, node: Node, offset: int, data) -> int:
        """A write through an open handle: refused in a read-only session, while a full
        drive's reserve holds the vault's records, and past what the drives can hold."""
        if self.read_only:
            self.refuse_write()
        self.check_room()
        content = node.content
        if offset + len(data) > content.size:
            self.check_size(offset + len(data))
        return content.write(offset, data)

    def fallocate(self, node: Node, mode: int, offset: int, length: int) -> None:
        """fallocate(2) on an open file. Mode 0 reserves the drives' space for the range
        and grows the file to its end (zeros); FALLOC_FL_KEEP_SIZE reserves only. Every
        other mode (punching holes, zeroing, collapsing ranges) is EOPNOTSUPP: a punched
        ciphertext block reads as a hole, so holes punched on purpose would show on the
        drives which blocks a user zeroed (docs/posix.md)."""
        if mode & ~FALLOC_FL_KEEP_SIZE:
            raise FsError(errno.EOPNOTSUPP)
        if offset < 0 or length <= 0:
            raise FsError(errno.EINVAL)
        if self.read_only:
            self.refuse_write()
        self.check_room()
        content = node.content
        end = offset + length
        grows = not mode & FALLOC_FL_KEEP_SIZE and end > content.size
        if grows:
            self.check_size(end)
        try:
            content.reserve(offset, length)
        except OSError as e:
            # A drive without fallocate (exFAT through FUSE) holds no holes: what is inside
            # the file is allocated and growing it allocates the rest, so mode 0 holds there;
            # a reservation past the end alone (KEEP_SIZE) can not be made.
            if e.errno != errno.EOPNOTSUPP or mode & FALLOC_FL_KEEP_SIZE:
                raise
        if grows:
            content.truncate(end)

    def fsync(self, node: Node, datasync: bool) -> None:
        """An open file's contents, then its attributes, reach the drives."""
        node.content.fsync(datasync)
        self.sync_attrs(node)

    def release(self, node: Node) -> None:
        node.opens -= 1
        if node.opens == 0 and node.content is not None:
            node.size = node.content.size
            try:
                if node.dirty and not self.read_only:
                    self.save_attrs(node, hold=True)
            finally:
                node.bumped = False
                node.content.close()
            node.content = None
            node._cipher = None    # its AES context is made again on the next open, not kept per cached node
            node.keys.forget_derived()
            self.inodes.maybe_drop(node)

    def _healed(self, first: int, last: int, replica: int) -> None:
        self.heal_events += 1
        self.on_event("self-heal", what="content blocks", first=first, last=last, source=replica)

    def content(self, node: Node) -> tuple[FileContent, bool]:
        """The node's content view; the bool says whether the caller must release it."""
        if node.content is not None:
            return node.content, False
        return self.open(node, True), True

    def read_all(self, node: Node) -> bytes:
        content, temporary = self.content(node)
        try:
            return content.read(0, content.size)
        finally:
            if temporary:
                self.release(node)

    def check_size(self, size: int) -> None:
        """A size a drive without sparse files (exFAT) could never hold is EFBIG, as ext4
        says past its maximum file size, not a write that fills the drive first and
        then fails with ENOSPC. (Drives with sparse files answer for themselves.)"""
        # Worked out again whenever the drives serving change (one dropped out, another
        # rejoined: a stick replaced by a bigger one lifts the cap).
        serving = tuple((n, id(self.replicas.drives[n])) for n in self.replicas.healthy)
        if self._capacity is None or self._capacity[0] != serving:
            limits = []
            for n in self.replicas.healthy:
                drive = self.replicas.drives[n]
                if not devices.holds_sparse_files(drive.location):
                    st = drive.statvfs()
                    limits.append(st.f_blocks * st.f_frsize)
            self._capacity = (serving, min(limits, default=-1))
        if 0 <= self._capacity[1] < size:
            raise FsError(errno.EFBIG)

    def truncate(self, node: Node, size: int) -> None:
        self._check_writable(node)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        if size > self.size_of(node):
            self.check_size(size)
        content, temporary = self.content(node)
        try:
            content.truncate(size)
            node.size = content.size
        finally:
            if temporary:
                self.release(node)

    def size_of(self, node: Node) -> int:
        return node.content.size if node.content is not None else node.size

    # --- extended attributes --------------------------------------------------------

    def xattrs(self, node: Node) -> dict[bytes, bytes]:
        if node.xattrs is None and node.entry is not None and not node.entry.flags & FLAG_XATTRS:
            node.xattrs = NO_XATTRS   # format 2: the table says there is no xattr file to read
        if node.xattrs is None:
            node.xattrs = self._read_table(self._xattr_path(node), node.keys.meta_key,
                                           XATTR_AD + node.keys.node_id)
        return node.xattrs

    def set_xattr(self, node: Node, name: bytes, value: bytes | None) -> None:
        self._check_writable(node)
        if value is not None:
            self.check_room_to_create()
        self.intent.note(DIRECTORY, os.path.dirname(self._xattr_path(node)))
        table = dict(self.xattrs(node))
        if value is None:
            if name not in table:
                raise FsError(errno.ENODATA)
            del table[name]
        else:
            table[name] = value
        path = self._xattr_path(node)
        if table:
            self.replicas.write_atomic(path, sealed_table.encode(node.keys.meta_key, XATTR_AD + node.keys.node_id,
                                                                 table))
        else:
            self.replicas.unlink(path, missing_ok=True)
        node.xattrs = table
        if node.entry is not None:
            node.entry.flags = node.entry.flags | FLAG_XATTRS if table else node.entry.flags & ~FLAG_XATTRS
            node.entry.ctime = now_ns()
            self.save_attrs(node)
