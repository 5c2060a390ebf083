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

from coby.buckets import bucket_price
from coby.models import OrderBookSnapshot, to_ms, utc_from_ms

MAX_RANGE = 3600.0  # seconds of history per request
MAX_COLUMNS = 600
MIN_STEP = 0.5  # seconds


def column_step(start: datetime, end: datetime, step: float | None, snapshot_interval: float) -> float:
    """Seconds per column: the asked step (or the snapshot interval), widened to fit MAX_COLUMNS."""
    span = (end - start).total_seconds()
    base = max(MIN_STEP, step if step is not None else snapshot_interval)
    return max(base, math.ceil(span / MAX_COLUMNS * 1000) / 1000)


def _column(ts_ms: int, books: dict[str, OrderBookSnapshot], bucket_size: float, stale_ms: int) -> dict[str, Any]:
    sides: dict[str, dict[float, list]] = {"bid": {}, "ask": {}}
    best_bid = best_ask = None
    for book in books.values():
        if ts_ms - to_ms(book.timestamp) > stale_ms:
            continue
        for side, levels in (("bid", book.bids), ("ask", book.asks)):
            cells = sides[side]
            seen: set[float] = set()
            for p, s in zip(levels.prices, levels.sizes):
                key = bucket_price(p, side, bucket_size)
                cell = cells.get(key)
                if cell is None:
                    cells[key] = cell = [key, 0.0, 0]
                cell[1] += s
                if key not in seen:
                    seen.add(key)
                    cell[2] += 1
        if len(book.bids.prices):
            best_bid = max(best_bid or -math.inf, book.bids.prices[0])
        if len(book.asks.prices):
            best_ask = min(best_ask or math.inf, book.asks.prices[0])
    return {"timestamp": utc_from_ms(ts_ms),
            "bids": sorted(sides["bid"].values(), key=lambda c: -c[0]),
            "asks": sorted(sides["ask"].values(), key=lambda c: c[0]),
            "best_bid": best_bid, "best_ask": best_ask}


async def heatmap_history(storage: Any, symbol: str, start: datetime, end: datetime, *, bucket_size: float,
                          step: float, stale_after: float) -> list[dict[str, Any]]:
    """The columns of [start, end), oldest first; a column with no fresh book is left out."""
    step_ms = max(1, int(round(step * 1000)))
    stale_ms = int(stale_after * 1000)
    start_ms, end_ms = to_ms(start), to_ms(end)
    books: dict[str, OrderBookSnapshot] = {}
    columns: list[dict[str, Any]] = []
    # the column ending at ``edge`` holds the books up to it; the first edge is start + step
    edge = start_ms + step_ms

    def emit_until(ts_ms: int) -> None:
        nonlocal edge
        while edge < ts_ms and edge <= end_ms:
            if books:
                col = _column(edge, books, bucket_size, stale_ms)
                if col["bids"] or col["asks"]:
                    columns.append(col)
            edge += step_ms

    async for chunk in storage.iter_snapshots(start - timedelta(seconds=stale_after), end, symbols=[symbol]):
        for snap in chunk:
            t = to_ms(snap.timestamp)
            if t > edge:
                emit_until(t)
            books[snap.exchange] = snap
    emit_until(end_ms + 1)
    return columns
