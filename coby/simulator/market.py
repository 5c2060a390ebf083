"""A believable order-book market for the exchange simulator.

One :class:`Market` per (exchange, canonical symbol). It owns a full-depth book
(hundreds of levels per side, prices exact multiples of the venue's tick, see
:mod:`coby.instruments`) and moves it on :meth:`Market.step`: the symbol's fair
value (one per symbol, shared by every venue: :mod:`coby.simulator.fair`) bounds
the quotes, arbitrage trades and cancels move the top with it, takers trade at the
symbol's rate, and a handful of levels near the top and deeper are added, resized
or cancelled. A market also has a :attr:`Market.history` of trades made before it
started (minutes old), which venues that send recent trades on subscribe send, and
:attr:`Market.trades`: every trade made, that history first, which the venues' REST
trade history serves (:mod:`coby.simulator.history`).

Everything is drawn from a seeded ``random.Random`` so a (seed, exchange, symbol)
triple always replays the same market. Invariants after every step:

* the book is never crossed or locked (best bid < best ask, strictly);
* every price is ``round(k * tick, price_decimals)`` for an integer ``k``, so it is
  exact and compares equal after a round trip through ``f"{p:.{d}f}"`` or JSON;
* ``seq`` goes up by exactly one per update that changes the book (``step`` always
  changes it); trade-only updates made for faults keep the current ``seq``.

The update a step returns lists each touched level once with its final size
(``0.0`` = the level is gone), so applying it to a copy of the previous book gives
the new book exactly.

Every edit is also appended to a journal of (side, price), which
:class:`~coby.simulator.window.BookWindow` (in ``window``, re-exported here) reads
to follow the top ``depth`` levels incrementally.
"""

from __future__ import annotations

import bisect
import math
import random
import zlib
from collections import deque
from collections.abc import Callable, Sequence

from coby.simulator.fair import FairValue, VenueView
from coby.simulator.model import Instrument, Level, MarketUpdate, SimTrade, wall_clock_ms
from coby.simulator.window import BookWindow

__all__ = [
    "HISTORY",
    "JOURNAL_MAX",
    "MAX_LEVELS",
    "MIN_LEVELS",
    "BookWindow",
    "Instrument",
    "Level",
    "Market",
    "MarketUpdate",
    "SimTrade",
    "wall_clock_ms",
]

HISTORY = 50  # trades a market has "already made" when it starts (venues send them on subscribe)
TRADES_KEPT = 50_000  # every trade made, oldest first: what a venue's REST history serves (within its depth)
JOURNAL_MAX = 8_192  # windows read it every update; one that falls further behind resyncs
MIN_LEVELS = 300  # for a market of the default 400 levels; each market scales them by its spec
MAX_LEVELS = 500
BOOK_SPAN = 0.01  # the book's depth reaches about 1 % away from the mid (more where ticks are coarse)


