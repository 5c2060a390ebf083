"""A believable order-book market for the exchange simulator.

One :class:`Market` per (exchange, canonical symbol). It owns a full-depth book
(hundreds of levels per side, prices exact multiples of the tick) and moves it on
:meth:`Market.step`: a latent fair value random-walks, the top of the book follows
it through trades that take liquidity and quotes placed inside the spread, and a
handful of levels near the top and deeper are added, resized or cancelled.

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
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from coby.simulator.window import BookWindow

__all__ = [
    "DEFAULT_INSTRUMENT",
    "INSTRUMENTS",
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

Level = tuple[float, float]


def wall_clock_ms() -> int:
    """Milliseconds since the epoch, from the system clock."""
    return time.time_ns() // 1_000_000


@dataclass(slots=True, frozen=True)
class SimTrade:
    """One trade. ``side`` is the taker's: 'buy' lifted the best ask, 'sell' hit the best bid."""

    trade_id: int
    price: float
    size: float
    side: str
    ts_ms: int


@dataclass(slots=True, frozen=True)
class MarketUpdate:
    """What one step changed. Sizes are final sizes; 0.0 deletes the level."""

    bids: list[Level]
    asks: list[Level]
    trades: list[SimTrade]
    seq: int
    ts_ms: int

    @property
    def has_book(self) -> bool:
        return bool(self.bids or self.asks)


@dataclass(slots=True, frozen=True)
class Instrument:
    """Price scale of a canonical symbol: starting mid, tick, lot and a typical level size."""

    base_price: float
    tick: float
    lot: float
    typical_size: float

    @property
    def price_decimals(self) -> int:
        return _decimals(self.tick)

    @property
    def size_decimals(self) -> int:
        return _decimals(self.lot)


def _decimals(step: float) -> int:
    text = f"{step:.10f}".rstrip("0")
    return len(text.split(".")[1]) if "." in text else 0


INSTRUMENTS: dict[str, Instrument] = {
    "BTC-USDT": Instrument(base_price=30_000.0, tick=0.1, lot=0.0001, typical_size=0.6),
    "ETH-USDT": Instrument(base_price=2_000.0, tick=0.01, lot=0.001, typical_size=6.0),
    "SOL-USDT": Instrument(base_price=25.0, tick=0.001, lot=0.01, typical_size=80.0),
}
DEFAULT_INSTRUMENT = Instrument(base_price=100.0, tick=0.01, lot=0.01, typical_size=20.0)

