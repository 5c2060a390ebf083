"""Heatmap history at any price resolution, recomputed from the stored book snapshots.

``GET /api/v1/heatmap/{symbol}/history`` answers with one *column* per ``step`` seconds of
[start, end): the consolidated book of the symbol at the end of that step, in buckets of
``bucket_size`` (bids floor, asks ceil: ``coby.buckets``), with each bucket's summed size and the
number of venues in it, plus the consolidated best bid and ask. The stored heatmaps
(``heatmap_data``) cannot serve this: they hold the configured bucket only, every
``heatmap_interval`` seconds; the snapshots hold the venues' own levels, so any width from the
venues' tick up works.

A column holds, per venue, the newest snapshot at or before its end that is at most
``stale_after`` seconds old (a venue that stopped sending drops out, as it does live).

Work and response are bounded: the range is at most ``MAX_RANGE`` seconds, so at most
``MAX_RANGE / snapshot_interval`` snapshots per venue are read (in keyset chunks, never all in
memory); there are at most ``MAX_COLUMNS`` columns (a longer range gets a longer step); a column
has at most ``2 * venues * snapshot_depth`` buckets.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

from coby.bookframe import ASK, BID, bucket_edge, bucket_index, bucket_units
from coby.models import OrderBookSnapshot, to_ms, utc_from_ms

MAX_RANGE = 3600.0  # seconds of history per request
MAX_COLUMNS = 600
MIN_STEP = 0.5  # seconds


def column_step(start: datetime, end: datetime, step: float | None, snapshot_interval: float) -> float:
    """Seconds per column: the asked step (or the snapshot interval), widened to fit MAX_COLUMNS."""
    span = (end - start).total_seconds()
    base = max(MIN_STEP, step if step is not None else snapshot_interval)
    return max(base, math.ceil(span / MAX_COLUMNS * 1000) / 1000)


class _Binned:
    """One venue's snapshot in buckets, computed once however many columns it stays in."""

    __slots__ = ("ts_ms", "bids", "asks", "best_bid", "best_ask")

    def __init__(self, book: OrderBookSnapshot, units: int) -> None:
        self.ts_ms = to_ms(book.timestamp)
        self.bids = _bin(book.bids.prices, book.bids.sizes, BID, units)
        self.asks = _bin(book.asks.prices, book.asks.sizes, ASK, units)
        self.best_bid = book.bids.prices[0] if len(book.bids.prices) else None
        self.best_ask = book.asks.prices[0] if len(book.asks.prices) else None


def _bin(prices: Any, sizes: Any, side: int, units: int) -> dict[int, float]:
    out: dict[int, float] = {}
    for p, s in zip(prices, sizes):
        k = bucket_index(p, side, units)
        out[k] = out.get(k, 0.0) + s
    return out


def _side(books: list[_Binned], attr: str, units: int) -> list[list]:
    cells: dict[int, list] = {}
    for b in books:
        for k, s in getattr(b, attr).items():
            cell = cells.get(k)
            if cell is None:
                cells[k] = [bucket_edge(k, units), s, 1]
            else:
                cell[1] += s
                cell[2] += 1
    return [cells[k] for k in sorted(cells)]  # signed indexes: best (nearest the mid) first on both sides


def _column(ts_ms: int, books: dict[str, _Binned], units: int, stale_ms: int) -> dict[str, Any]:
    fresh = [b for b in books.values() if ts_ms - b.ts_ms <= stale_ms]
    bids = [b.best_bid for b in fresh if b.best_bid is not None]
    asks = [b.best_ask for b in fresh if b.best_ask is not None]
    return {"timestamp": utc_from_ms(ts_ms), "bids": _side(fresh, "bids", units), "asks": _side(fresh, "asks", units),
            "best_bid": max(bids) if bids else None, "best_ask": min(asks) if asks else None}


async def heatmap_history(storage: Any, symbol: str, start: datetime, end: datetime, *, bucket_size: float,
                          step: float, stale_after: float) -> list[dict[str, Any]]:
    """The columns of [start, end), oldest first; a column with no fresh book is left out."""
    units = bucket_units(bucket_size)  # ValueError unless a positive multiple of 1e-9
    step_ms = max(1, int(round(step * 1000)))
    stale_ms = int(stale_after * 1000)
    start_ms, end_ms = to_ms(start), to_ms(end)
    books: dict[str, _Binned] = {}
    columns: list[dict[str, Any]] = []
    # the column ending at ``edge`` holds the books up to it; the first edge is start + step
    edge = start_ms + step_ms

    def emit_until(ts_ms: int) -> None:
        nonlocal edge
        while edge < ts_ms and edge <= end_ms:
            if books:
                col = _column(edge, books, units, stale_ms)
                if col["bids"] or col["asks"]:
                    columns.append(col)
            edge += step_ms

    async for chunk in storage.iter_snapshots(start - timedelta(seconds=stale_after), end, symbols=[symbol]):
        for snap in chunk:
            t = to_ms(snap.timestamp)
            if t > edge:
                emit_until(t)
            books[snap.exchange] = _Binned(snap, units)
    emit_until(end_ms + 1)
    return columns
