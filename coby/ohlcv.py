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
  updates it. A trade whose bar has already been closed is **not applied** to any timeframe -
  that keeps every timeframe built from the same trades - and is counted in ``late_trades``
  (and per venue in ``late_by_exchange``); ``add`` returns False for it. Lateness is judged
  against the finest timeframe, whose bars close first.
* An interval with no trades emits **no bar**. A flat bar would claim a price nobody traded at and
  would paper over a feed gap (which coby records explicitly); a consumer wanting a continuous
  series forward-fills the previous close.

Work is batched: ``add`` only checks lateness and appends; ``advance`` (and ``open_bars``) hands
the trades received since the last call to polars in one frame, which reduces them to partial
bars for every (timeframe, symbol, venue or consolidated, bar start) at once; Python then merges
those few partial bars into the open ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Iterable, Sequence

import polars as pl

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


@dataclass(slots=True)
class _Bar:
    """A bar being built. ``open_key`` / ``close_key`` are (timestamp ms, arrival sequence)."""

    open: float
    open_key: tuple[int, int]
    high: float
    low: float
    close: float
    close_key: tuple[int, int]
    volume: float
    notional: float
    count: int
    buy: float
    sell: float

    def merge(self, other: "_Bar") -> None:
        if other.open_key < self.open_key:
            self.open, self.open_key = other.open, other.open_key
        if other.close_key > self.close_key:
            self.close, self.close_key = other.close, other.close_key
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


