"""Reading ahead of a directory scan. A program that opens a directory's files one after
another in listing order (`tar c`, `cp -r`, `grep -r`, rsync) waits at each open for that
file's first pages to come from the drive: pqcfs reads and authenticates its header
before the open returns. Seen opening files in order, the next few files' first pages
are asked for ahead, so that their disk reads overlap the work on the ones before.

Bookkeeping only (which entries to ask for); the caller asks the drive. A directory's
listing is the list its readdir hands out, kept until the directory changes: a new list
starts the directory's count again."""

from __future__ import annotations

from collections import OrderedDict

AHEAD = 8                 # files asked for beyond the one being opened
HEAD_BYTES = 64 << 10     # of each: its header and first blocks (a small file whole)
DIRECTORIES = 4           # scans followed at once (one per directory)


class _Scan:
    __slots__ = ("listing", "index", "last", "upto")

    def __init__(self, listing: list):
        self.listing = listing
        self.index = {disk_name: n for n, (_, disk_name) in enumerate(listing)}
        self.last = -1       # position of the last file opened
        self.upto = 0        # positions below this were asked for already


class ScanAhead:
    def __init__(self, ahead: int = AHEAD):
        self.ahead = ahead
        self._scans: OrderedDict[bytes, _Scan] = OrderedDict()

    def opened(self, dir_id: bytes, listing: list | None, disk_name: str) -> list[str]:
        """A file of the directory is being opened to be read: the disk names of the
        entries to ask for ahead (none unless the opens follow the listing's order)."""
        if listing is None:
            return []    # not listed: nobody is scanning it in order
        scan = self._scans.pop(dir_id, None)
        if scan is None or scan.listing is not listing:
            scan = _Scan(listing)
        self._scans[dir_id] = scan
        while len(self._scans) > DIRECTORIES:
            self._scans.popitem(last=False)
        pos = scan.index.get(disk_name)
        if pos is None:
            return []
        # In order, skipping at most a few entries (subdirectories, links) on the way.
        in_order = 0 < pos - scan.last <= self.ahead
        scan.last = pos
        if not in_order:
            return []
        start, end = max(pos + 1, scan.upto), min(pos + 1 + self.ahead, len(listing))
        scan.upto = max(scan.upto, end)
        return [listing[n][1] for n in range(start, end)]
