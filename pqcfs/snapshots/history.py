"""A vault's snapshots while a session has it: create, delete, thin, and the keeper the live
tree calls before it changes or removes a file that a snapshot holds.

Copy-on-write: a snapshot records each file's node id and write counter. A version of at
most SMALL bytes is copied whole to `pqcfs.snapshots/data/<node>.<counter>` at the first
change after it (which raises the counter); a larger one keeps each block before the live
tree first changes it, in `<node>.<counter>.b`; an unlink (or a rename over it) moves the
file there whole instead of removing it. A file no later change touches is never copied:
every snapshot that holds it reads the live one (snapshots/view.py reads the chains). Only
the newest snapshot needs to be asked (`held`): a file unchanged since an older snapshot is
unchanged since every later one too, so the newest holds the same counter.

Space: what only history holds never makes the live vault hit ENOSPC. A copy that does
not fit removes the oldest snapshot (and what only it held) and tries again; with a
policy, automatic snapshots beyond its share of the drive go the same way. Each is said
(log and audit: `history-yielded`).
"""

from __future__ import annotations

import errno
import logging
import time
from dataclasses import dataclass

import blake3

from pqcfs.errors import NoSpace, NoSuchSnapshot, PqcfsError, RolledBack
from pqcfs.format import snapshot as fmt
from pqcfs.snapshots import manifest as manifest_mod
from pqcfs.snapshots import policy as policy_mod
from pqcfs.snapshots import take
from pqcfs.crypto.content import OVERHEAD as CONTENT_OVERHEAD
from pqcfs.format.node_header import HEADER_LEN
from pqcfs.snapshots.store import (DATA, INDEX, SMALL, SnapshotStore, append_delta, data_name, data_rel,
                                   delta_index, delta_name, delta_rel, needed)
from pqcfs.store import seen
from pqcfs.store.replicas import TREE_DIR

log = logging.getLogger(__name__)
LABEL_MAX = 200
STREAM_AHEAD = 256    # blocks kept ahead of a write that continues the last one (1 MiB of 4 KiB blocks)


@dataclass(slots=True)
class Held:
    """A file version the newest snapshot holds that is not kept complete yet."""
    counter: int
    size: int                       # its plaintext size
    blocks: set | None = None       # large versions: the blocks kept so far (read on first use)
    next: int = -1                  # the block after the last change (a stream continues there)


def _full(e: BaseException) -> bool:
    return isinstance(e, NoSpace) or getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)


