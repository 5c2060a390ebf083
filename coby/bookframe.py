"""The books of one aggregation tick as columns: every level of every book in one polars column.

``BookFrame`` lays many books end to end, one *segment* per (book, side): first the bids of
every book, then the asks of every book, each segment best level first::

    row:      0 ....... 999 | 1000 ..... 1999 | ... | 20000 ..... 20999 | ...
    segment:  book 0 bids   | book 1 bids     | ... | book 0 asks       | ...

Polars does the per-level work in a handful of whole-column operations - scale prices to
integers, compute every level's bucket index, find the runs of equal index - so a tick costs a
few vectorised passes over all books at once, not a frame per book or per message. All of them
are operations polars runs directly on a Series (an expression would cost a query plan). Python
then works per bucket: each run's edge, and its volume as one C-level ``sum`` over a slice of
the flat size list. (Summing in polars too - a size column and a group-by over the runs - was
measured slower: building the second column and hashing the runs cost more than the slices.)

Each book also comes out as a ``BookColumns`` view: its rows of the frame's two flat lists
(no copy), for ``bisect`` on the depth bands, prefix sums and the consolidated merge. A view
lives for one tick: the engine keeps results, never views, so no frame outlives its tick.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from itertools import accumulate
from operator import neg
from typing import Sequence

import polars as pl

from coby.models import OrderBookSnapshot

# Prices and bucket sizes are resolved to 1e-9 before bucketing, so that bucket edges are exact
# decimals (a bid at 0.3 lands in the 0.3 bucket of a 0.1-wide grid, whatever 0.3/0.1 is in binary).
PRICE_SCALE = 1_000_000_000
BID, ASK = 0, 1
# Adding and subtracting 1.5 * 2**52 rounds a float to the nearest integer (ties to even, as
# round() does) for |x| < 2**51: two cheap Series operations instead of an expression. The float
# path is used while every price is below 2**48 / 1e9 (about 281,000); above, an exact integer path.
_ROUNDER = 6755399441055744.0
_FAST_LIMIT = 2.0**48 / PRICE_SCALE


def bucket_units(bucket_size: float) -> int:
    """A bucket width in units of 1e-9. Raises ValueError unless it is a positive multiple of 1e-9."""
    units = round(bucket_size * PRICE_SCALE)
    if units < 1 or abs(units - bucket_size * PRICE_SCALE) > 1e-6 * max(1.0, units):
        raise ValueError(f"bucket size {bucket_size!r} must be a positive multiple of 1e-9")
    return units


def bucket_index(price: float, side: int, units: int) -> int:
    """Signed bucket index of one level: ``-floor(P / units)`` for a bid (<= 0), ``ceil(P / units)``
    for an ask (>= 1 for any price >= 1e-9), with ``P = round(price * 1e9)``. The scalar twin of
    the vectorised computation in ``BookFrame.bucket_volumes``."""
    scaled = round(price * PRICE_SCALE)
    return -(scaled // units) if side == BID else -((-scaled) // units)


def bucket_edge(index: float, units: int) -> float:
    """The price a signed bucket index stands for: |index| * width, exact to the decimal."""
    return abs(int(index)) * units / PRICE_SCALE


class BookColumns:
    """One book of a ``BookFrame``: its rows of the frame's flat price and size lists, best level
    first on each side (bids descending, asks ascending). A view, not a copy: bisects and sums run
    on the flat lists between the book's bounds."""

    __slots__ = ("snapshot", "_prices", "_sizes", "_bounds", "_runs")

    def __init__(self, snapshot: OrderBookSnapshot, prices: list[float], sizes: list[float],
                 bounds: tuple[tuple[int, int], tuple[int, int]]) -> None:
        self.snapshot = snapshot
        self._prices = prices
        self._sizes = sizes
        self._bounds = bounds  # ((bid rows start, stop), (ask rows start, stop))
        # per side, once bucketed: (row after each bucket's run, volume up to and with that run)
        self._runs: list[tuple[list[int], list[float]] | None] = [None, None]

    def count(self, side: int) -> int:
        """How many levels a side has."""
        lo, hi = self._bounds[side]
        return hi - lo

    def levels(self, side: int, depth: int | None = None) -> tuple[list[float], list[float]]:
        """A side's best ``depth`` levels (None: all) as (prices, sizes) lists."""
        lo, hi = self._bounds[side]
        if depth is not None:
            hi = min(hi, lo + depth)
        return self._prices[lo:hi], self._sizes[lo:hi]

    def band_count(self, side: int, limit: float) -> int:
        """How many of a side's best levels lie at or inside ``limit`` (bids >= it, asks <= it)."""
        lo, hi = self._bounds[side]
        if side == BID:
            return bisect_right(self._prices, -limit, lo, hi, key=neg) - lo
        return bisect_right(self._prices, limit, lo, hi) - lo

    def prefix_volume(self, side: int, count: int) -> float:
        """Volume of a side's best ``count`` levels: once the side is bucketed, the running volume
        of the whole buckets they cover plus the levels of the last, partly covered one."""
        if count <= 0:
            return 0.0
        lo, hi = self._bounds[side]
        stop = min(hi, lo + count)
        runs = self._runs[side]
        if runs is None:
            return sum(self._sizes[lo:stop], 0.0)
        ends, volumes = runs
        k = bisect_right(ends, stop)  # runs that end at or before stop
        if k == 0:
            return sum(self._sizes[lo:stop], 0.0)
        start = ends[k - 1]
        return volumes[k - 1] + sum(self._sizes[start:stop], 0.0) if stop > start else volumes[k - 1]


