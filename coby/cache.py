"""The cache: latest book per (exchange, symbol), latest aggregates per symbol, and the bus of channels.

Two implementations, one interface:

- ``MemoryCache`` (``coby.memory_cache``): process memory only (no Redis URL given).
- ``RedisCache``: process memory *and* Redis. Every write lands in memory at once and is
  queued for Redis; a flusher sends the queue in one pipeline every ``interval`` seconds,
  so a book updated 50 times between flushes costs one SET (latest state wins) while
  every message of a queued channel (trades, ohlcv) is kept, in order. Reads come from Redis (another
  process may have written the key) and fall back to memory. Redis lost at runtime: logged once,
  counted in ``coby_cache_errors_total``, served from memory, reconnected in the
  background; nothing raises into the caller. ``RedisCache(url, remote=True)`` (``open_cache(url,
  remote=True)``: an API node) feeds its subscribers from Redis instead, with ``coby.bus.StreamReader``.

Keys: ``coby:book:{exchange}:{symbol}``, ``coby:latest:{kind}:{symbol}``; each channel is a Redis
Stream ``coby:s:{channel}`` whose entry ids are the channel's seqs (``coby.streams``: the layout, and why
Streams and not pub/sub). Values are JSON bytes (``coby.codec``). Subscribers in this process are fed
directly (bounded queues, oldest dropped when a subscriber lags - the HTTP layer has its own stricter
per-client policy); the streams carry the same messages to other processes (``coby.bus``).

For the publisher (``coby.pipeline.Publisher``): ``await cache.last_seq(channel)`` is the seq the channel
has reached in Redis (0 without Redis), from which a process that starts, or takes a channel over,
continues; ``cache.on_seq_conflict`` is called with a channel whose messages Redis refused because its
stream already holds their seqs (another process wrote them). ``await cache.read_since(channel, seq)``:
the messages after ``seq`` still in the stream (None: this cache keeps no history).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog

from coby import streams
from coby.bus import StreamReader
from coby.codec import dumps, loads
from coby.memory_cache import PREFIX, MemoryCache, Subscription, book_key, latest_key
from coby.metrics import CACHE_CONNECTED, CACHE_ERRORS

__all__ = ["MemoryCache", "RedisCache", "Subscription", "book_key", "latest_key", "open_cache"]
log = structlog.get_logger("coby.cache")


class RedisCache(MemoryCache):
    kind = "redis"
    keeps_history = True  # each channel's Redis stream
    local_fanout = True  # subscribers of this process are fed what it publishes (remote: from Redis)

    def __init__(self, url: str, interval: float = 0.05, *, stream_length: int = 5000, book_stream_length: int = 4,
                 transport: str = "streams", remote: bool = False) -> None:
        super().__init__()
        self._reader: StreamReader | None = None
        if remote:  # an API node: its subscribers read what other processes publish, from Redis
            self.local_fanout = False
            self._reader = StreamReader(url, self._fanout)
        self.url = url
        self.interval = interval
        self.stream_length = stream_length
        self.book_stream_length = book_stream_length
        self.transport = transport  # "pubsub": PUBLISH instead of XADD (bench/bus.py's baseline; nothing reads it)
        self._redis: Any = None
        self._pending_sets: dict[str, bytes] = {}
        self._pending_pubs: list[tuple[str, int | None, bytes]] = []  # queued channels: every message, in order
        self._pending_latest: dict[str, tuple[int | None, bytes]] = {}  # book-like channels: the newest wins
        self._coalesce: dict[str, bool] = {}
        self._conflicts_logged: set[str] = set()
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._connected = False
        self._closing = False
        self.max_pending_pubs = 100_000

    @property
    def connected(self) -> bool:
        return self._connected

    def _client(self) -> Any:
        import redis.asyncio as aioredis
        return aioredis.from_url(self.url, socket_connect_timeout=2, socket_timeout=2, health_check_interval=10)

    async def start(self) -> None:
        self._redis = self._client()
        self._append = self._redis.register_script(streams.APPEND)
        self._read = self._redis.register_script(streams.READ)
        try:
            await self._redis.ping()
            self._set_connected(True)
        except Exception as e:  # noqa: BLE001 - start anyway, from memory; the flusher reconnects
            self._set_connected(False, e)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="coby-cache-flusher")
        if self._reader is not None:
            await self._reader.start()

    def subscribe(self, *channels: str, maxsize: int = 1000) -> Subscription:
        sub = super().subscribe(*channels, maxsize=maxsize)
        if self._reader is not None:
            for ch in channels:
                self._reader.add(ch)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        super()._unsubscribe(sub)
        if self._reader is not None:
            for ch in sub.channels:
                if ch not in self._subs:
                    self._reader.remove(ch)

    async def aclose(self) -> None:
        if self._reader is not None:
            await self._reader.aclose()
        if self._task is not None:
            # redis-py can swallow a cancellation that lands inside a command (redis-py #2028, #2551):
            # the flusher then loops on. So it also stops on a flag, and the wait for it is bounded.
            self._closing = True
            self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=5)
            if not done:
                log.warning("cache_flusher_stuck", timeout=5)
            self._task = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._flush(), 2)
        if self._redis is not None:
            with contextlib.suppress(Exception):  # bounded: a wedged connection must not hold up shutdown
                await asyncio.wait_for(self._redis.aclose(), 2)
            self._redis = None
        await super().aclose()

    def _set_connected(self, ok: bool, error: BaseException | None = None) -> None:
        if ok and not self._connected:
            log.info("cache_connected", url=_mask(self.url))
        elif not ok and (self._connected or error is not None and self._task is None):
            log.warning("cache_unavailable", url=_mask(self.url), error=str(error) or type(error).__name__,
                        fallback="process memory")
        self._connected = ok
        CACHE_CONNECTED.set(1 if ok else 0)

    # --- writes: memory now, Redis at the next flush -----------------------------------------
    def _set(self, key: str, value: Any) -> bytes:
        data = super()._set(key, value if isinstance(value, bytes) else dumps(value))
        self._pending_sets[key] = data
        return data

    def wants(self, channel: str) -> bool:
        return True  # other processes read the latest states: every publish is encoded

    async def _keep_and_publish(self, key: str, channel: str, message: Any) -> None:
        # other processes read both: encoded once
        self._publish(channel, self._set(key, message), message.get("seq") if type(message) is dict else None)

    async def publish(self, channel: str, message: Any) -> None:
        if type(message) is dict:
            self._publish(channel, dumps(message), message.get("seq"))
        else:
            self._publish(channel, message if isinstance(message, bytes) else dumps(message), None)

    def _publish(self, channel: str, payload: bytes, seq: int | None) -> None:
        if self.local_fanout:
            self._fanout(channel, payload)
        coalesce = self._coalesce.get(channel)
        if coalesce is None:
            coalesce = self._coalesce[channel] = streams.is_coalesced(channel)
        if coalesce:
            self._pending_latest[channel] = (seq, payload)
        elif len(self._pending_pubs) < self.max_pending_pubs:
            self._pending_pubs.append((channel, seq, payload))
        else:  # Redis down for long: other processes miss these (a gap they are told of); ours got them
            CACHE_ERRORS.labels("publish_dropped").inc()

    async def _flush(self) -> None:
        if not self._pending_sets and not self._pending_pubs and not self._pending_latest:
            return
        sets, self._pending_sets = self._pending_sets, {}
        pubs, self._pending_pubs = self._pending_pubs, []
        latest, self._pending_latest = self._pending_latest, {}
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for key, data in sets.items():
                    pipe.set(key, data)
                if self.transport == "pubsub":  # the write before Streams, for bench/bus.py; nothing reads it
                    for channel, _, payload in (*((c, *v) for c, v in latest.items()), *pubs):
                        pipe.publish(PREFIX + channel, payload)
                calls = [] if self.transport == "pubsub" else await streams.add_commands(
                    pipe, self._append, latest, pubs, self.stream_length, self.book_stream_length)
                results = await pipe.execute(raise_on_error=False)
        except BaseException:  # a failure, or a cancellation mid-flush (shutdown): nothing in flight is lost
            # keep the latest values (newer writes win) and the unsent messages for the retry; a retried XADD
            # that Redis had already applied is refused (its seq is there), so nothing is written twice
            self._pending_sets = {**sets, **self._pending_sets}
            self._pending_pubs = (pubs + self._pending_pubs)[-self.max_pending_pubs:]
            self._pending_latest = {**latest, **self._pending_latest}
            raise
        if calls and any(results[len(sets):]):  # a call's reply lists what it refused (empty: nothing)
            streams.refused(results[len(sets):], calls, self._conflicts_logged, self.on_seq_conflict)

    async def _run(self) -> None:
        delay = self.interval
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                if not self._connected:
                    await self._redis.ping()
                await self._flush()
                self._set_connected(True)
                delay = self.interval
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - Redis trouble never reaches the caller
                CACHE_ERRORS.labels("flush").inc()
                self._set_connected(False, e)
                delay = min(5.0, max(0.25, delay * 2))

    # --- the streams: where a channel's numbering is, what a reader missed ----------------------
    async def last_seq(self, channel: str) -> int:
        """The newest seq of ``channel`` in Redis, or written here and not flushed yet. Raises when Redis
        cannot be asked (the caller decides: a publisher then numbers from what it knows)."""
        if not self._connected:  # not one connect timeout per channel: the flusher reconnects
            raise ConnectionError("Redis unavailable")
        pending = [s for c, s, _ in self._pending_pubs if c == channel and s is not None]
        if channel in self._pending_latest and self._pending_latest[channel][0] is not None:
            pending.append(self._pending_latest[channel][0])
        return max([await streams.last_seq(self._redis, channel), *pending])

    async def read_since(self, channel: str, after: int, count: int = 1000,
                         until: int | None = None) -> list[tuple[int, bytes]] | None:
        """Up to ``count`` messages of ``channel`` after seq ``after`` (and up to ``until``) still in its
        stream, oldest first, as ``(seq, payload)``; ``[]`` when Redis cannot be asked."""
        try:
            return await streams.read_since(self._read, channel, after, count, until)
        except Exception as e:  # noqa: BLE001
            CACHE_ERRORS.labels("get").inc()
            log.warning("bus_read_failed", channel=channel, error=str(e) or type(e).__name__)
            return []

    # --- reads: Redis first (shared by processes), memory when it is down ---------------------
    async def _get(self, key: str) -> Any | None:
        if self._connected and key not in self._pending_sets:
            try:
                data = await self._redis.get(key)
                if data is not None:
                    return loads(data)
            except Exception as e:  # noqa: BLE001
                CACHE_ERRORS.labels("get").inc()
                self._set_connected(False, e)
        return self._get_local(key)

    async def get_book(self, exchange: str, symbol: str) -> Any | None:
        return await self._get(book_key(exchange, symbol))

    async def get_latest(self, kind: str, symbol: str) -> Any | None:
        return await self._get(latest_key(kind, symbol))


def _mask(url: str) -> str:
    from coby.config import mask_url
    return mask_url(url)


def open_cache(url: str | None, *, remote: bool = False, **kw: Any) -> MemoryCache:
    """Redis when a URL is given, else the in-process cache. Call ``await cache.start()``.

    ``remote=True`` (an API node: it publishes nothing itself): subscribers read the channels other processes
    publish, from Redis (``coby.bus.StreamReader``); what this process publishes reaches them the same way. ``kw``: ``RedisCache``'s options (``stream_length``,
    ``book_stream_length``)."""
    if not url:
        if remote:
            raise ValueError("a remote bus needs Redis")
        return MemoryCache()
    return RedisCache(url, remote=remote, **kw)
