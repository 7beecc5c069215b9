"""Check a vault: authenticate every name, header, block, xattr table and override on
every replica, compare the replicas, and repair from a good copy when asked."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field

from pqcfs import vault as vault_mod
from pqcfs.crypto.content import BlockCorrupt
from pqcfs.errors import CryptoError, DamagedStructure
from pqcfs.format.names import is_entry
from pqcfs.fs import recovery
from pqcfs.fs.vaultfs import FsError, VaultFS
from pqcfs.store import sync as sync_mod
from pqcfs.store.replicas import ReplicaSet

READ_CHUNK = 1 << 20


@dataclass
class Problem:
    replica: str
    c_path: str          # ciphertext path: safe to show, leaks no plaintext
    what: str
    repaired: bool = False
    keys: object = field(default=None, repr=False)


@dataclass
class Report:
    replicas: list[str]
    nodes: int = 0
    bytes_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    differing_files: int = 0

    @property
    def clean(self) -> bool:
        return not any(not p.repaired for p in self.problems) and self.differing_files == 0

    def to_dict(self) -> dict:
        return {"replicas": self.replicas, "nodes": self.nodes, "bytes_checked": self.bytes_checked,
                "differing_files": self.differing_files, "clean": self.clean,
                "problems": [{"replica": p.replica, "c_path": p.c_path, "what": p.what, "repaired": p.repaired}
                             for p in self.problems]}


def _single(vault: vault_mod.UnlockedVault, location: str) -> VaultFS:
    tree = os.path.join(location, vault_mod.TREE_DIR)
    return VaultFS(ReplicaSet([tree]), vault.root_dir_keys(), vault.header.block_size, read_only=True)


def check_replica(vault: vault_mod.UnlockedVault, location: str, report: Report, progress) -> None:
    try:
        fs = _single(vault, location)
    except (CryptoError, DamagedStructure, OSError) as e:
        report.problems.append(Problem(location, "tree/d.id", f"root directory: {e}"))
        return
    tree = os.path.join(location, vault_mod.TREE_DIR)
    listed_total = 0
    stack = [fs.inodes.root]
    while stack:
        node = stack.pop()
        entries = fs.listdir(node)
        on_disk = [n for n in os.listdir(os.path.join(tree, node.c_path)) if is_entry(n)]
        listed_total += len(entries)
        if len(entries) != len(on_disk):
            report.problems.append(Problem(location, node.c_path or ".",
                                           f"{len(on_disk) - len(entries)} entry name(s) failed authentication"))
        try:
            fs.xattrs(node)
        except (CryptoError, DamagedStructure) as e:
            report.problems.append(Problem(location, node.c_path or ".", f"directory xattrs: {e}"))
        for p_name, disk_name in entries:
            rel = f"{node.c_path}/{disk_name}" if node.c_path else disk_name
            try:
                child = fs.entry(node, p_name, disk_name)
            except (CryptoError, DamagedStructure, FsError, OSError) as e:
                report.problems.append(Problem(location, rel, f"header: {e}"))
                continue
            report.nodes += 1
            if child.is_dir:
                stack.append(child)
                continue
            try:
                fs.xattrs(child)
            except (CryptoError, DamagedStructure) as e:
                report.problems.append(Problem(location, child.data_path, f"xattrs: {e}"))
            content = fs.open(child, False)
            try:
                for offset in range(0, content.size, READ_CHUNK):
                    try:
                        content.read(offset, READ_CHUNK)
                    except BlockCorrupt as e:
                        report.problems.append(Problem(location, child.data_path, str(e), keys=child.keys))
                        break
                    report.bytes_checked += min(READ_CHUNK, content.size - offset)
                    progress(min(READ_CHUNK, content.size - offset))
            finally:
                fs.release(child)


def run(vault: vault_mod.UnlockedVault, repair: bool = False, progress=lambda n: None) -> Report:
    report = Report(replicas=list(vault.locations))
    for location in vault.locations:
        check_replica(vault, location, report, progress)
    report.nodes //= max(1, len(vault.locations))
    trees = [os.path.join(loc, vault_mod.TREE_DIR) for loc in vault.locations]
    if repair:
        _repair(vault, report, trees)
    for other in trees[1:]:
        report.differing_files += len(recovery.differing_files(trees[0], other))
    return report


def _repair(vault: vault_mod.UnlockedVault, report: Report, trees: list[str]) -> None:
    """Repair each problem from a replica that has no problem at the same place: blocks
    and headers by an authenticated merge (or a copy), damaged names by copying the
    directory's entries from the good replica."""
    bad = {(p.replica, p.c_path) for p in report.problems}
    by_location = dict(zip(vault.locations, trees))
    for problem in report.problems:
        damaged_tree = by_location[problem.replica]
        for location, tree in by_location.items():
            if location == problem.replica or (location, problem.c_path) in bad:
                continue
            good = os.path.join(tree, problem.c_path)
            damaged = os.path.join(damaged_tree, problem.c_path)
            if "entry name" in problem.what and os.path.isdir(good):
                sync_mod.sync_tree(good, damaged)
            elif problem.keys is not None and os.path.isfile(good):
                recovery.merge_file(damaged, good, problem.keys, vault.header.block_size)
            elif os.path.isfile(good):
                shutil.copy2(good, damaged)
            elif os.path.isdir(good):
                sync_mod.sync_tree(good, damaged)
            else:
                continue
            problem.repaired = True
            break
