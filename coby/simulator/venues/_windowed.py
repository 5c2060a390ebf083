"""What htx, kucoin, gate, bitfinex and mexc share: a book published as top-N windows.

Each of these venues publishes its book through depth-limited channels (htx
``mbp.150``, kucoin's ``level2_100`` snapshot, gate ``ob.<id>.50``, bitfinex ``len``
25, mexc's 100-level ``/api/v3/depth``). A channel of depth N is a
:class:`~coby.simulator.market.BookWindow`: the snapshot is the window, every
update sends the window's changes (a level leaving the window is deleted, the one
entering it is sent), so a client that applies them holds exactly the true top N.

Sequence numbers follow the framework's rule: a book frame carries ``update.seq``
and its predecessor is ``update.seq - 1``; one frame per book update and window,
even when nothing inside the window changed (bitfinex, which has no sequence
numbers, sends nothing then).

Faults handled here, for all five:

``gap``
    The next book update moves every window but reaches no client: the content is
    lost, not only the sequence number. (The base class strips the update before
    ``on_update``; a window advanced later would re-send the lost levels and heal
    the book, so ``publish`` is overridden.)
``crossed``
    For every window of the symbol: a bid above the best ask, then at once its
    deletion and the window's deepest bid again (a client that trimmed its book
    to the window depth meanwhile has dropped it). Not applied to the true book.
"""

from __future__ import annotations

from typing import ClassVar

from coby.simulator.market import Level, MarketUpdate, SimTrade
from coby.simulator.venues.base import Venue


class WindowedVenue(Venue):
    """A venue whose book channels are windows; subclasses build the frames."""

    #: Window depths a subscription may ask for (venue specific).
    book_depths: ClassVar[frozenset[int]] = frozenset()

    def send_book(self, symbol: str, depth: int, bids: list[Level], asks: list[Level], seq: int, ts_ms: int,
                  *, settled: bool = True) -> None:
        """Broadcast the changes of the ``depth`` window. ``settled`` is False for the
        transient crossed state (no checksum must describe it)."""
        raise NotImplementedError

    def send_trades(self, symbol: str, trades: list[SimTrade], ts_ms: int) -> None:
        raise NotImplementedError

    def publish(self, symbol: str, update: MarketUpdate) -> None:
        if update.has_book and "gap" in self.extra_faults and self.faults.take("gap", symbol):
            self.advance_windows(symbol)  # sent by the venue, lost on the way
            if not update.trades:
                return
            update = MarketUpdate(bids=[], asks=[], trades=update.trades, seq=update.seq, ts_ms=update.ts_ms)
        self.on_update(symbol, update)

    def on_update(self, symbol: str, update: MarketUpdate) -> None:
        changes = self.advance_windows(symbol)
        if update.has_book:
            for depth, (bids, asks) in changes.items():
                self.send_book(symbol, depth, bids, asks, update.seq, update.ts_ms)
        if update.trades:
            self.send_trades(symbol, update.trades, update.ts_ms)

    def inject_crossed(self, symbol: str) -> None:
        market = self.markets[symbol]
        windows = {depth: win for (sym, depth), win in self._windows.items() if sym == symbol}
        if not windows:
            return
        crossed = market.crossing_level()
        up = market.unapplied(bids=[crossed])
        for depth in windows:
            self.send_book(symbol, depth, [crossed], [], up.seq, up.ts_ms, settled=False)
        up = market.unapplied(bids=[(crossed[0], 0.0)])
        for depth, win in windows.items():
            bids, asks = win.uncrossed_changes(crossed)
            self.send_book(symbol, depth, bids, asks, up.seq, up.ts_ms)
