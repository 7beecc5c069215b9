"""Reading a remote back: its epochs authenticated, its pages and objects checked against
their keyed ids, and from them a complete replica written onto new drives (recover), or
a report of what the remote lost or changed (fsck --remote).

Every byte comes from an untrusted remote: an epoch record is authenticated before a field
of it is used, a page or an object is used only when its keyed id matches (nothing but the
key's holder makes one) and its size is the one its page gives, and each read is capped.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import tempfile
from dataclasses import dataclass, field

import blake3

from pqcfs.errors import CryptoError, DamagedStructure, RemoteError, RolledBack
from pqcfs.format import remote as fmt
from pqcfs.remote.push import EPOCHS, HEADER, OBJECTS, epoch_numbers, file_id
from pqcfs.remote.rclone import Remote
from pqcfs.store.drive import Drive
from pqcfs.format import vault_header



@dataclass
class Tree:
    """An epoch's replica, as its pages list it."""
    dirs: list[str] = field(default_factory=list)                   # parents first
    files: list[tuple[str, str, int]] = field(default_factory=list)  # (rel, object id, size)
    pages: dict[str, tuple[str, str]] = field(default_factory=dict)  # dir rel -> (plain digest, page id)


@dataclass
class Report:
    epoch: int
    files: int = 0
    checked: int = 0
    missing: list[str] = field(default_factory=list)     # "rel (object id)" the remote does not hold
    changed: list[str] = field(default_factory=list)     # held, but not what the epoch committed

    @property
    def ok(self) -> bool:
        return not (self.missing or self.changed)


def read_header(remote: Remote) -> bytes:
    data = remote.read(HEADER, vault_header.MAX_FILE)
    if data is None:
        raise RemoteError(f"{remote.path} holds no pqcfs vault (no {HEADER}; was anything pushed there?)")
    return data


class Reader:
    def __init__(self, remote: Remote, vault_id: bytes, root_key: bytes, work: str):
        # work: a directory for downloads (on the target drive for recover), and for rclone's
        # file lists; cleanup() removes it all.
        self.remote, self.vault_id = dataclasses.replace(remote, scratch=work), vault_id
        self.keys = fmt.RemoteKeys.derive(root_key)
        self.work = work

    def epoch(self, seen: int = 0, accept_older: bool = False, warn=lambda text: None) -> tuple[fmt.Epoch, bytes]:
        """The newest epoch that authenticates. One that fails is named; an older one is used
        only with accept_older, as is an epoch below what this machine committed (seen)."""
        numbers = epoch_numbers(self.remote)
        if not numbers:
            raise RemoteError(f"{self.remote.path} holds no committed epoch (no push completed there)")
        for number in reversed(numbers):
            data = self.remote.read(f"{EPOCHS}/{fmt.epoch_name(number)}", fmt.EPOCH_CAP)
            try:
                if data is None:
                    raise RemoteError(f"epoch record {number} vanished while it was read")
                epoch = fmt.open_epoch(self.keys, self.vault_id, number, data)
            except (CryptoError, DamagedStructure, RemoteError) as e:
                if not accept_older:
                    raise type(e)(f"{self.remote.path}: {e}; --accept-older uses the newest earlier epoch "
                                  "that authenticates") from None
                warn(f"{e}: skipped")
                continue
            if number < seen:
                if not accept_older:
                    raise RolledBack(f"{self.remote.path} holds epoch {number}, older than epoch {seen} this machine "
                                     f"pushed there: the remote was rolled back (or restored from an old copy). "
                                     f"--accept-older recovers epoch {number} anyway, losing what epochs "
                                     f"{number + 1}-{seen} held")
                warn(f"the remote holds epoch {number}, older than epoch {seen} this machine pushed; what "
                     f"epochs {number + 1}-{seen} held is not in it")
            return epoch, data
        raise CryptoError(f"{self.remote.path}: no epoch record authenticates")

    def tree(self, epoch: fmt.Epoch) -> Tree:
        """Every page of the epoch, fetched a level at a time, each checked against its id."""
        tree = Tree()
        level = {"": epoch.top}
        seen_pages = set()
        while level:
            pages = self._fetch_pages(level)
            following = {}
            for rel, (page, plain_digest) in pages.items():
                tree.dirs.append(rel)
                tree.pages[rel] = (plain_digest, level[rel])
                for name, pid in sorted(page.dirs.items()):
                    if pid in seen_pages:
                        raise DamagedStructure(f"{self.remote.path}: a directory page is listed twice (a loop)")
                    seen_pages.add(pid)
                    following[f"{rel}/{name}" if rel else name] = pid
                for name, (oid, size) in sorted(page.files.items()):
                    tree.files.append((f"{rel}/{name}" if rel else name, oid, size))
            level = following
        needed = {oid for _, oid, _ in tree.files} | {pid for _, pid in tree.pages.values()}
        if len(needed) != epoch.objects:
            raise DamagedStructure(f"{self.remote.path}: epoch {epoch.number}'s pages list {len(needed)} objects, "
                                   f"its record {epoch.objects}")
        return tree

    def _fetch_pages(self, level: dict[str, str]) -> dict:
        wanted = sorted(set(level.values()))
        where = os.path.join(self.work, "pages")
        os.makedirs(where, exist_ok=True)
        listed = self.remote.list_files(OBJECTS)
        for rel, pid in level.items():
            size = listed.get(fmt.object_path(pid))
            if size is None:
                raise RemoteError(f"{self.remote.path}: the page of directory {rel or '(top)'} ({pid[:16]}…) is "
                                  "missing from the remote")
            if size > fmt.PAGE_CAP:
                raise DamagedStructure(f"{self.remote.path}: the page of directory {rel or '(top)'} is {size} bytes "
                                       f"(at most {fmt.PAGE_CAP})")
        self.remote.download(OBJECTS, where, [fmt.object_path(p) for p in wanted])
        out = {}
        for rel, pid in level.items():
            path = os.path.join(where, fmt.object_path(pid))
            try:
                with open(path, "rb") as f:
                    data = f.read(fmt.PAGE_CAP + 1)
            except FileNotFoundError:
                raise RemoteError(f"{self.remote.path}: the page of directory {rel or '(top)'} ({pid}) is missing "
                                  "from the remote") from None
            if self.keys.object_id(data) != pid:
                raise CryptoError(f"{self.remote.path}: the page of directory {rel or '(top)'} ({pid}) was changed "
                                  "on the remote")
            page = fmt.open_page(self.keys, self.vault_id, data)
            out[rel] = (page, blake3.blake3(page.plain()).hexdigest())
        shutil.rmtree(where, ignore_errors=True)
        return out

    def fetch(self, files: list[tuple[str, str, int]], dest: str, on_bytes=None) -> tuple[list, list]:
        """Download the objects into dest/<object path>, then check each: (missing, changed)
        as "rel (id)" strings; what fails is removed, what passes stays."""
        objects = {oid: size for _, oid, size in files}
        # The listing first: only an object of the size its page gives is downloaded, so a
        # remote can not make a reader fetch more than the epoch holds.
        listed = self.remote.list_files(OBJECTS)
        missing_ids = {o for o in objects if fmt.object_path(o) not in listed}
        changed_ids = {o for o in objects if o not in missing_ids and listed[fmt.object_path(o)] != objects[o]}
        wanted = sorted(set(objects) - missing_ids - changed_ids)
        self.remote.download(OBJECTS, dest, [fmt.object_path(o) for o in wanted], on_bytes)
        for oid in wanted:
            path = os.path.join(dest, fmt.object_path(oid))
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                missing_ids.add(oid)
                continue
            if st.st_size != objects[oid] or file_id(self.keys, path) != oid:
                changed_ids.add(oid)
                os.unlink(path)
        missing = [f"{rel} ({oid[:16]}…)" for rel, oid, _ in files if oid in missing_ids]
        changed = [f"{rel} ({oid[:16]}…)" for rel, oid, _ in files if oid in changed_ids]
        return missing, changed


