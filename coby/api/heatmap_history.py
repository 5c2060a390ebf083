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
``MAX_RANGE / snapshot_interval`` snapshot rows per venue are read (36,000 for ten venues at 1 s;
their book JSON is parsed only for the snapshots a column uses); there are at most
``MAX_COLUMNS`` columns (a longer range gets a longer step); a column has at most
``2 * venues * snapshot_depth`` buckets. The work is columnar (polars: an as-of join picks each
column's snapshots, a group-by sums the buckets) and runs in a worker thread, so the event loop
keeps serving while a long range is computed.
"""

from __future__ import annotations

import asyncio
import math
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from coby.aggregate.bookframe import PRICE_SCALE, bucket_units
from coby.db.tables import SNAPSHOTS
from coby.models import to_ms, utc_from_ms

MAX_RANGE = 3600.0  # seconds of history per request
MAX_COLUMNS = 600
MIN_STEP = 0.5  # seconds
MIN_BUCKET, MAX_BUCKET = 1e-9, 1e9  # bucket widths: the price grid, and one bucket for any market
_EXCHANGE, _TS, _BIDS, _ASKS = (SNAPSHOTS.names.index(c) for c in ("exchange", "timestamp", "bids", "asks"))


def column_step(start: datetime, end: datetime, step: float | None, snapshot_interval: float) -> float:
    """Seconds per column: the asked step (or the snapshot interval), widened to fit MAX_COLUMNS."""
    span = (end - start).total_seconds()
    base = max(MIN_STEP, step if step is not None else snapshot_interval)
    return max(base, math.ceil(span / MAX_COLUMNS * 1000) / 1000)


_LEVELS = pl.List(pl.List(pl.Float64))


def _levels(snaps: pl.DataFrame, side: str, units: int) -> pl.DataFrame:
    """(sid, idx, size) of one side: each level's bucket as an index of ``units`` (bids floor, asks ceil)."""
    scaled = (pl.col("level").list.get(0) * PRICE_SCALE).round(0).cast(pl.Int64)
    idx = scaled // units if side == "bids" else (scaled + units - 1) // units
    return (snaps.select("sid", pl.col(side).alias("level"))
            .explode("level").drop_nulls("level")
            .select("sid", idx.alias("idx"), pl.col("level").list.get(1).alias("size")))


def columns_of(rows: list[tuple], start_ms: int, end_ms: int, step_ms: int, units: int,
               stale_ms: int) -> list[dict[str, Any]]:
    """The columns of stored snapshot rows (in polars, off the event loop: see ``heatmap_history``)."""
    if not rows:
        return []
    snaps = pl.DataFrame({"sid": range(len(rows)), "exchange": [r[_EXCHANGE] for r in rows],
                          "ts": [to_ms(r[_TS]) for r in rows], "bids": [r[_BIDS] for r in rows],
                          "asks": [r[_ASKS] for r in rows]},
                         schema={"sid": pl.Int64, "exchange": pl.Utf8, "ts": pl.Int64, "bids": pl.Utf8,
                                 "asks": pl.Utf8}).sort("ts")
    edges = pl.DataFrame({"edge": range(start_ms + step_ms, end_ms + 1, step_ms)}, schema={"edge": pl.Int64})
    venues = snaps.select("exchange").unique()
    # per (edge, venue): the newest snapshot at or before the edge, at most stale_ms old
    grid = (edges.join(venues, how="cross").sort("edge")
            .join_asof(snaps.select("ts", "exchange", "sid"), left_on="edge", right_on="ts", by="exchange",
                       strategy="backward", tolerance=stale_ms, check_sortedness=False)  # both sorted
            .drop_nulls("sid").select("edge", "exchange", "sid"))
    if grid.is_empty():
        return []
    used = (snaps.join(grid.select("sid").unique(), on="sid")  # only these are parsed
            .with_columns(pl.col("bids").str.json_decode(_LEVELS), pl.col("asks").str.json_decode(_LEVELS)))
    out: dict[int, dict[str, Any]] = {}
    for side, desc in (("bids", True), ("asks", False)):
        levels = _levels(used, side, units)
        cells = (grid.join(levels, on="sid")
                 .group_by("edge", "idx").agg(pl.col("size").sum(), pl.col("exchange").n_unique().alias("venues"))
                 .sort(["edge", "idx"], descending=[False, desc]))
        col = None
        for edge, i, size, n in cells.select("edge", "idx", "size", "venues").iter_rows():  # in edge order
            if col is None or col[0] != edge:
                col = (edge, out.setdefault(edge, {"bids": [], "asks": []})[side])
            col[1].append([i * units / PRICE_SCALE, size, n])
    # the best bid and ask: the venues' best levels (not bucketed)
    tops = used.select("sid", pl.col("bids").list.first().list.first().alias("bid"),
                       pl.col("asks").list.first().list.first().alias("ask"))
    bbo = grid.join(tops, on="sid").group_by("edge").agg(pl.col("bid").max(), pl.col("ask").min())
    best = {e: (b, a) for e, b, a in bbo.iter_rows()}
    return [{"timestamp": utc_from_ms(edge), "bids": col["bids"], "asks": col["asks"],
             "best_bid": best.get(edge, (None, None))[0], "best_ask": best.get(edge, (None, None))[1]}
            for edge, col in sorted(out.items())]


async def heatmap_history(storage: Any, symbol: str, start: datetime, end: datetime, *, bucket_size: float,
                          step: float, stale_after: float) -> list[dict[str, Any]]:
    """The columns of [start, end), oldest first; a column with no fresh book is left out."""
    units = bucket_units(bucket_size)  # ValueError unless a positive multiple of 1e-9
    rows: list[tuple] = []
    try:
        since = start - timedelta(seconds=stale_after)  # the books still fresh at start
    except OverflowError:
        since = start
    async for chunk in storage.iter_rows(SNAPSHOTS, since, end, symbols=[symbol]):
        rows.extend(chunk)
    # polars does the work in its own threads; the event loop keeps serving meanwhile
    return await asyncio.to_thread(columns_of, rows, to_ms(start), to_ms(end), max(1, int(round(step * 1000))), units,
                                   int(stale_after * 1000))
