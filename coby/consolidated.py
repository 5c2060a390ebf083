"""The consolidated book: the fresh venues' books for one symbol merged level by level.

* Levels merge on equal price (the float a venue's decimal price parses to); each merged level
  carries every venue's size at that price, and its ``size`` is their sum.
* ``depth`` limits each side to its best ``depth`` merged levels (None: all). Only a venue's own
  best ``depth`` levels can reach the merged best ``depth`` - a level with ``depth`` better prices
  on its own venue has at least ``depth`` better prices in the merge - so the merge reads no
  deeper than that.
* The best bid (ask) is the top merged level; the venue named as holding it is the one with the
  largest size at that price (ties: the alphabetically first venue).
* ``crossed`` is True when the best bid >= the best ask: across venues that is an arbitrage (or a
  venue's broken book), and it is reported with the venues on each side, never hidden - the
  crossed levels stay in both sides of the book.
* Stale venues are left out of the merge and named in ``stale_exchanges``.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import datetime
from operator import neg
from typing import Sequence

from coby.bookframe import ASK, BID, BookColumns
from coby.models import ConsolidatedLevel, ConsolidatedOrderBook, constructor

_level = constructor(ConsolidatedLevel)


def merge_side(books: Sequence[BookColumns], side: int, depth: int | None) -> tuple[ConsolidatedLevel, ...]:
    """Merge one side of several venues' books (bids best = highest first, asks lowest first).

    The best ``depth`` distinct prices among the venues' best ``depth`` levels are the merged
    book's prices; each venue is then read only down to the worst of them.
    """
    descending = side == BID
    tops = [(c.snapshot.exchange, *c.levels(side, depth)) for c in books]
    candidates: set[float] = set()
    for _, prices, _ in tops:
        candidates.update(prices)
    ordered = sorted(candidates, reverse=descending)
    if depth is not None:
        del ordered[depth:]
    if not ordered:
        return ()
    merged: dict[float, dict[str, float]] = {price: {} for price in ordered}
    worst = ordered[-1]
    for exchange, prices, sizes in tops:
        stop = bisect_right(prices, -worst, key=neg) if descending else bisect_right(prices, worst)
        for price, size in zip(prices[:stop], sizes[:stop]):
            shares = merged.get(price)  # None only for a venue whose levels are out of order
            if shares is not None:
                shares[exchange] = shares.get(exchange, 0.0) + size  # a price listed twice keeps both sizes
    return tuple([_level(price, sum(shares.values()), shares) for price, shares in merged.items() if shares])


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