def check_remote(remote: Remote, vault_id: bytes, root_key: bytes, seen: int, sample: float | None,
                 on_bytes=None) -> Report:
    """fsck --remote: the newest epoch authenticated, every page checked, and every object
    (or a random sample of sample percent) downloaded and checked against its id."""
    with tempfile.TemporaryDirectory(prefix="pqcfs-fsck-remote-") as work:
        reader = Reader(remote, vault_id, root_key, work)
        epoch, _ = reader.epoch(seen)
        report = Report(epoch.number, files=0)
        tree = reader.tree(epoch)
        report.files = len(tree.files)
        files = tree.files
        if sample is not None and sample < 100:
            count = max(1, round(len(files) * sample / 100)) if files else 0
            files = random.sample(files, count)
        missing, changed = reader.fetch(files, os.path.join(work, "objects"), on_bytes)
        report.missing, report.changed = missing, changed
        report.checked = len(files)
        return report


class Recovery:
    """A complete replica written from an epoch: objects downloaded into a work directory on
    the new drive, checked, then moved into place; the replica state and last the header
    (a location with a header is a complete vault)."""

    def __init__(self, reader: Reader, epoch: fmt.Epoch, tree: Tree):
        self.reader, self.epoch, self.tree = reader, epoch, tree

    def write(self, drive: Drive, on_bytes=None) -> dict[str, list]:
        """The replica's files on the new drive (not its state, not its header yet), moved
        into place from the work directory there; returns rel -> [size, mtime_ns, ctime_ns,
        ino, object id] of what was written."""
        objects = os.path.join(self.reader.work, "objects")
        missing, changed = self.reader.fetch(self.tree.files, objects, on_bytes)
        if missing or changed:
            named = (missing + changed)[:5]
            raise CryptoError(f"{self.reader.remote.path}: epoch {self.epoch.number} can not be recovered whole: "
                              f"{len(missing)} object(s) missing and {len(changed)} changed on the remote "
                              f"({', '.join(named)}). Nothing was written as a vault")
        work_rel = os.path.relpath(objects, drive.location)
        for rel in self.tree.dirs:
            if rel:
                drive.mkdir(rel, 0o700)
        written, placed = {}, {}       # object id -> where it was moved to
        for rel, oid, size in self.tree.files:
            if rel == vault_header.FILE_NAME:
                continue          # the header goes last
            if oid in placed:     # the same bytes twice (never two ciphertexts, but cheap to allow)
                drive.write_atomic(rel, drive.read(placed[oid], size))
            else:
                drive.rename(f"{work_rel}/{fmt.object_path(oid)}", rel)
                placed[oid] = rel
            st = drive.lstat(rel)
            written[rel] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, oid]
        return written

    def header_bytes(self) -> bytes:
        oid = next((oid for rel, oid, _ in self.tree.files if rel == vault_header.FILE_NAME), None)
        if oid is None or oid != self.epoch.header:
            raise DamagedStructure(f"epoch {self.epoch.number} lists no vault header of its own")
        path = os.path.join(self.reader.work, "objects", fmt.object_path(oid))
        with open(path, "rb") as f:
            return f.read(vault_header.MAX_FILE + 1)


def cleanup(work: str) -> None:
    shutil.rmtree(work, ignore_errors=True)