class BookFrame:
    """Many books as one column of prices (and a flat list of sizes), for bucketing them all at once.

    ``units[i]`` is book i's bucket width in 1e-9 units. Books that share a width should be
    adjacent (the engine groups them by symbol): the bucket index is computed once per run of
    equal widths on each side. ``books`` holds each snapshot's ``BookColumns``.
    """

    __slots__ = ("books", "units", "starts", "lengths", "price", "_sizes", "_bid_rows")

    def __init__(self, snapshots: Sequence[OrderBookSnapshot], units: Sequence[int]) -> None:
        if len(snapshots) != len(units):
            raise ValueError("one bucket width per book")
        self.units = tuple(units)
        # Two flat lists, all bids then all asks; the comprehensions are the per-level Python cost.
        sides = [b.bids for b in snapshots] + [b.asks for b in snapshots]
        prices = [lv.price for levels in sides for lv in levels]
        sizes = [lv.size for levels in sides for lv in levels]
        self.lengths = [len(levels) for levels in sides]
        self.starts = []
        row = 0
        for length in self.lengths:
            self.starts.append(row)
            row += length
        self._bid_rows = self.starts[len(snapshots)] if snapshots else 0
        self.price = pl.Series("price", prices, dtype=pl.Float64, strict=False)
        self._sizes = sizes
        n, starts, lengths = len(snapshots), self.starts, self.lengths
        self.books = tuple([
            BookColumns(snap, prices, sizes, ((starts[i], starts[i] + lengths[i]),
                                              (starts[n + i], starts[n + i] + lengths[n + i])))
            for i, snap in enumerate(snapshots)])

    def bucket_volumes(self) -> list[tuple[dict[float, float], dict[float, float]]]:
        """Per book, the volume in each bucket of each side: ({bid edge: volume}, {ask edge: volume}),
        best bucket first.

        Vectorised over all books: key = -price for bids, price for asks; ``P = round(key * 1e9)``;
        bucket index ``ceil(P / units)`` (so -floor for bids); then the runs of equal index (a
        side's levels are sorted, so each bucket of a segment is one contiguous run). Python then
        takes each run's edge and sums its sizes (``sum`` over a slice of the flat list, in C): one
        step per bucket, not per level.
        """
        nbooks = len(self.books)
        out: list[tuple[dict[float, float], dict[float, float]]] = [({}, {}) for _ in range(nbooks)]
        if len(self.price) == 0:
            return out
        key = pl.concat([self.price.slice(0, self._bid_rows) * -1.0, self.price.slice(self._bid_rows)])
        scaled = key * PRICE_SCALE
        ranges = self._unit_ranges()
        if max(abs(self.price.min()), abs(self.price.max())) < _FAST_LIMIT:  # type: ignore[arg-type]
            # Float path, all direct Series operations. P = round(key * 1e9) by the 1.5 * 2**52 trick;
            # then ceil((P - 0.5) / u): polars divides by a scalar through its reciprocal, which may
            # land a hair off an exact multiple, and the half-unit offset absorbs that (the error is
            # far below 0.5 / u while P < 2**48).
            scaled = (scaled + _ROUNDER) - _ROUNDER - 0.5
            parts = [scaled.slice(row, length) / units for row, length, units in ranges]
            index = (parts[0] if len(parts) == 1 else pl.concat(parts)).ceil()
        else:
            # Exact integer path for prices beyond the float path's range.
            scaled_int = scaled.round().cast(pl.Int64)
            parts = [(scaled_int.slice(row, length) + (units - 1)) // units for row, length, units in ranges]
            index = parts[0] if len(parts) == 1 else pl.concat(parts)
        runs = index.rle()
        ends = list(accumulate(runs.struct.field("len").to_list()))  # the row after each run
        indices = runs.struct.field("value").cast(pl.Int64).to_list()
        sizes = self._sizes
        for seg, (start, length) in enumerate(zip(self.starts, self.lengths)):
            if length == 0:
                continue
            stop, units = start + length, self.units[seg % nbooks]
            # The runs holding the segment's first and last rows. A run may cross the segment's edge
            # (the last bucket of one book's side can have the index of the first bucket of the next
            # book's): it is cut at the edge.
            first, last = bisect_right(ends, start), bisect_left(ends, stop)
            run_stops = ends[first:last]
            run_stops.append(stop)
            volumes = [sum(sizes[lo:hi], 0.0) for lo, hi in zip([start, *run_stops], run_stops)]
            # int * int, then one correctly rounded division: the edge is the nearest float to the decimal
            edges = [abs(i) * units / PRICE_SCALE for i in indices[first:last + 1]]
            side_out = out[seg % nbooks][seg // nbooks]
            side_out.update(zip(edges, volumes))
            if len(side_out) != len(edges):  # a bucket seen twice: the book's levels are out of order
                side_out.clear()
                for edge, volume in zip(edges, volumes):
                    side_out[edge] = side_out.get(edge, 0.0) + volume
            self.books[seg % nbooks]._runs[seg // nbooks] = (run_stops, list(accumulate(volumes)))
        return out

    # --- internals -----------------------------------------------------------------------------
    def _unit_ranges(self) -> list[tuple[int, int, int]]:
        """(first row, row count, units) for each run of adjacent segments with the same width."""
        ranges: list[tuple[int, int, int]] = []
        nbooks = len(self.books)
        for seg, (row, length) in enumerate(zip(self.starts, self.lengths)):
            units = self.units[seg % nbooks]
            if ranges and ranges[-1][2] == units:
                ranges[-1] = (ranges[-1][0], ranges[-1][1] + length, units)
            else:
                ranges.append((row, length, units))
        return [r for r in ranges if r[1] > 0]
