"""The benchmark's report (benchmarks/bench.py): verdicts and the floors it names, from
made-up timings (no mounts)."""

import argparse
import subprocess

import pytest

from benchmarks import bench

NAMES = ["plain", "gocryptfs", "pqcfs-1", "pqcfs-2", "passthrough"]


def _args():
    return argparse.Namespace(repetitions=3, files=10000, tree_entries=9910, size_mb=512, rand_ops=10000,
                              images="disk", passthrough=True)


def _runs(times: dict[str, dict[str, float]]):
    """Three repetitions of the same seconds per contender (CPU seconds: half of them)."""
    run = {n: {w: (t, t / 2) for w, t in per.items()} for n, per in times.items()}
    run["_rss"] = {"gocryptfs": 25, "pqcfs-1": 60, "pqcfs-2": 62, "passthrough": 45}
    return [run, run, run]


@pytest.fixture(autouse=True)
def _no_gocryptfs_needed(monkeypatch):
    real = bench.sh

    def sh(*cmd, **kw):
        if cmd[:2] == ("gocryptfs", "-version"):
            return subprocess.CompletedProcess(cmd, 0, "gocryptfs v2.3.0; go-fuse v2.2.0\n", "")
        return real(*cmd, **kw)
    monkeypatch.setattr(bench, "sh", sh)


def _times(pqcfs2_read: float, passthrough_read: float):
    base = {w: 1.0 for w, _, _ in bench.WORKLOADS}
    times = {n: dict(base) for n in NAMES}
    times["pqcfs-2"]["random 4 KiB read (cold)"] = pqcfs2_read
    times["passthrough"]["random 4 KiB read (cold)"] = passthrough_read
    return times


def test_a_target_the_bare_pass_through_misses_is_named_as_pyfuse3s_floor():
    report = bench.render(_runs(_times(1.3, 1.1)), NAMES, _args(), 9910, 1, 300)
    row = next(line for line in report.splitlines() if line.startswith("| random 4 KiB read (cold) | ≤"))
    assert row.split("|")[2:5] == [" ≤ 1.0 ", " 1.30 (1.30–1.30) ", " **no** "]
    assert row.rstrip().endswith("| 1.10 |")
    assert "pyfuse3's own floor misses the target for random 4 KiB read (cold):" in report
    assert "Verdict: 9 of 10 targets met." in report


def test_no_floor_line_when_the_pass_through_is_within_every_target():
    report = bench.render(_runs(_times(1.3, 0.9)), NAMES, _args(), 9910, 1, 300)
    assert "pyfuse3's own floor" not in report
    assert "Verdict: 9 of 10 targets met." in report


def test_without_the_pass_through_the_report_has_no_floor_column():
    names = NAMES[:-1]
    times = {n: v for n, v in _times(0.9, 0.9).items() if n in names}
    args = _args()
    args.passthrough = False
    report = bench.render(_runs(times), names, args, 9910, 1, 300)
    assert "passthrough ÷ gocryptfs" not in report
    assert "Verdict: 10 of 10 targets met." in report
