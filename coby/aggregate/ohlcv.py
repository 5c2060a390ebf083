"""OHLCV bars from trades: 1s 1m 5m 15m 1h 4h 1d, per venue and consolidated across venues.

Definitions
-----------
* Bars are aligned to the UTC epoch: a ``tf`` bar covers ``[start, start + tf)`` with ``start`` a
  multiple of ``tf`` (so 1d bars run from 00:00 UTC, 4h bars from 00:00, 04:00, ...). A bar's
  ``timestamp`` is its start. A trade belongs to the bar its exchange ``timestamp`` falls in.
* ``open`` / ``close``: the price of the bar's earliest / latest trade by timestamp, ties broken by
  the order ``add`` received them; ``high`` / ``low``; ``volume`` the sum of sizes; ``trade_count``;
  ``vwap = sum(price * size) / volume``; ``buy_volume`` / ``sell_volume`` the sizes of trades
  whose taker bought / sold.
* Per venue (``exchange`` = the venue) and consolidated (``exchange=None``: every venue's trades of
  the symbol).

Closing, lateness and gaps
--------------------------
* ``advance(now)`` closes every bar whose end is at or before ``now - grace`` and returns it
  (``closed=True``), whether or not any later trade has arrived: a bar closes on its time
  boundary plus the grace window, driven by the clock (a replay passes its own ``now``).
* A trade that arrives late, while its bar is still open (within ``grace`` of the bar's end),
  updates it. Lateness is judged against the finest timeframe, whose bars close first.
* A trade older than that - its finest bar already closed; real venues send such trades: a
  snapshot of recent trades on subscribe (coinbase, bitfinex), trades missed during a reconnect -
  is **repaired** in when it lies within ``repair_window`` seconds of the close horizon
  (``now - grace``) and not before the builder's first horizon: it is folded into every bar
  containing it, of every timeframe, per venue and consolidated - the closed ones are kept in
  memory for the window (a bar with no trade yet is made) - and each closed bar it changed is
  returned once more, ``closed=True``, by the next ``take_repaired()`` (to be stored again by
  upsert and re-published); the open ones simply include it. Counted in ``repaired_trades`` /
  ``repaired_by_exchange``. Bars before the builder's first horizon are never remade: they may
  have been stored by an earlier process with trades this one never saw.
* Any other late trade is **not applied** to any timeframe - that keeps every timeframe built
  from the same trades - and is counted in ``late_trades`` (and per venue in
  ``late_by_exchange``); ``add`` returns False for it. ``on_late(exchange, repaired)``, when
  given, is called for every trade older than its open bar (the pipeline counts them in
  ``/metrics``).
* An interval with no trades emits **no bar**. A flat bar would claim a price nobody traded at and
  would paper over a feed gap (which coby records explicitly); a consumer wanting a continuous
  series forward-fills the previous close.

How: one open bar per trade, the rest by merging
------------------------------------------------
Every bar is composable: open and close by their (timestamp, arrival) key, high, low, and sums.
So ``add`` updates only the trade's *finest* bar of its venue, in place (a few comparisons and
additions: cheaper per trade than handing trades to polars at each tick, whose per-call cost
dominated at hundreds of trades a tick, and cheaper still than reducing each trade into fourteen
series). When a finest bar closes, it is emitted, merged with the other venues' bars of the same
instant into the consolidated finest bar, and each is merged into the open bars of the coarser
timeframes (every timeframe is a multiple of the finer ones, so a finest bar lies within one bar
of each). A coarser bar closes no earlier than the finest bars it covers, so when its end passes
it holds all of them. ``open_bars`` merges the still-open finest bars into copies of the coarser
ones. Sums are thus added per finest bar, then per bar; the order is fixed by the trades' arrival
order and does not depend on when ``advance`` is called.
"""

from __future__ import annotations

from datetime import datetime
from typing import Callable, Iterable, Sequence

from coby.models import OHLCVBar, TradeEvent, ensure_utc, to_ms, utc_from_ms, utcnow

TIMEFRAMES: dict[str, int] = {
    "1s": 1_000,
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "1h": 3_600_000,
    "4h": 14_400_000,
    "1d": 86_400_000,
}
_NEVER = -(2**62)  # accept-from before anything has closed


