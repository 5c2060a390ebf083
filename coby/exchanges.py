"""Exchange connectors: ccxt.pro ``watch_order_book`` / ``watch_trades`` loops that do not stall silently.

One :class:`ExchangeConnector` per venue. Each subscribed (symbol, book|trades) is
a *stream*: a task looping on one ccxt watch, normalising what it returns
(:mod:`coby.collector.normalize`) and emitting it to the callbacks. Streams of one kind
share a *feed*: one ccxt client (its connections). Books and trades never share a
feed, so a book's recovery never touches the trades (real htx lost a third of its
trades that way), and recovering one symbol never touches the others; up to
``max_connections_per_exchange`` feeds per venue and kind, then symbols share them.
The feeds and their clients are owned by a :class:`~coby.collector.feeds.FeedPool`; this
module decides when a feed is recycled.

Failure policy (state machines in :mod:`coby.collector.resilience`, venue quirks in
:mod:`coby.collector.venues`):

* every ccxt exception is translated once (:mod:`coby.collector.ccxterrors`);
* a failed stream backs off (exponential, jitter, reset on success) and then
  re-watches (binance/okx, where ccxt resyncs itself) or recycles its feed - closes
  the ccxt client and builds a new one (every other venue, and every stall);
* each stream kind of the venue has its circuit breaker (a book that keeps failing
  never stops the trades): it opens after ``circuit_failures`` consecutive failures
  of that kind (a recycled feed counts once), the kind's feeds are closed, and after
  ``circuit_cooldown`` one of its streams probes;
* the staleness watchdog (:mod:`coby.collector.watchdog`) recycles a feed whose book has not
  changed for ``stale_after`` seconds (``connect_timeout`` for the first book) or
  whose trades have gone quiet (``trade_stale_after``) with no live book; quiet trades
  of a live book are only resubscribed (no event, no failure);
* a frame guard on every ccxt connection (:mod:`coby.collector.feeds`) catches what ccxt lets
  escape its receive loop (which would otherwise die and hang the watch):
  unparseable frames are dropped and counted as ``malformed``, handler errors force
  a resync, and the venue's sequence check (:data:`coby.collector.venues.VENUES`) flags gaps
  ccxt ignores.

Books are handed on at most once per ``book_emit_interval`` per book (newest state
wins; a held-back state is flushed when its interval ends): converting
``book_depth`` levels on every one of hundreds of updates a second would cost more
than ccxt's own parsing, and every consumer keeps only the latest state anyway.

Every gap is explicit: ``ConnectionEvent`` connected / disconnected / stale /
resynced per stream, circuit_open / circuit_closed per venue and kind (the detail
starts with the kind). The venue's state comes from its streams: ``connected`` while
every symbol's book (or, with no book, its trades) flows - quiet trades are not a gap.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import structlog

from coby.collector.ccxterrors import local_resync, translate_ccxt_error
from coby.errors import ExchangeError, PermanentExchangeError, TemporaryExchangeError
from coby.collector.failurepolicy import FailurePolicy
from coby.collector.feeds import BOOK, TRADES, Callbacks, FeedPool, Stream, venue_state
from coby.collector.markets import MarketCatalog
from coby.metrics import CIRCUIT_OPEN, MESSAGES
from coby.models import (UTC, ConnectionEvent, ConnectionEventKind, ConnectionState, ConnectionStatus,
                         OrderBookSnapshot, utcnow)
from coby.collector.normalize import DataProcessor
from coby.pendingbook import PendingBook
from coby.collector.resilience import Backoff, CircuitBreaker, CircuitState
from coby.symbols import SymbolMap, split_canonical
from coby.collector.venues import VENUES, build_client, override_base
from coby.collector.watchdog import Watchdog

log = structlog.get_logger("coby.exchanges")

Callback = Callable[[Any], Any]


class ExchangeConnector(FailurePolicy):
    """The design's ExchangeConnector for one venue, on unmodified ccxt.pro."""

    def __init__(self, exchange: str, settings: Any, on_event: Callback | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
                 processor: DataProcessor | None = None, symbol_map: SymbolMap | None = None,
                 catalog: MarketCatalog | None = None, client_factory: Callable[..., Any] = build_client,
                 rng: random.Random | None = None) -> None:
        if exchange not in VENUES:
            raise PermanentExchangeError(exchange, "unknown exchange")
        self.exchange = exchange
        self.settings = settings
        self.venue = VENUES[exchange]
        self._clock, self._sleep = clock, sleep
        self._rng = rng or random.Random()
        self.processor = processor or DataProcessor.from_settings(settings)
        self.symbol_map = symbol_map or SymbolMap(settings.symbol_map)
        self.catalog = catalog or MarketCatalog(exchange, settings, self.symbol_map)
        self._base_url = override_base(settings, exchange)
        self._breakers = {kind: CircuitBreaker(settings.circuit_failures, settings.circuit_cooldown)
                          for kind in (BOOK, TRADES)}
        self._book_limit = self.venue.book_limit(settings.book_depth)
        self.emit_interval = settings.book_emit_interval  # stretched under overload (coby.collector.load)
        self._emit = Callbacks(exchange, settings.reject_log_interval)
        self._resumed: list[Callable[[str, str, bool, bool], None]] = []
        if on_event is not None:
            self.add_data_callback(on_event)
        self._pool = FeedPool(exchange, self.venue, self.catalog, settings.max_connections_per_exchange,
                              client_factory, self._base_url, self._frame_failed)
        self._streams: dict[tuple[str, str], Stream] = {}
        self._held: set[Stream] = set()  # book streams holding a state back (book_emit_interval): the flusher's
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connected = self._stopped = False
        self._messages = self._reconnects = 0
        self._error: str | None = None
        self._counters = {BOOK: MESSAGES.labels(exchange, "book"), TRADES: MESSAGES.labels(exchange, "trade")}
        self._watchdog = Watchdog(exchange, settings, self.venue, self._streams, self._stalled, self._quiet,
                                  clock=clock, sleep=sleep)
        self._log = log.bind(exchange=exchange)

    # ------------------------------------------------------------ interface

    def add_data_callback(self, callback: Callback, lazy_books: bool = False) -> None:
        """Receive every OrderBookSnapshot, TradeEvent and ConnectionEvent (sync or async callable).
        With ``lazy_books`` books come as a :class:`~coby.pendingbook.PendingBook`, normalised only when
        the consumer resolves it; while any consumer takes snapshots, every book state is normalised."""
        self._emit.add(callback, lazy_books)

    def add_resume_callback(self, callback: Callable[[str, str, bool, bool], None]) -> None:
        """``callback(exchange, symbol, first, quiet)`` whenever a trade stream delivers again - its first
        trades (``first``), after a gap, or after quiet trades were resubscribed (``quiet``: maybe no gap) -
        just before those trades are emitted (the gap filler, :mod:`coby.collector.backfill`, waits for them)."""
        self._resumed.append(callback)

    async def connect(self) -> bool:
        """Start the venue's watchdog (and a market refresh if the cache is old); streams connect lazily."""
        if self._stopped:
            return False
        if not self._connected:
            self._connected = True
            self._spawn(self._watchdog.run(), "watchdog")
            if self.settings.book_emit_interval > 0:
                self._spawn(self._flusher(), "flusher")
            if self.catalog.needs_refresh(self.settings.symbols):
                self._spawn(self.catalog.refresh(), "markets")
            self._log.info("connector_started", base_url=self._base_url, markets=self.catalog.source)
        return True

    async def subscribe_orderbook(self, symbol: str) -> None:
        await self._subscribe(BOOK, symbol)

    async def subscribe_trades(self, symbol: str) -> None:
        await self._subscribe(TRADES, symbol)

    async def unsubscribe(self, symbol: str, reason: str) -> None:
        """Stop ``symbol``'s book and trade streams (another collector owns it now, coby.leases): their tasks
        cancelled, a ``disconnected`` event each if it was live, a feed left with no stream closed."""
        for kind in (BOOK, TRADES):
            st = self._streams.pop((kind, symbol), None)
            if st is None:
                continue
            self._held.discard(st)
            st.failed = reason  # _ended does not restart it
            if st.task is not None:
                st.task.cancel()
                await asyncio.gather(st.task, return_exceptions=True)
            if st in st.feed.streams:
                st.feed.streams.remove(st)
            if not st.feed.streams:
                self._pool.recycle(st.feed, TemporaryExchangeError(self.exchange, reason))
            if st.live:
                st.live = False
                await self._event(ConnectionEventKind.DISCONNECTED, symbol, f"{kind}: {reason}")

    async def disconnect(self) -> None:
        """Cancel and await every task, close every ccxt client. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        for st in self._streams.values():
            if st.live:
                st.live = False
                await self._event(ConnectionEventKind.DISCONNECTED, st.symbol, f"{st.kind}: stopped")
        await self._pool.aclose()
        CIRCUIT_OPEN.labels(self.exchange).set(0)
        self._log.info("connector_stopped")

    def get_connection_status(self) -> ConnectionStatus:
        """The venue's state from its streams (:func:`~coby.collector.feeds.venue_state`); its circuits per stream kind."""
        streams = [s for s in self._streams.values() if s.failed is None]
        state = ConnectionState.STOPPED if self._stopped else venue_state(streams, self._breakers)
        last = max((s.last_progress for s in self._streams.values()), default=float("-inf"))
        last_at = None if last == float("-inf") else \
            datetime.fromtimestamp(time.time() - (self._clock() - last), UTC)
        circuits = {kind: b.state.value for kind, b in self._breakers.items()}
        worst = next((c for c in (CircuitState.OPEN.value, CircuitState.HALF_OPEN.value) if c in circuits.values()),
                     CircuitState.CLOSED.value)
        return ConnectionStatus(self.exchange, state, last_at, self._messages, self._reconnects,
                                self.processor.reject_counts(self.exchange), worst, self._error, circuits)

    def latest_book(self, symbol: str) -> OrderBookSnapshot | None:
        """The last valid book emitted for ``symbol`` (None before the first)."""
        st = self._streams.get((BOOK, symbol))
        if st is None:
            return None
        book = st.book.resolve() if st.book is not None else None
        if book is not None:
            st.latest = book
        return st.latest

    # ------------------------------------------------------------- streams

    async def _subscribe(self, kind: str, symbol: str) -> None:
        if self._stopped:
            raise PermanentExchangeError(self.exchange, "connector is stopped")
        split_canonical(symbol)
        if (kind, symbol) in self._streams:
            return
        await self.connect()
        feed = self._pool.feed_for(symbol, kind)
        st = Stream(kind, symbol, self.symbol_map.unified(self.exchange, symbol), feed,
                     Backoff(self.settings.backoff_initial, self.settings.backoff_max, self._rng), self._clock())
        if kind == BOOK:
            st.book = PendingBook(self.exchange, symbol, self.processor.process_orderbook, self.settings.book_depth,
                                  self._book_valid)
        feed.streams.append(st)
        self._streams[(kind, symbol)] = st
        self._start(st)

    def _start(self, st: Stream, delay: float = 0.0) -> None:
        async def run() -> None:
            if delay:
                await self._sleep(delay)
            await self._run(st)

        st.task = self._spawn(run(), f"{st.kind}-{st.symbol}")
        st.task.add_done_callback(lambda task: self._ended(st, task))

    def _ended(self, st: Stream, task: asyncio.Task[Any]) -> None:
        """A stream loop only ends on disconnect() or a permanent error; anything else is a bug: log, restart."""
        if self._stopped or st.failed is not None:
            return
        error = None if task.cancelled() else task.exception()
        self._log.error("stream_died", stream=st.kind, symbol=st.symbol, error=repr(error))
        st.watching, st.interrupt = False, None
        self._start(st, st.backoff.next_delay())

    async def _run(self, st: Stream) -> None:
        with structlog.contextvars.bound_contextvars(exchange=self.exchange, symbol=st.symbol, stream=st.kind):
            while True:
                await self._gate(st)
                feed = st.feed
                st.gen, st.attempt_at, st.interrupt = feed.gen, self._clock(), None
                structlog.contextvars.bind_contextvars(feed=f"{feed.index}.{feed.gen}")  # client index.generation
                try:
                    client = self._pool.client(feed)
                    if st.kind == BOOK:
                        await self._books(st, client)
                    else:
                        await self._trades(st, client)
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if st.interrupt is not None and task is not None and task.cancelling():
                        task.uncancel()  # the watchdog / a recycle interrupted us: a failure, not a stop
                        err: ExchangeError = st.interrupt
                        if task.cancelling():
                            raise
                    elif task is None or task.cancelling():
                        raise
                    else:  # ccxt cancelled the future under us (its client was closed)
                        err = TemporaryExchangeError(self.exchange, "connection closed")
                except Exception as exc:  # noqa: BLE001 - every failure goes through the policy
                    err = translate_ccxt_error(self.exchange, exc)
                finally:
                    st.watching = False
                st.epoch += 1  # a book handed on before the failure is not resolved any more
                self._held.discard(st)  # a held-back state of a failed book is not worth emitting
                delay = await self._failed(st, err)
                if delay is None:
                    return
                if delay:
                    await self._sleep(delay)

    async def _books(self, st: Stream, ex: Any) -> None:
        watch, unified, limit, feed = ex.watch_order_book, st.unified, self._book_limit, st.feed
        clock = self._clock
        while True:
            st.watching = True
            raw = await watch(unified, limit)
            st.watching = False
            if feed.bad_books and (st.symbol in feed.bad_books or None in feed.bad_books):
                raise local_resync(self.exchange, "sequence gap detected by coby")
            key = (raw.get("nonce"), raw.get("timestamp"))
            if key == st.last_key and key != (None, None):
                continue  # resolved without a change (e.g. a skipped frame): not progress
            st.last_key = key
            if self.emit_interval:
                now = clock()
                if now < st.next_emit:  # held back: the flusher (or a later update) emits the newest state
                    st.raw = raw
                    self._held.add(st)
                    continue
                st.next_emit = now + self.emit_interval
            self._held.discard(st)
            await self._emit_book(st, raw)

    async def _emit_book(self, st: Stream, raw: Any) -> None:
        """Hand on the book's current state (a rejected state is not progress: the watchdog resyncs if it
        persists): as a PendingBook to lazy consumers, after the O(1) checks; normalised and validated
        in full only if a consumer takes snapshots (``coby.pendingbook``)."""
        pending, feed = st.book, st.feed
        assert pending is not None
        if not self.processor.check_top(raw, self.exchange, st.symbol):
            pending.invalidate()
            return
        pending.hand_on(raw, self.processor.clock(), (feed.gen, feed.torn, st.epoch))
        book = None
        if self._emit.eager:
            book = pending.resolve()
            if book is None:
                return
        self._messages += 1
        breaker = self._breakers[BOOK]
        if not st.live or breaker.failures or breaker.state is not CircuitState.CLOSED:
            await self._delivered(st)
        self._counters[BOOK].inc()
        await self._emit(pending if book is None else book, pending)
        st.last_progress = self._clock()

    def _book_valid(self, pending: PendingBook) -> bool:
        """Is the state ``pending`` refers to still whole (see coby.pendingbook)? Not after a failure of its
        stream, a recycle of its feed, a handler error on the feed, a sequence gap, or ccxt dropping it."""
        st = self._streams[(BOOK, pending.symbol)]
        feed = st.feed
        if (feed.gen, feed.torn, st.epoch) != pending.token:
            return False
        if feed.bad_books and (st.symbol in feed.bad_books or None in feed.bad_books):
            return False
        books = getattr(feed.client, "orderbooks", None)
        return books is None or books.get(st.unified) is pending.raw

    async def _flusher(self) -> None:
        """Emit book states held back by ``book_emit_interval`` once their interval is over."""
        interval = self.settings.book_emit_interval
        while True:
            await self._sleep(interval / 2.0)
            now = self._clock()
            for st in list(self._held):  # not every stream: most are never held back at real rates
                if st.watching and now >= st.next_emit and st.gen == st.feed.gen:
                    st.next_emit = now + self.emit_interval
                    self._held.discard(st)
                    await self._emit_book(st, st.raw)

    async def _trades(self, st: Stream, ex: Any) -> None:
        watch, process, unified = ex.watch_trades, self.processor.process_trades, st.unified
        breaker, counter = self._breakers[TRADES], self._counters[TRADES]
        while True:
            st.watching = True
            raws = await watch(unified)
            st.watching = False
            trades = process(raws, self.exchange, st.symbol)
            _drain_trades(ex, unified)
            self._messages += len(trades)
            if not st.live or breaker.failures or breaker.state is not CircuitState.CLOSED:
                await self._delivered(st)
            for trade in trades:
                counter.inc()
                await self._emit(trade)
            st.last_progress = self._clock()

    # ---------------------------------------------------------------- output

    async def _event(self, kind: ConnectionEventKind, symbol: str | None, detail: str) -> None:
        await self._emit(ConnectionEvent(self.exchange, symbol, utcnow(), kind.value, detail[:500]))

    def _spawn(self, coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        task.set_name(f"coby-{self.exchange}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _drain_trades(ex: Any, unified: str) -> None:
    """Empty ccxt's trade cache of ``unified`` once its new trades are read (before the next await, so no
    unread trade is in it): ccxt.pro keeps up to ``tradesLimit`` (1,000) trades per market, each with its
    raw message, only to hand them out again, which coby never asks for. Left full, it held 150-200 MB for
    100 markets, filling at each market's trade rate (an hour for a quiet one; docs/benchmarks.md, the soak).
    ``clear`` resets the cache's count of new trades with it."""
    cache = getattr(ex, "trades", {}).get(unified)
    if cache is not None:
        cache.clear()
