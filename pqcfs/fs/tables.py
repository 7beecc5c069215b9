"""Format 2: every directory's entries and the attributes pqcfs owns live in the
directory's table (d.t), so a stat, an `ls -l` or a negative lookup reads no file of its
own, and a removed, added, swapped or rolled-back entry is caught.

TabledFS is the format-2 tree. The table is the authority; the drives' listing must
equal it. A directory the last session may have left mid-change (named by the intent
log after a crash) is reconciled instead: its table is rebuilt from what the drives hold.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import os
import stat
import weakref
from collections import OrderedDict

from pqcfs.crypto import content as content_layout
from pqcfs.errors import CryptoError, DamagedStructure, NoGoodTable, NoSpace
from pqcfs.format import dir_table, link_attrs, names, node_header
from pqcfs.format.dir_table import FLAG_XATTRS, DirTable, Entry
from pqcfs.format.node_header import HEADER_LEN, MAGIC_DIR, MAGIC_FILE, MAGIC_LINK, Meta
from pqcfs.crypto.keys import NodeKeys
from pqcfs.fs.common import FsError, now_ns
from pqcfs.fs.inodes import InodeTable, Node, link_path
from pqcfs.fs.vaultfs import VaultFS
from pqcfs.store.replicas import ReplicaSet
from pqcfs.store.intent import DIRECTORY, FILE
from pqcfs.store.sync import copy_entry

log = logging.getLogger(__name__)
TABLE_FILE_CAP = 512 << 20     # 10 million entries would not fit; a million do
DAY_NS = 86_400 * 10**9
OPEN_TABLES = 16               # table files kept open (2 descriptors each with two drives)
LAZY_ATIMES = 10_000          # atime-only changes held in memory at most (then written out)
GONE_HELD = 1_024             # removals one table holds back at most (then recorded)
UNSAVED_HELD = 1_024          # entries made since a table's last record, at most (then recorded)
ALL = frozenset({"*"})         # in_flux: every directory (a sentinel, compared by identity)
DAMAGE = (CryptoError, DamagedStructure, OSError)


def meta_of(e: Entry) -> Meta:
    return Meta(mode=e.mode, uid=e.uid, gid=e.gid, rdev=e.rdev, nlink=e.nlink, counter=e.counter)


def _take_meta(e: Entry, node: Node) -> None:
    """The node's mode and owners (node.meta, what chmod and chown change) into its entry."""
    m = node.meta
    e.mode, e.uid, e.gid, e.rdev = m.mode, m.uid, m.gid, m.rdev


def _forget_entry(table: DirTable, disk_name: str) -> Entry | None:
    """The entry leaves memory (not yet any record); returns it, None if it was not there."""
    table.unsaved.discard(disk_name)
    gone = table.entries.pop(disk_name, None)
    if gone is not None and table.by_name.get(gone.p_name) is gone:
        del table.by_name[gone.p_name]
    return gone


