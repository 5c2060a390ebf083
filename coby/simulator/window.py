"""The window a client of a depth-limited feed holds on a simulated market.

One :class:`BookWindow` per (market, depth). Depth-limited feeds (okx ``books``
400, bybit ``orderbook.50``, kraken ``book`` 10, ...) send only the changes inside
the top ``depth`` levels, and the level that enters when one leaves; the window
works those changes out incrementally from the :class:`~coby.simulator.market.Market`'s
journal of edited levels.
"""

from __future__ import annotations

import bisect
import math
from typing import Protocol

from coby.simulator.model import Level


class Market(Protocol):
    """What a window reads of :class:`coby.simulator.market.Market` (which owns the windows; a protocol
    rather than an import, so the two modules do not import each other)."""

    bids: dict[float, float]
    asks: dict[float, float]
    _bid_px: list[float]
    _ask_px: list[float]
    _journal: list[tuple[str, float]]
    _journal_base: int

    def snapshot(self, depth: int) -> tuple[list[Level], list[Level]]: ...


class BookWindow:
    """The top ``depth`` levels of a market, as a client of a depth-limited feed holds them.

    Depth-limited feeds (okx ``books`` 400, bybit ``orderbook.50``, kraken ``book``
    10, ...) only send changes inside the window, and when a level leaves it they
    send the level that enters it, so a client that trims its book to ``depth``
    after every message stays equal to the true top ``depth``. ``advance()`` is
    called after every market update and returns exactly those changes.

    ``advance`` is incremental: it reads the market's journal of edited levels and
    the moves of the window's edge, so its cost does not grow with ``depth``.
    """

    __slots__ = ("market", "depth", "bids", "asks", "_pos", "_edges")

    def __init__(self, market: Market, depth: int) -> None:
        self.market = market
        self.depth = depth
        self._resync()

    def _resync(self) -> tuple[list[Level], list[Level]]:
        """Rebuild from the market; returns the changes versus the old window (if any)."""
        bids, asks = self.market.snapshot(self.depth)
        new_bids, new_asks = dict(bids), dict(asks)
        old_bids: dict[float, float] = getattr(self, "bids", {})
        old_asks: dict[float, float] = getattr(self, "asks", {})
        changes = (_diff(old_bids, new_bids, reverse=True), _diff(old_asks, new_asks, reverse=False))
        self.bids, self.asks = new_bids, new_asks
        self._pos = self.market._journal_base + len(self.market._journal)
        full_b, full_a = len(bids) >= self.depth, len(asks) >= self.depth
        # keyed by is_bid: the deepest price inside the window, or infinity if the side is not full
        self._edges = {
            True: bids[-1][0] if full_b else -math.inf,
            False: asks[-1][0] if full_a else math.inf,
        }
        return changes

    def snapshot(self) -> tuple[list[Level], list[Level]]:
        """The window now (bids best first, asks best first)."""
        return (
            sorted(self.bids.items(), reverse=True),
            sorted(self.asks.items()),
        )

    def advance(self) -> tuple[list[Level], list[Level]]:
        """Move the window to the market's current top; return (bid changes, ask changes)."""
        m = self.market
        start = self._pos - m._journal_base
        if start < 0:  # the journal was trimmed past us: rebuild
            return self._resync()
        touched = m._journal[start:]
        self._pos = m._journal_base + len(m._journal)
        bid_changes: dict[float, float] = {}
        ask_changes: dict[float, float] = {}
        self._advance_side(m.bids, m._bid_px, self.bids, bid_changes, [p for s, p in touched if s == "bid"], True)
        self._advance_side(m.asks, m._ask_px, self.asks, ask_changes, [p for s, p in touched if s == "ask"], False)
        return (sorted(bid_changes.items(), reverse=True), sorted(ask_changes.items()))

    def _advance_side(
        self,
        book: dict[float, float],
        prices: list[float],
        window: dict[float, float],
        changes: dict[float, float],
        touched: list[float],
        is_bid: bool,
    ) -> None:
        """Bring one side of the window to ``prices`` (ascending), recording the changes."""
        n = self.depth
        full = len(prices) >= n
        # The window is prices[lo_i:hi_i]: the top end for bids, the bottom end for asks.
        lo_i, hi_i = (len(prices) - n if full else 0, len(prices)) if is_bid else (0, min(n, len(prices)))
        old_edge = self._edges[is_bid]  # the window's deepest price before (-inf/+inf: not full)
        new_edge = (prices[lo_i] if is_bid else prices[hi_i - 1]) if full else (-math.inf if is_bid else math.inf)
        self._edges[is_bid] = new_edge

        def put(price: float, size: float) -> None:
            if size > 0.0:
                if window.get(price) != size:
                    window[price] = size
                    changes[price] = size
            elif price in window:
                del window[price]
                changes[price] = 0.0

        for price in set(touched):
            inside = price >= new_edge if is_bid else price <= new_edge
            put(price, book.get(price, 0.0) if inside else 0.0)
        # Untouched levels crossing the window's edge: between the old and the new edge.
        if old_edge != new_edge:
            if is_bid:
                between = prices[bisect.bisect_left(prices, min(old_edge, new_edge)) : bisect.bisect_left(
                    prices, max(old_edge, new_edge))]
                for price in between:
                    put(price, book[price] if price >= new_edge else 0.0)
            else:
                between = prices[bisect.bisect_right(prices, min(old_edge, new_edge)) : bisect.bisect_right(
                    prices, max(old_edge, new_edge))]
                for price in between:
                    put(price, book[price] if price <= new_edge else 0.0)

    def crossed_changes(self) -> tuple[list[Level], list[Level]]:
        """A change that puts a bid above the best ask (the window itself is untouched)."""
        return ([self.market.crossing_level()], [])

    def uncrossed_changes(self, crossed: Level) -> tuple[list[Level], list[Level]]:
        """Deletes the crossed bid and re-sends the deepest bid the client trimmed meanwhile."""
        bids = [(crossed[0], 0.0)]
        if len(self.bids) >= self.depth:
            deepest = min(self.bids)
            bids.append((deepest, self.bids[deepest]))
        return (bids, [])


def _diff(old: dict[float, float], new: dict[float, float], *, reverse: bool) -> list[Level]:
    changes = [(p, s) for p, s in new.items() if old.get(p) != s]
    changes.extend((p, 0.0) for p in old if p not in new)
    changes.sort(reverse=reverse)
    return changes
