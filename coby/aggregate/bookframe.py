"""The books of one aggregation tick as columns: every level of every book in one column.

``BookFrame`` lays many books end to end, one *segment* per (book, side): first the bids of
every book, then the asks of every book, each segment best level first::

    row:      0 ....... 999 | 1000 ..... 1999 | ... | 20000 ..... 20999 | ...
    segment:  book 0 bids   | book 1 bids     | ... | book 0 asks       | ...

A snapshot's sides are ``Levels``: ``array('d')`` columns. The frame joins their buffers into
one price and one size array (a memory copy: no Python object is read per level) and hands
them to polars and numpy without converting them again (``numpy.frombuffer``, and polars takes
a float64 numpy array without a copy).

Polars computes every level's bucket index in a handful of whole-column operations (scale to
1e-9 units, round, divide by the width, ceil); all are operations it runs directly on a Series
(an expression would cost a query plan). numpy then reduces the runs of equal index: a run
starts wherever the index changes or a segment starts, and ``add.reduceat`` sums the sizes of
every run in one call. (Polars has no segmented sum short of a hashed group-by, measured slower.)
Python works per segment (40 for 20 books): it slices the runs' edges and volumes into dicts.

Each book also comes out as a ``BookColumns`` view over its snapshot's own columns and its
bucket runs (for ``prefix_volume``), for the depth bands and the consolidated merge. A
view lives for one tick: the engine keeps results, never views, so no frame outlives its tick.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate
from operator import neg
from typing import Sequence

import numpy as np
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
    """One book of a ``BookFrame``: its snapshot's columns, best level first on each side (bids
    descending, asks ascending); once the frame is bucketed, also each side's bucket runs."""

    __slots__ = ("snapshot", "_sides", "_runs")

    def __init__(self, snapshot: OrderBookSnapshot) -> None:
        self.snapshot = snapshot
        self._sides = (snapshot.bids, snapshot.asks)
        # per side, once bucketed: (level after each bucket's run, volume up to and with that run)
        self._runs: list[tuple[list[int], list[float]] | None] = [None, None]

    def count(self, side: int) -> int:
        """How many levels a side has."""
        return len(self._sides[side].prices)

    def levels(self, side: int, depth: int | None = None) -> tuple[Sequence[float], Sequence[float]]:
        """A side's best ``depth`` levels (None: all) as (prices, sizes) columns."""
        levels = self._sides[side]
        if depth is None:
            return levels.prices, levels.sizes
        return levels.prices[:depth], levels.sizes[:depth]

    def band_count(self, side: int, limit: float) -> int:
        """How many of a side's best levels lie at or inside ``limit`` (bids >= it, asks <= it)."""
        prices = self._sides[side].prices
        if side == BID:
            return bisect_right(prices, -limit, key=neg)
        return bisect_right(prices, limit)

    def prefix_volume(self, side: int, count: int) -> float:
        """Volume of a side's best ``count`` levels: once the side is bucketed, the running volume
        of the whole buckets they cover plus the levels of the last, partly covered one."""
        if count <= 0:
            return 0.0
        sizes = self._sides[side].sizes
        runs = self._runs[side]
        if runs is None:
            return sum(sizes[:count], 0.0)
        ends, volumes = runs
        k = bisect_right(ends, count)  # runs that end at or before count
        if k == 0:
            return sum(sizes[:count], 0.0)
        start = ends[k - 1]
        return volumes[k - 1] + sum(sizes[start:count], 0.0) if count > start else volumes[k - 1]