def find(index: fmt.Index, ref: str) -> fmt.Listed:
    """A snapshot by id (a unique prefix of its hex, at least 4 digits), by exact label,
    or `latest`."""
    if ref == "latest":
        if not index.snapshots:
            raise NoSuchSnapshot("the vault has no snapshot")
        return index.snapshots[-1]
    by_id = [s for s in index.snapshots if len(ref) >= 4 and s.snap_id.hex().startswith(ref.lower())]
    by_label = [s for s in index.snapshots if s.label == ref]
    found = by_id or by_label
    if len(found) != 1:
        what = "no snapshot" if not found else f"{len(found)} snapshots"
        raise NoSuchSnapshot(f"{what} named {ref!r} (`pqcfs snapshot list` shows their ids and labels)")
    return found[0]


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted indices as (first, last) runs of neighbours."""
    runs: list[tuple[int, int]] = []
    for k in indices:
        if runs and runs[-1][1] == k - 1:
            runs[-1] = (runs[-1][0], k)
        else:
            runs.append((k, k))
    return runs


class History:
    """The vault's snapshots, for one session (store: its replicas' snapshot structures)."""

    def __init__(self, store: SnapshotStore, vault_id: bytes, root_key: bytes, on_event=None,
                 accept_older: bool = False):
        self.store = store
        self.vault_id = vault_id
        self.root_key = root_key
        self.on_event = on_event or (lambda event, **details: None)
        self.index = store.read_index()
        recorded = seen.snapshots(vault_id, root_key)
        if self.index.seq < recorded and not accept_older:
            raise RolledBack(f"the drives' snapshot list is older than this machine has seen (sequence "
                             f"{self.index.seq}, newest seen {recorded}): snapshots were removed behind pqcfs' "
                             "back or the drives were rolled back. To use them anyway: --accept-older")
        for problem in store.problems:
            self.on_event("integrity-failure", what="snapshots", error=problem)
        self.held: dict[bytes, Held] = {}
        self.kept_bytes = 0
        self.replicas = None
        if store.writable and not self.unfinished_cleanup() and self.index.snapshots:
            self._load_held()

    # --- reading ----------------------------------------------------------------------

    def manifest(self, listed: fmt.Listed) -> manifest_mod.Manifest:
        data = self.store.read_manifest(listed)
        return manifest_mod.load(data, self.store.key, self.vault_id, self.root_key, listed.snap_id)

    def _load_held(self) -> None:
        kept = self.store.kept()
        self.kept_bytes = sum(kept.values())
        self.held = {}
        if not self.index.snapshots:
            return
        newest = self.manifest(self.index.snapshots[-1])
        chains = self.store.chains()
        for node_id, counter, size, _ in newest.files():
            # A version with a whole copy in its chain (kept whole, or its file removed since)
            # is complete: nothing the live tree does can change it any more. A copy on one
            # replica only (a crash cut the others short) is not: it is made again where missing.
            whole = [k for k, delta in needed(chains.get(node_id, []), counter) if not delta]
            if whole and all(self.store.drives[n].exists(data_rel(node_id, whole[0])) for n in self.store.healthy):
                continue
            self.held[node_id] = Held(counter, size)

    # --- the keeper: what the live tree calls (VaultFS.history) -------------------------

    def attach(self, replicas) -> None:
        """Keep files through the session's replica set (its failures, its change journal)."""
        self.replicas = replicas

    def _holds(self, node_id: bytes, counter: int) -> bool:
        h = self.held.get(node_id)
        return h is not None and h.counter == counter

    def before_change(self, node_id: bytes, counter: int, data_path: str) -> None:
        """The file at data_path (tree-relative) is about to change for the first time in
        an open: a small version a snapshot holds is kept whole (a large one block by block,
        before_blocks)."""
        h = self.held.get(node_id)
        if h is None or h.counter != counter or h.size > SMALL:
            return
        src = f"{TREE_DIR}/{data_path}"
        dst = data_rel(node_id, counter)
        self._keep(node_id, counter, lambda d: d.exists(dst) or d.copy_from(d, src, to=dst, use_reserve=False),
                   [src, dst])

    def before_blocks(self, node_id: bytes, data_path: str, first: int, last: int, block_size: int) -> None:
        """Blocks first..last of a file are about to change: those of a large version a
        snapshot holds that are not kept yet are appended to its kept blocks first, on
        every replica, durably (the change may reach the drive right after)."""
        h = self.held.get(node_id)
        if h is None or h.size <= SMALL:
            return
        c_block = block_size + CONTENT_OVERHEAD
        last_index = (h.size - 1) // block_size if h.size else -1
        if first > last_index:
            return
        dst = delta_rel(node_id, h.counter)
        if h.blocks is None:
            h.blocks = self._kept_blocks(dst)
        if first == h.next:
            # A write that goes on where the last one ended: a stream (a big write comes as
            # many requests, a copy as many writes): what follows is kept ahead, once, not
            # one append and fsync per request. Scattered writes keep only their own blocks.
            last = max(last, first + STREAM_AHEAD - 1)
        h.next = last + 1
        want = [k for k in range(first, min(last, last_index) + 1) if k not in h.blocks]
        if not want:
            return
        src = f"{TREE_DIR}/{data_path}"
        end = HEADER_LEN + (h.size // block_size) * c_block + (h.size % block_size + CONTENT_OVERHEAD
                                                                if h.size % block_size else 0)

        runs = _runs(want)

        def append(drive) -> None:
            records = []
            for lo, hi in runs:      # one read per run of neighbouring blocks
                start = HEADER_LEN + lo * c_block
                data = drive.read_at(src, min((hi - lo + 1) * c_block, end - start), start)
                records += [fmt.delta_record(k, data[(k - lo) * c_block:(k - lo + 1) * c_block])
                            for k in range(lo, hi + 1)]
            append_delta(drive, dst, h.counter, b"".join(records))
        counter = h.counter
        if self._keep(node_id, counter, append, [dst], pop=False):
            h.blocks.update(want)
            self.kept_bytes += len(want) * c_block
            self._within_share()

    def _kept_blocks(self, rel: str) -> set[int]:
        """Blocks a version's kept blocks file holds on every replica (a crash may have cut
        one replica's append short: those are appended again there)."""
        found = None
        for n in self.replicas.healthy:
            try:
                here = set(delta_index(self.replicas.drives[n], rel))
            except (PqcfsError, OSError) as e:
                log.warning("%s: %s; its blocks are kept again", self.replicas.drives[n].describe(rel), e)
                here = set()
            found = here if found is None else found & here
        return found or set()

    def before_remove(self, node_id: bytes, counter: int, data_path: str) -> bool:
        """The file is about to be removed: True when it was moved to the snapshots' data
        instead, whole, as the version it is now (for a large one, the end of its chain)."""
        h = self.held.get(node_id)
        if h is None or counter < h.counter:
            return False
        src = f"{TREE_DIR}/{data_path}"
        dst = data_rel(node_id, counter)
        if not self._keep(node_id, h.counter, lambda d: d.rename(src, dst), [src, dst]):
            # History yielded half way: what was not moved is removed, as asked.
            for n in self.replicas.healthy:
                try:
                    self.replicas.drives[n].unlink(src)
                except FileNotFoundError:
                    pass
        return True

    def _keep(self, node_id: bytes, counter: int, op, rels: list[str], pop: bool = True) -> bool:
        """Run op(drive) on every replica while version counter of node_id is held (a full
        drive makes history yield: the oldest snapshot goes, and the op is tried again);
        False when history yielded on the way and some replica was left out (nothing holds
        that version any more). pop: the version is complete afterwards."""
        replicas, everywhere = self.replicas, True
        for rel in rels:
            replicas.on_change(rel)
        for n in replicas.healthy:
            drive = replicas.drives[n]
            while True:
                if not self._holds(node_id, counter):
                    everywhere = False
                    break
                try:
                    op(drive)
                    drive.fsync_dir(DATA)
                    break
                except (OSError, NoSpace) as e:
                    if _full(e) and self._yield("a drive is full", keep_one=False):
                        continue     # the oldest snapshot is gone: try again (unless nothing holds it now)
                    if not _full(e) and replicas.survives(n, e):
                        break
                    raise
        if pop and self._holds(node_id, counter):
            del self.held[node_id]
            try:
                self.kept_bytes += self.store.drives[replicas.healthy[0]].lstat(rels[-1]).st_size
            except OSError:
                pass
            self._within_share()
        return everywhere

    # --- create, delete, thin -----------------------------------------------------------

    def create(self, vfs, label: str = "", kind: str = "manual") -> fmt.Listed:
        """A snapshot of vfs now (the caller holds the tree still: no request in between)."""
        if not self.store.writable:
            raise PqcfsError("the vault is open read-only: no snapshot can be taken")
        if kind not in fmt.KINDS or not isinstance(label, str) or len(label.encode()) > LABEL_MAX \
                or any(c in label for c in "\n\r\0"):
            raise PqcfsError(f"a snapshot's label is one line of at most {LABEL_MAX} bytes")
        self.store.prepare()
        head, data, held = take.take(vfs, self.store.key, self.vault_id, label, kind)
        self.store.write_manifest(head.snap_id, data)
        listed = fmt.Listed(snap_id=head.snap_id, created=head.created, label=label, kind=kind,
                            digest=blake3.blake3(data).digest(), size=len(data), files=head.files)
        self.index.snapshots.append(listed)
        if len(self.index.snapshots) > fmt.MAX_SNAPSHOTS:
            self.index.snapshots.pop()
            raise PqcfsError(f"a vault holds at most {fmt.MAX_SNAPSHOTS} snapshots; delete some first")
        self.store.commit(self.index)       # the snapshot exists from here on
        self._recorded()
        self.held = {node_id: Held(counter, size) for node_id, (counter, size) in held.items()}
        # The manifest's hash in the audit log (MAC-chained, and signed at each checkpoint)
        # ties the snapshot's whole tree to the record of its making.
        self.on_event("snapshot-created", snapshot=head.snap_id.hex(), label=label, kind=kind, files=head.files,
                      manifest_bytes=len(data), manifest_blake3=listed.digest.hex())
        if self.index.policy is not None:
            self.thin()
        return listed

    def delete(self, snap_ids: list[bytes], why: str = "asked") -> tuple[int, int]:
        """Remove snapshots and what only they held; returns (files, bytes) freed."""
        gone = set(snap_ids)
        self.index.snapshots = [s for s in self.index.snapshots if s.snap_id not in gone]
        self.store.commit(self.index)       # from here on they are gone; the rest is cleanup
        self._recorded()
        for snap_id in snap_ids:
            self.on_event("snapshot-deleted", snapshot=snap_id.hex(), why=why)
        return self.collect()

    def collect(self) -> tuple[int, int]:
        """Kept files no listed snapshot needs leave every replica, then manifests the
        index does not list. In that order: a manifest left over says that a cleanup was
        cut short (a crash), and the next session (unfinished_cleanup) does it again."""
        freed = self.store.drop_unreferenced(self.referenced())
        self.store.sweep_manifests({s.snap_id for s in self.index.snapshots})
        self._load_held()
        return freed

    def referenced(self) -> set[str]:
        """Names of the kept files some listed snapshot reads (store.needed)."""
        referenced: set[str] = set()
        chains = self.store.chains()
        for listed in self.index.snapshots:
            for node_id, counter, _, _ in self.manifest(listed).files():
                for k, delta in needed(chains.get(node_id, []), counter):
                    referenced.add((delta_name if delta else data_name)(node_id, k))
        return referenced

    def unfinished_cleanup(self) -> bool:
        """A create or delete cut short left a manifest the index does not list (or a
        copy half made): collect what nothing holds now."""
        listed = {s.snap_id.hex() + ".s" for s in self.index.snapshots}
        drive = self.store.drives[self.store.healthy[0]]
        strays = [n for n in self.store.listing(drive) if n.endswith(".s") and n not in listed]
        half_made = [n for n in self.store.kept_listing(drive) if n.startswith("t.")]
        if not (strays or half_made):
            return False
        log.info("snapshots: finishing a cleanup a crash cut short (%d manifests, %d partial copies)",
                 len(strays), len(half_made))
        self.collect()
        return True

    def thin(self, now_ns: int | None = None) -> list[bytes]:
        policy = self.index.policy
        if policy is None:
            return []
        gone = policy_mod.thin(self.index.snapshots, now_ns or time.time_ns(), policy.keep_s)
        if gone:
            self.delete([s.snap_id for s in self.index.snapshots if s.snap_id in gone], why="thinned")
        return sorted(gone)

    def set_policy(self, policy: fmt.Policy | None) -> None:
        self.index.policy = policy
        self.store.commit(self.index)
        self._recorded()
        self.on_event("history-policy", keep=policy.keep_s if policy else None,
                      max_space=policy.max_space_pct if policy else None)

    def _recorded(self) -> None:
        try:
            seen.record_snapshots(self.vault_id, self.root_key, self.index.seq)
        except (OSError, PqcfsError) as e:
            log.warning("could not record the snapshot list's state on this machine (%s)", e)

    # --- space ------------------------------------------------------------------------

    def share_limit(self) -> int | None:
        policy = self.index.policy
        if policy is None:
            return None
        st = self.store.drives[self.store.healthy[0]].statvfs()
        return int(st.f_blocks * st.f_frsize * policy.max_space_pct / 100)

    def _within_share(self) -> None:
        limit = self.share_limit()
        while limit is not None and self.kept_bytes > limit:
            if not self._yield(f"history holds more than {self.index.policy.max_space_pct:g}% of the drive",
                               keep_one=True, kinds=("auto",)):
                break

    def _yield(self, why: str, keep_one: bool, kinds=fmt.KINDS) -> bool:
        """Delete the oldest snapshot (of kinds); False when there is none to delete."""
        candidates = [s for s in self.index.snapshots if s.kind in kinds]
        if keep_one and len(self.index.snapshots) <= 1:
            return False
        if not candidates:
            return False
        oldest = candidates[0]
        log.warning("history yields: snapshot %s (%s) deleted because %s", oldest.snap_id.hex()[:12],
                    oldest.label or oldest.kind, why)
        self.on_event("history-yielded", snapshot=oldest.snap_id.hex(), label=oldest.label, why=why)
        self.delete([oldest.snap_id], why="history-yielded")
        return True