MIN_LEVELS = 300
MAX_LEVELS = 500
JOURNAL_MAX = 8_192  # windows read it every update; one that falls further behind resyncs


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
    ) -> None:
        self.exchange = exchange
        self.symbol = symbol
        self.clock = clock
        self.instrument = instrument or INSTRUMENTS.get(symbol, DEFAULT_INSTRUMENT)
        self.tick = self.instrument.tick
        self.lot = self.instrument.lot
        self.price_decimals = self.instrument.price_decimals
        self.size_decimals = self.instrument.size_decimals
        self._rng = random.Random(seed * 1_000_003 + zlib.crc32(f"{exchange}:{symbol}".encode()))
        rng = self._rng
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
        # Per-venue offset of up to one basis point so venues disagree a little, as real ones do
        # (arbitrage keeps real venues close: wider offsets left the consolidated book crossed always).
        offset = ((zlib.crc32(exchange.encode()) % 2001) - 1000) / 1000 * 0.0001
        self._anchor = self.instrument.base_price * (1 + offset)
        self._fair = self._anchor
        self._vol = self.tick * 1.2
        self._build_initial_book()

    # ----------------------------------------------------------------- prices

    def _px(self, k: int) -> float:
        return round(k * self.tick, self.price_decimals)

    def _k(self, price: float) -> int:
        return round(price / self.tick)

    def _size(self, depth_index: int) -> float:
        """A level size: larger further from the mid, lognormal noise, at least one lot."""
        raw = self.instrument.typical_size * (0.15 + depth_index / 120) * self._rng.lognormvariate(0, 0.9)
        lots = max(1, round(raw / self.lot))
        return round(lots * self.lot, self.size_decimals)

    def _gap(self, depth_index: int) -> int:
        return 1 + int(self._rng.expovariate(1.0 / (0.3 + depth_index / 150)))

    def _build_initial_book(self) -> None:
        mid_k = self._k(self._anchor)
        spread = self._rng.randint(1, 3)
        bid_k, ask_k = mid_k - spread // 2 - 1, mid_k + (spread + 1) // 2
        for i in range(self._rng.randint(MIN_LEVELS + 50, MAX_LEVELS - 50)):
            self._set("bid", self._px(bid_k), self._size(i))
            bid_k -= self._gap(i)
        for i in range(self._rng.randint(MIN_LEVELS + 50, MAX_LEVELS - 50)):
            self._set("ask", self._px(ask_k), self._size(i))
            ask_k += self._gap(i)

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
        """Advance one tick: trades maybe, then a handful of level changes. Applies them."""
        rng = self._rng
        ts = self.clock()
        touched: dict[tuple[str, float], float] = {}  # (side, price) -> size before the step
        traded: set[tuple[str, float]] = set()  # levels trades hit: nothing else edits them this step

        def change(side: str, price: float, size: float) -> None:
            if (side, price) in traded:
                return
            book = self._side(side)[0]
            touched.setdefault((side, price), book.get(price, 0.0))
            self._set(side, price, size)

        self._fair += rng.gauss(0.0, self._vol) + (self._anchor - self._fair) * 0.0005
        lean = math.tanh((self._fair - self.mid) / (4 * self.tick))  # > 0: price wants to rise

        trades: list[SimTrade] = []
        if rng.random() < (0.3 + 0.3 * abs(lean)) * self.trade_rate:
            taker = "buy" if rng.random() < 0.5 + 0.45 * lean else "sell"
            for _ in range(1 if rng.random() < 0.8 else rng.randint(2, 3)):
                trade = self._take(taker, ts, change)
                trades.append(trade)
                traded.add(("ask" if taker == "buy" else "bid", trade.price))

        for _ in range(rng.randint(2, 6)):
            self._random_change(lean, change)
        self._refill_spread(lean, change)

        for side in ("bid", "ask"):
            book, prices = self._side(side)
            while len(prices) < MIN_LEVELS:
                far = prices[0] if side == "bid" else prices[-1]
                k = self._k(far) + (-1 if side == "bid" else 1) * self._gap(len(prices))
                change(side, self._px(k), self._size(len(prices)))
            while len(prices) > MAX_LEVELS:
                change(side, prices[0] if side == "bid" else prices[-1], 0.0)

        bids: list[Level] = []
        asks: list[Level] = []
        for (side, price), before in touched.items():
            after = self._side(side)[0].get(price, 0.0)
            if after != before:
                (bids if side == "bid" else asks).append((price, after))
        if not bids and not asks:  # every step changes the book: resize one deep level
            price = self._nth("ask", rng.randint(20, len(self._ask_px) - 1))
            new = round(self.asks[price] + self.lot, self.size_decimals)
            self._set("ask", price, new)
            asks.append((price, new))
        self.seq += 1
        assert self.best_bid < self.best_ask, "crossed or locked book"
        return MarketUpdate(bids=bids, asks=asks, trades=trades, seq=self.seq, ts_ms=ts)

    def _take(self, taker: str, ts: int, change: Callable[[str, float, float], None]) -> SimTrade:
        """One trade against the best level of the other side; the level shrinks or goes."""
        side = "ask" if taker == "buy" else "bid"
        book, prices = self._side(side)
        price = self._nth(side, 0)
        level = book[price]
        if len(prices) > MIN_LEVELS // 2 and self._rng.random() < 0.35:
            size = level  # swept
        else:
            lots = max(1, round(level / self.lot * self._rng.uniform(0.05, 0.9)))
            size = min(level, round(lots * self.lot, self.size_decimals))
        change(side, price, round(level - size, self.size_decimals) if size < level else 0.0)
        trade = SimTrade(self._next_trade_id, price, size, taker, ts)
        self._next_trade_id += 1
        self.last_trade = trade
        return trade

    def _random_change(self, lean: float, change: Callable[[str, float, float], None]) -> None:
        rng = self._rng
        # Quotes inside the spread lean the way the fair value pulls.
        side = "bid" if rng.random() < 0.5 + 0.4 * lean else "ask"
        other = "ask" if side == "bid" else "bid"
        near = rng.random() < 0.7
        n = len(self._side(side)[1])
        index = min(n - 1, int(rng.expovariate(1 / 3)) if near else rng.randint(10, n - 1))
        action = rng.random()
        if action < 0.4:  # resize
            price = self._nth(side, index)
            change(side, price, self._size(index))
        elif action < 0.6 and n > MIN_LEVELS:  # cancel
            change(side, self._nth(side, index), 0.0)
        else:  # new level: inside the spread, or in an empty slot at depth
            best_k, opp_k = self._k(self._nth(side, 0)), self._k(self._nth(other, 0))
            sign = 1 if side == "bid" else -1
            if near and abs(opp_k - best_k) >= 2 and rng.random() < 0.5:
                k = best_k + sign * rng.randint(1, min(3, abs(opp_k - best_k) - 1))
            else:
                k = self._k(self._nth(side, index)) - sign * rng.randint(1, 3)
            price = self._px(k)
            if (side == "bid" and k < opp_k) or (side == "ask" and k > opp_k):
                change(side, price, self._size(index))

    def _refill_spread(self, lean: float, change: Callable[[str, float, float], None]) -> None:
        """Market makers step into a wide spread, mostly on the side the fair value pulls to."""
        rng = self._rng
        bid_k, ask_k = self._k(self.best_bid), self._k(self.best_ask)
        while ask_k - bid_k > 1 + int(rng.expovariate(1.0)) * 2:
            if rng.random() < 0.5 + 0.4 * lean:
                bid_k += rng.randint(1, min(3, ask_k - bid_k - 1))
                change("bid", self._px(bid_k), self._size(0))
            else:
                ask_k -= rng.randint(1, min(3, ask_k - bid_k - 1))
                change("ask", self._px(ask_k), self._size(0))

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