class BookFrame:
    """Many books as one column of prices and one of sizes, for bucketing them all at once.

    ``units[i]`` is book i's bucket width in 1e-9 units; ``groups[i]`` (optional) the group it is
    summed into by ``group_volumes`` (the engine: one group per symbol). ``books`` holds each
    snapshot's ``BookColumns``.
    """

    __slots__ = ("books", "units", "groups", "starts", "lengths", "price", "size", "_runs")

    def __init__(self, snapshots: Sequence[OrderBookSnapshot], units: Sequence[int],
                 groups: Sequence[int] | None = None) -> None:
        if len(snapshots) != len(units) or (groups is not None and len(groups) != len(snapshots)):
            raise ValueError("one bucket width (and group) per book")
        self.units = tuple(units)
        self.groups = tuple(groups) if groups is not None else tuple(range(len(snapshots)))
        sides = [b.bids for b in snapshots] + [b.asks for b in snapshots]
        self.lengths = [len(levels.prices) for levels in sides]
        self.starts = [0, *accumulate(self.lengths)][:-1] if sides else []
        self.price = np.frombuffer(b"".join([levels.prices for levels in sides]), dtype=np.float64)
        self.size = np.frombuffer(b"".join([levels.sizes for levels in sides]), dtype=np.float64)
        self.books = tuple([BookColumns(snap) for snap in snapshots])
        self._runs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    def bucket_volumes(self) -> list[tuple[dict[float, float], dict[float, float]]]:
        """Per book, the volume in each bucket of each side: ({bid edge: volume}, {ask edge: volume}),
        best bucket first.

        Vectorised over all books: key = -price for bids, price for asks; ``P = round(key * 1e9)``;
        bucket index ``ceil(P / units)`` (so -floor for bids), in polars; then, in numpy, the runs
        of equal index (a side's levels are sorted, so each bucket of a segment is one contiguous
        run; a run is also cut where a segment starts) and each run's volume by ``add.reduceat``.
        Python takes each segment's runs: one step per segment, not per level or per bucket.
        """
        nbooks = len(self.books)
        out: list[tuple[dict[float, float], dict[float, float]]] = [({}, {}) for _ in range(nbooks)]
        n = len(self.price)
        if n == 0:
            return out
        nseg = len(self.starts)
        seg_units = np.array([self.units[seg % nbooks] for seg in range(nseg)], dtype=np.int64)
        key = self.price.copy()
        key[:self.starts[nbooks]] *= -1.0
        scaled = pl.Series("key", key) * PRICE_SCALE
        row_units = pl.Series("units", np.repeat(seg_units, self.lengths))
        fast = max(abs(float(key.min())), abs(float(key.max()))) < _FAST_LIMIT
        if fast:
            # Float path, all direct Series operations. P = round(key * 1e9) by the 1.5 * 2**52 trick;
            # then ceil((P - 0.5) / u): the half-unit offset absorbs a quotient that lands a hair
            # off an exact multiple (the error is far below 0.5 / u while P < 2**48).
            index = (((scaled + _ROUNDER) - _ROUNDER - 0.5) / row_units).ceil()
        else:
            # Exact integer path for prices beyond the float path's range.
            index = (scaled.round().cast(pl.Int64) + (row_units - 1)) // row_units
        idx = index.to_numpy()
        change = np.empty(n, dtype=bool)
        change[0] = True
        np.not_equal(idx[1:], idx[:-1], out=change[1:])
        seg_starts = np.array(self.starts, dtype=np.int64)
        change[seg_starts[np.array(self.lengths) > 0]] = True
        run_starts = np.flatnonzero(change)
        run_volumes = np.add.reduceat(self.size, run_starts)
        first_run = np.searchsorted(run_starts, seg_starts).tolist()  # each segment's first run
        first_run.append(len(run_starts))
        runs_per_seg = np.diff(first_run)
        run_index = idx[run_starts]
        run_units = np.repeat(seg_units, runs_per_seg)
        if fast:  # |index| * units is exact in float64 here (< 2**49), and one division rounds correctly
            run_edges = np.abs(run_index) * run_units / PRICE_SCALE
        else:  # Python ints: the product may pass 2**53
            run_edges = np.array([abs(i) * u / PRICE_SCALE for i, u in zip(run_index.tolist(), run_units.tolist())])
        self._runs = (run_index, run_volumes, run_edges, np.repeat(np.arange(nseg), runs_per_seg))
        edges, volumes = run_edges.tolist(), run_volumes.tolist()
        # each run's end as a level number within its book side (the row after it, less the side's first row)
        ends = (np.append(run_starts[1:], n) - np.repeat(seg_starts, runs_per_seg)).tolist()
        for seg in range(nseg):
            a, b = first_run[seg], first_run[seg + 1]
            if a == b:
                continue
            self.books[seg % nbooks]._runs[seg // nbooks] = (ends[a:b], list(accumulate(volumes[a:b])))
            side_out = out[seg % nbooks][seg // nbooks]
            side_out.update(zip(edges[a:b], volumes[a:b]))
            if len(side_out) != b - a:  # a bucket seen twice: the book's levels are out of order
                side_out.clear()
                for edge, volume in zip(edges[a:b], volumes[a:b]):
                    side_out[edge] = side_out.get(edge, 0.0) + volume
        return out

    def group_volumes(self, ngroups: int) -> list[tuple[tuple[dict[float, float], dict[float, int]],
                                                        tuple[dict[float, float], dict[float, int]]]]:
        """Per group (0 .. ngroups-1; after ``bucket_volumes``): for bids, then asks, the volume of
        each bucket summed over the group's books and how many of its books hold that bucket,
        best bucket first: ``((bid volumes, bid counts), (ask volumes, ask counts))``.

        One stable sort of all the frame's runs by (group, bucket index) - a bid index is <= 0 and
        an ask index >= 1, so the sides of a group never mix - and one ``add.reduceat``: a bucket's
        volume adds its books' runs in book order, as a loop over the books would.
        """
        out = [(({}, {}), ({}, {})) for _ in range(ngroups)]
        if self._runs is None or not len(self._runs[0]):
            return out
        run_index, run_volumes, run_edges, run_seg = self._runs
        nbooks = len(self.books)
        seg_group = np.array([self.groups[seg % nbooks] for seg in range(len(self.starts))], dtype=np.int64)
        run_group = seg_group[run_seg]
        order = np.lexsort((run_index, run_group))
        group, index, seg = run_group[order], run_index[order], run_seg[order]
        m = len(order)
        first = np.empty(m, dtype=bool)
        first[0] = True
        first[1:] = (group[1:] != group[:-1]) | (index[1:] != index[:-1])
        starts = np.flatnonzero(first)
        volumes = np.add.reduceat(run_volumes[order], starts).tolist()
        other_book = first.copy()  # a book's runs of one bucket are adjacent: count where the book changes
        other_book[1:] |= seg[1:] != seg[:-1]
        counts = np.add.reduceat(other_book.astype(np.int64), starts).tolist()
        edges = run_edges[order][starts].tolist()
        side_key = group[starts] * 2 + (index[starts] > 0)  # sorted: each group's bids, then its asks
        bounds = np.searchsorted(side_key, np.arange(2 * ngroups + 1)).tolist()
        for g in range(ngroups):
            for side in (BID, ASK):
                a, b = bounds[2 * g + side], bounds[2 * g + side + 1]
                if a < b:
                    out[g][side][0].update(zip(edges[a:b], volumes[a:b]))
                    out[g][side][1].update(zip(edges[a:b], counts[a:b]))
        return out
