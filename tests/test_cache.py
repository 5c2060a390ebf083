"""Cache contract: the in-process cache and Redis behave the same; Redis lost at runtime is survived."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from coby.cache import RedisCache, book_key
from coby.metrics import CACHE_ERRORS
from tests.conftest import REDIS_URL
from tests.netproxy import TcpProxy


# the `cache` fixture (both caches) is in conftest.py


async def test_latest_book_and_aggregates_round_trip(cache):
    """The latest book per (exchange, symbol) and the latest aggregate per symbol are returned as stored."""
    await cache.set_book("binance", "BTC-USDT", {"bids": [[1.0, 2.0]], "asks": [[3.0, 4.0]]})
    await cache.set_book("binance", "BTC-USDT", {"bids": [[1.5, 2.0]], "asks": [[3.0, 4.0]]})
    await cache.set_latest("consolidated", "BTC-USDT", {"best_bid": 1.5})
    assert (await cache.get_book("binance", "BTC-USDT"))["bids"] == [[1.5, 2.0]]
    assert await cache.get_latest("consolidated", "BTC-USDT") == {"best_bid": 1.5}
    assert await cache.get_book("okx", "BTC-USDT") is None


async def test_publish_reaches_subscribers_in_order(cache):
    """Every published message reaches each subscriber of its channel, in order; other channels don't."""
    with cache.subscribe("trades:BTC-USDT") as sub, cache.subscribe("trades:ETH-USDT") as other:
        for i in range(20):
            await cache.publish("trades:BTC-USDT", {"i": i})
        got = [await asyncio.wait_for(sub.get(), 2) for _ in range(20)]
        assert [g[1] for g in got] == [b'{"i":%d}' % i for i in range(20)]
        assert other.queue.empty()


async def test_redis_carries_state_and_messages_to_other_processes():
    """With Redis, another client sees the latest book and receives published messages."""
    r = aioredis.from_url(REDIS_URL)
    await r.flushdb()
    c = RedisCache(REDIS_URL, interval=0.01)
    await c.start()
    try:
        await c.set_book("okx", "ETH-USDT", {"seq": 7})
        await c.publish("trades:ETH-USDT", {"seq": 3, "ok": True})
        got = []
        for _ in range(100):
            got = await r.xrange("coby:s:trades:ETH-USDT")
            if got:
                break
            await asyncio.sleep(0.02)
        assert got == [(b"0-3", {b"d": b'{"seq":3,"ok":true}'})]  # the stream id is the channel's seq
        assert await r.get(book_key("okx", "ETH-USDT")) == b'{"seq":7}'
    finally:
        await c.aclose()
        await r.aclose()


async def test_redis_lost_at_runtime_serves_from_memory_and_recovers():
    """Redis unreachable: writes and reads keep working from process memory, errors are counted; once
    Redis is back the latest state is written to it."""
    proxy = await TcpProxy("127.0.0.1", 6379).start()
    url = REDIS_URL.replace("127.0.0.1:6379", f"127.0.0.1:{proxy.port}")
    c = RedisCache(url, interval=0.01)
    await c.start()
    r = aioredis.from_url(REDIS_URL)
    try:
        assert c.connected
        before = CACHE_ERRORS.labels("flush")._value.get()
        proxy.cut()
        await c.set_book("kraken", "BTC-USDT", {"v": 1})
        await c.set_book("kraken", "BTC-USDT", {"v": 2})
        for _ in range(200):
            if not c.connected:
                break
            await asyncio.sleep(0.02)
        assert not c.connected
        assert CACHE_ERRORS.labels("flush")._value.get() > before
        assert await c.get_book("kraken", "BTC-USDT") == {"v": 2}
        proxy.restore()
        for _ in range(400):
            if c.connected and await r.get(book_key("kraken", "BTC-USDT")) == b'{"v":2}':
                break
            await asyncio.sleep(0.025)
        assert c.connected
        assert await r.get(book_key("kraken", "BTC-USDT")) == b'{"v":2}'
    finally:
        await c.aclose()
        await r.aclose()
        await proxy.aclose()


class _SwallowingCache(RedisCache):
    """A flush that swallows its cancellation, as redis-py can when the cancel lands inside a command
    (redis-py #2028, #2551); it still talks to the real Redis."""

    swallowed = 0

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            self.swallowed += 1
        await super()._flush()


async def test_close_finishes_when_redis_swallows_the_flushers_cancellation():
    """aclose() returns, and what was written is in Redis, even if the cancellation never reaches the loop."""
    cache = _SwallowingCache(REDIS_URL, interval=0.001)
    await cache.start()
    await cache.set_latest("status", "close-test", {"ok": 1})
    await asyncio.sleep(0.02)  # the flusher is inside a flush now and then
    await asyncio.wait_for(cache.aclose(), 30)  # generous: the bound inside is 5 s
    assert cache.swallowed >= 1 and cache._task is None
    async with aioredis.Redis.from_url(REDIS_URL) as r:
        keys = await r.keys("*close-test*")
        assert keys
