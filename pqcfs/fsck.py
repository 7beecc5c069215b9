"""Check a vault: authenticate every name, header, block, xattr table and override on
every replica, compare the replicas, and repair from a good copy when asked."""

from __future__ import annotations

from dataclasses import dataclass, field

from pqcfs import vault as vault_mod
from pqcfs.crypto.content import BlockCorrupt
from pqcfs.errors import CryptoError, NoGoodTable, PqcfsError
from pqcfs.format import dir_table, link_attrs, names
from pqcfs.format.names import DIR_ID_NAME, is_entry
from pqcfs.fs import recovery
from pqcfs.store import seen
from pqcfs.fs.trees import open_tree
from pqcfs.fs.vaultfs import FsError, VaultFS
from pqcfs.snapshots import check as snapshot_check
from pqcfs.store.drive import Drive
from pqcfs.store.replicas import TREE_DIR
from pqcfs.store.sync import copy_entry, same_file

READ_CHUNK = 1 << 20


@dataclass
class Problem:
    replica: str
    c_path: str          # ciphertext path inside tree/: safe to show, leaks no plaintext
    what: str
    repaired: bool = False
    keys: object = field(default=None, repr=False)
    kind: str = "damage"   # "names" (a directory's entries), "odd" (not a file or directory)
    strays: list[str] = field(default_factory=list, repr=False)   # disk names no table holds
    rebuild: object = field(default=None, repr=False)   # the last way out, when no replica has a good copy


@dataclass
class Report:
    replicas: list[str]
    nodes: int = 0
    bytes_checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    differing_files: int = 0
    root_seqs: dict[str, int] = field(default_factory=dict)   # format 2: each replica's root table
    snapshot_versions: int = 0     # file versions the snapshots hold, each checked

    @property
    def clean(self) -> bool:
        return not any(not p.repaired for p in self.problems) and self.differing_files == 0

    def to_dict(self) -> dict:
        return {"replicas": self.replicas, "nodes": self.nodes, "bytes_checked": self.bytes_checked,
                "snapshot_versions": self.snapshot_versions,
                "differing_files": self.differing_files, "clean": self.clean,
                "problems": [{"replica": p.replica, "c_path": p.c_path, "what": p.what, "repaired": p.repaired}
                             for p in self.problems]}


def _t(rel: str) -> str:
    return f"{TREE_DIR}/{rel}" if rel else TREE_DIR


def check_replica(vault: vault_mod.UnlockedVault, location: str, report: Report, progress) -> None:
    drive = vault.drive(location)
    try:
        fs = open_tree(vault, location, read_only=True)
    except (PqcfsError, OSError) as e:
        report.problems.append(Problem(location, DIR_ID_NAME, f"root directory: {e}"))
        return
    seq = fs.tree_seq()
    if seq is not None:
        report.root_seqs[location] = seq
    stack = [fs.inodes.root]
    linked: set[bytes] = set()     # hard-linked nodes whose times record was checked (one per node)
    while stack:
        node = stack.pop()
        try:
            entries = fs.listdir(node)
            on_disk = drive.scandir(_t(node.c_path))
        except (PqcfsError, OSError) as e:
            problem = Problem(location, node.c_path or ".", f"directory: {e}")
            if isinstance(e, NoGoodTable) and node is not fs.inodes.root:
                # The last way out when no replica has a good table: the drive's own entries.
                problem.rebuild = lambda node=node: fs.rebuild_table(node)
            report.problems.append(problem)
            continue
        for name, kind in on_disk:
            if kind == "other":
                rel = f"{node.c_path}/{name}" if node.c_path else name
                report.problems.append(Problem(location, rel, "not a file or directory (a symlink, FIFO, "
                                               "socket or device planted on the drive)", kind="odd"))
        named = [n for n, kind in on_disk if is_entry(n) and kind != "other"]
        for what, strays, rebuild in fs.listing_problems(node, entries, named):
            report.problems.append(Problem(location, node.c_path or ".", what, kind="names", strays=strays,
                                           rebuild=rebuild))
        try:
            fs.xattrs(node)
        except (PqcfsError, OSError) as e:
            report.problems.append(Problem(location, node.c_path or ".", f"directory xattrs: {e}"))
        for p_name, disk_name in entries:
            rel = f"{node.c_path}/{disk_name}" if node.c_path else disk_name
            try:
                child = fs.entry(node, p_name, disk_name)
            except (PqcfsError, FsError, OSError) as e:
                problem = Problem(location, rel, f"header: {e}")
                if isinstance(e, NoGoodTable):
                    problem.rebuild = lambda node=node, p_name=p_name: fs.rebuild_child_table(node, p_name)
                report.problems.append(problem)
                continue
            report.nodes += 1
            if child.is_dir:
                stack.append(child)
                continue
            if child.hard_linked and child.keys.node_id not in linked:
                linked.add(child.keys.node_id)
                try:
                    fs.check_times(child)
                except (PqcfsError, OSError) as e:
                    report.problems.append(Problem(location, f"{child.data_path}{link_attrs.SUFFIX}", f"times: {e}",
                                                   rebuild=lambda child=child: fs.rebuild_times(child, vault.drives)))
            _check_file(fs, child, location, report, progress)