class TabledFS(VaultFS):
    NEW_FILE_COUNTER = 1

    def __init__(self, replicas: ReplicaSet, root_keys: NodeKeys, block_size: int, in_flux=None, **options):
        """in_flux: the directories a crashed session may have left mid-change, reconciled
        with the drives when first loaded (ALL: every one)."""
        super().__init__(replicas, block_size, **options)
        self._init_tables(in_flux)
        self.inodes = InodeTable(self._owner_root(root_keys))
        self.table_of(self.inodes.root)

    def reopened(self, replicas: ReplicaSet, **options) -> "TabledFS":
        """The same tree (same type and top) on other replicas."""
        return TabledFS(replicas, self.inodes.root.keys, self.block_size, **options)

    def _init_tables(self, in_flux) -> None:
        # c_paths of directories a crashed session may have left mid-change (ALL: any).
        self.in_flux: set[str] | frozenset = in_flux if in_flux is not None else set()
        self._live_tables: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._pending: dict[bytes, Node] = {}   # tables whose last append failed (a full drive)
        self._unsaved: dict[bytes, Node] = {}   # tables holding changes not yet written (put_unsaved, _entry_gone)
        # Lazy atime (as ext4's lazytime): a read that only moves a file's atime writes no
        # record; the entry goes with its directory's next record, an fsync, or the unmount
        # (a crash loses those atimes and nothing else). dir id -> (dir node, {disk name: entry}).
        self._lazy_atimes: dict[bytes, tuple[Node, dict]] = {}
        self._lazy_count = 0
        self._handles: OrderedDict = OrderedDict()   # dir id -> its table file, open (LRU)
        # Tables changed since their parents last recorded their sequence numbers, and
        # the newest Node of each directory (a forgotten Node may hold a stale path).
        self._unfolded: dict[bytes, Node] = {}
        self.reconcile_skipped = 0     # entries a rebuild left out (they do not authenticate)
        self._dir_nodes: weakref.WeakValueDictionary = weakref.WeakValueDictionary()

    def _flux(self, c_path: str) -> bool:
        return self.in_flux is ALL or c_path in self.in_flux

    def _table_path(self, dir_node: Node) -> str:
        return self._join(dir_node.c_path, dir_table.NAME)

    # --- loading --------------------------------------------------------------------

    def table_of(self, dir_node: Node) -> DirTable:
        if dir_node.table is None:
            table = self._live_tables.get(dir_node.keys.node_id)
            if table is None:
                table = self._load_table(dir_node)
                self._live_tables[dir_node.keys.node_id] = table
            dir_node.table = table
            dir_node.entry = table.self_attrs
            dir_node.meta = meta_of(table.self_attrs)
            self._dir_nodes[dir_node.keys.node_id] = dir_node
        return dir_node.table

    def _load_table(self, dir_node: Node) -> DirTable:
        path, flux = self._table_path(dir_node), self._flux(dir_node.c_path)
        def heal(first: int, source: int, table: DirTable, why: Exception) -> None:
            self.replicas.copy_one(source, first, path)
            self._heal_event("directory table", path, source)
        table, error = None, ""
        try:
            table, _, _ = self.replicas.first_good(lambda n: self._read_dir_table(path, n, dir_node, flux),
                                                   None if self.read_only else heal, DAMAGE)
        except DAMAGE as e:
            # The message only: a traceback would keep the frames, and what they read, alive.
            error = str(e)
        if table is None:
            if not flux:
                raise NoGoodTable(f"a directory table fails on every replica ({error})")
            table = self._fresh_table(dir_node)    # the crash came between mkdir and its table
        if flux:
            self._reconcile(dir_node, table)
        else:
            self._check_listing(dir_node, table)
        return table

    def _read_dir_table(self, path: str, replica: int, dir_node: Node, flux: bool) -> DirTable:
        """The snapshot authenticates before anything past it is read (a file of junk costs
        one bounded record, whatever it claims); each byte is read once."""
        key, dir_id = dir_node.keys.meta_key, dir_node.keys.node_id
        head, size = self.replicas.read_span(path, 0, dir_table.HEAD_LEN, TABLE_FILE_CAP, replica=replica)
        end = dir_table.first_record_end(head)
        first, size = self.replicas.read_span(path, 0, end, TABLE_FILE_CAP, replica=replica)
        table = dir_table.decode(key, dir_id, first, tolerate_torn_tail=flux)
        if size <= end:
            return table
        rest, _ = self.replicas.read_span(path, end, size - end, TABLE_FILE_CAP, replica=replica)
        return dir_table.decode_more(key, table, rest, tolerate_torn_tail=flux)

    def _check_rollback(self, dir_node: Node, table: DirTable, least_seq: int) -> None:
        if table.seq < least_seq:
            raise DamagedStructure("a directory table is older than its parent says (rolled back)")

    def _check_listing(self, dir_node: Node, table: DirTable) -> None:
        """The drives must hold exactly the table's entries. A name the primary lacks is
        copied from a replica that has it; what is still missing, or is there without
        being in the table, is reported and never served."""
        on_disk = {n for n in self.replicas.listdir(dir_node.c_path) if names.is_entry(n)}
        missing = table.entries.keys() - on_disk
        if missing and not self.read_only:
            first = self.replicas.serving
            for source in self.replicas.healthy[1:]:
                for disk_name in sorted(missing):
                    rel = self.replicas.rel(self._join(dir_node.c_path, disk_name))
                    if self.replicas.drive(source).kind(rel) is not None:
                        copy_entry(self.replicas.drive(source), self.replicas.drive(first), rel)
                        self._heal_event("entry", rel, source)
            on_disk = {n for n in self.replicas.listdir(dir_node.c_path) if names.is_entry(n)}
            missing = table.entries.keys() - on_disk
        extra = on_disk - table.entries.keys()
        table.missing = missing
        if extra and not self.read_only:
            # Not the vault's (planted, or a damaged name): moved out of its way, never deleted.
            for disk_name in sorted(extra):
                rel = self.replicas.rel(self._join(dir_node.c_path, disk_name))
                self.replicas.drive(self.replicas.serving).quarantine(rel, "an entry its directory table does not hold")
                if names.is_long(disk_name):
                    sidecar = rel + names.LONG_SUFFIX
                    if self.replicas.drive(self.replicas.serving).kind(sidecar) == "file":
                        self.replicas.drive(self.replicas.serving).quarantine(sidecar, "its entry's long name")
        if missing or extra:
            what = f"{len(missing)} entr(ies) of its table missing, {len(extra)} not in its table"
            log.error("directory %s does not match its table: %s", dir_node.c_path or ".", what)
            self.on_event("integrity-failure", operation="directory table", c_path=dir_node.c_path or ".",
                          error=what)

    def table_problems(self, dir_node: Node) -> list[tuple[str, list[str], object]]:
        """For fsck: how a directory differs from its table, and whether its id file
        still belongs to it; each with the disk names on the drive its table does not hold,
        and what rebuilds it in place when no other replica has a good copy (or None)."""
        table = self.table_of(dir_node)
        on_disk = {n for n in self.replicas.listdir(dir_node.c_path) if names.is_entry(n)}
        out = []
        if table.entries.keys() - on_disk:
            out.append((f"{len(table.entries.keys() - on_disk)} entr(ies) of the directory table are gone "
                        "from the drive (removed or rolled back)", [], None))
        strays = sorted(on_disk - table.entries.keys())
        if strays:
            out.append((f"{len(strays)} entr(ies) on the drive are not in the directory table (added or rolled "
                        "back)", strays, None))
        try:
            header = self.replicas.read_file(self._join(dir_node.c_path, names.DIR_ID_NAME), cap=HEADER_LEN)
            if node_header.parse_prefix(header, MAGIC_DIR) != dir_node.keys.node_id:
                raise DamagedStructure("it belongs to another directory")
            node_header.open_meta(dir_node.keys.meta_key, header)
        except DAMAGE as e:
            out.append((f"directory id file: {e}", [], lambda: self.rebuild_dir_id(dir_node, 0)))
        return out

    def rebuild_table(self, dir_node: Node) -> None:
        """For `fsck --repair`, when no replica holds a copy of a directory's table that
        authenticates: the table is made again from what the drive holds (each entry's
        name and header authenticate under the directory's key, as after a crash), at a
        sequence number above the one its parent requires; the damaged file is kept in
        pqcfs.quarantine/. What a table alone knew is approximated: entries' times come
        from the drive's files, and an entry rolled back on the drive is not told apart."""
        path = self._table_path(dir_node)
        drive = self.replicas.drive(self.replicas.serving)
        if drive.kind(self.replicas.rel(path)) == "file":
            drive.quarantine(self.replicas.rel(path), "a directory table no replica has a good copy of (fsck)")
        table = self._fresh_table(dir_node)
        table.seq = dir_node.entry.seq if dir_node.entry is not None else 0
        self._reconcile(dir_node, table)
        self.replicas.write_atomic(path, dir_table.encode_snapshot(dir_node.keys.meta_key, table))

    def rebuild_child_table(self, dir_node: Node, p_name: bytes) -> None:
        """rebuild_table for a subdirectory a lookup could not open (its table failed)."""
        e = self.table_of(dir_node).by_name[p_name]
        if not stat.S_ISDIR(e.mode):
            raise DamagedStructure("not a directory")
        node = Node(parent=dir_node, p_name=p_name, disk_name=e.disk_name,
                    keys=self.child_keys(dir_node, e.node_id), meta=meta_of(e), size=e.size, entry=e)
        self.rebuild_table(node)

    def rebuild_dir_id(self, dir_node: Node, replica: int) -> None:
        """A directory id file with no good copy: written again from the directory's own
        table (its `self` record holds the node id and all the id file's metadata)."""
        table = self.table_of(dir_node)
        header = node_header.build(MAGIC_DIR, dir_node.keys.node_id, dir_node.keys.meta_key, meta_of(table.self_attrs))
        self.replicas.drive(replica).write_atomic(self.replicas.rel(self._join(dir_node.c_path, names.DIR_ID_NAME)),
                                                  header)

    def _heal_entry_on(self, dir_node: Node, disk_name: str):
        """For open_file: a replica that lacks an entry the table names (and the
        serving replica holds) gets the serving replica's copy."""
        def heal(n: int) -> None:
            rel = self.replicas.rel(self._join(dir_node.c_path, disk_name))
            copy_entry(self.replicas.drive(self.replicas.serving), self.replicas.drive(n), rel)
            self.heal_events += 1
            self.on_event("self-heal", what="entry", c_path=rel, target=n, source=self.replicas.serving)
            log.warning("healed a missing entry on replica %d from replica %d", n, self.replicas.serving)
        return heal

    # --- writing --------------------------------------------------------------------

    def _append(self, dir_node: Node, puts=(), dels=(), self_changed: bool = False) -> None:
        """One record: the memory copy changes first (it is what the drives' entries now
        are); a record that can not be written (a full drive) leaves the table to be
        written whole at the next change or at unmount. Entries created but not yet
        written (see put_unsaved) need no record to go again; removals held back (see
        _entry_gone) ride along."""
        table = self.table_of(dir_node)
        dir_id = dir_node.keys.node_id
        lazy = self._lazy_atimes.pop(dir_id, None)
        if lazy is not None:
            # The atimes only memory held ride along (still the table's own entries: one
            # renamed, removed or reloaded since is not written from a stale copy).
            self._lazy_count -= len(lazy[1])
            named = {e.disk_name for e in puts} | set(dels)
            puts = list(puts) + [e for d, e in lazy[1].items() if d not in named and table.entries.get(d) is e]
        self.intent.note(DIRECTORY, dir_node.c_path)
        self._unfolded[dir_id] = dir_node
        self_changed = self_changed or table.self_dirty
        table.self_dirty = False
        if table.unsaved:
            for e in puts:
                table.unsaved.discard(e.disk_name)
            quiet = [d for d in dels if d in table.unsaved]
            for disk_name in quiet:
                _forget_entry(table, disk_name)
            dels = [d for d in dels if d not in quiet]
            # Entries made since the last record ride along (a file still open is
            # written again by its release).
            puts = list(puts) + [table.entries[d] for d in sorted(table.unsaved)]
            table.unsaved.clear()
        forgotten = ()
        if table.gone:
            # A put of a name whose old entry is held back replaces that entry itself.
            table.gone.difference_update(e.disk_name for e in puts)
            forgotten, table.gone = sorted(table.gone), set()
        if not table.unsaved:
            self._unsaved.pop(dir_id, None)
        if not (puts or dels or forgotten or self_changed):
            return
        record = dir_table.encode_delta(dir_node.keys.meta_key, table, list(puts), list(dels), self_changed,
                                        forgotten)
        if dir_id in self._pending or table.wants_compaction():
            self._write_table(dir_node)
            return
        offset = table.valid_len - len(record)
        try:
            self._table_handle(dir_node).pwrite(record, offset)
        except (OSError, NoSpace) as e:
            if isinstance(e, OSError) and e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            self._drop_handle(dir_id)
            self._pending[dir_id] = dir_node
            log.warning("a directory table could not be written (%s); it is written whole later", e)

    def put_unsaved(self, dir_node: Node, e: Entry) -> None:
        """A new entry that the table learns in memory only: the file was created by a
        request that also opens it. Its release does not write it either: it goes, with
        its size and times, in the directory's next record (any change there, an fsync,
        the unmount, or once UNSAVED_HELD wait), so that a program making many files
        writes one record for many instead of one per file. A crash in between is
        covered like any other: the intent log names the directory, whose table is
        rebuilt from what the drives hold (names, sizes, and the owner and mode each
        file was made with; a chmod, chown or utimens of such a file before the record
        is what a crash loses)."""
        table = self.table_of(dir_node)
        self.intent.note(DIRECTORY, dir_node.c_path)
        table.entries[e.disk_name] = e
        table.by_name[e.p_name] = e
        table.unsaved.add(e.disk_name)
        table.self_dirty = True
        self._unsaved[dir_node.keys.node_id] = dir_node
        self._unfolded[dir_node.keys.node_id] = dir_node

    def _table_handle(self, dir_node: Node):
        """The table file, open on every replica; the most recently used stay open (an
        append then costs one write per drive)."""
        dir_id = dir_node.keys.node_id
        handle = self._handles.pop(dir_id, None)
        if handle is None:
            handle = self.replicas.open_file(self._table_path(dir_node))
            handle.bookkeeping = True     # a table record may use a full drive's reserve
        self._handles[dir_id] = handle
        while len(self._handles) > OPEN_TABLES:
            _, old = self._handles.popitem(last=False)
            old.close()
        return handle

    def _drop_handle(self, dir_id: bytes) -> None:
        handle = self._handles.pop(dir_id, None)
        if handle is not None:
            handle.close()

    def _write_table(self, dir_node: Node) -> None:
        table = self.table_of(dir_node)
        dir_id = dir_node.keys.node_id
        lazy = self._lazy_atimes.pop(dir_id, None)    # the whole table, atimes included, is written
        if lazy is not None:
            self._lazy_count -= len(lazy[1])
        data = dir_table.encode_snapshot(dir_node.keys.meta_key, table)
        table.unsaved.clear()
        table.gone.clear()
        table.self_dirty = False
        self._unsaved.pop(dir_id, None)
        self.intent.note(DIRECTORY, dir_node.c_path)
        self._unfolded[dir_id] = dir_node
        self._drop_handle(dir_id)    # the file is replaced: a kept descriptor would write to the old one
        self.replicas.write_atomic(self._table_path(dir_node), data, sync=False)
        self._pending.pop(dir_id, None)

    def settle(self) -> int:
        """Before unmount: entries and tables still only in memory (a full drive held a
        table back, a created file was never released) are written, and every changed
        table's sequence number is folded up into its parent's entry, up to the root.
        Returns the root table's sequence number."""
        # A file still open, or whose release never came (the daemon was told to stop
        # with requests pending), has its size and times only in memory.
        for node in self.inodes.nodes():
            if node.dirty and not node.unlinked:
                self.save_attrs(node)
        self.write_lazy_atimes()
        self.write_held()
        for node in list(self._pending.values()):
            if not node.unlinked:
                self._write_table(node)
        self._pending.clear()
        self.fold()
        self.close_tables()
        return self.tree_seq() or 0

    def _files_among(self, dir_node: Node, disk_names: list[str]) -> list[str]:
        entries = self.table_of(dir_node).entries
        wanted = []
        for disk_name in disk_names:
            e = entries.get(disk_name)
            if e is not None and stat.S_ISREG(e.mode) and not e.flags & dir_table.FLAG_LINKED:
                wanted.append(self._join(dir_node.c_path, disk_name))
        return wanted

    def write_held(self) -> None:
        """What the tables hold back for their next record (files made, removals, the
        directory's own times they changed) goes to the drives now: the serving loop
        calls this every few seconds, so that a crash after a burst of work loses no
        more than those seconds of it (as a local file system's journal commit), and
        the unmount calls it last."""
        for node in list(self._unsaved.values()):
            table = self.table_of(node)
            if not node.unlinked and (table.unsaved or table.gone or table.self_dirty):
                self._append(node)      # which takes every held entry along

    def write_lazy_atimes(self) -> None:
        for dir_node, _ in list(self._lazy_atimes.values()):
            if dir_node.unlinked or self.inodes.get(dir_node.ino) is not dir_node:
                # Gone, or forgotten by the kernel since (its path may have moved under
                # another node): those atimes are let go, as a crash would.
                self._lazy_count -= len(self._lazy_atimes.pop(dir_node.keys.node_id)[1])
            else:
                self._append(dir_node)

    def close_tables(self) -> None:
        while self._handles:
            _, handle = self._handles.popitem()
            handle.close()

    def fold(self) -> None:
        """Each changed directory's parent records the directory table's sequence number,
        deepest first, so one number at the root covers the whole tree: a directory whose
        table is older than its parent's record has been rolled back."""
        def depth(node: Node) -> int:
            n = 0
            while node.parent is not None:
                node, n = node.parent, n + 1
            return n
        order = itertools.count()
        heap = [(-depth(n), next(order), n) for n in self._unfolded.values()]
        heapq.heapify(heap)
        self._unfolded.clear()
        done: set[bytes] = set()
        while heap:
            _, _, node = heapq.heappop(heap)
            node = self._dir_nodes.get(node.keys.node_id) or node
            if node.keys.node_id in done or node.unlinked or node.table is None or not self._has_parent_table(node):
                continue
            done.add(node.keys.node_id)
            parent = node.parent
            e = self.table_of(parent).entries.get(node.disk_name)
            if e is None or e.node_id != node.keys.node_id or e.seq >= node.table.seq:
                continue
            e.seq = node.table.seq
            self._append(parent, puts=[e])
            heapq.heappush(heap, (-depth(parent), next(order), parent))
        self._unfolded.clear()

    def _new_table(self, dir_node: Node, self_attrs: Entry) -> None:
        table, data = dir_table.new_table(dir_node.keys.meta_key, dir_node.keys.node_id, self_attrs)
        self.replicas.write_atomic(self._table_path(dir_node), data, sync=False)
        table.missing = set()
        dir_node.table, dir_node.entry = table, self_attrs
        self._live_tables[dir_node.keys.node_id] = table

    def save_attrs(self, node: Node, hold: bool = False) -> None:
        """Write a node's attributes (memory -> its table): a directory's to its own
        table, anything else's to its parent's. hold (a release): a file whose entry
        no record holds yet waits for the directory's next one (see put_unsaved)."""
        node.dirty = False
        if node.hard_linked:
            self._save_link_times(node)
            return
        e = node.entry
        if e is None or node.unlinked:
            return
        _take_meta(e, node)
        if node.is_dir:
            self._append(node, self_changed=True)
            return
        e.size = self.size_of(node)
        parent = node.parent
        if parent is None:
            return
        table = self.table_of(parent)
        if table.entries.get(e.disk_name) is not e:
            return
        if hold and e.disk_name in table.unsaved:
            if len(table.unsaved) >= UNSAVED_HELD:
                self._append(parent)
            return
        self._append(parent, puts=[e])

    def sync_attrs(self, node: Node) -> None:
        """fsync: the node's attributes reach its table, and the table the drives."""
        if node.hard_linked and node.dirty:
            node.dirty = False
            self._save_link_times(node, sync=True)
        if node.entry is None or node.unlinked or self.read_only:
            return
        if node.dirty:
            self.save_attrs(node)
        holder = node if node.is_dir else node.parent
        if holder is not None:
            table = self.table_of(holder)
            if table.unsaved or table.gone or table.self_dirty or holder.keys.node_id in self._lazy_atimes:
                # What the table holds back reaches it now: a file made and released
                # since the last record, removals, a lazy atime.
                self._append(holder)
            self._table_handle(holder).fsync()

    def _dir_changed(self, dir_node: Node, now: int) -> None:
        e = self.table_of(dir_node).self_attrs
        e.mtime = e.ctime = now

    # --- attributes -----------------------------------------------------------------

    def _own_times(self, node: Node):
        """What holds the node's times: its table entry, or a hard-linked file's times
        record (link_attrs); None for a hard-linked file already gone from the drives."""
        if node.entry is not None:
            return node.entry
        if not node.hard_linked:
            return None
        if node.link_times is None and not node.unlinked:
            node.link_times = self._read_link_times(node)
        return node.link_times

    def _read_link_times(self, node: Node) -> link_attrs.Times:
        """A hard-linked file's times, healed from a replica where they authenticate. A
        file hard-linked by an older pqcfs has no record: its data file's times stand in
        (and a record is written at its next change); so do they, with an integrity
        event, when no replica's record authenticates (times are not worth a file)."""
        path = node.data_path + link_attrs.SUFFIX

        def read(replica: int) -> link_attrs.Times:
            return self._times_record(node, replica)

        def heal(serving: int, source: int, found, why: Exception) -> None:
            self.replicas.copy_one(source, serving, path)
            self._heal_event("hard-linked file's times", path, source)
        try:
            return self.replicas.first_good(read, None if self.read_only else heal, DAMAGE)[0]
        except DAMAGE as e:
            if not isinstance(e, FileNotFoundError):
                log.error("a hard-linked file's times fail on every replica (%s); its data file's stand in", e)
                self.on_event("integrity-failure", operation="hard-linked file times", c_path=path, error=str(e))
        st = node.content.backing_stat() if node.content is not None else self.replicas.lstat(node.data_path)
        return link_attrs.Times(st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns, st.st_mtime_ns)

    def _may_have_xattr_file(self, node: Node) -> bool:
        # The table's flag says (set_xattr keeps it, a crash's rebuild looks at the drive).
        return node.entry is None or bool(node.entry.flags & FLAG_XATTRS)

    def _times_record(self, node: Node, replica: int | None = None) -> link_attrs.Times:
        """A hard-linked file's times record on one replica (None: the serving one),
        read within its fixed length and authenticated before use."""
        data = self.replicas.read_file(node.data_path + link_attrs.SUFFIX, cap=link_attrs.LENGTH, replica=replica)
        return link_attrs.decode(node.keys.meta_key, node.keys.node_id, data)

    def check_times(self, node: Node) -> None:
        if not node.hard_linked:
            return
        try:
            self._times_record(node)
        except FileNotFoundError:
            return      # hard-linked by an older pqcfs: no record yet

    def rebuild_times(self, node: Node, drives: list | None = None) -> None:
        """Made again from the data file's times, the same bytes on each of drives (the
        tree's own by default), unless this tree's copy authenticates by now (an earlier
        rebuild wrote it): replicas that agree byte for byte stay in sync."""
        try:
            self.check_times(node)
            return
        except DAMAGE:
            pass
        st = self.replicas.lstat(node.data_path)
        data = link_attrs.encode(node.keys.meta_key, node.keys.node_id,
                                 link_attrs.Times(st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns, st.st_mtime_ns))
        rel = self.replicas.rel(node.data_path + link_attrs.SUFFIX)
        for drive in drives if drives is not None else [self.replicas.drive(n) for n in self.replicas.healthy]:
            drive.write_atomic(rel, data)

    def _save_link_times(self, node: Node, sync: bool = False) -> None:
        if node.link_times is None or node.unlinked or self.read_only:
            return
        path = node.data_path + link_attrs.SUFFIX
        self.intent.note(FILE, path)
        self.replicas.write_atomic(path, link_attrs.encode(node.keys.meta_key, node.keys.node_id, node.link_times),
                                   sync=sync)

    def times(self, node: Node) -> tuple[int, int, int] | None:
        own = self._own_times(node)
        return None if own is None else (own.atime, own.mtime, own.ctime)

    def _keep_times(self, node: Node, atime_ns: int | None, mtime_ns: int | None) -> bool:
        own = self._own_times(node)
        if own is None:
            return False
        own.atime = own.atime if atime_ns is None else atime_ns
        own.mtime = own.mtime if mtime_ns is None else mtime_ns
        own.ctime = now_ns()
        self._attrs_changed(node)
        return True

    def _changed(self, node: Node) -> None:
        """ctime moves (link, unlink, rename, chmod of a hard-linked file), as ext4's does."""
        own = self._own_times(node)
        if own is not None:
            own.ctime = now_ns()
            self.save_attrs(node)

    def accessed(self, node: Node) -> None:
        """relatime, the kernel's default: atime moves when it is older than the last
        change or a day old, and reaches the table with the node's next write-back."""
        if self.read_only:
            return
        own = node.entry if node.entry is not None else self._own_times(node)   # every read: the entry first
        if own is None:
            return
        now = now_ns()
        if own.atime <= own.mtime or own.atime <= own.ctime or now - own.atime > DAY_NS:
            own.atime = now
            if node.entry is None or node.hard_linked or node.is_dir or node.parent is None:
                node.dirty = True
                return
            parent = node.parent
            _, entries = self._lazy_atimes.setdefault(parent.keys.node_id, (parent, {}))
            if node.entry.disk_name not in entries:
                entries[node.entry.disk_name] = node.entry
                self._lazy_count += 1
                if self._lazy_count > LAZY_ATIMES:
                    self.write_lazy_atimes()

    def wrote(self, node: Node) -> None:
        e = node.entry
        if e is None:
            if node.hard_linked and not node.bumped:
                self._bump(node)    # a snapshot tells a file's versions apart by the counter
            own = self._own_times(node) if node.hard_linked else None
            if own is not None:
                own.mtime = own.ctime = now_ns()
                node.dirty = True
            return
        if not node.bumped:
            self._bump(node)
        e.mtime = e.ctime = now_ns()
        node.dirty = True

    def _bump(self, node: Node) -> None:
        """The first change of an open session raises the file's write counter in its
        header; the table follows at release. A copy older than the table is refused."""
        counter = node.entry.counter if node.entry is not None else node.meta.counter
        if self.history is not None:
            self.history.before_change(node.keys.node_id, counter, node.data_path)
        node.bumped = True
        node.meta.counter = counter + 1
        if node.entry is not None:
            node.entry.counter = counter + 1
        header = node_header.build(MAGIC_FILE, node.keys.node_id, node.keys.meta_key, node.meta)
        node.content.write_header(header)

    def _file_matches(self, node: Node, rel: str, replica: int, fds: dict | None = None) -> tuple[bytes, Meta, int]:
        e = node.entry
        fd = fds.get(replica) if fds else None
        if fd is not None:
            # The file is open there already (a regular file, checked as it opened).
            header, c_size = os.pread(fd, HEADER_LEN, 0), os.fstat(fd).st_size
        else:
            header = self.replicas.read_file(rel, HEADER_LEN, replica)
            c_size = self.replicas.lstat(rel, replica).st_size
        if node_header.parse_prefix(header, MAGIC_FILE) != e.node_id:
            raise DamagedStructure("a file is not the node its directory table names (swapped)")
        meta = node_header.open_meta(node.keys.meta_key, header)
        if meta.counter < e.counter:
            raise DamagedStructure("a file is older than its directory table says (rolled back)")
        size = content_layout.p_size(c_size - HEADER_LEN, self.block_size)
        if meta.counter == e.counter and size != e.size:
            raise DamagedStructure("a file's size differs from its directory table")
        return header, meta, size

    def verify_file(self, node: Node, fds: dict | None = None) -> bool:
        """Before a file opens, what its table says against the file: the same node, not
        older, the same size. A primary copy that fails is healed from a replica whose copy
        passes: a damaged header by rewriting it, an older or foreign file by moving it to
        quarantine and copying the good one. fds: the file's descriptors where it is open
        already (read through them: no second open). True when a copy was replaced (the
        caller's descriptor there is the quarantined file's)."""
        e = node.entry
        if e is None:
            return False
        rel = node.data_path
        unsealed = []     # replicas whose header is there but its metadata fails authentication
        replaced = False

        def read(replica: int) -> tuple[bytes, Meta, int]:
            try:
                return self._file_matches(node, rel, replica, fds)
            except CryptoError:
                unsealed.append(replica)
                raise

        def heal(first: int, source: int, found: tuple, why: Exception) -> None:
            nonlocal replaced
            if isinstance(why, CryptoError):
                self.replicas.write_one(first, rel, found[0])
            else:
                self.replicas.drive(first).quarantine(self.replicas.rel(rel), str(why))
                self.replicas.copy_one(source, first, rel)
                replaced = True
            self._heal_event("file header", rel, source)
        try:
            (_, meta, size), _, _ = self.replicas.first_good(read, None if self.read_only else heal, DAMAGE)
        except DAMAGE:
            if not (unsealed and unsealed == self.replicas.healthy and not self.read_only):
                raise
            for replica in unsealed:
                self.rebuild_file_header(node, replica)
            self._heal_event("file header (rebuilt from its directory table)", rel, self.replicas.serving)
            return False
        if meta.counter > e.counter:   # written after the table last was (a crash in between)
            e.counter, node.size, e.size = meta.counter, size, size
            node.dirty = True
        return replaced

    def rebuild_file_header(self, node: Node, replica: int) -> None:
        """A header whose metadata fails authentication with no good copy on any replica:
        written again from the directory table's record, which holds all a header holds
        (node id, metadata, write counter) and authenticates on its own; the content
        blocks are keyed by the node, not by the header, and are checked as ever."""
        e = node.entry
        if e is None or e.flags & dir_table.FLAG_LINKED:
            raise DamagedStructure("a file header fails authentication and no table record can rebuild it")
        header = node_header.build(MAGIC_FILE, e.node_id, node.keys.meta_key, meta_of(e))
        self.replicas.write_one(replica, node.data_path, header)

    # --- building nodes from tables ---------------------------------------------------

    def _table_lookup(self, dir_node: Node, p_name: bytes) -> Node:
        table = self.table_of(dir_node)
        e = table.by_name.get(p_name)
        if e is None:
            raise FsError(errno.ENOENT)
        if e.disk_name in table.missing:
            raise DamagedStructure("an entry of the directory table is gone from the drives")
        keys = self.child_keys(dir_node, e.node_id)
        if e.flags & dir_table.FLAG_LINKED:
            known = self.inodes.hard_linked.get(e.node_id)
            if known is not None:
                return self._add_name(known, dir_node, p_name)
            return self._load_linked(dir_node, p_name, e.disk_name, e.node_id)
        node = Node(parent=dir_node, p_name=p_name, disk_name=e.disk_name,
                    keys=keys, meta=meta_of(e), size=e.size, entry=e)
        if stat.S_ISDIR(e.mode):
            sub = self.table_of(node)
            self._check_rollback(node, sub, e.seq)
        return self.inodes.add(node)

    def _load_linked(self, dir_node: Node, p_name: bytes, disk_name: str, node_id: bytes) -> Node:
        st = self.replicas.lstat(link_path(node_id))
        _, shared_id, keys, meta = self._read_header(dir_node, link_path(node_id), MAGIC_FILE)
        if shared_id != node_id:
            raise DamagedStructure("hard-link stub and hard-linked node disagree")
        node = Node(parent=dir_node, p_name=p_name, disk_name=disk_name,
                    keys=keys, meta=meta, stat=st, hard_linked=True)
        node.size = content_layout.p_size(st.st_size - HEADER_LEN, self.block_size)
        self.inodes.hard_linked[node_id] = node
        node.name_set().add((dir_node, p_name))
        return self.inodes.add(node)

    def _table_listing(self, dir_node: Node) -> list[tuple[bytes, str]]:
        return sorted((e.p_name, e.disk_name) for e in self.table_of(dir_node).entries.values())

    # --- crash recovery: rebuild from the drives -------------------------------------

    def _fresh_table(self, dir_node: Node) -> DirTable:
        header = self.replicas.read_file(self._join(dir_node.c_path, names.DIR_ID_NAME), cap=HEADER_LEN)
        if node_header.parse_prefix(header, MAGIC_DIR) != dir_node.keys.node_id:
            raise DamagedStructure("a directory id file belongs to another directory")
        meta = node_header.open_meta(dir_node.keys.meta_key, header)
        st = self.replicas.lstat(dir_node.c_path)
        self_attrs = Entry(node_id=dir_node.keys.node_id, mode=meta.mode, uid=meta.uid, gid=meta.gid,
                           atime=st.st_atime_ns, mtime=st.st_mtime_ns, ctime=st.st_mtime_ns, btime=st.st_mtime_ns)
        table = DirTable(dir_id=dir_node.keys.node_id, self_attrs=self_attrs)
        return table

    def _reconcile(self, dir_node: Node, table: DirTable) -> None:
        """After a crash: the table becomes what the drives hold. Entries the drives lack
        go; entries they hold are read (header, size) and added or brought up to date."""
        on_disk = {n for n in self.replicas.listdir(dir_node.c_path) if names.is_entry(n)}
        for disk_name in table.entries.keys() - on_disk:
            gone = table.entries.pop(disk_name)
            table.by_name.pop(gone.p_name, None)
        for disk_name in sorted(on_disk):
            old = table.entries.get(disk_name)
            try:
                e = self._entry_from_disk(dir_node, disk_name, old)
            except (*DAMAGE, names.InvalidName) as err:
                log.error("an entry of a directory left mid-change does not authenticate (%s); left out", err)
                self.reconcile_skipped += 1
                continue
            if e is not old:
                if old is not None:
                    table.by_name.pop(old.p_name, None)
                table.entries[disk_name] = e
                table.by_name[e.p_name] = e
        table.missing = set()
        if not self.read_only:
            # Written whole: a torn last record, if any, is gone with the old file.
            data = dir_table.encode_snapshot(dir_node.keys.meta_key, table)
            self.replicas.write_atomic(self._table_path(dir_node), data, sync=False)

    def _entry_from_disk(self, dir_node: Node, disk_name: str, old: Entry | None) -> Entry:
        rel = self._join(dir_node.c_path, disk_name)
        st = self.replicas.lstat(rel)
        if stat.S_ISDIR(st.st_mode):
            header = self.replicas.read_file(self._join(rel, names.DIR_ID_NAME), cap=HEADER_LEN)
            node_id = node_header.parse_prefix(header, MAGIC_DIR)
            if old is not None and old.node_id == node_id and stat.S_ISDIR(old.mode):
                return old
            node_header.open_meta(self.child_keys(dir_node, node_id).meta_key, header)
            return Entry(node_id=node_id, mode=stat.S_IFDIR, p_name=self._p_name_on_disk(dir_node, disk_name),
                         disk_name=disk_name)
        header = self.replicas.read_file(rel, HEADER_LEN)
        node_id = node_header.parse_prefix(header, (MAGIC_FILE, MAGIC_LINK))
        keys = self.child_keys(dir_node, node_id)
        meta = node_header.open_meta(keys.meta_key, header)
        if header[:4] == MAGIC_LINK:
            if old is not None and old.node_id == node_id and old.flags & dir_table.FLAG_LINKED:
                return old
            return Entry(node_id=node_id, mode=stat.S_IFREG, flags=dir_table.FLAG_LINKED,
                         p_name=self._p_name_on_disk(dir_node, disk_name), disk_name=disk_name)
        size = content_layout.p_size(st.st_size - HEADER_LEN, self.block_size)
        if old is not None and old.node_id == node_id and not old.flags & dir_table.FLAG_LINKED:
            if meta.counter == old.counter and size == old.size:
                return old
            e = old.copy()
            e.counter, e.size, e.mtime, e.ctime = max(meta.counter, old.counter), size, st.st_mtime_ns, st.st_mtime_ns
            return e
        return Entry(node_id=node_id, mode=meta.mode, uid=meta.uid, gid=meta.gid, rdev=meta.rdev, nlink=1,
                     size=size, atime=st.st_atime_ns, mtime=st.st_mtime_ns, ctime=st.st_mtime_ns,
                     btime=st.st_mtime_ns, counter=meta.counter,
                     flags=FLAG_XATTRS if self.replicas.exists(rel + names.XATTR_SUFFIX) else 0,
                     p_name=self._p_name_on_disk(dir_node, disk_name), disk_name=disk_name)

    def _p_name_on_disk(self, dir_node: Node, disk_name: str) -> bytes:
        full = disk_name
        if names.is_long(disk_name):
            full = self.replicas.read_file(self._join(dir_node.c_path, disk_name + names.LONG_SUFFIX),
                                           cap=names.LONG_NAME_CAP).decode("ascii")
            if not names.long_name_matches(disk_name, full):
                raise DamagedStructure("long name file does not match its entry")
        return names.decrypt_name(dir_node.keys, full)

    def settle_tree(self) -> int:
        """Load (and so reconcile) the table of every directory in flux; returns how many."""
        done, pending = 0, self.tops()
        while pending:
            dir_node = pending.pop()
            try:
                table = self.table_of(dir_node)
            except DAMAGE as e:
                log.error("a directory could not be reconciled: %s", e)
                continue
            done += 1
            for e in list(table.entries.values()):
                if stat.S_ISDIR(e.mode) and (self.in_flux is ALL or any(
                        p == self._join(dir_node.c_path, e.disk_name) or p.startswith(
                            self._join(dir_node.c_path, e.disk_name) + "/") for p in self.in_flux)):
                    try:
                        pending.append(self._table_lookup(dir_node, e.p_name))
                    except (*DAMAGE, FsError) as err:
                        log.error("a directory could not be reconciled: %s", err)
        return done

    # --- what else format 2 decides (the hooks VaultFS declares) ---------------------

    def tree_seq(self) -> int | None:
        return self.table_of(self.inodes.root).seq

    def _has_parent_table(self, node: Node) -> bool:
        """Whether a directory's sequence number is recorded in a parent's table."""
        return node.parent is not None

    def settle_on(self, replicas: ReplicaSet, in_flux) -> int:
        return self.reopened(replicas, in_flux=in_flux).settle_tree()

    def listing_problems(self, dir_node: Node, entries: list, named: list[str]) -> list[tuple[str, list[str], object]]:
        return self.table_problems(dir_node)

    def _lookup_entry(self, dir_node: Node, p_name: bytes) -> Node:
        return self._table_lookup(dir_node, p_name)

    def _entry_node(self, dir_node: Node, p_name: bytes, disk_name: str) -> Node:
        return self._table_lookup(dir_node, p_name)

    def _list(self, dir_node: Node) -> list[tuple[bytes, str]]:
        dir_node.listing = self._table_listing(dir_node)
        return dir_node.listing

    def _count_subdirs(self, node: Node) -> int:
        return sum(1 for e in self.table_of(node).entries.values() if stat.S_ISDIR(e.mode))

    def _heal_missing_entry(self, parent: Node, disk_name: str):
        return self._heal_entry_on(parent, disk_name)

    def _save_meta(self, node: Node) -> None:
        # Every attribute but a hard-linked file's is in the directory tables.
        if node.hard_linked:
            self._write_header_meta(node)
            self._changed(node)
            return
        node.entry.ctime = now_ns()
        self._attrs_changed(node)

    def _attrs_changed(self, node: Node) -> None:
        """chmod, chown or utimens changed a node's entry in memory. A file created by a
        request that also opened it, and still open, has no record on the drives yet: the
        directory's next record writes the entry once with all of it (`tar x` sets owner,
        mode and times on each file before closing it: three records on every drive saved
        per file). An fsync writes it at once (see put_unsaved for a crash before)."""
        e = node.entry
        if node.opens and not node.is_dir and e is not None and node.parent is not None:
            table = self.table_of(node.parent)
            if e.disk_name in table.unsaved and table.entries.get(e.disk_name) is e:
                _take_meta(e, node)
                node.dirty = True
                return
        self.save_attrs(node)

    def _name_taken(self, dir_node: Node, p_name: bytes, disk_name: str) -> bool:
        # The table knows every name (and the create itself is exclusive).
        return p_name in self.table_of(dir_node).by_name

    def _file_made(self, dir_node: Node, node: Node, keep_open: bool) -> None:
        now, meta = now_ns(), node.meta
        node.entry = Entry(node_id=node.keys.node_id, mode=meta.mode, uid=meta.uid, gid=meta.gid, rdev=meta.rdev,
                           size=node.size, atime=now, mtime=now, ctime=now, btime=now, counter=meta.counter,
                           p_name=node.p_name, disk_name=node.disk_name)
        self._dir_changed(dir_node, now)
        if keep_open:
            self.put_unsaved(dir_node, node.entry)
            node.dirty = True
        else:
            self._append(dir_node, puts=[node.entry], self_changed=True)

    def _dir_made(self, dir_node: Node, node: Node) -> None:
        now, meta = now_ns(), node.meta
        self._new_table(node, Entry(node_id=node.keys.node_id, mode=meta.mode, uid=meta.uid, gid=meta.gid, nlink=2,
                                    atime=now, mtime=now, ctime=now, btime=now))
        self._dir_changed(dir_node, now)
        self._append(dir_node, puts=[Entry(node_id=node.keys.node_id, mode=stat.S_IFDIR, p_name=node.p_name,
                                           disk_name=node.disk_name, seq=node.table.seq)], self_changed=True)

    def _link_made(self, dir_node: Node, node: Node, p_name: bytes, disk_name: str) -> None:
        self._dir_changed(dir_node, now_ns())
        self._append(dir_node, puts=[Entry(node_id=node.keys.node_id, mode=node.meta.mode, flags=dir_table.FLAG_LINKED,
                                           p_name=p_name, disk_name=disk_name)], self_changed=True)

    def _now_hard_linked(self, node: Node) -> None:
        if node.entry is not None:
            # From now on the hard-linked node's header holds its attributes and its times
            # record its times (every name's table only says where it is).
            e = node.entry.copy()
            e.flags |= dir_table.FLAG_LINKED
            # Written by the link that made it hard-linked (its _save_meta), right after.
            node.link_times = link_attrs.Times(e.atime, e.mtime, e.ctime, e.btime)
            self._append(node.parent, puts=[e])
            node.entry = None

    def _entry_gone(self, dir_node: Node, disk_name: str) -> None:
        """The entry is gone from the drives: memory forgets it now, and its removal goes
        with the directory's next record (or the unmount, or once GONE_HELD pile up). `rm
        -rf` wrote a record on every drive per file, then removed the directory and its
        table with it. A crash in between is covered as for put_unsaved: the intent log
        names the directory, whose table is rebuilt from what the drives hold."""
        self._dir_changed(dir_node, now_ns())
        table = self.table_of(dir_node)
        dir_id = dir_node.keys.node_id
        self.intent.note(DIRECTORY, dir_node.c_path)
        was_unsaved = disk_name in table.unsaved
        if _forget_entry(table, disk_name) is None:
            return
        if not was_unsaved:                      # never written: nothing to remove
            table.gone.add(disk_name)
        table.self_dirty = True
        self._unsaved[dir_id] = dir_node
        self._unfolded[dir_id] = dir_node
        if len(table.gone) >= GONE_HELD:
            self._append(dir_node)

    def _dir_leaving(self, node: Node) -> None:
        self._drop_handle(node.keys.node_id)
        self._live_tables.pop(node.keys.node_id, None)
        self._unsaved.pop(node.keys.node_id, None)     # its table goes with it

    def _renamed_entry(self, node: Node, dir_node: Node, old_disk: str, p_name: bytes, disk_name: str,
                       now: int) -> Entry:
        """The table entry that names node at its new place (a copy: tables never share one)."""
        old = self.table_of(dir_node).entries.get(old_disk)
        if old is None:
            raise DamagedStructure("a renamed entry is not in its directory table")
        e = old.copy()
        e.p_name, e.disk_name = p_name, disk_name
        if node.entry is old:
            node.entry = e
            e.ctime = now
        return e

    def _entries_renamed(self, node: Node, old_dir: Node, old_disk: str, new_dir: Node, new_disk: str,
                        new_name: bytes) -> None:
        now = now_ns()
        e = self._renamed_entry(node, old_dir, old_disk, new_name, new_disk, now)
        self._dir_changed(new_dir, now)
        self._append(new_dir, puts=[e], dels=[old_disk] if new_dir is old_dir else (), self_changed=True)
        if new_dir is not old_dir:
            self._dir_changed(old_dir, now)
            self._append(old_dir, dels=[old_disk], self_changed=True)
        if node.is_dir:
            node.entry.ctime = now
            self._append(node, self_changed=True)
        elif node.hard_linked:
            self._changed(node)

    def _entries_exchanged(self, a: Node, dir_a: Node, a_disk: str, a_name: bytes,
                           b: Node, dir_b: Node, b_disk: str, b_name: bytes) -> None:
        now = now_ns()
        ea = self._renamed_entry(a, dir_a, a_disk, b_name, b_disk, now)
        eb = self._renamed_entry(b, dir_b, b_disk, a_name, a_disk, now)
        for node in (a, b):
            if node.hard_linked:
                self._changed(node)
        self._dir_changed(dir_a, now)
        self._dir_changed(dir_b, now)
        if dir_a is dir_b:
            self._append(dir_a, puts=[ea, eb], self_changed=True)
        else:
            self._append(dir_b, puts=[ea], self_changed=True)
            self._append(dir_a, puts=[eb], self_changed=True)
