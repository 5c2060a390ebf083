"""The consolidated book: the fresh venues' books for one symbol merged level by level.

* Levels merge on equal price (the float a venue's decimal price parses to); each merged level
  carries every venue's size at that price, and its ``size`` is their sum.
* ``depth`` limits each side to its best ``depth`` merged levels (None: all). Only a venue's own
  best ``depth`` levels can reach the merged best ``depth`` - a level with ``depth`` better prices
  on its own venue has at least ``depth`` better prices in the merge - so the merge reads no
  deeper than that. A venue whose levels are out of order still merges correctly (the merge sorts).
* The best bid (ask) is the top merged level; the venue named as holding it is the one with the
  largest size at that price (ties: the alphabetically first venue).
* ``crossed`` is True when the best bid >= the best ask: across venues that is an arbitrage (or a
  venue's broken book), and it is reported with the venues on each side, never hidden - the
  crossed levels stay in both sides of the book.
* Stale venues are left out of the merge and named in ``stale_exchanges``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Sequence

import numpy as np

from coby.aggregate.bookframe import ASK, BID, BookColumns
from coby.models import ConsolidatedLevel, ConsolidatedOrderBook, MergedLevels


def merge_side(books: Sequence[BookColumns], side: int, depth: int | None) -> MergedLevels:
    """Merge one side of several venues' books (bids best = highest first, asks lowest first).

    The venues' best ``depth`` levels go into one column (numpy, over the snapshots' buffers);
    one stable sort by price, best first, groups equal prices - each venue's rows in venue
    order - and the best ``depth`` groups are the merged levels. The result stays in columns
    (``MergedLevels``): a level's venue dict and object are made only when someone reads it.
    A level's size is its rows summed in order (venue by venue, a venue's rows as it lists them).
    """
    names = [c.snapshot.exchange for c in books]
    tops = [c.levels(side, depth) for c in books]
    counts = [len(prices) for prices, _ in tops]
    rows = sum(counts)
    if not rows:
        return MergedLevels([], [], names, [], [], [0])
    prices = np.frombuffer(b"".join([prices for prices, _ in tops]), dtype=np.float64)
    sizes = np.frombuffer(b"".join([sizes for _, sizes in tops]), dtype=np.float64)
    key = -prices if side == BID else prices  # ascending key = best first
    order = np.argsort(key, kind="stable")
    ranked = key[order]
    first = np.empty(rows, dtype=bool)
    first[0] = True
    np.not_equal(ranked[1:], ranked[:-1], out=first[1:])
    starts = np.flatnonzero(first)  # each distinct price's first row, best price first
    if depth is not None and len(starts) > depth:
        stop = int(starts[depth])
        starts = starts[:depth]
    else:
        stop = rows
    kept = order[:stop]
    level_of = np.cumsum(first[:stop]) - 1  # each kept row's merged level
    totals = np.zeros(len(starts))
    np.add.at(totals, level_of, sizes[kept])  # row by row, in order (add.at does not reorder a sum)
    venue_of = np.repeat(np.arange(len(books)), counts)[kept]
    return MergedLevels(prices[kept[starts]].tolist(), totals.tolist(), names, venue_of.tolist(),
                        sizes[kept].tolist(), [*starts.tolist(), stop])


def holder(level: ConsolidatedLevel) -> str:
    """The venue with the largest size at a level (ties: alphabetically first)."""
    return min(level.venues.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def consolidate(symbol: str, timestamp: datetime, books: Sequence[BookColumns], depth: int | None,
                stale_exchanges: Sequence[str] = ()) -> ConsolidatedOrderBook:
    """The consolidated book of ``books`` (fresh books of one symbol, one per venue)."""
    bids = merge_side(books, BID, depth)
    asks = merge_side(books, ASK, depth)
    best_bid = bids[0].price if bids else None
    best_ask = asks[0].price if asks else None
    return ConsolidatedOrderBook(
        symbol=symbol,
        timestamp=timestamp,
        bids=bids,
        asks=asks,
        best_bid=best_bid,
        best_bid_exchange=holder(bids[0]) if bids else None,
        best_ask=best_ask,
        best_ask_exchange=holder(asks[0]) if asks else None,
        crossed=best_bid is not None and best_ask is not None and best_bid >= best_ask,
        exchanges=tuple(sorted(c.snapshot.exchange for c in books)),
        stale_exchanges=tuple(sorted(stale_exchanges)),
    )
