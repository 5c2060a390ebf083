"""The last N keys seen, in a bounded amount of memory (about 34 bytes a key): what the normaliser (duplicate trade ids) and the gap
filler (live trades, by id or by content) remember per market.

A Python ``set`` of the last 10,000 trade ids with a ``deque`` of their order costs ~1.2 MB a market (the
set's table alone is 512 KB, each id string 55-60 bytes more), plus the gap filler's own memory: 450 markets
held about 0.6 GB more once the memories filled (docs/benchmarks.md). Here a key is kept as its 64-bit hash in
two ``array('q')``: an open-addressed table (linear probing, at least twice as many slots as keys, deletion by
backward shift - no tombstones) and a ring of the keys in arrival order, which says which key to forget when a
new one comes. 16 bytes a key plus the table's free slots: about 340 KB for 10,000 keys. The table doubles (and
the ring grows) as keys arrive until ``size`` are held, so a quiet market costs what it holds; once full,
a memory never allocates again.

Keys are anything hashable (trade ids, content fingerprints); two different keys are the same here only if
their 64-bit hashes are equal: for a new key the chance is (keys held) / 2^64 - 5e-16 with 10,000 held, one
wrongly refused trade in about 2 x 10^15 - against the ids being exact in a ``set``. The hashes of strings
are salted per process (``PYTHONHASHSEED``): a memory is never written to disk or shared between processes.

It is a multiset: :meth:`push` always adds (the gap filler counts trades alike by content); :meth:`add`
adds only a key not held (the normaliser's duplicate check).
"""

from __future__ import annotations

from array import array
from collections.abc import Hashable


class RecentKeys:
    """The last ``size`` keys pushed (a multiset), as 64-bit hashes in bounded memory."""

    __slots__ = ("size", "_table", "_mask", "_ring", "_next")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, not {size}")
        self.size = size
        self._table = array("q", bytes(8 * 16))  # 0: a free slot; doubled as keys arrive (_grow)
        self._mask = 15
        self._ring = array("q")  # the hashes held in arrival order, up to size; once full, the oldest is at _next
        self._next = 0

    def __len__(self) -> int:
        return len(self._ring)

    def __contains__(self, key: Hashable) -> bool:
        return self.count(key) > 0

    def count(self, key: Hashable) -> int:
        """How many of the keys held are ``key``."""
        h = hash(key) or 1
        table, mask = self._table, self._mask
        i, n = h & mask, 0
        while True:
            v = table[i]
            if v == 0:
                return n
            if v == h:
                n += 1
            i = (i + 1) & mask

    def add(self, key: Hashable) -> bool:
        """Remember ``key`` if it is not held; False if it was (nothing changes then)."""
        h = hash(key) or 1
        table, mask = self._table, self._mask
        i = h & mask
        while True:
            v = table[i]
            if v == 0:
                break
            if v == h:
                return False
            i = (i + 1) & mask
        self._insert(h)
        return True

    def push(self, key: Hashable) -> None:
        """Remember ``key``, held already or not (forgetting the oldest key once ``size`` are held)."""
        self._insert(hash(key) or 1)

    def _insert(self, h: int) -> None:
        ring, held = self._ring, len(self._ring)
        full = held == self.size
        if full:
            self._forget(ring[self._next])  # keys move: h's free slot is looked for after
        elif 2 * (held + 1) > self._mask + 1:
            self._grow(held + 1)
        table, mask = self._table, self._mask
        i = h & mask
        while table[i]:
            i = (i + 1) & mask
        table[i] = h
        if full:  # the oldest's place in the ring
            ring[self._next] = h
            self._next = (self._next + 1) % self.size
        else:
            ring.append(h)

    def _grow(self, held: int) -> None:
        """A table for ``held`` keys: a power of two >= 2 x held (probes stay short), filled from the ring,
        which holds exactly the keys held until it is full."""
        slots = 1 << (2 * held - 1).bit_length()
        table, mask = array("q", bytes(8 * slots)), slots - 1
        for h in self._ring:
            i = h & mask
            while table[i]:
                i = (i + 1) & mask
            table[i] = h
        self._table, self._mask = table, mask

    def _forget(self, h: int) -> None:
        """Take one ``h`` out of the table, closing the gap by moving later keys of its run back (linear
        probing's deletion: every key stays reachable from its home slot)."""
        table, mask = self._table, self._mask
        i = h & mask
        while table[i] != h:
            i = (i + 1) & mask
        j = i
        while True:
            j = (j + 1) & mask
            v = table[j]
            if v == 0:
                break
            if ((j - (v & mask)) & mask) >= ((j - i) & mask):  # the hole is on v's way from its home to j
                table[i] = v
                i = j
        table[i] = 0
