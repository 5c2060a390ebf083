"""A replay session's bus: the cache's interface, with delivery that waits instead of dropping.

Live, a ``MemoryCache`` subscriber that lags loses its oldest messages: the venues will not
wait. A replay can wait, because its source is storage. So every subscription to a
``ReplayBus`` is a bounded queue whose ``put`` the publisher *awaits*: a consumer that reads
slowly slows the session down (at speed 0 the session runs exactly as fast as its slowest
subscriber reads) and nothing is ever dropped - ``dropped`` stays 0.

Otherwise it is the cache the pipeline already knows (``publish``, ``set_book``,
``set_latest``, ``get_book``, ``get_latest``, ``subscribe``), with four differences:

- ``subscribe("*")`` receives every channel (the CLI and the benchmark read everything);
- a channel filter (kinds such as ``trades``, or full names such as ``book:okx:BTC-USDT``)
  keeps the other channels off the bus altogether;
- a message nobody subscribed to is never encoded, nor one whose subscribers are in-process
  (``subscribe(..., raw=True)``: they take the envelope objects); latest values are kept as
  objects and encoded only when read (replay at speed 0 publishes far more than anyone reads);
- ``end()`` closes the stream: subscribers read what is queued, then their iteration stops
  (``get`` raises ``ReplayEnded``).

A subscriber that closes its subscription never blocks the bus again: what it had queued is
discarded and a publisher waiting on it is released at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import Any, AsyncIterator, Callable, Iterable

from coby.cache import MemoryCache, Subscription
from coby.codec import dumps, loads

WILDCARD = "*"
#: queued by ``end()`` after the last message; compared by identity. A reader that takes the raw
#: queue sees a message on channel ``replay`` saying the stream is over.
END: tuple[str, bytes] = ("replay", b'{"channel":"replay","type":"end"}')


class ReplayEnded(Exception):
    """The session's stream is over (finished, stopped or failed): nothing more will arrive."""


class MessageQueue:
    """The part of ``asyncio.Queue`` the bus and its readers use (``get``, ``get_nowait``, ``put``,
    ``put_nowait``, ``empty``, ``full``, ``qsize``), on a deque: a fifth of its cost per message,
    which counts at hundreds of thousands of messages a second."""

    __slots__ = ("maxsize", "_items", "_getters", "_putters")

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque = deque()
        self._getters: deque[asyncio.Future] = deque()
        self._putters: deque[asyncio.Future] = deque()

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    @staticmethod
    def _wake(waiters: deque[asyncio.Future]) -> None:
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def put_nowait(self, item: Any) -> None:
        """Append (never refused: callers check ``full`` first; the end marker may go one over)."""
        self._items.append(item)
        if self._getters:
            self._wake(self._getters)

    async def put(self, item: Any) -> None:
        await self._wait(self._putters, self.full)
        self.put_nowait(item)

    def get_nowait(self) -> Any:
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        if self._putters:
            self._wake(self._putters)
        return item

    async def get(self) -> Any:
        await self._wait(self._getters, self.empty)
        return self.get_nowait()

    async def _wait(self, waiters: deque[asyncio.Future], blocked: Callable[[], bool]) -> None:
        while blocked():
            fut = asyncio.get_running_loop().create_future()
            waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():  # woken, then cancelled: pass the turn on
                    self._wake(waiters)
                else:
                    with contextlib.suppress(ValueError):
                        waiters.remove(fut)
                raise


class ReplaySubscription(Subscription):
    """A bounded queue the publisher waits on when it is full. Iterating it stops at the end of the session."""

    def __init__(self, bus: "ReplayBus", channels: tuple[str, ...], maxsize: int, raw: bool = False) -> None:
        super().__init__(bus, channels, maxsize)
        self.queue = MessageQueue(maxsize)  # type: ignore[assignment]
        self._bus = bus
        self.raw = raw
        self.closed = False
        self.ended = False

    def try_put(self, channel: str, payload: Any) -> bool:
        """Queue without waiting; False when the queue is full (then ``put`` waits for room). A closed
        subscription drops the message (True). Synchronous: no coroutine per message while there is room."""
        if self.closed:
            return True
        if self.queue.full():
            return False
        self.queue.put_nowait((channel, payload))
        return True

    async def put(self, channel: str, payload: Any) -> None:
        if self.try_put(channel, payload):
            return
        self._bus.blocked_since = self._bus.clock()
        try:
            await self.queue.put((channel, payload))
        finally:
            self._bus.blocked_since = None

    def _offer(self, channel: str, payload: bytes) -> None:  # pragma: no cover - the bus awaits ``put`` instead
        raise RuntimeError("ReplaySubscription takes messages through put()")

    async def get(self) -> tuple[str, bytes]:
        """The next message; ``ReplayEnded`` once the session is over and everything queued was read."""
        if self.ended and self.queue.empty():
            raise ReplayEnded
        item = await self.queue.get()
        if item is END:
            raise ReplayEnded
        return item  # type: ignore[return-value]

    async def _iter(self) -> AsyncIterator[tuple[str, bytes]]:
        while True:
            try:
                yield await self.get()
            except ReplayEnded:
                return

    def close(self) -> None:
        if self.closed:
            return
        self.closed = self.ended = True
        super().close()
        while not self.queue.empty():  # releases a publisher blocked on this queue
            self.queue.get_nowait()

    async def put_end(self) -> None:
        """After the last message: waits for room like any message (the reader takes everything first)."""
        self.ended = True
        if not self.closed:
            await self.queue.put(END)

    def _end(self) -> None:
        """The stream ends now (stop): if the queue is full its oldest message gives way to the end marker."""
        self.ended = True
        if self.closed:
            return
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(END)


