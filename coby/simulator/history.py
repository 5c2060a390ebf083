"""The venues' REST trade history: what each keeps, how it pages, and its rate limit.

Every :class:`~coby.simulator.market.Market` records each trade it makes (``Market.trades``,
oldest first). A venue serves that record over the REST route ccxt's ``fetch_trades``
calls, as the venue does (see each venue module for the route and the wire form):

=========  ==============================================  ===========  ===========  =========
venue      route                                           paging       max page     depth
=========  ==============================================  ===========  ===========  =========
binance    ``GET /api/v3/aggTrades``                       time or id   1000         all kept
okx        ``GET /api/v5/market/trades`` (latest N),       id, newest   500 / 100    all kept
           ``GET /api/v5/market/history-trades``           first
bybit      ``GET /v5/market/recent-trade``                 latest only  60 (spot)    last 60
coinbase   ``GET /api/v3/brokerage/market/products/        time, newest 1000         all kept
           {id}/ticker``                                   first
kraken     ``GET /0/public/Trades``                        time         1000         all kept
bitfinex   ``GET /v2/trades/{symbol}/hist``                time         10000        all kept
gate       ``GET /api/v4/spot/trades``                     id, newest   1000         all kept
                                                           first
htx        ``GET /market/history/trade``                   latest only  2000 ticks   last 2000
kucoin     ``GET /api/v1/market/histories``                latest only  100          last 100
mexc       ``GET /api/v3/aggTrades``                       time (start  1000         all kept
                                                           and end)
=========  ==============================================  ===========  ===========  =========

htx's REST ``trade-id`` is its WebSocket's ``tradeId``; kucoin's history carries no trade id (``sequence``
only) and mexc sends none at all: the gap filler matches those by content (:mod:`coby.collector.backfill_paging`).

``depth`` is what the venue keeps (:attr:`Venue.history_depth`, None: everything the market
recorded); tests make it shorter to show a gap the venue cannot close. Each venue's REST
routes share one :class:`RestLimit` (a token bucket: ``rate`` requests a second, ``burst`` at
once); a request over it is answered the venue's way for "too many requests" (binance and
coinbase, gate and bitfinex HTTP 429, okx HTTP 429 with code 50011, bybit retCode 10006, kraken
``EAPI:Rate limit exceeded``, htx HTTP 429, kucoin HTTP 429 with code 429000, mexc HTTP 429 with code 429),
and counted in
:attr:`RestLimit.refused`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from coby.simulator.model import SimTrade


class RestLimit:
    """A token bucket over a venue's REST routes: ``rate`` requests a second, ``burst`` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self.set(rate, burst)
        self.served = self.refused = 0

    def set(self, rate: float, burst: int) -> None:
        self.rate, self.burst = float(rate), max(1, int(burst))
        self._tokens, self._at = float(self.burst), time.monotonic()

    def take(self) -> bool:
        """True if a request may be served now (one token taken); False: answer "too many requests"."""
        now = time.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self.served += 1
            return True
        self.refused += 1
        return False


def kept(trades: Iterable[SimTrade], depth: int | None) -> Sequence[SimTrade]:
    """The trades a venue still serves, oldest first: the last ``depth`` (None: all)."""
    out = list(trades)
    return out if depth is None else out[-depth:] if depth > 0 else []


def in_time(trades: Sequence[SimTrade], start_ms: int | None, end_ms: int | None) -> list[SimTrade]:
    """The trades stamped within [start_ms, end_ms] (either bound may be None), oldest first."""
    return [t for t in trades if (start_ms is None or t.ts_ms >= start_ms) and (end_ms is None or t.ts_ms <= end_ms)]


def int_param(value: str | None, default: int | None, lo: int, hi: int) -> int | None:
    """A query parameter as an int clamped to [lo, hi] (``ValueError`` if it is not a number)."""
    if value is None or value == "":
        return default
    return max(lo, min(hi, int(value)))
