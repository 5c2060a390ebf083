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

Faults, for all five:

``gap``
    The base class strips the next book update of a watched symbol before
    ``on_update``, which still advances every window: the levels are lost, not
    only the sequence number, and no later frame re-sends them.
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

    def on_update(self, symbol: str, update: MarketUpdate) -> None:
        changes = self.advance_windows(symbol)  # also for a gap-stripped update: its levels are lost
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
