"""The units a connector is made of: feeds (one ccxt client each, guarded), the pool that owns a venue's
feeds, and streams (one watch loop each).

A :class:`Feed` serves one kind of stream (books or trades) and owns one unmodified ccxt.pro client,
so a book's recovery never closes the connection its symbol's trades run on (and vice versa), even on
venues where ccxt would multiplex both on one connection. It wraps its client, once, with:

* a **frame guard** on every connection the client opens: ccxt lets exceptions
  from JSON parsing and from its handlers escape its receive loop, which then
  dies silently and the watch hangs (wire notes, section 5). The guard catches
  them and hands them to the connector (``on_frame_error``) instead;
* the venue's **sequence check** (``Venue.gap_check``) where ccxt has none: a gap
  marks the symbol's book bad, and its stream resyncs on the next wake-up.

``gen`` counts the feed's clients: anything belonging to an older client (a late
frame, a failure caused by our own recycle) is recognised and ignored.

A :class:`FeedPool` holds a connector's feeds (up to ``max_connections_per_exchange`` per
kind, then symbols share them) and their clients' lifecycle: built on first use, recycled
(closed in the background, watchers interrupted) when the connector's failure policy
says so, and all closed by ``aclose()``. When to recycle is the connector's decision
(:mod:`coby.exchanges`), never the pool's.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import zlib
from collections.abc import Callable
from typing import Any

import structlog

from coby.errors import ExchangeError
from coby.collector.markets import MarketCatalog
from coby.errors import StaleFeed
from coby.models import ConnectionState, OrderBookSnapshot
from coby.pendingbook import PendingBook
from coby.collector.resilience import Backoff, CircuitBreaker, CircuitState
from coby.collector.venues import Venue

log = structlog.get_logger("coby.exchanges")

# Raised while decoding a frame, before any handler saw it: the frame can simply be dropped.
PARSE_ERRORS: tuple[type[BaseException], ...] = (json.JSONDecodeError, UnicodeDecodeError, zlib.error, EOFError,
                                                 OSError)
try:
    from google.protobuf.message import DecodeError as _ProtoDecodeError

    PARSE_ERRORS += (_ProtoDecodeError,)
except ImportError:  # pragma: no cover - protobuf is a dependency
    pass

class Callbacks:
    """The connector's consumers, sync or async; one that raises is logged (rate-bounded), never fatal.

    A consumer added with ``lazy_books`` receives books as :class:`~coby.pendingbook.PendingBook` (the
    pipeline, which resolves a book only when it needs the state); the others receive each book state
    as an :class:`~coby.models.OrderBookSnapshot`, so while one of them is there (``eager``) every
    state handed on is normalised."""

    def __init__(self, exchange: str, log_interval: float) -> None:
        self._callbacks: list[tuple[Callable[[Any], Any], bool, bool]] = []
        self._exchange, self._interval = exchange, log_interval
        self._logged_at, self._suppressed = float("-inf"), 0
        self.eager = False

    def add(self, callback: Callable[[Any], Any], lazy_books: bool = False) -> None:
        self._callbacks.append((callback, inspect.iscoroutinefunction(callback), lazy_books))
        self.eager = self.eager or not lazy_books

    async def __call__(self, item: Any, pending: Any = None) -> None:
        """Hand ``item`` to every consumer (``pending``, if given, to the lazy ones instead)."""
        for callback, is_async, lazy in self._callbacks:
            try:
                result = callback(pending if lazy and pending is not None else item)
                if is_async or (result is not None and hasattr(result, "__await__")):
                    await result
            except Exception as exc:  # noqa: BLE001 - a consumer's bug never kills the feed
                now = time.monotonic()
                if now - self._logged_at >= self._interval:
                    log.error("callback_failed", exchange=self._exchange, callback=repr(callback)[:120],
                              error=repr(exc)[:300], item=type(item).__name__, suppressed=self._suppressed)
                    self._logged_at, self._suppressed = now, 0
                else:
                    self._suppressed += 1


FrameErrorHandler = Callable[["Feed", int, Any, Exception], None]


class Feed:
    """One ccxt client serving one kind of stream (BOOK or TRADES) of some symbols of a venue."""

    def __init__(self, index: int, venue: Venue, kind: str) -> None:
        self.index = index
        self.venue = venue
        self.kind = kind
        self.client: Any = None
        self.gen = 0
        self.markets: dict[str, dict[str, Any]] = {}
        self.symbol_by_id: dict[str, str] = {}
        self.streams: list[Stream] = []
        self.gap_state: dict[Any, Any] = {}
        self.bad_books: set[str | None] = set()  # symbols (None: all) whose book a sequence check found bad
        self.torn = 0  # frames whose handler raised: a book of this client may be half-updated (coby.pendingbook)

    def open_client(self, build: Callable[[], Any], on_frame_error: FrameErrorHandler) -> Any:
        """The current client, built and guarded if there is none."""
        if self.client is None:
            self.client = build()
            self.gap_state, self.bad_books = {}, set()
            self._guard(self.client, self.gen, on_frame_error)
        return self.client

    def drop_client(self) -> Any:
        """Forget the current client (the caller closes it); whatever it still does is ignored."""
        self.gen += 1
        old, self.client = self.client, None
        return old

    def _guard(self, ex: Any, gen: int, on_frame_error: FrameErrorHandler) -> None:
        make_client = ex.client

        def client(url: str) -> Any:
            c = make_client(url)
            if c is not None and not getattr(c, "_coby_guarded", False):
                c._coby_guarded = True
                handle = c.handle_message

                def guarded(message: Any) -> None:
                    try:
                        handle(message)
                    except Exception as exc:  # noqa: BLE001 - must not escape: it kills ccxt's receive loop
                        on_frame_error(self, gen, c, exc)

                c.handle_message = guarded
            return c

        ex.client = client  # ccxt calls self.client(url) for every connection it opens
        if self.venue.gap_check is not None:
            name, check = self.venue.gap_check
            inner, state = getattr(ex, name), self.gap_state

            def checked(ws: Any, message: Any) -> Any:
                hit = check(state, ws, message)
                if hit is not None and self.gen == gen:
                    mid, detail = hit
                    self.bad_books.add(self.symbol_by_id.get(mid) if mid is not None else None)
                    log.warning("sequence_gap", exchange=self.venue.name, market=mid, detail=detail)
                return inner(ws, message)

            setattr(ex, name, checked)  # looked up on the instance when ccxt creates a connection


class FeedPool:
    """A venue's feeds and their ccxt clients: which feed serves a symbol, its current client, recycling, closing."""

    def __init__(self, exchange: str, venue: Venue, catalog: MarketCatalog, max_feeds: int,
                 factory: Callable[..., Any], base_url: str | None, on_frame_error: FrameErrorHandler) -> None:
        self.exchange, self.venue, self.catalog, self.max_feeds = exchange, venue, catalog, max_feeds
        self._factory, self._base_url, self._on_frame_error = factory, base_url, on_frame_error
        self.feeds: list[Feed] = []
        self._closing: set[asyncio.Task[Any]] = set()
        self._log = log.bind(exchange=exchange)

    def feed_for(self, symbol: str, kind: str) -> Feed:
        """The feed that serves ``kind`` of ``symbol``: the one that already does, a new one, or the least loaded."""
        mine = self.of_kind(kind)
        for feed in mine:
            if any(s.symbol == symbol for s in feed.streams):
                return feed
        if len(mine) < self.max_feeds:
            feed = Feed(len(self.feeds), self.venue, kind)
            self.feeds.append(feed)
        else:
            feed = min(mine, key=lambda f: len({s.symbol for s in f.streams}))
        market = self.catalog.market(symbol)
        feed.markets.update(self.catalog.markets_for([symbol]))
        feed.symbol_by_id[market.id] = symbol
        if feed.client is not None:  # a live client learns the new market
            feed.client.set_markets(list(feed.markets.values()))
        return feed

    def of_kind(self, kind: str) -> list[Feed]:
        return [f for f in self.feeds if f.kind == kind]

    def client(self, feed: Feed) -> Any:
        """The feed's current ccxt client, built (and guarded) if it has none."""
        def build() -> Any:
            # markets as the catalog knows them now: real ones once a background refresh succeeded
            symbols = {s.symbol for s in feed.streams}
            feed.markets = self.catalog.markets_for(symbols)
            feed.symbol_by_id = {self.catalog.market(sym).id: sym for sym in symbols}
            return self._factory(self.exchange, feed.markets, self._base_url)

        return feed.open_client(build, self._on_frame_error)

    def recycle(self, feed: Feed, err: ExchangeError) -> None:
        """Drop the feed's ccxt client (closed in the background) and interrupt its streams."""
        old = feed.drop_client()
        if old is not None:
            task = asyncio.ensure_future(self._close_client(old))
            self._closing.add(task)  # awaited, not cancelled, by aclose(): a close must finish
            task.add_done_callback(self._closing.discard)
        current = asyncio.current_task()
        for st in feed.streams:
            # one interrupt per attempt: a second cancel() would outlive the uncancel() and kill the stream
            if st.watching and st.interrupt is None and st.task is not None and st.task is not current \
                    and not st.task.done():
                st.interrupt = err
                st.task.cancel()

    async def aclose(self) -> None:
        """Close every current client and await the closes already under way (call once the streams are stopped)."""
        clients = [f.client for f in self.feeds if f.client is not None]
        for f in self.feeds:
            f.client = None
        await asyncio.gather(*(self._close_client(c) for c in clients), *self._closing, return_exceptions=True)

    async def _close_client(self, client: Any) -> None:
        try:
            await asyncio.wait_for(client.close(), 10.0)
        except Exception as exc:  # noqa: BLE001 - a client that fails to close is dropped anyway
            self._log.debug("client_close_failed", error=repr(exc))