class _Bar:
    """A bar being built. Open and close carry their trade's (timestamp ms, arrival sequence)."""

    __slots__ = ("open", "open_ts", "open_seq", "high", "low", "close", "close_ts", "close_seq",
                 "volume", "notional", "count", "buy", "sell")

    def __init__(self, price: float, ts: int, seq: int, size: float, buy: float, sell: float) -> None:
        self.open = self.high = self.low = self.close = price
        self.open_ts = self.close_ts = ts
        self.open_seq = self.close_seq = seq
        self.volume = size
        self.notional = price * size
        self.count = 1
        self.buy = buy
        self.sell = sell

    def take(self, price: float, ts: int, seq: int, size: float, buy: bool) -> None:
        """Fold in one trade: the latest time is the close (a tie goes to the later arrival), the earliest the open."""
        if ts >= self.close_ts:
            self.close, self.close_ts, self.close_seq = price, ts, seq
        elif ts < self.open_ts:
            self.open, self.open_ts, self.open_seq = price, ts, seq
        if price > self.high:
            self.high = price
        elif price < self.low:
            self.low = price
        self.volume += size
        self.notional += price * size
        self.count += 1
        if buy:
            self.buy += size
        else:
            self.sell += size

    def copy(self) -> "_Bar":
        new = _Bar.__new__(_Bar)
        for name in _Bar.__slots__:
            setattr(new, name, getattr(self, name))
        return new

    def merge(self, other: "_Bar") -> None:
        if other.open_ts < self.open_ts or (other.open_ts == self.open_ts and other.open_seq < self.open_seq):
            self.open, self.open_ts, self.open_seq = other.open, other.open_ts, other.open_seq
        if other.close_ts > self.close_ts or (other.close_ts == self.close_ts and other.close_seq > self.close_seq):
            self.close, self.close_ts, self.close_seq = other.close, other.close_ts, other.close_seq
        if other.high > self.high:
            self.high = other.high
        if other.low < self.low:
            self.low = other.low
        self.volume += other.volume
        self.notional += other.notional
        self.count += other.count
        self.buy += other.buy
        self.sell += other.sell


# (timeframe ms, symbol, exchange or None, bar start ms)
_BarKey = tuple[int, str, "str | None", int]


def _merge_into(bars: dict, key: _BarKey, bar: _Bar) -> None:
    into = bars.get(key)
    if into is None:
        bars[key] = bar.copy()
    else:
        into.merge(bar)


