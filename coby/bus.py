"""An API node's view of the bus: the channels other processes publish, read from their Redis Streams.

Interface (what a daemon in role ``api`` uses)::

    cache = open_cache(url, remote=True)     # coby.cache: a RedisCache whose subscribers are fed from Redis
    await cache.start()
    sub = cache.subscribe("trades:BTC-USDT")  # as with any cache: (channel, payload) in sub.queue
    await cache.get_book("binance", "BTC-USDT")   # latest state, from Redis
    await cache.read_since("trades:BTC-USDT", 907)  # what is still kept after seq 907 (a resume)
    await cache.aclose()

and, on the publishing side (a collector; nothing to call in the normal case)::

    cache = open_cache(url)                    # RedisCache: each channel also appended to its stream
    await cache.last_seq("trades:BTC-USDT")    # the seq the channel has reached in Redis
    await pipeline.publisher.resume(channels)  # at a takeover (failover): their numbering is re-read from
                                               # Redis before their next message (a first publish does it anyway)

``StreamReader`` (owned by such a cache) reads the stream of every channel this process has at least one
subscriber for and hands each message to the cache's in-process fan-out, in seq order: what is new in all
of them comes in one reply (``streams.READ``, a script: one bulk string, parsed with a few slices per
message - redis-py's parser costs ~100 us a message on XREAD's nested replies); when nothing is, one
blocking ``XREAD`` over all of them waits for something (``block`` seconds at most, so a channel
subscribed meanwhile is read from then on: no busy loop, no wake-up messages). A channel is read from its stream's newest entry at the time
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
        self._script = self._redis.register_script(streams.READ)
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
        turn = 0
        while not self._closing:
            if not self._positions:
                self._changed.clear()
                await self._changed.wait()
                continue
            try:
                await self._start_new()
                started = [(c, p) for c, p in self._positions.items() if p is not None]
                turn = (turn + 1) % max(1, len(started))
                started = started[turn:] + started[:turn]  # each stream first in turn: a busy one starves none
                data = await self._read(started) if started else b""
                if not data:  # nothing new: wait in Redis until something is (or block ms pass)
                    await self._redis.xread({streams.PREFIX + c: p for c, p in started}, count=1,
                                            block=self.block_ms)
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
            if data:
                for channel, entries in streams.parse_batch(data, [c for c, _ in started]).items():
                    self._handle(channel, entries)

    async def _read(self, started: list[tuple[str, str]]) -> bytes:
        """The entries after each position, as one reply (``streams.READ``): at most ``count`` per stream and
        ``10 * count`` in all."""
        return await self._script(keys=[streams.PREFIX + c for c, _ in started],
                                  args=[10 * self.count, self.count, *(p for _, p in started)])

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

    def _handle(self, channel: str, entries: list[tuple[bytes, bytes]]) -> None:
        position = self._positions.get(channel)
        if position is None or not entries:
            return  # unsubscribed meanwhile
        coalesce = streams.is_coalesced(channel)
        shared = channel in streams.SHARED_CHANNELS
        last = None if channel in self._fresh else streams.seq_of_id(position)
        self._fresh.discard(channel)
        out: list[bytes] = []
        if entries[0][0] == b"0-0":  # the stream was wiped and numbered again: read it from its start
            log.warning("bus_stream_restarted", channel=channel, position=position)
            self._positions[channel] = "0-0"
            self._fresh.add(channel)
            return
        for eid, payload in entries:
            seq = int(eid[2:]) if eid[:2] == b"0-" else None
            if seq is None or not payload:
                continue
            if not coalesce and last is not None and seq > last + 1:
                BUS_GAPS.inc()
                log.warning("bus_gap", channel=channel, first=last + 1, last=seq - 1,
                            detail="trimmed from the stream before this node read it")
                out.append(streams.gap_message(channel, last + 1, seq - 1))
            out.append(streams.patch_seq(payload, seq) if shared else payload)
            last = seq
        self._positions[channel] = entries[-1][0].decode()
        BUS_MESSAGES.inc(len(entries))
        for payload in (out[-1:] if coalesce else out):
            self.deliver(channel, payload)
