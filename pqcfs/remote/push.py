"""Pushing a vault to a remote: objects first, the epoch record last.

A push has three parts. `check` (no drive touched) authenticates the remote's newest epoch
against this machine's index and lists the objects it holds. `stage` is the consistent
point: it walks the primary replica, reads every file whose stat signature changed (or
whose object the remote lost) into the staging directory under its object id, and builds
the directory pages; a mounted vault runs it between two requests, so it sees the vault as
one moment left it. `send` uploads what the remote lacks (rclone: in parallel, retried),
then commits the epoch record (written beside, then renamed: a remote never shows half a
record), then records the epoch in the index, then removes objects no kept epoch needs.

Killed anywhere, the remote still holds the last committed epoch whole; the next push
stages again and sends only what the remote does not hold yet.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field

import blake3

from pqcfs.errors import CryptoError, DamagedStructure, DriveError, PqcfsError, RemoteError, RolledBack
from pqcfs.format import remote as fmt
from pqcfs.format import vault_header
from pqcfs.grantee_log import AUDIT_PREFIX
from pqcfs.remote import registry
from pqcfs.remote.registry import Index, RemoteEntry
from pqcfs.store.drive import Drive, TEMP_PREFIX, is_sparse

log = logging.getLogger(__name__)
CHUNK = 1 << 20
SAMPLE = 16        # objects of the last epoch each push downloads and checks (a changed byte is found)
SAMPLE_MAX = 8 << 20   # ... among those no larger than this
OBJECTS, EPOCHS, HEADER = "objects", "epochs", "pqcfs.vault"
TOP_FILES = (vault_header.FILE_NAME, "pqcfs.audit")
TREE = "tree"
SNAPSHOTS = "pqcfs.snapshots"     # snapshots/store.py: its index, manifests and kept versions, like the tree's files


def pushed_top(name: str, kind: str) -> bool:
    """What of a replica's top directory a remote holds: what a drive shares with every other
    (the header, the audit logs, the tree, the snapshots); never a replica's own files (state,
    intent, change journal, reserve, quarantine) or a user's files beside the vault."""
    if kind == "dir":
        return name in (TREE, SNAPSHOTS)
    return name in TOP_FILES or (name.startswith(AUDIT_PREFIX) and len(name) > len(AUDIT_PREFIX)
                                 and all(c in "0123456789abcdef" for c in name[len(AUDIT_PREFIX):]))


def _in_tree(name: str) -> bool:
    # A replacement's temporary file is not part of the vault; nor is anything a FUSE
    # backing store or a desktop leaves (a leading dot: never an encrypted name).
    return not name.startswith((TEMP_PREFIX, "."))


@dataclass
class Checked:
    """What the remote holds, authenticated against this machine's index."""
    index: Index
    present: dict[str, int]          # object id -> size
    newest: int
    adopted: bool = False            # the remote's newest epoch was not this machine's (say so)
    base: str | None = None          # the last session of the drives' history the newest epoch holds
    damaged: list[str] = field(default_factory=list)   # objects found changed or missing (sent again)


@dataclass
class Staged:
    index: Index                     # the index the epoch will have (epoch fields set at commit)
    top: str
    header: bytes
    state: dict
    sizes: dict[str, int]            # every object the epoch needs -> size
    staged: list[str] = field(default_factory=list)    # object paths under the staging directory
    files: int = 0
    size: int = 0
    damaged: list[str] = field(default_factory=list)


@dataclass
class PushResult:
    epoch: int
    objects_sent: int
    bytes_sent: int
    files: int
    size: int
    removed: int
    damaged: list[str]
    adopted: bool
    unchanged: bool