def _check_file(fs: VaultFS, child, location: str, report: Report, progress) -> None:
    try:
        fs.xattrs(child)
    except (PqcfsError, OSError) as e:
        report.problems.append(Problem(location, child.data_path, f"xattrs: {e}"))
    try:
        content = fs.open(child, False)
    except (PqcfsError, OSError) as e:
        problem = Problem(location, child.data_path, f"contents: {e}")
        if isinstance(e, CryptoError) and child.entry is not None:
            # The last way out when no replica has a good header: its table record (format 2).
            problem.rebuild = lambda: fs.rebuild_file_header(child, 0)
        report.problems.append(problem)
        return
    try:
        for offset in range(0, content.size, READ_CHUNK):
            try:
                content.read(offset, READ_CHUNK)
            except BlockCorrupt as e:
                report.problems.append(Problem(location, child.data_path, str(e), keys=child.keys))
                break
            except (PqcfsError, OSError) as e:
                report.problems.append(Problem(location, child.data_path, f"contents: {e}"))
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
    if report.root_seqs:
        # The newest replica against what this machine has seen: an older one alone is
        # stale (a sync matter), all of them older is a rollback.
        newest = max(report.root_seqs, key=report.root_seqs.get)
        try:
            lineage = vault_mod.read_state(vault.drive(newest), vault.root_key).lineage
            seen.check(vault.header.vault_id, vault.root_key, report.root_seqs[newest], lineage)
        except PqcfsError as e:
            report.problems.append(Problem(newest, ".", str(e), kind="rollback"))
    if vault.tables:
        _check_snapshots(vault, report, repair)
    if repair:
        _repair(vault, report)
    drives = vault.drives
    for other in drives[1:]:
        try:
            report.differing_files += len(recovery.differing_files(drives[0], other))
        except (PqcfsError, OSError) as e:
            report.problems.append(Problem(other.location, ".", f"could not compare with the primary: {e}"))
    return report


def _check_snapshots(vault: vault_mod.UnlockedVault, report: Report, repair: bool) -> None:
    """Snapshots (format 2): found and, with repair, mended by snapshots/check.py itself
    (its structures are not the tree's)."""
    try:
        findings, versions = snapshot_check.check(vault, repair)
    except (PqcfsError, OSError) as e:
        report.problems.append(Problem(vault.locations[0], "pqcfs.snapshots", f"snapshots: {e}", kind="snapshots"))
        return
    report.snapshot_versions = versions
    for f in findings:
        report.problems.append(Problem(f.location, f.where, f.what, repaired=f.repaired,
                                       kind="rollback" if f.rollback else "snapshots"))


