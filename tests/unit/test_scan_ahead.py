"""Reading ahead of a directory scan: which entries are asked for, and when not."""

from pqcfs.fs.scan_ahead import DIRECTORIES, ScanAhead


def listing(n):
    return [(b"p%d" % i, "d%d" % i) for i in range(n)]


def test_opens_in_listing_order_ask_for_the_next_entries_once():
    ahead, entries = ScanAhead(ahead=3), listing(10)
    assert ahead.opened(b"dir", entries, "d0") == ["d1", "d2", "d3"]
    assert ahead.opened(b"dir", entries, "d1") == ["d4"]          # d2 and d3 were asked for already
    assert ahead.opened(b"dir", entries, "d3") == ["d5", "d6"]    # d2 skipped (a subdirectory, say)
    assert ahead.opened(b"dir", entries, "d8") == []              # a jump past what was asked for
    assert ahead.opened(b"dir", entries, "d9") == []              # the end of the listing


def test_opens_out_of_order_or_unlisted_ask_for_nothing():
    ahead, entries = ScanAhead(ahead=3), listing(20)
    assert ahead.opened(b"dir", None, "d0") == []                 # never listed
    assert ahead.opened(b"dir", entries, "d15") == []             # a jump into the middle
    assert ahead.opened(b"dir", entries, "d2") == []              # backwards
    assert ahead.opened(b"dir", entries, "gone") == []            # not in the listing
    assert ahead.opened(b"dir", entries, "d3") == ["d4", "d5", "d6"]


def test_a_new_listing_starts_the_count_again_and_few_directories_are_followed():
    ahead, entries = ScanAhead(ahead=2), listing(6)
    assert ahead.opened(b"dir", entries, "d0") == ["d1", "d2"]
    changed = listing(6)                                          # the directory changed
    assert ahead.opened(b"dir", changed, "d1") == ["d2", "d3"]
    for n in range(DIRECTORIES):
        ahead.opened(b"other%d" % n, listing(3), "d0")
    assert ahead.opened(b"dir", changed, "d2") == []              # forgotten: a jump from the start
    assert ahead.opened(b"dir", changed, "d3") == ["d4", "d5"]
