"""Crash recovery at the operation level: torn states that a kill can leave on both
replicas alike, repaired by the authenticated merge."""

import os
import stat

from pqcfs.fs.trees import open_tree
from pqcfs.errors import DamagedStructure
from pqcfs.fs import recovery
from pqcfs.fs.common import Caller
from pqcfs.format.node_header import HEADER_LEN

ME = Caller(uid=1000, gid=1000)


def fs_of(vault):
    return open_tree(vault)


def test_a_crash_while_a_file_grows_loses_nothing_written_before(new_vault):
    vault, _ = new_vault
    fs = fs_of(vault)
    before = bytes(range(256)) * 20                  # 5,120 bytes: a full block and a short last one
    node = fs.create_file(fs.inodes.root, b"growing", stat.S_IFREG | 0o644, ME, content=before)
    # The extending write, cut between its two steps on both drives: the new block (sealed
    # as final) is written, the old last block is not yet resealed as a middle block.
    content = fs.open(node, True)
    cipher, B = content.cipher, content.B
    content.file.pwrite(cipher.seal(2, b"new", eof_at_end=True), HEADER_LEN + 2 * content.C)
    fs.release(node)
    fresh = fs_of(vault)
    broken = fresh.lookup(fresh.inodes.root, b"growing")
    try:
        fresh.read_all(broken)
        raise AssertionError("the torn file should not read before recovery")
    except (recovery.BlockCorrupt, DamagedStructure):
        pass   # format 2 sees it first: the file is longer than its directory table says
    intents = {("F", broken.data_path)}
    recovering = open_tree(vault, read_only=True, in_flux=recovery.dirs_in_flux(intents))
    repaired = recovery.recover_intents(recovering, vault.drives[0], vault.drives[1:], intents,
                                        vault.header.block_size)
    assert repaired >= 1
    healed = fs_of(vault)
    data = healed.read_all(healed.lookup(healed.inodes.root, b"growing"))
    assert data == before + bytes(2 * B - len(before)) + b"new"


def test_a_torn_block_of_hard_linked_data_is_repaired_from_the_backup(new_vault):
    """Hard-linked data lives in h.links/ and its key comes through a stub: recovery
    finds it, so a block torn on the primary is taken from the backup, never the other
    way round (before, the primary's torn copy replaced the backup's good one)."""
    vault, _ = new_vault
    fs = fs_of(vault)
    data = bytes(range(256)) * 64                    # 16 KiB: four blocks
    node = fs.create_file(fs.inodes.root, b"original", stat.S_IFREG | 0o644, ME, content=data)
    folder = fs.mkdir(fs.inodes.root, b"elsewhere", stat.S_IFDIR | 0o755, ME)
    fs.link(node, folder, b"second name")
    rel = node.data_path
    assert rel.startswith("h.links/")
    primary, backup = vault.drives
    fd = primary.open(f"tree/{rel}", os.O_RDWR)
    try:
        os.pwrite(fd, b"\0" * 100, HEADER_LEN + 5000)   # a torn write, on the primary only
    finally:
        os.close(fd)
    fresh = fs_of(vault)
    repaired = recovery.recover_intents(fresh, primary, [backup], {("F", rel)}, vault.header.block_size)
    assert repaired == 1
    healed = fs_of(vault)
    assert healed.read_all(healed.lookup(healed.inodes.root, b"original")) == data
    other = healed.lookup(healed.lookup(healed.inodes.root, b"elsewhere"), b"second name")
    assert healed.read_all(other) == data