class Pusher:
    def __init__(self, entry: RemoteEntry, vault_id: bytes, root_key: bytes, bwlimit: str | None = None):
        self.entry, self.vault_id, self.root_key = entry, vault_id, root_key
        # rclone's file lists go beside the staging directory, swept here: what a push killed
        # mid-way left goes with the next one.
        self.remote = dataclasses.replace(entry.remote(bwlimit), scratch=entry.file(vault_id, "lists"))
        shutil.rmtree(self.remote.scratch, ignore_errors=True)
        self.keys = fmt.RemoteKeys.derive(root_key)
        self.staging = entry.file(vault_id, "staging")

    # --- check: the remote against this machine's record of it ---

    def check(self) -> Checked:
        index = registry.load_index(self.entry, self.vault_id, self.root_key)
        numbers = epoch_numbers(self.remote)
        newest = numbers[-1] if numbers else 0
        adopted, newest_state = False, None
        if newest < index.epoch:
            raise RolledBack(f"remote {self.entry.name!r} went back: it holds epoch {newest or 'none'}, and this "
                             f"machine committed epoch {index.epoch} there (restored from an old copy, or emptied). "
                             f"Nothing was sent. `pqcfs fsck --remote` shows what it holds")
        if newest:
            data = self.remote.read(f"{EPOCHS}/{fmt.epoch_name(newest)}", fmt.EPOCH_CAP)
            if data is None:
                raise RemoteError(f"remote {self.entry.name!r}: epoch record {newest} vanished while it was read")
            digest = blake3.blake3(data).hexdigest()
            if newest == index.epoch and digest != index.epoch_digest:
                raise CryptoError(f"remote {self.entry.name!r}: epoch record {newest} is not the one this machine "
                                  "committed (replaced or changed on the remote). Nothing was sent")
            newest_state = fmt.open_epoch(self.keys, self.vault_id, newest, data).state   # authenticates, or raises
            if newest > index.epoch:
                # Pushed by another machine holding the key (or this machine's index was lost):
                # authentic, so it is the remote's state; the next epoch follows it.
                adopted = True
                index.epoch, index.epoch_digest = newest, digest
        present = {}
        for rel, size in self.remote.list_files(OBJECTS).items():
            oid = rel.rsplit("/", 1)[-1]
            if fmt.is_object_id(oid) and rel == fmt.object_path(oid):
                present[oid] = size
        checked = Checked(index, present, newest, adopted, base=history_base(newest_state) if newest_state else None)
        checked.damaged = [oid for oid in index.objects if oid not in present]
        self._sample(checked)
        for oid in checked.damaged:
            present.pop(oid, None)      # staged again from the drive, and sent
        if checked.damaged:
            log.warning("remote %s: %d object(s) of epoch %d were missing or changed there (%s); sent again",
                        self.entry.name, len(checked.damaged), index.epoch, ", ".join(o[:16] for o in checked.damaged[:5]))
        return checked

    def _sample(self, checked: Checked) -> None:
        """A few objects the last epoch needs, downloaded and checked against their keyed
        ids: a remote that changes bytes is found by pushes too, not only by fsck --remote."""
        held = [o for o in checked.index.objects if checked.present.get(o, SAMPLE_MAX + 1) <= SAMPLE_MAX]
        chosen = random.sample(held, min(SAMPLE, len(held)))
        if not chosen:
            return
        with tempfile.TemporaryDirectory(prefix="pqcfs-push-sample-") as work:
            self.remote.download(OBJECTS, work, [fmt.object_path(o) for o in chosen])
            for oid in chosen:
                try:
                    if file_id(self.keys, os.path.join(work, fmt.object_path(oid))) != oid:
                        checked.damaged.append(oid)
                except FileNotFoundError:
                    checked.damaged.append(oid)

    # --- stage: the consistent point ---

    def stage(self, drive: Drive, checked: Checked, state: dict) -> Staged:
        """Walk the primary (nothing may change it meanwhile: the caller holds the vault's
        lock, or runs this between two requests of the mount)."""
        if checked.base and checked.base not in state.get("lineage", []):
            # The remote holds a state these drives never were in: pushed from other drives of
            # this vault (recovered ones, or ones used apart). Pushing would replace it.
            raise DriveError(f"remote {self.entry.name!r} holds epoch {checked.newest}, pushed from drives whose "
                             f"history {drive.location} does not continue (other drives of this vault: recovered "
                             "ones, or ones used apart); pushing would replace what they pushed. Push from those "
                             "drives, or give these drives a remote of their own (`pqcfs remote add --name`)")
        shutil.rmtree(self.staging, ignore_errors=True)
        os.makedirs(os.path.join(self.staging, OBJECTS), mode=0o700)
        old, present = checked.index, checked.present
        new = Index(epoch=old.epoch, epoch_digest=old.epoch_digest, header=old.header)
        staged = Staged(new, "", b"", state, {})
        order, pages = [""], {"": fmt.Page()}
        stack = [""]
        while stack:                     # pre-order: every directory after its parent
            rel = stack.pop()
            for name, kind in sorted(drive.scandir(rel)):
                child = f"{rel}/{name}" if rel else name
                if not (pushed_top(name, kind) if not rel else _in_tree(name)):
                    continue
                if kind == "dir":
                    pages[child] = fmt.Page()
                    order.append(child)
                    stack.append(child)
                elif kind == "file":
                    found = self._file(drive, child, old, present, staged)
                    if found is not None:
                        pages[rel].files[name] = found
                else:
                    staged.damaged.append(child)
                    log.error("%s is not a regular file or directory: not pushed", drive.describe(child))
        for rel in reversed(order):      # children before their parents
            pid = self._page(rel, pages[rel], old, present, staged)
            if rel:
                parent, _, name = rel.rpartition("/")
                pages[parent].dirs[name] = pid
            else:
                staged.top = pid
        header_name = pages[""].files.get(vault_header.FILE_NAME)
        if header_name is None:
            raise DamagedStructure(f"{drive.location} holds no vault header to push")
        staged.header = drive.read(vault_header.FILE_NAME, vault_header.MAX_FILE)
        return staged

    def _file(self, drive: Drive, rel: str, old: Index, present: dict, staged: Staged):
        st = drive.lstat(rel)
        if is_sparse(st):
            staged.damaged.append(rel)
            log.error("%s is sparse (mostly holes): not a file pqcfs wrote; not pushed", drive.describe(rel))
            return None
        sig = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        known = old.files.get(rel)
        if known and known[:4] == sig and present.get(known[4]) == st.st_size:
            oid = known[4]
        else:
            oid, size = self._copy_in(drive, rel)
            if present.get(oid) != size:
                staged.staged.append(fmt.object_path(oid))
            else:
                os.unlink(os.path.join(self.staging, OBJECTS, fmt.object_path(oid)))
            sig[0] = size
        staged.index.files[rel] = sig + [oid]
        staged.sizes[oid] = sig[0]
        staged.files += 1
        staged.size += sig[0]
        return oid, sig[0]

    def _copy_in(self, drive: Drive, rel: str) -> tuple[str, int]:
        """The file's bytes into the staging directory, named by their object id."""
        fd = drive.open(rel)
        hasher, size = self.keys.hasher(), 0
        tmp = os.path.join(self.staging, "incoming")
        try:
            with open(tmp, "wb") as out:
                while True:
                    chunk = os.read(fd, CHUNK)
                    if not chunk:
                        break
                    hasher.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
        finally:
            os.close(fd)
        oid = hasher.hexdigest()
        self._place(tmp, oid)
        return oid, size

    def _place(self, tmp: str, oid: str) -> None:
        target = os.path.join(self.staging, OBJECTS, fmt.object_path(oid))
        os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
        os.replace(tmp, target)

    def _page(self, rel: str, page: fmt.Page, old: Index, present: dict, staged: Staged) -> str:
        plain = page.plain()
        digest = blake3.blake3(plain).hexdigest()
        known = old.pages.get(rel)
        if known and known[0] == digest and known[1] in present:
            pid = known[1]
            staged.sizes[pid] = present[pid]
        else:
            sealed = fmt.seal_page(self.keys, self.vault_id, plain)
            pid = self.keys.object_id(sealed)
            tmp = os.path.join(self.staging, "incoming")
            with open(tmp, "wb") as out:
                out.write(sealed)
            self._place(tmp, pid)
            staged.staged.append(fmt.object_path(pid))
            staged.sizes[pid] = len(sealed)
        staged.index.pages[rel] = [digest, pid]
        return pid

    # --- send: upload, commit, collect ---

    def send(self, checked: Checked, staged: Staged, on_bytes=None) -> PushResult:
        old = checked.index
        needed = set(staged.sizes)
        unchanged = (not staged.staged and old.epoch and set(old.objects) == needed
                     and old.header == self.keys.object_id(staged.header))
        if unchanged:
            shutil.rmtree(self.staging, ignore_errors=True)
            self._status(old.epoch, 0, 0)
            return PushResult(old.epoch, 0, 0, staged.files, staged.size, 0, staged.damaged, checked.adopted, True)
        staged.staged = sorted(set(staged.staged))      # two files of the same bytes are one object
        sent_bytes = sum(os.path.getsize(os.path.join(self.staging, OBJECTS, p)) for p in staged.staged)
        self.remote.upload(os.path.join(self.staging, OBJECTS), OBJECTS, staged.staged, on_bytes)
        header_id = self.keys.object_id(staged.header)
        if header_id != old.header:
            # Unlock needs the header before any key: it sits at the remote's top, as on a drive.
            self.remote.write(HEADER, staged.header)
        number = max(old.epoch, checked.newest) + 1
        record = fmt.seal_epoch(self.keys, self.vault_id, fmt.Epoch(
            number=number, time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), top=staged.top,
            header=header_id, state=staged.state, objects=len(needed), files=staged.files, size=staged.size))
        part = f"{EPOCHS}/{fmt.epoch_name(number)}.part"
        self.remote.write(part, record)
        self.remote.move(part, f"{EPOCHS}/{fmt.epoch_name(number)}")     # the commit
        new = staged.index
        new.epoch, new.epoch_digest, new.header = number, blake3.blake3(record).hexdigest(), header_id
        new.objects = sorted(needed)
        new.previous = sorted(set(old.objects) - needed)
        new.pushed_at = time.time()
        registry.save_index(self.entry, self.vault_id, self.root_key, new)
        shutil.rmtree(self.staging, ignore_errors=True)
        removed = self._collect(checked, staged, new)
        self._status(number, len(staged.staged), sent_bytes)
        return PushResult(number, len(staged.staged), sent_bytes, staged.files, staged.size, removed,
                          staged.damaged, checked.adopted, False)

    def _collect(self, checked: Checked, staged: Staged, new: Index) -> int:
        """Objects neither of the two newest epochs needs, and epoch records before them.
        A failure here loses nothing: they are tried again after the next push."""
        keep = set(new.objects) | set(new.previous)
        doomed = [fmt.object_path(o) for o in set(checked.present) | {p.rsplit("/", 1)[-1] for p in staged.staged}
                  if o not in keep]
        try:
            self.remote.delete_files(OBJECTS, doomed)
            for rel in self.remote.list_files(EPOCHS):
                number = fmt.parse_epoch_name(rel)
                if (number is not None and number < new.epoch - 1) or (number is None and rel.endswith(".part")):
                    self.remote.delete_file(f"{EPOCHS}/{rel}")
        except RemoteError as e:
            log.warning("remote %s: old objects were not removed (%s); the next push tries again", self.entry.name, e)
            return 0
        return len(doomed)

    def _status(self, epoch: int, objects: int, size: int) -> None:
        registry.save_status(self.entry, self.vault_id, epoch=epoch, pushed_at=time.time(), objects_sent=objects,
                             bytes_sent=size, error=None)

    def failed(self, error: Exception) -> None:
        registry.save_status(self.entry, self.vault_id, error=str(error), failed_at=time.time())


