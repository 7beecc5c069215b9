"""A vault's snapshots while a session has it: create, delete, thin, and the keeper the live
tree calls before it changes or removes a file that a snapshot holds.

Copy-on-write, one file at a time: a snapshot records each file's node id and write
counter; the first change after it (which raises the counter) first copies the file's
ciphertext to `pqcfs.snapshots/data/<node>.<counter>`, and an unlink (or a rename over
it) moves the file there instead of removing it. A file no later change touches is never
copied: every snapshot that holds it reads the live one. Only the newest snapshot needs
to be asked (`held`): a file unchanged since an older snapshot is unchanged since every
later one too, so the newest holds the same counter.

Space: what only history holds never makes the live vault hit ENOSPC. A copy that does
not fit removes the oldest snapshot (and what only it held) and tries again; with a
policy, automatic snapshots beyond its share of the drive go the same way. Each is said
(log and audit: `history-yielded`).
"""

from __future__ import annotations

import errno
import logging
import time

import blake3

from pqcfs.errors import NoSpace, NoSuchSnapshot, PqcfsError, RolledBack
from pqcfs.format import snapshot as fmt
from pqcfs.snapshots import manifest as manifest_mod
from pqcfs.snapshots import policy as policy_mod
from pqcfs.snapshots import take
from pqcfs.snapshots.store import DATA, INDEX, SnapshotStore, data_name, data_rel
from pqcfs.store import seen
from pqcfs.store.replicas import TREE_DIR

log = logging.getLogger(__name__)
LABEL_MAX = 200


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
        self.held: dict[bytes, int] = {}
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
        for n in self.store.healthy[1:]:     # kept means kept on every replica (a crash may have cut a copy short)
            kept = {name: size for name, size in self.store.kept(n).items() if name in kept}
        if not self.index.snapshots:
            self.held = {}
            return
        newest = self.manifest(self.index.snapshots[-1])
        self.held = {n: c for n, c, _, _ in newest.files() if data_name(n, c) not in kept}

    # --- the keeper: what the live tree calls (VaultFS.history) -------------------------

    def attach(self, replicas) -> None:
        """Keep files through the session's replica set (its failures, its change journal)."""
        self.replicas = replicas

    def before_change(self, node_id: bytes, counter: int, data_path: str) -> None:
        """The file at data_path (tree-relative) is about to change for the first time
        since the newest snapshot: keep a copy when a snapshot holds this version."""
        if self.held.get(node_id) != counter:
            return
        src = f"{TREE_DIR}/{data_path}"
        self._keep(node_id, counter, lambda d, dst: d.copy_from(d, src, to=dst, use_reserve=False), [src])

    def before_remove(self, node_id: bytes, counter: int, data_path: str) -> bool:
        """The file is about to be removed: True when it was moved to the snapshots'
        data instead (the caller removes nothing)."""
        if self.held.get(node_id) != counter:
            return False
        src = f"{TREE_DIR}/{data_path}"
        if not self._keep(node_id, counter, lambda d, dst: d.rename(src, dst), [src]):
            # History yielded half way: what was not moved is removed, as asked.
            for n in self.replicas.healthy:
                try:
                    self.replicas.drives[n].unlink(src)
                except FileNotFoundError:
                    pass
        return True

    def _keep(self, node_id: bytes, counter: int, op, sources: list[str]) -> bool:
        """Run op(drive, dst) on every replica; False when history yielded on the way
        and some replica was left out (nothing holds that version any more)."""
        dst = data_rel(node_id, counter)
        replicas, everywhere = self.replicas, True
        for rel in (*sources, dst):
            replicas.on_change(rel)
        for n in replicas.healthy:
            drive = replicas.drives[n]
            while True:
                if self.held.get(node_id) != counter:
                    everywhere = False
                    break
                try:
                    if not drive.exists(dst):
                        op(drive, dst)
                        drive.fsync_dir(DATA)
                    break
                except (OSError, NoSpace) as e:
                    if _full(e) and self._yield("a drive is full", keep_one=False):
                        continue     # the oldest snapshot is gone: try again (unless nothing holds it now)
                    if not _full(e) and replicas.survives(n, e):
                        break
                    raise
        if self.held.pop(node_id, None) is not None:
            try:
                self.kept_bytes += self.store.drives[replicas.healthy[0]].lstat(dst).st_size
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
        self.held = held
        self.on_event("snapshot-created", snapshot=head.snap_id.hex(), label=label, kind=kind, files=head.files,
                      manifest_bytes=len(data))
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
        referenced: set[str] = set()
        for listed in self.index.snapshots:
            referenced |= self.manifest(listed).kept_names()
        freed = self.store.drop_unreferenced(referenced)
        self.store.sweep_manifests({s.snap_id for s in self.index.snapshots})
        self._load_held()
        return freed

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