BOOK, TRADES = "book", "trades"  # the kinds of Stream


class Stream:
    """One watch loop: the book or the trades of one symbol, and where it stands."""

    def __init__(self, kind: str, symbol: str, unified: str, feed: Feed, backoff: Backoff, now: float) -> None:
        self.kind, self.symbol, self.unified, self.feed, self.backoff = kind, symbol, unified, feed, backoff
        self.task: asyncio.Task[None] | None = None
        self.gen = -1  # the feed generation of the current attempt
        self.watching = False  # awaiting ccxt: the only state the watchdog interrupts
        self.attempt_at = now
        self.last_progress = float("-inf")
        self.live = False  # delivered since the last (re)connect
        self.ever = False  # delivered at least once
        self.cause: Exception | None = None  # why the current gap started
        self.interrupt: Exception | None = None  # set by whoever cancels the task to interrupt a watch
        self.failed: str | None = None  # permanent error: the stream stopped
        self.last_key: tuple[Any, Any] = (None, None)
        self.latest: OrderBookSnapshot | None = None
        self.raw: Any = None  # ccxt's (live, mutated in place) book held back by book_emit_interval
        self.book: PendingBook | None = None  # what the book stream hands on (coby.pendingbook)
        self.epoch = 0  # attempts that failed: a book handed on before a failure is no longer whole
        self.next_emit = float("-inf")


def venue_state(streams: list[Stream], breakers: dict[str, CircuitBreaker]) -> ConnectionState:
    """A venue's state from its (not permanently failed) streams: connected while every symbol has a stream
    that flows (its book, or its trades: quiet trades are no gap); else the worst of the symbols with none."""
    flowing = {s.symbol for s in streams if s.live}
    dark = [s for s in streams if s.symbol not in flowing]
    if streams and not dark:
        return ConnectionState.CONNECTED
    if any(breakers[s.kind].state is not CircuitState.CLOSED for s in dark):
        return ConnectionState.CIRCUIT_OPEN
    if any(isinstance(s.cause, StaleFeed) for s in dark):
        return ConnectionState.STALE
    if dark and not any(s.ever for s in dark):
        return ConnectionState.CONNECTING
    return ConnectionState.DISCONNECTED