def file_id(keys: fmt.RemoteKeys, path: str) -> str:
    """The object id of a downloaded file (a local file of ours, read in chunks)."""
    hasher = keys.hasher()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def epoch_numbers(remote) -> list[int]:
    numbers = []
    for rel in remote.list_files(EPOCHS):
        number = fmt.parse_epoch_name(rel)
        if number is not None:
            numbers.append(number)
    return sorted(numbers)


def history_base(state: dict) -> str | None:
    """The last session of the pushed drives' history that a recovered drive claims (and
    that drives continuing it hold): a push from inside a session that went on after it
    does not claim that session (restore.py writes the same)."""
    lineage = [x for x in state.get("lineage", []) if isinstance(x, str)]
    base = lineage if state.get("clean", False) else lineage[:-1]
    return base[-1] if base else None


def recovered_lineage(state: dict, session_id: str) -> list[str]:
    lineage = [x for x in state.get("lineage", []) if isinstance(x, str)]
    return (lineage if state.get("clean", False) else lineage[:-1]) + [session_id]


def replica_state_fields(state) -> dict:
    """What a drive recovered from this epoch continues: the pushed replica's history."""
    return {"lineage": list(state.lineage), "generation": state.generation, "audit_head": state.audit_head,
            "grantee_heads": state.grantee_heads, "clean": state.clean}


