"""Format 1: a directory's entries are its encrypted names on the drives, and a node's
attributes are sealed in its header (a directory's in its id file).

Kept so that vaults made before format 2 keep opening and upgrade (`pqcfs upgrade`
rebuilds them as format 2). Names that fail on the serving replica heal from another
replica's listing; nothing here catches a removed or rolled-back entry, which is what
format 2's tables are for.
"""

from __future__ import annotations

import errno
import logging
import stat

from pqcfs.crypto import content as content_layout
from pqcfs.crypto.keys import NodeKeys
from pqcfs.errors import CryptoError, DamagedStructure
from pqcfs.format import names
from pqcfs.format.node_header import HEADER_LEN, MAGIC_DIR, MAGIC_FILE, MAGIC_LINK
from pqcfs.fs.common import FsError, full_c_name
from pqcfs.fs.inodes import InodeTable, Node, link_path
from pqcfs.fs.vaultfs import VaultFS
from pqcfs.store.drive import UnsafeEntry
from pqcfs.store.replicas import ReplicaSet
from pqcfs.store.sync import copy_entry

log = logging.getLogger(__name__)


class ListedFS(VaultFS):
    def __init__(self, replicas: ReplicaSet, root_keys: NodeKeys, block_size: int, in_flux=None, **options):
        """in_flux is ignored: format 1 has no tables to reconcile after a crash (the
        replicas' listings are made to agree by the session's recovery)."""
        super().__init__(replicas, block_size, **options)
        self.inodes = InodeTable(self._owner_root(root_keys))

    # --- lookup and listing ---------------------------------------------------------

    def _lookup_entry(self, dir_node: Node, p_name: bytes) -> Node:
        return self._load(dir_node, p_name, names.on_disk_name(full_c_name(dir_node, p_name)))

    def _entry_node(self, dir_node: Node, p_name: bytes, disk_name: str) -> Node:
        return self._load(dir_node, p_name, disk_name)

    def _load(self, dir_node: Node, p_name: bytes, disk_name: str) -> Node:
        rel = self._join(dir_node.c_path, disk_name)
        try:
            st = self.replicas.lstat(rel)
        except FileNotFoundError:
            # Replicas agree while mounted, so a name only a backup has is damage here:
            # healing the listing brings it back.
            if not self.replicas.on_backups(rel):
                raise FsError(errno.ENOENT) from None
            dir_node.listing = None    # listed again from the drives, and healed
            self.listdir(dir_node)
            try:
                st = self.replicas.lstat(rel)
            except FileNotFoundError:
                raise FsError(errno.ENOENT) from None
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
            raise UnsafeEntry(f"entry {rel} is neither a file nor a directory on the primary")
        is_dir = stat.S_ISDIR(st.st_mode)
        header_rel = self._join(rel, names.DIR_ID_NAME) if is_dir else rel
        header, node_id, keys, meta = self._read_header(dir_node, header_rel, MAGIC_DIR if is_dir else (MAGIC_FILE, MAGIC_LINK))
        shared = header[:4] == MAGIC_LINK
        if shared:
            known = self.inodes.hard_linked.get(node_id)
            if known is not None:
                return self._add_name(known, dir_node, p_name)
            # A stub: the header, metadata and contents are in the link store.
            st = self.replicas.lstat(link_path(node_id))
            header, shared_id, keys, meta = self._read_header(dir_node, link_path(node_id), MAGIC_FILE)
            if shared_id != node_id:
                raise DamagedStructure("hard-link stub and hard-linked node disagree")
        if stat.S_ISDIR(meta.mode) != is_dir:
            raise DamagedStructure("node type does not match its ciphertext entry")
        node = Node(parent=dir_node, p_name=p_name, disk_name=disk_name,
                    keys=keys, meta=meta, stat=st, hard_linked=shared)
        if not is_dir:
            node.size = content_layout.p_size(st.st_size - HEADER_LEN, self.block_size)
        if shared:
            self.inodes.hard_linked[node_id] = node
            node.name_set().add((dir_node, p_name))
        return self.inodes.add(node)

    def _list(self, dir_node: Node) -> list[tuple[bytes, str]]:
        """Entries whose names fail on the serving replica are healed from another replica
        where they authenticate; a listing that still has such an entry is not kept."""
        out, bad = self._listdir_on(dir_node, None)
        if bad:
            for source in self.replicas.healthy[1:]:
                self._heal_dir(dir_node, target=self.replicas.serving, source=source)
                out, bad = self._listdir_on(dir_node, None)
                if not bad:
                    break
        if not bad:
            dir_node.listing = out
        return out

    def _heal_dir(self, dir_node: Node, target: int, source: int) -> None:
        """Entries that authenticate on source and are missing on target are copied over.
        Entries that fail on target are quarantined (never deleted), and only when some
        entry of this directory authenticates on either replica: when none does, the
        directory's key is what is wrong (a copied d.id, say), and moving its entries
        would turn a reversible tamper into damage."""
        dir_node.listing = None
        good, _ = self._listdir_on(dir_node, source)
        have, bad = self._listdir_on(dir_node, target)
        have_disk = {d for _, d in have}
        target_drive, source_drive = self.replicas.drive(target), self.replicas.drive(source)
        copied = quarantined = 0
        for _, disk_name in good:
            if disk_name in have_disk:
                continue
            rel = self.replicas.rel(self._join(dir_node.c_path, disk_name))
            if disk_name in bad:
                target_drive.quarantine(rel, "an entry that fails authentication")
                bad.remove(disk_name)
                quarantined += 1
            copy_entry(source_drive, target_drive, rel)
            copied += 1
        if good or have:
            for disk_name in bad:
                target_drive.quarantine(self.replicas.rel(self._join(dir_node.c_path, disk_name)),
                                        "an entry that fails authentication and is on no other replica")
                quarantined += 1
        if copied or quarantined:
            self.heal_events += 1
            self.on_event("self-heal", what="entry names", c_path=dir_node.c_path or ".",
                          copied=copied, quarantined=quarantined, target=target, source=source)
            log.warning("healed %d damaged entry name(s) on replica %d from replica %d (%d quarantined)",
                        copied, target, source, quarantined)

    def _listdir_on(self, dir_node: Node, replica: int | None) -> tuple[list[tuple[bytes, str]], list[str]]:
        """Entries of dir_node on one replica (None: the serving one) and the disk names
        that fail there."""
        out, bad = [], []
        for disk_name in sorted(self.replicas.listdir(dir_node.c_path, replica)):
            if not names.is_entry(disk_name):
                continue
            full = disk_name
            if names.is_long(disk_name):
                try:
                    full = self.replicas.read_file(self._join(dir_node.c_path, disk_name + names.LONG_SUFFIX),
                                                   replica=replica, cap=names.LONG_NAME_CAP).decode("ascii")
                except (OSError, UnicodeDecodeError, DamagedStructure):
                    log.error("long name file of an entry is missing or damaged; entry skipped")
                    bad.append(disk_name)
                    continue
                if not names.long_name_matches(disk_name, full):
                    log.error("long name file does not match its entry; entry skipped")
                    bad.append(disk_name)
                    continue
            try:
                out.append((names.decrypt_name(dir_node.keys, full), disk_name))
            except (CryptoError, DamagedStructure, names.InvalidName):
                log.error("an entry name failed authentication; entry skipped")
                bad.append(disk_name)
        return out, bad

    # --- what else format 1 decides ------------------------------------------------

    def _count_subdirs(self, node: Node) -> int:
        return sum(1 for name, kind in self.replicas.scandir(node.c_path) if kind == "dir" and names.is_entry(name))

    def _heal_missing_entry(self, parent: Node, disk_name: str):
        return lambda n: self._heal_dir(parent, target=n, source=0)

    def _save_meta(self, node: Node) -> None:
        self._write_header_meta(node)

    def _name_taken(self, dir_node: Node, p_name: bytes, disk_name: str) -> bool:
        return self.replicas.exists(self._join(dir_node.c_path, disk_name))

    def listing_problems(self, dir_node: Node, entries: list, named: list[str]) -> list[tuple[str, list[str], object]]:
        if len(entries) == len(named):
            return []
        return [(f"{len(named) - len(entries)} entry name(s) failed authentication", [], None)]
