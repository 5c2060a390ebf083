"""Helpers for the API tests: a small daemon-shaped host, venue status stand-ins, and a publisher
that follows the pipeline's publishing contract (envelopes, per-channel seq, latest state stored)."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, AsyncIterator

import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient, TestServer

from coby.cache import MemoryCache, RedisCache
from coby.codec import to_dict
from coby.config import Settings
from coby.http import create_app
from coby.models import (
    ConnectionState, ConnectionStatus, ConsolidatedLevel, ConsolidatedOrderBook, HeatmapData, HeatmapPoint,
    ImbalanceMetrics, OHLCVBar, OrderBookMetrics, OrderBookSnapshot, PriceLevel, TradeEvent, utcnow,
)
from tests.conftest import REDIS_URL

EXCHANGES = "binance,okx"
SYMBOLS = "BTC-USDT,ETH-USDT"


class Venue:
    """Stands in for an exchange connector: only ``get_connection_status`` is asked of it."""

    def __init__(self, name: str, state: ConnectionState = ConnectionState.CONNECTED, **kw: Any) -> None:
        self.status = ConnectionStatus(name, state, **kw)

    def get_connection_status(self) -> ConnectionStatus:
        return self.status


class Host:
    """What the HTTP layer needs of the daemon: settings, storage, cache, connectors, started_at."""

    def __init__(self, settings: Settings, storage: Any, cache: Any, connectors: dict[str, Any] | None = None):
        self.settings = settings
        self.storage = storage
        self.cache = cache
        self.connectors = connectors if connectors is not None else {}
        self.started_at = time.time()


async def open_test_cache(kind: str) -> MemoryCache:
    if kind == "memory":
        cache = MemoryCache()
    else:
        r = aioredis.from_url(REDIS_URL)
        await r.flushdb()
        await r.aclose()
        cache = RedisCache(REDIS_URL, interval=0.01)
    await cache.start()
    return cache


@asynccontextmanager
async def serving(host: Host) -> AsyncIterator[TestClient]:
    """The real app for ``host`` on a local port, with aiohttp's test client."""
    client = TestClient(TestServer(create_app(host)))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


class Publisher:
    """Publishes like the pipeline: an envelope per message with the channel's next seq; the latest
    envelope of book-like channels (and ohlcv, status) stored in the cache first."""

    def __init__(self, cache: Any) -> None:
        self.cache = cache
        self.seq: dict[str, int] = defaultdict(int)

    def envelope(self, channel: str, data: Any, ts: datetime | None) -> dict[str, Any]:
        self.seq[channel] += 1
        return {"channel": channel, "type": "update", "seq": self.seq[channel], "ts": ts, "received": utcnow(),
                "data": to_dict(data)}

    async def publish(self, channel: str, data: Any, ts: datetime | None = None) -> dict[str, Any]:
        env = self.envelope(channel, data, ts)
        kind, *parts = channel.split(":")
        if kind == "book":
            await self.cache.set_book(parts[0], parts[1], env)
        elif kind in ("consolidated", "heatmap", "metrics"):
            await self.cache.set_latest(kind, parts[0], env)
        elif kind == "ohlcv":
            await self.cache.set_latest(f"ohlcv:{parts[1]}", parts[0], env)
        elif kind == "status":
            await self.cache.set_latest("status", "*", env)
        await self.cache.publish(channel, env)
        return env


# --- model factories ------------------------------------------------------------------------------
def book(exchange: str, symbol: str, mid: float = 100.0, levels: int = 20, ts: datetime | None = None,
         seq: int | None = None) -> OrderBookSnapshot:
    ts = ts or utcnow()
    bids = tuple(PriceLevel(mid - 0.5 - i, 1.0 + i) for i in range(levels))
    asks = tuple(PriceLevel(mid + 0.5 + i, 1.0 + i) for i in range(levels))
    return OrderBookSnapshot(symbol, exchange, ts, bids, asks, seq, ts)


def consolidated(symbol: str, mid: float = 100.0, levels: int = 20, ts: datetime | None = None):
    ts = ts or utcnow()
    bids = tuple(ConsolidatedLevel(mid - 0.5 - i, 2.0, {"binance": 1.0, "okx": 1.0}) for i in range(levels))
    asks = tuple(ConsolidatedLevel(mid + 0.5 + i, 2.0, {"binance": 1.5, "okx": 0.5}) for i in range(levels))
    return ConsolidatedOrderBook(symbol, ts, bids, asks, mid - 0.5, "binance", mid + 0.5, "okx", False,
                                 ("binance", "okx"), ())


def heatmap(symbol: str, ts: datetime | None = None) -> HeatmapData:
    pts = (HeatmapPoint(90.0, 5.0, 1.0, "bid", 2), HeatmapPoint(110.0, 2.5, 0.5, "ask", 1))
    return HeatmapData(symbol, ts or utcnow(), 10.0, pts)


def metrics_data(symbol: str, ts: datetime | None = None) -> dict[str, Any]:
    ts = ts or utcnow()
    m = {ex: OrderBookMetrics(symbol, ex, ts, 100.0, 1.0, 50.0, 40.0, 99.5, 100.5) for ex in ("binance", "okx")}
    imb = {"binance": ImbalanceMetrics(symbol, "binance", ts, 0.1, {0.001: 0.2}),
           "consolidated": ImbalanceMetrics(symbol, None, ts, 0.05, {0.001: 0.1, 0.01: -0.3})}
    return {"metrics": m, "imbalance": imb}


def trade(symbol: str, exchange: str, i: int, ts: datetime | None = None, pad: int = 0) -> TradeEvent:
    ts = ts or utcnow()
    return TradeEvent(symbol, exchange, ts, 100.0 + i % 7, 0.5, "buy" if i % 2 else "sell",
                      f"t{i:06d}" + "x" * pad, ts)


def bar(symbol: str, start: datetime, i: int, timeframe: str = "1m", exchange: str | None = None,
        closed: bool = True) -> OHLCVBar:
    return OHLCVBar(symbol, exchange, timeframe, start + timedelta(minutes=i), 100.0, 101.0, 99.0, 100.5, 3.0, 7,
                    100.2, 2.0, 1.0, closed)


async def until(predicate: Any, what: str, timeout: float = 20.0) -> None:
    """Poll ``predicate`` (sync or async) until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def remote_api_node(tmp_path: Any, storage: Any, name: str) -> tuple[RedisCache, "Host"]:
    """What an API node (role api) serves from: the cache reading other processes' channels from Redis
    (``open_cache(url, remote=True)``) and storage; serve the returned host with :func:`serving`."""
    from coby.cache import open_cache
    from tests.conftest import make_settings
    settings = make_settings(tmp_path / name, exchanges=EXCHANGES, symbols=SYMBOLS, redis_url=REDIS_URL)
    cache = open_cache(REDIS_URL, remote=True)
    await cache.start()
    return cache, Host(settings, storage, cache)