class BlindKeeper:
    """What a read-write grantee's tree calls instead: a grantee can not read the snapshot
    index (its key comes from the owner's root key), so it can not tell which versions a
    snapshot holds. While the vault has snapshots it keeps every version it changes or
    removes; the owner's next collect drops the ones no snapshot holds. (A grantee holds
    the keys of its subtree: what it keeps is authenticated like the owner's copies, and
    it could as well forge them; docs/snapshots.md says so.)"""

    def __init__(self, replicas):
        self.replicas = replicas

    def _active(self) -> bool:
        drive = self.replicas.drive()
        return drive.kind(INDEX) == "file" and drive.kind(DATA) == "dir"

    def before_change(self, node_id: bytes, counter: int, data_path: str) -> None:
        if self._active():
            self._each(node_id, counter, lambda d, src, dst: d.copy_from(d, src, to=dst, use_reserve=False), data_path)

    def before_blocks(self, node_id: bytes, data_path: str, first: int, last: int, block_size: int) -> None:
        pass     # every version it changes was kept whole at the open's first change

    def before_remove(self, node_id: bytes, counter: int, data_path: str) -> bool:
        if not self._active():
            return False
        self._each(node_id, counter, lambda d, src, dst: d.rename(src, dst), data_path)
        return True

    def _each(self, node_id: bytes, counter: int, op, data_path: str) -> None:
        src, dst = f"{TREE_DIR}/{data_path}", data_rel(node_id, counter)
        for rel in (src, dst):
            self.replicas.on_change(rel)

        def keep(n: int) -> None:
            drive = self.replicas.drives[n]
            if drive.kind(DATA) == "dir" and not drive.exists(dst):
                op(drive, src, dst)
                drive.fsync_dir(DATA)
        self.replicas.each(keep)