def behind(drive: Drive, index: Index) -> tuple[int, int]:
    """Files changed since the last push (stat signatures only) and their bytes. The audit
    logs are not counted: every command appends to them (a push too, after its consistent
    point), and they go with the next push of anything else."""
    changed, size, seen = 0, 0, set()
    stack = [""]
    while stack:
        rel = stack.pop()
        for name, kind in drive.scandir(rel):
            child = f"{rel}/{name}" if rel else name
            if not (pushed_top(name, kind) if not rel else _in_tree(name)):
                continue
            if kind == "dir":
                stack.append(child)
            elif kind == "file":
                seen.add(child)
                if not rel and name.startswith("pqcfs.audit"):
                    continue
                st = drive.lstat(child)
                known = index.files.get(child)
                if not known or known[:4] != [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]:
                    changed += 1
                    size += st.st_size
    gone = [rel for rel in set(index.files) - seen if not rel.startswith("pqcfs.audit")]
    return changed + len(gone), size


def status(vault_id: bytes, primary: str | None) -> list[dict]:
    """For `pqcfs status VAULT`: each remote, its last push and, when the primary is here,
    how many files changed since (stat signatures against the index; no key is used, so
    this only informs, never decides)."""
    out = []
    for entry in registry.load(vault_id):
        last = registry.load_status(entry, vault_id)
        row = {"name": entry.name, "path": entry.path, "epoch": last.get("epoch"), "pushed_at": last.get("pushed_at"),
               "error": last.get("error"), "failed_at": last.get("failed_at")}
        if primary is not None:
            try:
                with Drive(primary) as drive:
                    row["changes_behind"], row["bytes_behind"] = behind(drive, registry.peek_index(entry, vault_id))
            except (OSError, PqcfsError):
                pass
        out.append(row)
    return out
