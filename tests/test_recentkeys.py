"""RecentKeys (coby.collector.recentkeys): the last N keys in bounded memory, against a plain deque + Counter."""

from __future__ import annotations

import sys
import tracemalloc
from collections import Counter, deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coby.collector.recentkeys import RecentKeys


class Reference:
    """What RecentKeys must behave like: the last ``size`` keys pushed, counted."""

    def __init__(self, size: int) -> None:
        self.size, self.order, self.counts = size, deque(), Counter()

    def push(self, key) -> None:
        if len(self.order) == self.size:
            self.counts[self.order.popleft()] -= 1
        self.order.append(key)
        self.counts[key] += 1

    def add(self, key) -> bool:
        if self.counts[key]:
            return False
        self.push(key)
        return True


# Small ints hash to themselves: keys that share home slots, runs that wrap round the table's end, and keys
# equal modulo the table's size - every path of the probing and of the backward-shift deletion. (Not 0 or -1:
# their hashes are those of 1 and -2.)
KEYS = st.one_of(st.integers(1, 40), st.integers(1, 5).map(lambda k: k + 64 * 3), st.text(max_size=3).map(lambda s: "k" + s))
OPS = st.lists(st.tuples(st.sampled_from(["add", "push"]), KEYS), max_size=300)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(1, 20), ops=OPS)
def test_behaves_like_the_last_n_keys_counted(size, ops):
    got, want = RecentKeys(size), Reference(size)
    for op, key in ops:
        if op == "add":
            assert got.add(key) == want.add(key), (op, key)
        else:
            got.push(key)
            want.push(key)
        assert len(got) == len(want.order)
        for k in set(want.order) | {key}:
            assert got.count(k) == want.counts[k], k
            assert (k in got) == (want.counts[k] > 0)


def test_a_long_stream_of_trade_ids_keeps_exactly_the_last_n():
    ids = RecentKeys(1_000)
    for i in range(25_000):
        assert ids.add(str(5_000_000_000 + i))
        if i % 997 == 0:  # a venue resending recent trades: refused while remembered
            assert not ids.add(str(5_000_000_000 + i))
            assert not ids.add(str(5_000_000_000 + max(0, i - 999)))
    assert len(ids) == 1_000
    assert all(str(5_000_000_000 + i) in ids for i in range(24_000, 25_000))
    assert not any(str(5_000_000_000 + i) in ids for i in range(0, 24_000, 7))
    assert sum(1 for v in ids._table if v) == 1_000  # the table holds what the ring holds, nothing left behind


def test_memory_grows_with_the_keys_held_up_to_a_bound_and_is_a_fraction_of_a_sets():
    """A new memory is small (a quiet market costs what it holds); full, 10,000 ids take about 340 KB - under a
    third of what a set of the id strings and a deque of their order took - and keeping on adding allocates
    nothing that stays."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        ids = RecentKeys(10_000)
        made = tracemalloc.get_traced_memory()[0] - before
        for i in range(10_000):
            ids.add(str(5_000_000_000 + i))
        full = tracemalloc.get_traced_memory()[0] - before
        for i in range(10_000, 30_000):
            ids.add(str(5_000_000_000 + i))
        later = tracemalloc.get_traced_memory()[0] - before
        seen, order = set(), deque()
        for i in range(10_000):
            key = str(5_000_000_000 + i)
            seen.add(key)
            order.append(key)
        plain = tracemalloc.get_traced_memory()[0] - before - later
    finally:
        tracemalloc.stop()
    assert made < 1_000
    assert 8 * 32_768 + 8 * 10_000 <= full < 400_000  # the table and the ring: about 340 KB
    assert later - full < 4_096
    assert full < plain / 3, (full, plain)


def test_refuses_a_size_below_one():
    with pytest.raises(ValueError):
        RecentKeys(0)


def test_hash_zero_and_negative_hashes():
    ids = RecentKeys(4)
    assert hash(0) == 0 and hash(-(sys.maxsize)) < 0
    assert ids.add(0) and not ids.add(0)
    assert ids.add(-(sys.maxsize)) and -(sys.maxsize) in ids
    assert ids.count(0) == 1