class ReplayBus(MemoryCache):
    """A ``MemoryCache`` whose subscribers are waited for, never dropped from. See the module docstring."""

    kind = "replay"

    def __init__(self, channels: Iterable[str] | None = None, *, maxsize: int = 1000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.allow = frozenset(channels) if channels else None
        self.maxsize = maxsize
        self.clock = clock
        self.ended = False
        #: ``clock()`` time since which a publish has been waiting on a full subscriber (None: not waiting)
        self.blocked_since: float | None = None
        self._wild: set[ReplaySubscription] = set()
        self._allowed: dict[str, bool] = {}
        self._targets: dict[str, tuple[ReplaySubscription, ...]] = {}

    def allowed(self, channel: str) -> bool:
        """True when the session's channel filter lets ``channel`` through."""
        ok = self._allowed.get(channel)
        if ok is None:
            ok = self.allow is None or channel in self.allow or channel.split(":", 1)[0] in self.allow
            self._allowed[channel] = ok
        return ok

    # --- values: kept as objects, encoded when read ------------------------------------------------
    def _set(self, key: str, value: Any) -> Any:
        self._values[key] = value  # type: ignore[assignment]
        return value

    async def _keep_and_publish(self, key: str, channel: str, message: Any) -> None:
        self._set(key, message)
        await self.publish(channel, message)  # raw subscribers take the object; the rest encode once

    def _get_local(self, key: str) -> Any | None:
        value = self._values.get(key)
        if value is None:
            return None
        return loads(value if isinstance(value, bytes) else dumps(value))

    # --- pub/sub ------------------------------------------------------------------------------------
    def _targets_of(self, channel: str) -> tuple[ReplaySubscription, ...]:
        """The subscribers of ``channel`` (none when the filter keeps it off the bus), cached."""
        targets = self._targets.get(channel)
        if targets is None:
            subs = (*self._subs.get(channel, ()), *self._wild) if self.allowed(channel) else ()
            targets = self._targets[channel] = tuple(dict.fromkeys(subs))  # type: ignore[arg-type]
        return targets

    async def publish(self, channel: str, message: Any) -> None:
        targets = self._targets.get(channel)
        if targets is None:
            targets = self._targets_of(channel)
        if not targets:
            return
        payload = None
        for sub in targets:
            if sub.raw:
                data = message
            else:
                if payload is None:
                    payload = message if isinstance(message, bytes) else dumps(message)
                data = payload
            if not sub.try_put(channel, data):
                await sub.put(channel, data)

    def offer(self, channel: str, message: Any) -> int:
        """Publish without waiting: subscribers with room get ``message``, full ones miss it. Returns misses."""
        payload = None
        missed = 0
        for sub in self._targets_of(channel):
            if sub.closed or sub.queue.full():
                missed += not sub.closed
                continue
            if not sub.raw and payload is None:
                payload = message if isinstance(message, bytes) else dumps(message)
            sub.queue.put_nowait((channel, message if sub.raw else payload))
        return missed

    @property
    def subscribers(self) -> int:
        return len(self._all())

    def subscribe(self, *channels: str, maxsize: int | None = None, raw: bool = False) -> ReplaySubscription:
        """Subscribe to ``channels`` (``"*"``: all). ``maxsize`` messages may wait before the session waits.

        ``raw=True`` (in-process consumers): messages arrive as the envelope objects the pipeline
        published - dicts holding the model objects, to be treated as read-only - instead of JSON
        bytes, and nothing is encoded for this subscriber.
        """
        sub = ReplaySubscription(self, channels, maxsize or self.maxsize, raw)
        if self.ended:
            sub._end()
            return sub
        for ch in channels:
            if ch == WILDCARD:
                self._wild.add(sub)
            else:
                self._subs[ch].add(sub)
        self._targets.clear()
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        self._wild.discard(sub)  # type: ignore[arg-type]
        super()._unsubscribe(sub)
        self._targets.clear()

    def _all(self) -> set[ReplaySubscription]:
        return {*self._wild, *(s for subs in self._subs.values() for s in subs)}  # type: ignore[misc]

    async def finish(self) -> None:
        """The session is done: each subscriber reads everything queued, then its iteration stops."""
        self.ended = True
        for sub in self._all():
            await sub.put_end()

    def end(self) -> None:
        """The stream ends now (stop, shutdown): subscribers' iteration stops after what is queued
        (a full queue gives up its oldest message for the end marker). Idempotent."""
        if self.ended and not any(not s.ended for s in self._all()):
            return
        self.ended = True
        for sub in self._all():
            if not sub.ended:
                sub._end()

    async def aclose(self) -> None:
        self.end()
        self._wild.clear()
        await super().aclose()
