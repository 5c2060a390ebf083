"""The per-market memories of recent trade ids: a set of the id strings with a deque of their order (what
coby kept before) against ``RecentKeys`` (64-bit hashes in fixed arrays), in one run.

    .venv/bin/python bench/trade_ids.py [--size 10000] [--markets 50] [--repeat 5]

Per kind: bytes a market holds once its memory is full (tracemalloc, ids of 10 digits as the venues send
them, the strings included where the memory keeps them), and CPU time per ``add`` of a new id to a full
memory (median of ``--repeat`` rounds of 200,000 adds), and of a ``push`` (the gap filler's multiset).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import tracemalloc
from collections import deque

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from coby.collector.recentkeys import RecentKeys  # noqa: E402


class SetAndDeque:
    """The memory coby kept before RecentKeys (normalize._RecentIds at 184104e)."""

    __slots__ = ("_seen", "_order", "_size")

    def __init__(self, size: int) -> None:
        self._seen: set[str] = set()
        self._order: deque[str] = deque()
        self._size = size

    def add(self, key: str) -> bool:
        if key in self._seen:
            return False
        if len(self._order) >= self._size:
            self._seen.discard(self._order.popleft())
        self._order.append(key)
        self._seen.add(key)
        return True


def ids(n: int, start: int = 5_000_000_000) -> list[str]:
    return [str(start + i) for i in range(n)]


def bytes_per_market(kind: type, size: int, markets: int) -> float:
    keys = ids(size * 2)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = []
        for m in range(markets):
            mem = kind(size)
            for k in keys:
                mem.add(str(int(k) + m))  # a string of its own per trade, as a parsed message gives
            held.append(mem)
        return (tracemalloc.get_traced_memory()[0] - before) / markets
    finally:
        tracemalloc.stop()


def us_per(kind: type, size: int, method: str, n: int = 200_000) -> float:
    mem = kind(size)
    for k in ids(size):
        mem.add(k)
    keys = ids(n, 6_000_000_000)
    f = getattr(mem, method)
    t = time.process_time()
    for k in keys:
        f(k)
    return (time.process_time() - t) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=10_000)
    ap.add_argument("--markets", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    print(f"memories of {a.size:,} ids, {a.markets} markets, {a.repeat} rounds")
    for name, kind, methods in (("set + deque (before)", SetAndDeque, ("add",)),
                                ("RecentKeys", RecentKeys, ("add", "push"))):
        mem = bytes_per_market(kind, a.size, a.markets)
        times = {m: statistics.median(us_per(kind, a.size, m) for _ in range(a.repeat)) for m in methods}
        print(f"{name:<22} {mem / 1e6:6.3f} MB a market   " + "   ".join(f"{m} {t:.2f} us" for m, t in times.items()))


if __name__ == "__main__":
    main()
