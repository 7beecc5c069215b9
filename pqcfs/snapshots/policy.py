"""Automatic history's thinning: which automatic snapshots go (manual ones are the user's).

Like Time Machine's and btrfs snapper's timelines: every snapshot of the last day, then the
newest of each day for a week, then the newest of each week, none older than `keep`.
Pure: a list in, ids out.
"""

from __future__ import annotations

import re

HOUR, DAY, WEEK = 3600, 86400, 7 * 86400
_NS = 1_000_000_000
_DURATION = re.compile(r"^(\d+)([hdw])$")
_UNITS = {"h": HOUR, "d": DAY, "w": WEEK}


def parse_duration(text: str) -> int:
    """'30d', '12h', '8w' -> seconds (ValueError otherwise)."""
    m = _DURATION.match(text.strip())
    if not m or int(m.group(1)) == 0:
        raise ValueError(f"{text!r}: a duration is a number and h, d or w (30d, 12h, 8w)")
    return int(m.group(1)) * _UNITS[m.group(2)]


def parse_percent(text: str) -> float:
    value = text.strip().removesuffix("%")
    try:
        pct = float(value)
    except ValueError:
        raise ValueError(f"{text!r}: a share of the drive, 1% to 90%") from None
    if not 1 <= pct <= 90:
        raise ValueError(f"{text!r}: a share of the drive, 1% to 90%")
    return pct


def thin(snapshots, now_ns: int, keep_s: int) -> set[bytes]:
    """Ids of automatic snapshots to delete: older than keep_s, or not the newest of their
    hour (under a day old), day (under a week) or week (older)."""
    gone: set[bytes] = set()
    newest_of: dict[tuple[int, int], bytes] = {}
    for s in sorted((s for s in snapshots if s.kind == "auto"), key=lambda s: s.created):
        age = (now_ns - s.created) // _NS
        if age > keep_s:
            gone.add(s.snap_id)
            continue
        width = HOUR if age < DAY else DAY if age < WEEK else WEEK
        bucket = (width, s.created // _NS // width)
        if bucket in newest_of:
            gone.add(newest_of[bucket])     # sorted oldest first: this one is newer
        newest_of[bucket] = s.snap_id
    return gone
