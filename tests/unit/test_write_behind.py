"""Write-behind of sequential runs: which spans have their writeback started, and when not."""

import os

from pqcfs.store import replicas
from pqcfs.store.write_behind import WHOLE_FILE, WRITE_BEHIND, WriteRun

K = 1024


def test_a_sequential_run_is_written_back_a_mib_at_a_time():
    run = WriteRun()
    spans = [run.written(off, 128 * K) for off in range(0, 3 * WRITE_BEHIND, 128 * K)]
    assert [s for s in spans if s] == [(0, WRITE_BEHIND), (WRITE_BEHIND, WRITE_BEHIND),
                                       (2 * WRITE_BEHIND, WRITE_BEHIND)]
    assert spans.count(None) == len(spans) - 3


def test_one_large_write_is_its_own_span():
    assert WriteRun().written(4096, 4 * WRITE_BEHIND) == (4096, 4 * WRITE_BEHIND)


def test_appends_that_rewrite_the_runs_last_block_continue_it():
    """tar writes 10 KiB records: each append reseals the partial block the last one ended in."""
    run, block, c_block, size, spans = WriteRun(), 4096, 4124, 0, []
    for _ in range(300):
        first, end = size // block, size + 10240
        c_off, c_end = first * c_block, ((end - 1) // block + 1) * c_block
        spans.append(run.written(c_off, c_end - c_off))
        size = end
    done = [s for s in spans if s]
    assert len(done) == 2 and done[0][0] == 0
    assert done[1][0] <= sum(done[0]) < done[1][0] + c_block     # a block the span ended in goes again


def test_random_writes_start_the_whole_files_writeback_once_a_mib_of_them_waits():
    """Random 4 KiB writes left every dirty page for the fsync, which then wrote both
    drives' share one after the other (350 ms after 10,000 such writes on two stand-ins)."""
    run = WriteRun()
    offsets = [(n * 7919 % 5000) * 4124 for n in range(5000)]
    answers = [run.written(o, 4124) for o in offsets]
    due = [n for n, a in enumerate(answers) if a is not None]
    assert {answers[n] for n in due} == {WHOLE_FILE}
    assert len(due) == 5000 * 4124 // WRITE_BEHIND
    assert all(b - a in (WRITE_BEHIND // 4124, WRITE_BEHIND // 4124 + 1) for a, b in zip(due, due[1:]))


def test_small_writes_below_a_mib_start_nothing():
    run = WriteRun()
    assert all(run.written(n * 100_000, 4124) is None for n in range(WRITE_BEHIND // 4124 - 1))


def test_a_jump_starts_a_new_run():
    run = WriteRun()
    assert run.written(0, WRITE_BEHIND - 1) is None
    assert run.written(10 * WRITE_BEHIND, WRITE_BEHIND - 1) is None     # not contiguous
    assert run.written(11 * WRITE_BEHIND - 1, 1) == (10 * WRITE_BEHIND, WRITE_BEHIND)


def test_writeback_really_starts(tmp_path):
    """The system call is bound right (its arguments are 64-bit offsets): it succeeds on a
    dirty range past 4 GiB, and the data is the file's."""
    path = tmp_path / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"z" * 8192, 5 << 30)
        assert replicas._sync_file_range(fd, 5 << 30, 8192, replicas.SYNC_FILE_RANGE_WRITE) == 0
        replicas.start_writeback(fd, 5 << 30, 8192)
        os.fsync(fd)
        assert os.pread(fd, 8192, 5 << 30) == b"z" * 8192
    finally:
        os.close(fd)
