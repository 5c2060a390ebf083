"""An API node's view of the bus: the channels other processes publish, read from their Redis Streams.

Interface (what a daemon in role ``api`` uses)::

    cache = open_cache(url, remote=True)     # coby.cache: a RedisCache whose subscribers are fed from Redis
    await cache.start()
    sub = cache.subscribe("trades:BTC-USDT")  # as with any cache: (channel, payload) in sub.queue
    await cache.get_book("binance", "BTC-USDT")   # latest state, from Redis
    await cache.read_since("trades:BTC-USDT", 907)  # what is still kept after seq 907 (a resume)
    await cache.aclose()

``StreamReader`` (owned by such a cache) reads the stream of every channel this process has at least one
subscriber for, with one blocking ``XREAD`` over all of them (``block`` seconds at most, so a channel
subscribed meanwhile is read from then on: no busy loop, no wake-up messages), and hands each message to
the cache's in-process fan-out, in seq order. A channel is read from its stream's newest entry at the time
the reader first sees it. Memory: at most ``count`` entries per stream per read, and the subscribers' own
bounded queues.

Redis lost: logged once (``bus_unavailable``), counted (``coby_bus_reconnects_total`` when it is back,
``coby_cache_errors_total{op="read"}`` per failed read), retried with a backoff up to 5 s, and read on from
where each stream was left: what was published meanwhile arrives then. Where the stream no longer holds
it (trimmed to ``bus_stream_length``), a queued channel's subscribers get one explicit gap message
``{"channel", "type": "gap", "from", "to"}`` in its place (``coby_bus_gaps_total``); a book-like channel
just continues with its newest state (each message is a full state).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, Callable

import structlog

from coby import streams
from coby.metrics import BUS_GAPS, BUS_MESSAGES, BUS_RECONNECTS, CACHE_ERRORS

log = structlog.get_logger("coby.bus")


class StreamReader:
    """Reads the streams of ``channels`` from Redis and calls ``deliver(channel, payload)`` for each message."""

    def __init__(self, url: str, deliver: Callable[[str, bytes], None], *, block: float = 0.1,
                 count: int = 500) -> None:
        self.url = url
        self.deliver = deliver
        self.block_ms = max(1, int(block * 1000))
        self.count = count
        self._positions: dict[str, str | None] = {}  # channel -> the last id read (None: not started yet)
        self._fresh: set[str] = set()  # started on an empty stream: its first seq is no gap
        self._changed = asyncio.Event()
        self._redis: Any = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self.healthy = True
        self.reads = 0

    # --- which channels ---------------------------------------------------------------------
    def add(self, channel: str) -> None:
        if channel not in self._positions:
            self._positions[channel] = None
            self._changed.set()

    def remove(self, channel: str) -> None:
        self._positions.pop(channel, None)
        self._fresh.discard(channel)

    @property
    def channels(self) -> list[str]:
        return list(self._positions)

    # --- lifecycle ----------------------------------------------------------------------------
    async def start(self) -> None:
        import redis.asyncio as aioredis
        self._redis = aioredis.from_url(self.url, socket_connect_timeout=2, socket_timeout=self.block_ms / 1000 + 5)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="coby-bus-reader")

    async def aclose(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=5)  # bounded: redis-py may sit in a command
            self._task = None
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._redis.aclose(), 2)
            self._redis = None

    # --- the loop -----------------------------------------------------------------------------
    async def _run(self) -> None:
        delay = 0.25
        while not self._closing:
            if not self._positions:
                self._changed.clear()
                await self._changed.wait()
                continue
            try:
                await self._start_new()
                positions = {streams.PREFIX + c: p for c, p in self._positions.items() if p is not None}
                got = await self._redis.xread(positions, count=self.count, block=self.block_ms) if positions else []
                self.reads += 1
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - Redis trouble: wait, then read on from where we were
                CACHE_ERRORS.labels("read").inc()
                if self.healthy:
                    self.healthy = False
                    log.warning("bus_unavailable", error=str(e) or type(e).__name__, retry="backing off up to 5 s")
                await asyncio.sleep(delay)
                delay = min(5.0, delay * 2)
                continue
            if not self.healthy:
                self.healthy = True
                BUS_RECONNECTS.inc()
                log.info("bus_reconnected")
            delay = 0.25
            for key, entries in got or ():
                self._handle(streams.channel_of(key), entries)

    async def _start_new(self) -> None:
        """Channels seen for the first time start at their stream's newest entry."""
        new = [c for c, p in self._positions.items() if p is None]
        if not new:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for c in new:
                pipe.xrevrange(streams.PREFIX + c, "+", "-", count=1)
            tops = await pipe.execute()
        for c, top in zip(new, tops):
            if c in self._positions and self._positions[c] is None:
                if top:
                    self._positions[c] = top[0][0].decode()
                else:
                    self._positions[c] = "0-0"
                    self._fresh.add(c)

    def _handle(self, channel: str, entries: list[Any]) -> None:
        position = self._positions.get(channel)
        if position is None or not entries:
            return  # unsubscribed meanwhile
        coalesce = streams.is_coalesced(channel)
        shared = channel in streams.SHARED_CHANNELS
        last = None if channel in self._fresh else streams.seq_of_id(position)
        self._fresh.discard(channel)
        out: list[bytes] = []
        for eid, fields in entries:
            seq = streams.seq_of_id(eid)
            payload = fields.get(b"d")
            if seq is None or payload is None:
                continue
            if not coalesce and last is not None and seq > last + 1:
                BUS_GAPS.inc()
                log.warning("bus_gap", channel=channel, first=last + 1, last=seq - 1,
                            detail="trimmed from the stream before this node read it")
                out.append(streams.gap_message(channel, last + 1, seq - 1))
            out.append(streams.patch_seq(payload, seq) if shared else payload)
            last = seq
        eid = entries[-1][0]
        self._positions[channel] = eid.decode() if isinstance(eid, bytes) else eid
        BUS_MESSAGES.inc(len(entries))
        for payload in (out[-1:] if coalesce else out):
            self.deliver(channel, payload)
