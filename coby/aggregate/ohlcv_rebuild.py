"""Bars of a restart's downtime, rebuilt once its trades are filled (the gap filler's start fill).

A restarted daemon's OHLCV builder only knows trades from its first close horizon (``OHLCVBuilder.origin``)
on: bars before it were stored by the earlier process (with trades this one never saw), and the bars open
across it - the minute, hour, day of the restart - hold only this process' trades. Once a market's
downtime is filled (its trades stored), :func:`rebuild_after_restart` makes them right, from storage:

* every 1 s bar of [the last stored trade before the gap - ``MARGIN``, origin) is recomputed from the stored
  trades - of the venue, and of every venue for the consolidated bar - and stored (upsert);
* every coarser bar wholly before the origin that meets that range is composed from its stored bars of the
  next finer timeframe (the ones just rebuilt taking precedence) and stored;
* for every bar open across the origin, the part before it (its stored finer bars up to the origin, the
  finer bar across the origin's part included) is merged into the builder's bar once
  (``OHLCVBuilder.seed``) - the venue's part into the venue's bar and into the consolidated one - so when it
  closes it is stored whole.

Composition is exact for high, low, volume, count and the buy/sell split, and for open/close (sub-bars do not
overlap); vwap is recomputed from volume-weighted sums (float rounding only). Limits: a venue whose start is not
filled (backfill off, nothing stored before) adds no earlier part to the consolidated bars open across the
restart; stored bars of an earlier process are taken as complete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import structlog

from coby.models import OHLCVBar, TradeEvent, utc_from_ms
from coby.aggregate.ohlcv import TIMEFRAMES, OHLCVBuilder

log = structlog.get_logger("coby.ohlcv")

MARGIN_MS = 5_000  # 1 s bars rebuilt from this long before the gap's lower end (a crash loses its last bars)
FINEST = "1s"


def compose(bars: list[OHLCVBar], *, symbol: str, exchange: str | None, timeframe: str, start_ms: int,
            closed: bool = True) -> OHLCVBar | None:
    """One bar from non-overlapping bars (any order); None if there are none."""
    bars = sorted((b for b in bars if b.trade_count), key=lambda b: b.timestamp)
    if not bars:
        return None
    volume = sum(b.volume for b in bars)
    notional = sum(b.vwap * b.volume for b in bars)
    return OHLCVBar(symbol=symbol, exchange=exchange, timeframe=timeframe, timestamp=utc_from_ms(start_ms),
                    open=bars[0].open, high=max(b.high for b in bars), low=min(b.low for b in bars),
                    close=bars[-1].close, volume=volume, trade_count=sum(b.trade_count for b in bars),
                    vwap=notional / volume if volume > 0 else bars[-1].close,
                    buy_volume=sum(b.buy_volume for b in bars), sell_volume=sum(b.sell_volume for b in bars),
                    closed=closed)


def _seconds(trades: list[TradeEvent], symbol: str, exchange: str | None) -> dict[int, OHLCVBar]:
    """1 s bars of ``trades`` (in trade order) by start ms."""
    builder = OHLCVBuilder(timeframes=(FINEST,), grace=0.0, per_venue=exchange is not None,
                           consolidated=exchange is None)
    for t in trades:
        builder.add(t)
    last = max((round(t.timestamp.timestamp() * 1000) for t in trades), default=0)
    return {round(b.timestamp.timestamp() * 1000): b for b in builder.advance(utc_from_ms(last + 2_000))
            if b.exchange == exchange and b.symbol == symbol}


async def rebuild_after_restart(storage: Any, builder: OHLCVBuilder, exchange: str, symbol: str, lower_ms: int,
                                order: Callable[[TradeEvent], Any]) -> int:
    """Rebuild and store the bars of [lower_ms - MARGIN_MS, origin) and seed the builder's bars open across the
    origin with their earlier part (see the module docstring); returns the number of bars stored."""
    origin = builder.origin
    if origin is None or lower_ms >= origin:
        return 0
    start = (lower_ms - MARGIN_MS) // 1000 * 1000
    await storage.flush()
    trades = await storage.get_trades(symbol, utc_from_ms(start), utc_from_ms(origin), limit=1_000_000)
    trades.sort(key=order)
    fresh: dict[tuple[str, str | None], dict[int, OHLCVBar]] = {
        (FINEST, exchange): _seconds([t for t in trades if t.exchange == exchange], symbol, exchange),
        (FINEST, None): _seconds(trades, symbol, None),
    }
    part: OHLCVBar | None = None  # the venue's part before the origin of its bar across it, one timeframe finer
    seeded = 0
    names = sorted(TIMEFRAMES, key=TIMEFRAMES.__getitem__)
    for finer, tf in zip(names, names[1:]):
        ms, fine_ms = TIMEFRAMES[tf], TIMEFRAMES[finer]
        lo, hi = start - start % ms, origin - origin % ms + ms  # the tf bars meeting [start, origin]
        for series in (exchange, None):
            stored = {round(b.timestamp.timestamp() * 1000): b for b in await storage.get_ohlcv(
                symbol, finer, utc_from_ms(lo), utc_from_ms(hi), exchange=series, limit=100_000)}
            stored.update(fresh[(finer, series)])
            made: dict[int, OHLCVBar] = {}
            for s in range(lo, hi, ms):
                if s + ms <= origin:  # wholly before the origin: composed from its finer bars
                    bar = compose([b for k, b in stored.items() if s <= k < s + ms], symbol=symbol,
                                  exchange=series, timeframe=tf, start_ms=s)
                    if bar is not None:
                        made[s] = bar
                elif s < origin and series is not None:  # open across the origin: the venue's part before it
                    subs = [b for k, b in stored.items() if s <= k and k + fine_ms <= origin]
                    part = compose(subs + ([part] if part is not None else []), symbol=symbol, exchange=series,
                                   timeframe=tf, start_ms=s, closed=False)
                    if part is not None:  # into the venue's bar and the consolidated one, once
                        seeded += builder.seed(part, origin) + builder.seed(replace(part, exchange=None), origin)
            fresh[(tf, series)] = made
    count = 0
    for bars in fresh.values():
        for bar in bars.values():
            await storage.store_ohlcv(bar)
            count += 1
    log.info("ohlcv_rebuilt_after_restart", exchange=exchange, symbol=symbol, bars=count, seeded=seeded,
             since=utc_from_ms(start).isoformat(), origin=utc_from_ms(origin).isoformat())
    return count