class OHLCVBuilder:
    """Builds OHLCV bars from ``TradeEvent``s (see the module docstring).

    ``timeframes``: names from ``TIMEFRAMES``; ``grace``: seconds a bar stays open after its end
    for late trades; ``per_venue`` / ``consolidated``: which series to build; ``clock``: the time
    ``advance()`` uses when not given ``now``.
    """

    def __init__(self, *, timeframes: Sequence[str] = tuple(TIMEFRAMES), grace: float = 2.0,
                 per_venue: bool = True, consolidated: bool = True,
                 clock: Callable[[], datetime] = utcnow) -> None:
        unknown = [tf for tf in timeframes if tf not in TIMEFRAMES]
        if unknown or not timeframes:
            raise ValueError(f"unknown timeframe(s) {unknown}; use some of {', '.join(TIMEFRAMES)}")
        if not grace >= 0:
            raise ValueError(f"grace must be >= 0 seconds, got {grace!r}")
        if not (per_venue or consolidated):
            raise ValueError("build per-venue bars, consolidated bars or both")
        self._timeframes = sorted((TIMEFRAMES[tf], tf) for tf in dict.fromkeys(timeframes))
        self._names = {ms: name for ms, name in self._timeframes}
        self._finest = self._timeframes[0][0]
        self.grace_ms = round(grace * 1000)
        self.per_venue = per_venue
        self.consolidated = consolidated
        self._clock = clock
        self._closed_ms: int | None = None  # every bar ending at or before this is closed
        self._seq = 0
        self._buffer: list[tuple[int, int, TradeEvent]] = []
        self._open: dict[_BarKey, _Bar] = {}
        self.late_trades = 0
        self.late_by_exchange: dict[str, int] = {}

    @property
    def timeframes(self) -> tuple[str, ...]:
        return tuple(name for _, name in self._timeframes)

    def add(self, trade: TradeEvent) -> bool:
        """Take one trade; False (and counted) if its bar has already closed."""
        ts = to_ms(trade.timestamp)
        if self._closed_ms is not None and (ts // self._finest + 1) * self._finest <= self._closed_ms:
            self.late_trades += 1
            self.late_by_exchange[trade.exchange] = self.late_by_exchange.get(trade.exchange, 0) + 1
            return False
        self._buffer.append((ts, self._seq, trade))
        self._seq += 1
        return True

    def add_many(self, trades: Iterable[TradeEvent]) -> int:
        """Take many trades; returns how many were accepted."""
        return sum(self.add(t) for t in trades)

    def advance(self, now: datetime | None = None) -> list[OHLCVBar]:
        """Apply pending trades, then close and return every bar ending at or before ``now - grace``,
        ordered by end time, timeframe, symbol and venue (consolidated first)."""
        now_ms = to_ms(ensure_utc(now if now is not None else self._clock()))
        closed_ms = now_ms - self.grace_ms
        if self._closed_ms is None or closed_ms > self._closed_ms:
            self._closed_ms = closed_ms
        self._apply_buffer()
        done = [key for key in self._open if key[3] + key[0] <= self._closed_ms]
        done.sort(key=lambda k: (k[3] + k[0], k[0], k[1], "" if k[2] is None else "~" + k[2]))
        return [self._bar(key, self._open.pop(key), closed=True) for key in done]

    def open_bars(self) -> list[OHLCVBar]:
        """The bars still open, as they stand (``closed=False``): for live display."""
        self._apply_buffer()
        keys = sorted(self._open, key=lambda k: (k[0], k[1], "" if k[2] is None else "~" + k[2], k[3]))
        return [self._bar(key, self._open[key], closed=False) for key in keys]

    # --- internals -------------------------------------------------------------------------------
    def _apply_buffer(self) -> None:
        if not self._buffer:
            return
        buffer, self._buffer = self._buffer, []
        for key, partial in self._partials(buffer):
            bar = self._open.get(key)
            if bar is None:
                self._open[key] = partial
            else:
                bar.merge(partial)

    def _partials(self, buffer: list[tuple[int, int, TradeEvent]]) -> Iterable[tuple[_BarKey, _Bar]]:
        """Reduce buffered trades to one partial bar per (timeframe, symbol, venue/None, start)."""
        trades = [t for _, _, t in buffer]
        frame = pl.DataFrame(
            {
                "ts": [b[0] for b in buffer],
                "seq": [b[1] for b in buffer],
                "symbol": [t.symbol for t in trades],
                "exchange": [t.exchange for t in trades],
                "price": [t.price for t in trades],
                "size": [t.size for t in trades],
                "side": [t.side for t in trades],
            },
            schema={"ts": pl.Int64, "seq": pl.Int64, "symbol": pl.String, "exchange": pl.String,
                    "price": pl.Float64, "size": pl.Float64, "side": pl.String},
        ).lazy().sort("ts", "seq").with_columns(
            notional=pl.col("price") * pl.col("size"),
            buy=pl.when(pl.col("side") == "buy").then(pl.col("size")).otherwise(0.0),
            sell=pl.when(pl.col("side") == "sell").then(pl.col("size")).otherwise(0.0),
        )
        sources = []
        if self.per_venue:
            sources.append(frame)
        if self.consolidated:
            sources.append(frame.with_columns(exchange=pl.lit(None, dtype=pl.String)))
        parts = [src.with_columns(tf=pl.lit(ms, dtype=pl.Int64), start=pl.col("ts") - pl.col("ts") % ms)
                 for ms, _ in self._timeframes for src in sources]
        bars = (
            pl.concat(parts)
            .group_by("tf", "symbol", "exchange", "start")
            .agg(
                pl.col("price").first().alias("open"),
                pl.col("ts").first().alias("open_ts"),
                pl.col("seq").first().alias("open_seq"),
                pl.col("price").max().alias("high"),
                pl.col("price").min().alias("low"),
                pl.col("price").last().alias("close"),
                pl.col("ts").last().alias("close_ts"),
                pl.col("seq").last().alias("close_seq"),
                pl.col("size").sum().alias("volume"),
                pl.col("notional").sum(),
                pl.len().alias("count"),
                pl.col("buy").sum(),
                pl.col("sell").sum(),
            )
            .collect(engine="in-memory")
        )
        for (tf, symbol, exchange, start, open_, open_ts, open_seq, high, low, close, close_ts, close_seq,
             volume, notional, count, buy, sell) in bars.iter_rows():
            yield (tf, symbol, exchange, start), _Bar(open_, (open_ts, open_seq), high, low, close,
                                                      (close_ts, close_seq), volume, notional, count, buy, sell)

    def _bar(self, key: _BarKey, bar: _Bar, closed: bool) -> OHLCVBar:
        tf, symbol, exchange, start = key
        return OHLCVBar(symbol=symbol, exchange=exchange, timeframe=self._names[tf], timestamp=utc_from_ms(start),
                        open=bar.open, high=bar.high, low=bar.low, close=bar.close, volume=bar.volume,
                        trade_count=bar.count, vwap=bar.notional / bar.volume if bar.volume > 0 else bar.close,
                        buy_volume=bar.buy, sell_volume=bar.sell, closed=closed)