def _repair_names(good: Drive, damaged: Drive, rel: str) -> None:
    """A directory whose entries fail on one replica: entries only the damaged copy has
    are quarantined (kept, never deleted), the good replica's entries copied over."""
    id_file = f"{rel}/{DIR_ID_NAME}"
    if good.kind(id_file) == "file" and not same_file(good, damaged, id_file):
        # Every entry failing under this replica's id file while the good replica's
        # entries authenticate: the id file itself was replaced (a copied d.id).
        if damaged.exists(id_file):
            damaged.quarantine(id_file, "a directory id file that differs from the good replica's (fsck)")
        damaged.copy_from(good, id_file)
    table = f"{rel}/{dir_table.NAME}"
    if good.kind(table) == "file" and not same_file(good, damaged, table):
        # Format 2: the good replica's table authenticates and matches its entries.
        if damaged.exists(table):
            damaged.quarantine(table, "a directory table that differs from the good replica's (fsck)")
        damaged.copy_from(good, table)
    wanted = dict(good.scandir(rel))
    for name, kind in damaged.scandir(rel):
        if name not in wanted and (is_entry(name) or kind == "other"):
            damaged.quarantine(f"{rel}/{name}", "an entry that fails authentication (fsck)")
    for name, kind in wanted.items():
        if is_entry(name) and kind in ("file", "dir") and not damaged.exists(f"{rel}/{name}"):
            copy_entry(good, damaged, f"{rel}/{name}")


def _repair(vault: vault_mod.UnlockedVault, report: Report) -> None:
    """Repair each problem from a replica that has no problem at the same place: blocks
    and headers by an authenticated merge (or a copy), damaged names from the good
    replica's directory. What is replaced is moved to the quarantine, not deleted."""
    bad = {(p.replica, p.c_path) for p in report.problems}
    for problem in report.problems:
        damaged = vault.drive(problem.replica)
        path = _t(problem.c_path if problem.c_path != "." else "")
        if problem.kind in ("rollback", "snapshots"):
            continue    # nothing on the drives to repair it from; or mended where it was found
        if problem.kind == "odd":
            damaged.quarantine(path, "not a file or directory (fsck)")
        for location in vault.locations:
            if location == problem.replica or (location, problem.c_path) in bad:
                continue
            good = vault.drive(location)
            kind = good.kind(path)
            try:
                if problem.kind == "names" and kind == "dir":
                    _repair_names(good, damaged, path)
                elif problem.keys is not None and kind == "file":
                    recovery.merge_file(damaged, good, path, problem.keys, vault.header.block_size)
                elif kind == "file":
                    if damaged.exists(path):
                        damaged.quarantine(path, "fails authentication (fsck)")
                    damaged.copy_from(good, path)
                elif kind == "dir":
                    if damaged.kind(path) == "dir":
                        _repair_names(good, damaged, path)
                    else:
                        copy_entry(good, damaged, path)
                else:
                    continue
            except (PqcfsError, OSError):
                continue
            problem.repaired = True
            break
        if not problem.repaired and problem.rebuild is not None:
            try:
                problem.rebuild()
                problem.repaired = True
            except (PqcfsError, OSError):
                pass
        if not problem.repaired and problem.strays:
            # No other replica to compare with: the authenticated table decides, and what it
            # does not hold (a session's unfinished create, a planted file) is set aside.
            for disk_name in problem.strays:
                rel = f"{path}/{disk_name}" if path else disk_name
                damaged.quarantine(rel, "an entry its directory table does not hold (fsck)")
                if names.is_long(disk_name) and damaged.kind(rel + names.LONG_SUFFIX) == "file":
                    damaged.quarantine(rel + names.LONG_SUFFIX, "its entry's long name (fsck)")
            problem.repaired = True
        if problem.kind == "odd":
            problem.repaired = True   # moved out of the tree; a good copy, if any, was put back
