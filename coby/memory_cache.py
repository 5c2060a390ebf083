"""The in-process cache: latest book per (exchange, symbol), latest aggregates per symbol, and the channels'
subscribers in this process (``coby.cache``: the interface, and ``RedisCache``, which adds Redis).

Subscribers are fed directly (bounded queues, oldest dropped when a subscriber lags - the HTTP layer has its own
stricter per-client policy). A book may be stored as a ``_Lazy`` (a live venue book not yet converted:
``coby.pendingbook``): it is made on the first read.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any, AsyncIterator, Callable

from coby.codec import dumps, loads
from coby.metrics import CACHE_CONNECTED

PREFIX = "coby:"


def book_key(exchange: str, symbol: str) -> str:
    return f"{PREFIX}book:{exchange}:{symbol}"


def latest_key(kind: str, symbol: str) -> str:
    return f"{PREFIX}latest:{kind}:{symbol}"


class Subscription:
    """Messages of one or more channels, as ``(channel, payload bytes)``."""

    def __init__(self, cache: "MemoryCache", channels: tuple[str, ...], maxsize: int) -> None:
        self._cache = cache
        self.channels = channels
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(maxsize)
        self.dropped = 0

    def _offer(self, channel: str, payload: bytes) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait((channel, payload))

    async def get(self) -> tuple[str, bytes]:
        return await self.queue.get()

    def __aiter__(self) -> AsyncIterator[tuple[str, bytes]]:
        return self._iter()

    async def _iter(self) -> AsyncIterator[tuple[str, bytes]]:
        while True:
            yield await self.queue.get()

    def close(self) -> None:
        self._cache._unsubscribe(self)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MemoryCache:
    """The in-process cache; also the memory layer under ``RedisCache``."""

    kind = "memory"

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}
        self._subs: dict[str, set[Subscription]] = defaultdict(set)

    async def start(self) -> None:
        CACHE_CONNECTED.set(1)

    async def aclose(self) -> None:
        self._subs.clear()

    @property
    def connected(self) -> bool:
        return True

    # --- values -------------------------------------------------------------------------------
    def _set(self, key: str, value: Any) -> Any:
        """Keep ``value`` (bytes, or an object encoded only if it is read: most latest states are
        replaced before anyone asks for them)."""
        self._values[key] = value
        return value

    async def set_book(self, exchange: str, symbol: str, book: Any) -> None:
        self._set(book_key(exchange, symbol), book)

    async def publish_book(self, exchange: str, symbol: str, channel: str, message: Any) -> None:
        """Keep ``message`` as the book's latest and publish it on ``channel``: encoded once for both,
        and only if someone is subscribed (else when the latest is read)."""
        await self._keep_and_publish(book_key(exchange, symbol), channel, message)

    async def publish_latest(self, kind: str, symbol: str, channel: str, message: Any) -> None:
        """Keep ``message`` as the latest of ``kind`` and publish it on ``channel`` (as ``publish_book``)."""
        await self._keep_and_publish(latest_key(kind, symbol), channel, message)

    async def _keep_and_publish(self, key: str, channel: str, message: Any) -> None:
        subs = self._subs.get(channel)
        if subs and not isinstance(message, bytes):
            message = dumps(message)
        self._set(key, message)
        if subs:
            self._fanout(channel, message)

    def wants(self, channel: str) -> bool:
        """Does a publish on ``channel`` need its message now (a subscriber here; with Redis, always)?"""
        return bool(self._subs.get(channel))

    def keep_book_lazily(self, exchange: str, symbol: str, make: Callable[[], Any]) -> None:
        """Keep the book's latest as ``make``, called when it is first read (a live book nobody subscribes
        to is converted only if read: coby.pendingbook); ``make()`` returns the envelope, or None."""
        self._values[book_key(exchange, symbol)] = _Lazy(make)

    async def get_book(self, exchange: str, symbol: str) -> Any | None:
        return self._get_local(book_key(exchange, symbol))

    async def set_latest(self, kind: str, symbol: str, value: Any) -> None:
        self._set(latest_key(kind, symbol), value)

    async def get_latest(self, kind: str, symbol: str) -> Any | None:
        return self._get_local(latest_key(kind, symbol))

    def _get_local(self, key: str) -> Any | None:
        data = self._values.get(key)
        if type(data) is _Lazy:
            data = data.make()
        if data is None:
            return None
        return loads(data if isinstance(data, bytes) else dumps(data))

    # --- pub/sub ------------------------------------------------------------------------------
    on_seq_conflict: Any = None  # set by a publisher: called with a channel whose seqs another process holds
    keeps_history = False  # read_since answers None: no message is kept once delivered

    async def last_seq(self, channel: str) -> int:
        """The seq ``channel`` has reached on the shared bus: 0 here (nothing is shared)."""
        return 0

    async def read_since(self, channel: str, after: int, count: int = 1000,
                         until: int | None = None) -> list[tuple[int, bytes]] | None:
        """The messages of ``channel`` after seq ``after`` still kept: None here (no history is kept)."""
        return None

    async def publish(self, channel: str, message: Any) -> None:
        if self._subs.get(channel):  # encoded only for someone (most trades channels have no subscriber)
            self._fanout(channel, message if isinstance(message, bytes) else dumps(message))

    def _fanout(self, channel: str, payload: bytes) -> None:
        for sub in self._subs.get(channel, ()):
            sub._offer(channel, payload)

    def subscribe(self, *channels: str, maxsize: int = 1000) -> Subscription:
        sub = Subscription(self, channels, maxsize)
        for ch in channels:
            self._subs[ch].add(sub)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        for ch in sub.channels:
            subs = self._subs.get(ch)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[ch]


class _Lazy:
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make