class Market:
    """One venue's market for one symbol. See the module docstring for the invariants."""

    def __init__(
        self,
        exchange: str,
        symbol: str,
        *,
        seed: int = 1,
        clock: Callable[[], int] = wall_clock_ms,
        instrument: Instrument | None = None,
        fair: FairValue | None = None,
        stamp_lag_ms: int = 0,
    ) -> None:
        self.exchange = exchange
        self.symbol = symbol
        self.clock = clock
        self.stamp_lag_ms = stamp_lag_ms
        self.instrument = instrument or Instrument.of(exchange, symbol)
        spec = self.spec = self.instrument.spec
        self.tick = self.instrument.tick
        self.lot = self.instrument.lot
        self.price_decimals = self.instrument.price_decimals
        self.size_decimals = self.instrument.size_decimals
        self._rng = random.Random(seed * 1_000_003 + zlib.crc32(f"{exchange}:{symbol}".encode()))
        rng = self._rng
        self.view = VenueView.of(fair or FairValue(symbol, spec, seed), exchange, symbol)
        self.min_levels = max(10, round(spec.levels * MIN_LEVELS / 400))
        self.max_levels = max(self.min_levels + 10, round(spec.levels * MAX_LEVELS / 400))
        # Level gaps grow with depth; scaled so the book spans about BOOK_SPAN of the price.
        span_ticks = spec.price * BOOK_SPAN / self.tick
        n = spec.levels
        self._gap_scale = max(1.0, (span_ticks - n) / (0.3 * n + n * n / 300))
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        # Every (side, price) edited, in order, so BookWindows can advance incrementally;
        # _journal[i] has the absolute position _journal_base + i.
        self._journal: list[tuple[str, float]] = []
        self._journal_base = 0
        # Sorted ascending, both sides: best bid is _bid_px[-1], best ask is _ask_px[0].
        self._bid_px: list[float] = []
        self._ask_px: list[float] = []
        self.seq = rng.randint(1_000_000, 9_000_000)
        self._next_trade_id = rng.randint(10_000_000, 90_000_000)
        self.last_trade: SimTrade | None = None
        self.trade_rate = 1.0  # scales the chance of trades per step; 0.0: a market whose trades are quiet
        now = self.clock()
        self._build_initial_book(self.view.at(now))
        self.history: list[SimTrade] = self._make_history(now - stamp_lag_ms)
        # every trade made (the history, then each step's), oldest first: the venue's REST trade history
        self.trades: deque[SimTrade] = deque(self.history, maxlen=TRADES_KEPT)

    # ----------------------------------------------------------------- prices

    def _px(self, k: int) -> float:
        return round(k * self.tick, self.price_decimals)

    def _k(self, price: float) -> int:
        return round(price / self.tick)

    def _size(self, depth_index: int) -> float:
        """A level size: larger further from the mid, lognormal noise, at least one lot."""
        raw = self.spec.size * (0.15 + depth_index / 120) * self._rng.lognormvariate(0, 0.9)
        lots = max(1, round(raw / self.lot))
        return round(lots * self.lot, self.size_decimals)

    def _gap(self, depth_index: int) -> int:
        return 1 + int(self._rng.expovariate(1.0 / (self._gap_scale * (0.3 + depth_index / 150))))

    def _limits(self, ref: float) -> tuple[int, int]:
        """(highest bid k, lowest ask k) makers quote at around ``ref``: at least a half-spread away."""
        half = max(self.tick, ref * self.spec.half_spread_bp * 1e-4)
        return math.floor((ref - half) / self.tick + 1e-9), math.ceil((ref + half) / self.tick - 1e-9)

    def _build_initial_book(self, ref: float) -> None:
        bid_k, ask_k = self._limits(ref)
        levels = self._rng.randint(self.min_levels + (self.max_levels - self.min_levels) // 4,
                                   self.max_levels - (self.max_levels - self.min_levels) // 4)
        for i in range(levels):
            self._set("bid", self._px(bid_k), self._size(i))
            bid_k -= self._gap(i)
            if bid_k <= 0:
                break
        for i in range(levels):
            self._set("ask", self._px(ask_k), self._size(i))
            ask_k += self._gap(i)

    def _make_history(self, now_ms: int) -> list[SimTrade]:
        """The trades made before the simulator started, oldest first: what a venue that sends
        recent trades on subscribe (coinbase, bitfinex, kraken) sends first. The newest is a few
        seconds old, the oldest up to 45 minutes (minutes apart on an illiquid market)."""
        rng = self._rng
        mean_gap_ms = min(self.spec.trade_interval_s(10.0), 54.0) * 1000
        ts = now_ms - rng.randint(5_000, 20_000)
        trades: list[SimTrade] = []
        first_id = self._next_trade_id - HISTORY
        mid_k = (self._k(self.best_bid) + self._k(self.best_ask)) // 2
        for i in range(HISTORY):
            side = "buy" if rng.random() < 0.5 else "sell"
            k = mid_k + (1 if side == "buy" else -1) * rng.randint(1, 3)
            size = round(max(1, round(self._size(0) * 0.3 / self.lot)) * self.lot, self.size_decimals)
            trades.append(SimTrade(first_id + HISTORY - 1 - i, self._px(k), size, side, ts))
            ts -= max(1, int(rng.expovariate(1.0 / mean_gap_ms)))
        trades.reverse()
        return trades

    # ------------------------------------------------------------- properties

    @property
    def best_bid(self) -> float:
        return self._bid_px[-1]

    @property
    def best_ask(self) -> float:
        return self._ask_px[0]

    @property
    def mid(self) -> float:
        return (self.best_bid + self.best_ask) / 2

    def snapshot(self, depth: int | None = None) -> tuple[list[Level], list[Level]]:
        """(bids best first, asks best first), the top ``depth`` levels of each (all if None)."""
        bid_px = self._bid_px if depth is None else self._bid_px[-depth:] if depth > 0 else []
        ask_px = self._ask_px if depth is None else self._ask_px[:depth]
        return ([(p, self.bids[p]) for p in reversed(bid_px)], [(p, self.asks[p]) for p in ask_px])

    # ------------------------------------------------------------ book edits

    def _side(self, side: str) -> tuple[dict[float, float], list[float]]:
        return (self.bids, self._bid_px) if side == "bid" else (self.asks, self._ask_px)

    def _set(self, side: str, price: float, size: float) -> None:
        self._journal.append((side, price))
        if len(self._journal) > JOURNAL_MAX:
            drop = len(self._journal) // 2
            del self._journal[:drop]
            self._journal_base += drop
        book, prices = self._side(side)
        if size <= 0.0:
            if price in book:
                del book[price]
                del prices[bisect.bisect_left(prices, price)]
        else:
            if price not in book:
                bisect.insort(prices, price)
            book[price] = size

    def _nth(self, side: str, index: int) -> float:
        """Price of the level ``index`` steps from the top (0 = best)."""
        prices = self._side(side)[1]
        return prices[-1 - index] if side == "bid" else prices[index]

    # ------------------------------------------------------------------ step

    def step(self) -> MarketUpdate:
        """Advance one tick: trades maybe, then a handful of level changes. Applies them.

        The venue's fair value (the symbol's shared one, seen with this venue's lag and
        basis) bounds the quotes: no bid above ``ref - half-spread``, no ask below
        ``ref + half-spread``. When it moves, the quotes it passed are taken by an
        arbitrageur (liquid markets) or pulled by their makers, and new ones fill in.
        """
        rng = self._rng
        now = self.clock()
        ts = now - self.stamp_lag_ms
        ref = self.view.at(now)
        max_bid_k, min_ask_k = self._limits(ref)
        touched: dict[tuple[str, float], float] = {}  # (side, price) -> size before the step
        traded: set[tuple[str, float]] = set()  # levels trades hit: nothing else edits them this step

        def change(side: str, price: float, size: float) -> None:
            if (side, price) in traded:
                return
            book = self._side(side)[0]
            touched.setdefault((side, price), book.get(price, 0.0))
            self._set(side, price, size)

        trades: list[SimTrade] = []

        def take(taker: str, sweep: bool = False) -> None:
            trade = self._take(taker, ts, change, sweep)
            trades.append(trade)
            traded.add(("ask" if taker == "buy" else "bid", trade.price))

        # Arbitrage: a quote the fair value moved through is taken (at most a few per step;
        # on an illiquid market its maker mostly pulls it first) ...
        arb_p = min(0.9, 2 * self.spec.trade_p) * self.trade_rate
        for _ in range(3):
            if self._k(self.best_ask) < max_bid_k and len(self._ask_px) > 2 and rng.random() < arb_p:
                take("buy", sweep=True)
            elif self._k(self.best_bid) > min_ask_k and len(self._bid_px) > 2 and rng.random() < arb_p:
                take("sell", sweep=True)
            else:
                break
        # ... and the rest of the quotes inside the new limits are pulled.
        while self._k(self._bid_px[-1]) > max_bid_k and len(self._bid_px) > 1:
            change("bid", self._bid_px[-1], 0.0)
        while self._k(self._ask_px[0]) < min_ask_k and len(self._ask_px) > 1:
            change("ask", self._ask_px[0], 0.0)

        lean = math.tanh((ref - self.mid) / max(self.tick, ref * self.spec.half_spread_bp * 1e-4))
        if rng.random() < self.spec.trade_p * self.trade_rate:
            taker = "buy" if rng.random() < 0.5 + 0.3 * lean else "sell"
            for _ in range(1 if rng.random() < 0.8 else rng.randint(2, 3)):
                take(taker)

        for _ in range(rng.randint(2, 6)):
            self._random_change(lean, max_bid_k, min_ask_k, change)
        self._random_change(lean, max_bid_k, min_ask_k, change, near=False)  # depth moves too, every step
        self._refill_spread(max_bid_k, min_ask_k, change)

        for side in ("bid", "ask"):
            book, prices = self._side(side)
            while len(prices) < self.min_levels:
                far = prices[0] if side == "bid" else prices[-1]
                k = self._k(far) + (-1 if side == "bid" else 1) * self._gap(len(prices))
                if k <= 0:
                    break
                change(side, self._px(k), self._size(len(prices)))
            while len(prices) > self.max_levels:
                change(side, prices[0] if side == "bid" else prices[-1], 0.0)

        bids: list[Level] = []
        asks: list[Level] = []
        for (side, price), before in touched.items():
            after = self._side(side)[0].get(price, 0.0)
            if after != before:
                (bids if side == "bid" else asks).append((price, after))
        if not bids and not asks:  # every step changes the book: resize one deep level
            price = self._nth("ask", rng.randint(min(20, len(self._ask_px) - 1), len(self._ask_px) - 1))
            new = round(self.asks[price] + self.lot, self.size_decimals)
            self._set("ask", price, new)
            asks.append((price, new))
        self.seq += 1
        assert self.best_bid < self.best_ask, "crossed or locked book"
        return MarketUpdate(bids=bids, asks=asks, trades=trades, seq=self.seq, ts_ms=ts)

    def _take(self, taker: str, ts: int, change: Callable[[str, float, float], None], sweep: bool = False) -> SimTrade:
        """One trade against the best level of the other side; the level shrinks or goes (``sweep``: goes)."""
        side = "ask" if taker == "buy" else "bid"
        book, prices = self._side(side)
        price = self._nth(side, 0)
        level = book[price]
        if sweep or (len(prices) > self.min_levels // 2 and self._rng.random() < 0.35):
            size = level  # swept
        else:
            lots = max(1, round(level / self.lot * self._rng.uniform(0.05, 0.9)))
            size = min(level, round(lots * self.lot, self.size_decimals))
        change(side, price, round(level - size, self.size_decimals) if size < level else 0.0)
        trade = SimTrade(self._next_trade_id, price, size, taker, ts)
        self._next_trade_id += 1
        self.last_trade = trade
        self.trades.append(trade)
        return trade

    def _random_change(self, lean: float, max_bid_k: int, min_ask_k: int,
                       change: Callable[[str, float, float], None], near: bool | None = None) -> None:
        rng = self._rng
        # Quotes near the top lean the way the fair value pulls.
        side = "bid" if rng.random() < 0.5 + 0.4 * lean else "ask"
        other = "ask" if side == "bid" else "bid"
        if near is None:
            near = rng.random() < 0.7
        n = len(self._side(side)[1])
        index = min(n - 1, int(rng.expovariate(1 / 3)) if near else rng.randint(min(10, n - 1), n - 1))
        action = rng.random()
        if action < 0.4:  # resize
            price = self._nth(side, index)
            change(side, price, self._size(index))
        elif action < 0.6 and n > self.min_levels:  # cancel
            change(side, self._nth(side, index), 0.0)
        else:  # new level: inside the spread (not past the limit), or in an empty slot at depth
            best_k, opp_k = self._k(self._nth(side, 0)), self._k(self._nth(other, 0))
            sign = 1 if side == "bid" else -1
            if near and abs(opp_k - best_k) >= 2 and rng.random() < 0.5:
                k = best_k + sign * rng.randint(1, min(3, abs(opp_k - best_k) - 1))
            else:
                k = self._k(self._nth(side, index)) - sign * rng.randint(1, 3)
            inside = k <= max_bid_k and k < opp_k if side == "bid" else k >= min_ask_k and k > opp_k
            if inside and k > 0:
                change(side, self._px(k), self._size(index))

    def _refill_spread(self, max_bid_k: int, min_ask_k: int, change: Callable[[str, float, float], None]) -> None:
        """Market makers step back to the limits when the spread is wider than a few half-spreads,
        with a short ladder of levels (not one lonely quote above a hole)."""
        rng = self._rng
        room = max(1, (min_ask_k - max_bid_k) // 2)  # a half-spread, in ticks
        for side, limit, sign in (("bid", max_bid_k, -1), ("ask", min_ask_k, 1)):
            best_k = self._k(self._nth(side, 0))
            if sign * (best_k - limit) <= room * (1 + int(rng.expovariate(1.0))):
                continue
            k = limit + sign * int(rng.uniform(0, room))
            for i in range(8):
                if k <= 0 or sign * (best_k - k) <= 0:
                    break
                change(side, self._px(k), self._size(i))
                k += sign * self._gap(i)

    # ------------------------------------------------------------ for faults

    def unapplied(self, bids: Sequence[Level] = (), asks: Sequence[Level] = ()) -> MarketUpdate:
        """An update that takes a sequence number but does NOT touch the true book.

        Used for faults such as ``crossed``: the client sees it, the true book does not.
        """
        self.seq += 1
        return MarketUpdate(bids=list(bids), asks=list(asks), trades=[], seq=self.seq, ts_ms=self.clock())

    def crossing_level(self) -> Level:
        """A bid price strictly above the best ask (not a level of the book), with a size."""
        return (self._px(self._k(self.best_ask) + 2), self._size(0))

    def trade_only(self, trades: list[SimTrade]) -> MarketUpdate:
        """A trade-only update (no book change, ``seq`` unchanged), e.g. a duplicated trade."""
        return MarketUpdate(bids=[], asks=[], trades=list(trades), seq=self.seq, ts_ms=self.clock())