class OHLCVBuilder:
    """Builds OHLCV bars from ``TradeEvent``s (see the module docstring).

    ``timeframes``: names from ``TIMEFRAMES``; ``grace``: seconds a bar stays open after its end
    for late trades; ``repair_window``: seconds behind the close horizon within which older trades
    are folded into their closed bars (0: never); ``per_venue`` / ``consolidated``: which series to
    build; ``clock``: the time ``advance()`` uses when not given ``now``; ``on_late``: called with
    (exchange, repaired) for each trade older than its open bar.
    """

    def __init__(self, *, timeframes: Sequence[str] = tuple(TIMEFRAMES), grace: float = 2.0,
                 repair_window: float = 0.0, per_venue: bool = True, consolidated: bool = True,
                 clock: Callable[[], datetime] = utcnow,
                 on_late: Callable[[str, bool], None] | None = None) -> None:
        unknown = [tf for tf in timeframes if tf not in TIMEFRAMES]
        if unknown or not timeframes:
            raise ValueError(f"unknown timeframe(s) {unknown}; use some of {', '.join(TIMEFRAMES)}")
        if not grace >= 0:
            raise ValueError(f"grace must be >= 0 seconds, got {grace!r}")
        if not repair_window >= 0:
            raise ValueError(f"repair_window must be >= 0 seconds, got {repair_window!r}")
        if not (per_venue or consolidated):
            raise ValueError("build per-venue bars, consolidated bars or both")
        self._timeframes = sorted((TIMEFRAMES[tf], tf) for tf in dict.fromkeys(timeframes))
        self._names = {ms: name for ms, name in self._timeframes}
        self._finest = self._timeframes[0][0]
        self._coarser = tuple(ms for ms, _ in self._timeframes[1:])
        self.grace_ms = round(grace * 1000)
        self.per_venue = per_venue
        self.consolidated = consolidated
        self._clock = clock
        self._closed_ms: int | None = None  # every bar ending at or before this is closed
        self._accept_from = _NEVER  # the start of the oldest finest bar still open: older trades are late
        self._seq = 0
        self._fine: dict[tuple[str, str, int], _Bar] = {}  # open finest bars per venue: (symbol, venue, start)
        self._coarse: dict[_BarKey, _Bar] = {}  # open coarser bars (and nothing else), from closed finest ones
        self.late_trades = 0
        self.late_by_exchange: dict[str, int] = {}
        self.repair_ms = round(repair_window * 1000)
        self._on_late = on_late
        self._origin: int | None = None  # the first close horizon: bars before it are never remade
        self._repair_from = -_NEVER  # older trades are left out: none are repaired until the first advance
        self._recent: dict[_BarKey, _Bar] = {}  # closed bars still within the repair window, by end
        self._repaired: dict[_BarKey, _Bar] = {}  # closed bars changed since take_repaired()
        self.repaired_trades = 0
        self.repaired_by_exchange: dict[str, int] = {}

    @property
    def timeframes(self) -> tuple[str, ...]:
        return tuple(name for _, name in self._timeframes)

    def add(self, trade: TradeEvent) -> bool:
        """Take one trade; False (and counted) if its bar has already closed."""
        ts = round(trade.timestamp.timestamp() * 1000)  # = to_ms (the same float), without a call: hot path
        if ts < self._accept_from:
            return self._late(trade, ts)
        seq = self._seq = self._seq + 1
        key = (trade.symbol, trade.exchange, ts - ts % self._finest)
        bar = self._fine.get(key)
        price, size = trade.price, trade.size
        if bar is None:
            self._fine[key] = _Bar(price, ts, seq, size, *((size, 0.0) if trade.side == "buy" else (0.0, size)))
            return True
        bar.take(price, ts, seq, size, trade.side == "buy")  # a tie on close goes to the later arrival, this one
        return True

    def _late(self, trade: TradeEvent, ts: int) -> bool:
        """A trade older than its open bar: repaired in (True) or counted and left out (False)."""
        exchange = trade.exchange
        repaired = ts >= self._repair_from
        if repaired:
            self._repair(trade, ts)
            self.repaired_trades += 1
            self.repaired_by_exchange[exchange] = self.repaired_by_exchange.get(exchange, 0) + 1
        else:
            self.late_trades += 1
            self.late_by_exchange[exchange] = self.late_by_exchange.get(exchange, 0) + 1
        if self._on_late is not None:
            self._on_late(exchange, repaired)
        return repaired

    def _repair(self, trade: TradeEvent, ts: int) -> None:
        """Fold a late trade into every bar containing it: closed ones (kept for the window, marked
        for ``take_repaired``) and open coarser ones (its finest bar is closed, by lateness)."""
        seq = self._seq = self._seq + 1
        price, size, buy, symbol = trade.price, trade.size, trade.side == "buy", trade.symbol
        series = ((trade.exchange,) if self.per_venue else ()) + ((None,) if self.consolidated else ())
        closed_ms = self._closed_ms
        for tf, _ in self._timeframes:
            start = ts - ts % tf
            for exchange in series:
                key = (tf, symbol, exchange, start)
                bars = self._recent if start + tf <= closed_ms else self._coarse
                bar = bars.get(key)
                if bar is None:
                    bars[key] = bar = _Bar(price, ts, seq, size, *((size, 0.0) if buy else (0.0, size)))
                else:
                    bar.take(price, ts, seq, size, buy)
                if bars is self._recent:
                    self._repaired[key] = bar

    @property
    def origin(self) -> int | None:
        """The first close horizon (ms): bars before it are never remade from trades; None before it is set."""
        return self._origin

    def seed(self, part: OHLCVBar, origin: int) -> bool:
        """Merge ``part`` - a bar's trades before ``origin`` (an earlier process', composed from stored bars,
        coby.aggregate.ohlcv_rebuild) - into that bar here, once: an open one, or a closed one still kept (stored again
        through ``take_repaired``); a bar not here yet is made from it. False if the bar is closed and gone."""
        tf = TIMEFRAMES[part.timeframe]
        start = to_ms(part.timestamp)
        key = (tf, part.symbol, part.exchange, start)
        bar = _Bar(part.open, start, 0, part.volume, part.buy_volume, part.sell_volume)
        bar.high, bar.low, bar.close, bar.close_ts = part.high, part.low, part.close, origin - 1
        bar.notional, bar.count = part.vwap * part.volume, part.trade_count
        closed = self._closed_ms is not None and start + tf <= self._closed_ms
        bars = self._recent if closed else self._coarse
        if closed and key not in bars:
            return False
        into = bars.get(key)
        if into is None:
            bars[key] = bar
        else:
            into.merge(bar)
        if closed:
            self._repaired[key] = bars[key]
        return True

    def take_repaired(self) -> list[OHLCVBar]:
        """The closed bars late trades changed since the last call, as they stand now (``closed=True``),
        ordered by end time, timeframe, symbol and venue (consolidated first)."""
        if not self._repaired:
            return []
        done, self._repaired = self._repaired, {}
        keys = sorted(done, key=lambda k: (k[3] + k[0], k[0], k[1], "" if k[2] is None else "~" + k[2]))
        return [self._bar(key, done[key], closed=True) for key in keys]

    def add_many(self, trades: Iterable[TradeEvent]) -> int:
        """Take many trades; returns how many were accepted."""
        return sum(self.add(t) for t in trades)

    def advance(self, now: datetime | None = None) -> list[OHLCVBar]:
        """Close and return every bar ending at or before ``now - grace``, ordered by end time,
        timeframe, symbol and venue (consolidated first)."""
        now_ms = to_ms(ensure_utc(now if now is not None else self._clock()))
        closed_ms = now_ms - self.grace_ms
        if self._closed_ms is None or closed_ms > self._closed_ms:
            self._closed_ms = closed_ms
            self._accept_from = closed_ms // self._finest * self._finest
        closed_ms = self._closed_ms
        finest, fine = self._finest, self._fine
        ending = sorted((k for k in fine if k[2] + finest <= closed_ms), key=lambda k: (k[2], k[0], k[1]))
        # the consolidated finest bars come out complete: their instants are closed
        done = self._roll_up([(key, fine.pop(key)) for key in ending], self._coarse, self.per_venue)
        for key in [k for k in self._coarse if k[3] + k[0] <= closed_ms]:
            done.append((key, self._coarse.pop(key)))
        done.sort(key=lambda kb: (kb[0][3] + kb[0][0], kb[0][0], kb[0][1],
                                  "" if kb[0][2] is None else "~" + kb[0][2]))
        if self.repair_ms:
            self._keep_recent(done, closed_ms)
        return [self._bar(key, bar, closed=True) for key, bar in done]

    def _keep_recent(self, done: list[tuple[_BarKey, _Bar]], closed_ms: int) -> None:
        """Keep closed bars for the repair window: the oldest first, so the expired ones leave from
        the front (a bar a repair made late sits a little longer)."""
        if self._origin is None:
            self._origin = self._accept_from
        horizon = closed_ms - self.repair_ms
        self._repair_from = max(self._origin, horizon)
        recent = self._recent
        recent.update(done)
        while recent:
            key = next(iter(recent))
            if key[3] + key[0] > horizon:
                break
            del recent[key]

    def open_bars(self, *, consolidated_only: bool = False) -> list[OHLCVBar]:
        """The bars still open, as they stand (``closed=False``): for live display.
        ``consolidated_only``: only the consolidated ones (``exchange`` None)."""
        venues = self.per_venue and not consolidated_only
        bars = {k: b.copy() for k, b in self._coarse.items() if venues or k[2] is None}
        fine = sorted(self._fine.items(), key=lambda kb: (kb[0][2], kb[0][0], kb[0][1]))
        bars.update(self._roll_up(fine, bars, venues))  # the open finest bars are only read from here on
        keys = sorted(bars, key=lambda k: (k[0], k[1], "" if k[2] is None else "~" + k[2], k[3]))
        return [self._bar(key, bars[key], closed=False) for key in keys]

    def _roll_up(self, fine: list[tuple[tuple[str, str, int], _Bar]], coarse: dict[_BarKey, _Bar],
                 venues: bool) -> list[tuple[_BarKey, _Bar]]:
        """Merge finest per-venue bars, in the order given, into the consolidated finest bars and into
        the coarser bars of ``coarse``; returns the finest bars (per venue when ``venues``, then the
        consolidated ones) keyed as every bar is."""
        finest, coarser = self._finest, self._coarser
        out: list[tuple[_BarKey, _Bar]] = []
        merged: dict[_BarKey, _Bar] = {}
        for (symbol, exchange, start), bar in fine:
            if venues:
                out.append(((finest, symbol, exchange, start), bar))
                for tf in coarser:
                    _merge_into(coarse, (tf, symbol, exchange, start - start % tf), bar)
            if self.consolidated:
                _merge_into(merged, (finest, symbol, None, start), bar)
        for key, bar in merged.items():
            out.append((key, bar))
            start = key[3]
            for tf in coarser:
                _merge_into(coarse, (tf, key[1], None, start - start % tf), bar)
        return out

    def _bar(self, key: _BarKey, bar: _Bar, closed: bool) -> OHLCVBar:
        tf, symbol, exchange, start = key
        return OHLCVBar(symbol=symbol, exchange=exchange, timeframe=self._names[tf], timestamp=utc_from_ms(start),
                        open=bar.open, high=bar.high, low=bar.low, close=bar.close, volume=bar.volume,
                        trade_count=bar.count, vwap=bar.notional / bar.volume if bar.volume > 0 else bar.close,
                        buy_volume=bar.buy, sell_volume=bar.sell, closed=closed)
