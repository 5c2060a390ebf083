"""Order-book imbalance and per-book metrics.

Every imbalance figure is ``(B - A) / (B + A)`` in [-1, 1] - positive when bids outweigh asks -
and 0 when both volumes are 0:

* **top of book**: B and A are the sizes at the best bid and the best ask. Consolidated, they are
  the summed sizes of all fresh venues at the consolidated best bid and best ask prices.
* **depth within a band** ``b`` (0.001, 0.005, 0.01 by default: +-0.1 %, +-0.5 %, +-1 %): B is the
  bid volume at prices >= ``mid * (1 - b)``, A the ask volume at prices <= ``mid * (1 + b)``, with
  ``mid = (best bid + best ask) / 2``. Per venue: that venue's levels around its own mid.
  Consolidated: all fresh venues' levels (full depth, not only the merged top) around the
  consolidated mid. A crossed consolidated book still has a mid, and is flagged on the book.

Depth figures and metrics need a mid, so both sides: a book with an empty side has a top-of-book
figure of +-1 (0 if both sides are empty), no depth figures and no metrics.
``OrderBookMetrics`` (per venue) carries mid, spread, best bid and ask, and the volume on each
side of the whole book as the engine holds it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Sequence

from coby.aggregate.bookframe import ASK, BID, BookColumns
from coby.models import ImbalanceMetrics, OrderBookMetrics

DEPTH_BANDS: tuple[float, ...] = (0.001, 0.005, 0.01)


def imbalance(bid: float, ask: float) -> float:
    """(bid - ask) / (bid + ask), 0 when both are 0."""
    total = bid + ask
    return (bid - ask) / total if total > 0 else 0.0


def band_volumes(cols: BookColumns, mid: float, band: float, totals: tuple[float, float]) -> tuple[float, float]:
    """Bid and ask volume of one book within ``band`` of ``mid`` (``totals``: each side's whole volume).

    A side's levels are sorted away from the touch, so the band is a prefix of each side, found by
    bisecting the prices.
    """
    nbid = cols.band_count(BID, mid * (1.0 - band))
    nask = cols.band_count(ASK, mid * (1.0 + band))
    bid = totals[BID] if nbid >= cols.count(BID) else cols.prefix_volume(BID, nbid)
    ask = totals[ASK] if nask >= cols.count(ASK) else cols.prefix_volume(ASK, nask)
    return bid, ask


def venue_imbalance(cols: BookColumns, totals: tuple[float, float], bands: Sequence[float],
                    timestamp: datetime) -> ImbalanceMetrics:
    """Imbalance of one venue's book. A book with an empty side has top of book +-1 (or 0 if both
    are empty) and no depth figures: without a mid there are no bands."""
    snap = cols.snapshot
    bids, asks = snap.bids, snap.asks
    top = imbalance(bids.sizes[0] if bids.sizes else 0.0, asks.sizes[0] if asks.sizes else 0.0)
    depth: dict[float, float] = {}
    if bids.prices and asks.prices:
        mid = (bids.prices[0] + asks.prices[0]) / 2.0
        depth = {b: imbalance(*band_volumes(cols, mid, b, totals)) for b in bands}
    return ImbalanceMetrics(symbol=snap.symbol, exchange=snap.exchange, timestamp=timestamp, top_of_book=top,
                            depth=depth)


def consolidated_imbalance(books: Sequence[BookColumns], totals: Sequence[tuple[float, float]],
                           best_bid: tuple[float, float] | None, best_ask: tuple[float, float] | None,
                           bands: Sequence[float], symbol: str, timestamp: datetime) -> ImbalanceMetrics:
    """Imbalance across ``books``, given the consolidated best bid and ask as (price, summed size),
    None for an empty side (then no depth figures, as for one venue)."""
    top = imbalance(best_bid[1] if best_bid else 0.0, best_ask[1] if best_ask else 0.0)
    depth: dict[float, float] = {}
    if best_bid is not None and best_ask is not None:
        mid = (best_bid[0] + best_ask[0]) / 2.0
        for b in bands:
            bid = ask = 0.0
            for cols, book_totals in zip(books, totals):
                vb, va = band_volumes(cols, mid, b, book_totals)
                bid += vb
                ask += va
            depth[b] = imbalance(bid, ask)
    return ImbalanceMetrics(symbol=symbol, exchange=None, timestamp=timestamp, top_of_book=top, depth=depth)


def book_metrics(cols: BookColumns, bid_volume: float, ask_volume: float) -> OrderBookMetrics | None:
    """The design's per-snapshot metrics; None if a side is empty."""
    snap = cols.snapshot
    if not snap.bids.prices or not snap.asks.prices:
        return None
    best_bid, best_ask = snap.bids.prices[0], snap.asks.prices[0]
    return OrderBookMetrics(symbol=snap.symbol, exchange=snap.exchange, timestamp=snap.timestamp,
                            mid_price=(best_bid + best_ask) / 2.0, spread=best_ask - best_bid,
                            bid_volume=bid_volume, ask_volume=ask_volume, best_bid=best_bid, best_ask=best_ask)
