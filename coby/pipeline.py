"""The pipeline: where normalised events meet storage, the cache and the aggregation engine.

Connectors (live) or a replay session call ``on_event`` with ``TradeEvent``,
``OrderBookSnapshot`` and ``ConnectionEvent`` objects. For each:

- trade: stored; published on ``trades:{symbol}``; fed to the OHLCV builder;
- book: handed to the aggregation engine (O(1): it only keeps the reference); kept as the
  venue's latest in the cache and published on ``book:{exchange}:{symbol}`` at most once per
  ``book_publish_interval`` (the newest state; a held-back one goes out on the next tick); stored as a snapshot of the top
  ``snapshot_depth`` levels at most once per ``snapshot_interval`` per book;
- connection event: stored (gaps in the data are explicit) and reflected on ``status``.

Live, a connector hands a book on as a :class:`~coby.pendingbook.PendingBook` (ccxt's book, not yet
converted): the same cadences apply, but its levels are converted and validated only by a consumer that
needs them - the tick (the books handed on since the last tick, once each), a stored snapshot, a publish
with a subscriber (or Redis); with none, the cache keeps a maker and converts the book if it is read.

Every ``aggregate_interval`` the tick runs the engine over all books and publishes the
consolidated book, heatmap and metrics per symbol (the freshest books, top ``book_depth``
levels) - in parts of about ``TICK_PART_BOOKS`` books, the event loop running between them, with the
result of one pass; closes OHLCV bars whose time is up (stored, per venue and consolidated; the
consolidated ones also published on ``ohlcv:{symbol}:{timeframe}``, with the open bar re-published
when it changes) and stores again, and re-publishes, the closed bars that late trades were folded
into (``ohlcv_repair_window``; trades older than that are counted in ``/metrics`` and status). Stored heatmaps come from a second engine (the *recorder*) fed only the stored
snapshots, at epoch-aligned ``heatmap_interval`` boundaries: see ``_record``. Time comes from ``clock``: wall time live, the events'
own time in replay (``advance_to``), so replay produces the aggregates the live run did.

Throttles (book publishing, snapshot storage) measure intervals on ``monotonic``, coby's own
monotonic clock, live - never on a venue's timestamps, which may go backwards (binance's REST
book is stamped with local time, the WebSocket books after it with the venue's earlier time),
and never on the wall clock, which may be stepped. In a replay they run on the events' time. The
live engine likewise judges a book's staleness by its receive time (coby's clock), the recorder and
a replay by event time. Under overload ``coby.collector.load`` stretches the publish and tick intervals
(``slow_down``); trades and stored snapshots keep their cadence.

Envelopes (the API's wire format, see docs/api.md): ``{"channel", "type": "update", "seq",
"ts", "received", "data"}`` plus ``"replay": id`` on a replay session's bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from dataclasses import replace
from datetime import datetime
from functools import lru_cache
from typing import Any, Callable

import structlog

from coby.cache import MemoryCache
from coby.config import Settings
from coby.metrics import BOOK_MID, BOOK_SPREAD, IMBALANCE, NBBO_ASK, NBBO_BID, OHLCV_LATE, OHLCV_REPAIRED
from coby.models import ConnectionEvent, OHLCVBar, OrderBookSnapshot, TradeEvent, utc_from_ms
from coby.aggregate.ohlcv import OHLCVBuilder
from coby.aggregate.ohlcv_rebuild import rebuild_after_restart
from coby.pendingbook import PendingBook
from coby.publisher import Publisher

RECORD_GRACE = 2.0  # seconds past a heatmap boundary before its stored heatmap is computed
TICK_PART_BOOKS = 20  # books per part of a tick, between which the loop runs (bench/aggregate.py: <= 5 ms at 1000 levels)

log = structlog.get_logger("coby.pipeline")


class Pipeline:
    def __init__(self, settings: Settings, storage: Any, bus: MemoryCache, *, replay_id: str | None = None,
                 clock: Callable[[], float] = time.time, run_timers: bool = True,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.storage = storage  # None in replay: history is read, not written
        self.publisher = Publisher(bus, replay_id)
        self.clock = clock
        self.monotonic = monotonic  # live throttles; replay throttles on event time
        self.run_timers = run_timers
        self._last_stored: dict[tuple[str, str], float] = {}
        self._tasks: list[asyncio.Task] = []
        # live, staleness is read on coby's clock (receive times); in replay and the recorder, on event time
        self.engine = _make_engine(settings, "event" if replay_id is not None else "received")
        self.recorder = _make_engine(settings, "event")  # sees only the stored snapshots: see _record
        self.ohlcv = OHLCVBuilder(grace=settings.ohlcv_grace, repair_window=settings.ohlcv_repair_window,
                                  on_late=None if replay_id is not None else _count_late)
        self._pending_stored: list[OrderBookSnapshot] = []
        self._record_slot: int | None = None
        self._bar_sigs: dict[tuple[str, str], tuple] = {}
        self._last_published: dict[tuple[str, str], float] = {}
        self._dirty: dict[tuple[str, str], OrderBookSnapshot | PendingBook] = {}
        self._unresolved: dict[tuple[str, str], PendingBook] = {}  # live books the next tick converts
        self._good: dict[tuple[str, str], OrderBookSnapshot] = {}  # the last valid state of each live book
        self.replay = replay_id is not None
        self.statuses: dict[str, Any] = {}
        self.events = 0
        # the throttles' intervals: the settings', stretched under overload (coby.collector.load, slow_down)
        self.publish_interval = settings.book_publish_interval
        self.aggregate_interval = settings.aggregate_interval
        self.newest_books: dict[str, OrderBookSnapshot | PendingBook] = {}  # per venue: how far behind it is (coby.collector.load)
        self._rebuilt: set[tuple[str, str]] = set()  # markets whose bars were rebuilt after a restart

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.run_timers and not self.replay:  # the bars' first horizon now, before any trade: the bars before
            self.ohlcv.advance(utc_from_ms(self.clock() * 1000))  # it are an earlier process' (ohlcv_rebuild)
        if self.run_timers:
            self._tasks.append(asyncio.get_running_loop().create_task(self._ticker(), name="coby-aggregate"))

    async def aclose(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        # bars still open are stored as they are (upserted if they change after a restart)
        if self.storage is not None:
            for bar in self.ohlcv.open_bars():
                await self.storage.store_ohlcv(bar)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.aggregate_interval)
            try:
                await self.tick(self.clock())
            except Exception:  # noqa: BLE001 - a bad tick is logged; the next one runs
                log.exception("aggregate_tick_failed")

    # --- intake ---------------------------------------------------------------------------------
    async def on_event(self, event: Any) -> None:
        self.events += 1
        if type(event) is TradeEvent:  # most events: handled here, without one more call
            if self.storage is not None:
                await self.storage.store_trade(event)
            await self.publisher.publish(f"trades:{event.symbol}", event, event.timestamp, event.received_at)
            self.ohlcv.add(event)  # older than its open bar: repaired into its closed bars, or counted
        elif type(event) is PendingBook:  # live: a venue book, normalised when a consumer needs it
            await self._on_pending(event)
        elif isinstance(event, OrderBookSnapshot):
            await self._on_book(event)
        elif isinstance(event, ConnectionEvent):
            await self._on_connection_event(event)
        else:
            log.warning("pipeline_unknown_event", type=type(event).__name__)

    async def on_backfill(self, trades: list[TradeEvent]) -> None:
        """Trades a gap missed, recovered from the venue's history (:mod:`coby.collector.backfill`), oldest first:
        stored, published on ``trades:{symbol}`` with ``"backfill": true`` in the envelope, folded into
        their OHLCV bars (closed ones within ``ohlcv_repair_window`` are stored again by the next tick)."""
        for t in trades:
            if self.storage is not None:
                await self.storage.store_trade(t)
            await self.publisher.publish(f"trades:{t.symbol}", t, t.timestamp, t.received_at, backfill=True)
            self.ohlcv.add(t)

    async def rebuild_after_restart(self, exchange: str, symbol: str, lower_ms: int,
                                    order: Callable[[TradeEvent], Any]) -> int:
        """After a market's start fill: its bars of the downtime rebuilt from storage, the bars open across the
        restart given their earlier part - once per market (coby.aggregate.ohlcv_rebuild)."""
        if self.storage is None or (exchange, symbol) in self._rebuilt:
            return 0
        self._rebuilt.add((exchange, symbol))
        return await rebuild_after_restart(self.storage, self.ohlcv, exchange, symbol, lower_ms, order)

    async def _on_book(self, b: OrderBookSnapshot) -> None:
        key = (b.exchange, b.symbol)
        self.engine.update_book(b)
        self.newest_books[b.exchange] = b
        # The book channel carries at most one state per book_publish_interval (the newest; the
        # rest wait, marked dirty, for the next interval or tick): encoding 2 x book_depth levels
        # per venue update would cost more than ccxt's own parsing of it.
        t = b.timestamp.timestamp() if self.replay else self.monotonic()
        if t - self._last_published.get(key, float("-inf")) >= self.publish_interval:
            await self._publish_book(b, t)
        else:
            self._dirty[key] = b
        if self.storage is not None:
            if t - self._last_stored.get(key, float("-inf")) >= self.settings.snapshot_interval:
                self._last_stored[key] = t
                await self._store_snapshot(b)

    async def _store_snapshot(self, b: OrderBookSnapshot) -> None:
        await self.storage.store_orderbook(b)
        depth = self.settings.snapshot_depth  # what the table keeps, what a replay will read
        self._pending_stored.append(replace(b, bids=b.bids[:depth], asks=b.asks[:depth]))

    async def _on_pending(self, p: PendingBook) -> None:
        """A live venue book, handed on unconverted (``coby.pendingbook``): the same cadences as
        ``_on_book``, but its levels are converted and checked only by a consumer that needs them - the
        tick (once per tick), a stored snapshot, and a publish that someone subscribes to (else the
        cache converts it if it is read)."""
        key = (p.exchange, p.symbol)
        self._unresolved[key] = p
        self.newest_books[p.exchange] = p
        t = self.monotonic()
        if t - self._last_published.get(key, float("-inf")) >= self.publish_interval:
            await self._publish_book(p, t)
        else:
            self._dirty[key] = p
        if self.storage is not None and t - self._last_stored.get(key, float("-inf")) >= self.settings.snapshot_interval:
            b = p.resolve(self.settings.snapshot_depth)  # only the levels stored (the tick converts the rest)
            if b is not None:
                self._last_stored[key] = t
                await self._store_snapshot(b)

    def _resolved(self, p: PendingBook) -> OrderBookSnapshot | None:
        """``p``'s state, validated; None if rejected or no longer whole (the last good one stays in ``_good``)."""
        b = p.resolve()
        if b is not None:
            self._good[(p.exchange, p.symbol)] = b
        return b

    def slow_down(self, publish: float, aggregate: float) -> None:
        """Stretch the book publish and aggregation intervals by these factors (1, 1: the settings')."""
        self.publish_interval = self.settings.book_publish_interval * publish
        self.aggregate_interval = self.settings.aggregate_interval * aggregate

    async def _publish_book(self, item: OrderBookSnapshot | PendingBook, t: float) -> None:
        key = (item.exchange, item.symbol)
        self._last_published[key] = t
        self._dirty.pop(key, None)
        channel = f"book:{item.exchange}:{item.symbol}"
        if type(item) is PendingBook:
            if not self.publisher.bus.wants(channel):  # no subscriber, nothing shared: converted if read
                self.publisher.bus.keep_book_lazily(item.exchange, item.symbol, self._lazy_envelope(item, channel))
                return
            b = self._resolved(item)
            if b is None:
                return  # rejected or not whole: the channel keeps the last good state
        else:
            b = item
        await self.publisher.publish(channel, b, b.timestamp, b.received_at, book=key)

    def _lazy_envelope(self, p: PendingBook, channel: str) -> Callable[[], dict | None]:
        """The envelope of ``p``'s state (or the last good one), made when the cached book is first read."""
        made: list[dict | None] = []

        def make() -> dict | None:
            if not made:
                b = self._resolved(p) or self._good.get((p.exchange, p.symbol))
                made.append(None if b is None else self.publisher.envelope(channel, b, b.timestamp, b.received_at))
            return made[0]
        return make

    async def _on_connection_event(self, e: ConnectionEvent) -> None:
        if not self.replay:  # in the connector's task: its exchange, symbol, stream and feed are bound
            log.info("connection_event", exchange=e.exchange, symbol=e.symbol, kind=e.event, detail=e.detail)
        if self.storage is not None:
            await self.storage.store_connection_event(e)
        await self.publisher.publish("status", {"event": e, "exchanges": self.statuses}, e.timestamp, None,
                                     latest=("status", "*"))

    async def publish_status(self, statuses: dict[str, Any]) -> None:
        self.statuses = statuses
        await self.publisher.publish("status", {"exchanges": statuses}, None, None, latest=("status", "*"))

    # --- aggregation ----------------------------------------------------------------------------
    async def tick(self, now: float) -> None:
        """One aggregation tick at ``now`` (seconds since the epoch)."""
        ts = utc_from_ms(now * 1000)
        t = now if self.replay else self.monotonic()
        for b in list(self._dirty.values()):
            await self._publish_book(b, t)
        pending = list(self._unresolved.values())  # live books handed on since the last tick: converted once each
        self._unresolved.clear()
        for i, p in enumerate(pending):
            if i and not i % TICK_PART_BOOKS:
                await asyncio.sleep(0)  # the loop's turn between parts (see _tick_in_parts)
            b = self._resolved(p)
            if b is not None:
                self.engine.update_book(b)
        result = await self._tick_in_parts(self.engine, ts)
        if not self.replay:
            _export_market(result)
        for symbol, book in result.books.items():
            await self.publisher.publish(f"consolidated:{symbol}", book, ts, ts, latest=("consolidated", symbol))
            heatmap = result.heatmaps.get(symbol)
            if heatmap is not None:
                await self.publisher.publish(f"heatmap:{symbol}", heatmap, ts, ts, latest=("heatmap", symbol))
            metrics = {ex: m for (sym, ex), m in result.metrics.items() if sym == symbol}
            imbalance: dict[str, Any] = {ex: m for (sym, ex), m in result.venue_imbalances.items() if sym == symbol}
            if symbol in result.imbalances:
                imbalance["consolidated"] = result.imbalances[symbol]
            await self.publisher.publish(f"metrics:{symbol}", {"metrics": metrics, "imbalance": imbalance},
                                         ts, ts, latest=("metrics", symbol))
        await self._record(now)
        await asyncio.sleep(0)  # the bars in a step of their own: closing and publishing them costs 1-5 ms
        for bar in self.ohlcv.advance(ts):
            await self._publish_bar(bar)
        for bar in self.ohlcv.take_repaired():  # closed bars late trades changed: stored again (upsert)
            await self._publish_bar(bar, latest=False)
        for bar in self.ohlcv.open_bars(consolidated_only=True):
            if self._bar_changed(bar):
                await self._publish_bar(bar)

    async def _tick_in_parts(self, engine: Any, ts: datetime) -> Any:
        """``engine.tick(ts)`` in parts of about ``TICK_PART_BOOKS`` books (whole symbols), the event loop getting
        its turn between them (and after the last: publishing follows): in one piece a tick of 22 symbols x 10
        venues held the loop 25-57 ms. Each part is still one vectorised pass, and the result is the one
        pass's (the books are taken when it starts)."""
        plan = engine.plan(ts)
        for part in plan.parts(TICK_PART_BOOKS):
            engine.compute(plan, part)
            await asyncio.sleep(0)
        return engine.result(plan)

    async def _record(self, now: float) -> None:
        """Stored heatmaps: computed only from stored snapshots, at epoch-aligned ``heatmap_interval``
        boundaries, once event time is ``record_grace`` past the boundary - so a replay of the stored
        rows recomputes exactly the heatmaps stored live."""
        if self.storage is None:
            return
        interval = self.settings.heatmap_interval
        due = math.floor((now - RECORD_GRACE) / interval)
        if self._record_slot is None:
            self._record_slot = due
            return
        while self._record_slot < due:
            self._record_slot += 1
            boundary = self._record_slot * interval
            self._pending_stored.sort(key=lambda b: b.timestamp)
            i = 0
            while i < len(self._pending_stored) and self._pending_stored[i].timestamp.timestamp() <= boundary:
                self.recorder.update_book(self._pending_stored[i])
                i += 1
            del self._pending_stored[:i]
            result = await self._tick_in_parts(self.recorder, utc_from_ms(boundary * 1000))
            for heatmap in result.heatmaps.values():
                if heatmap.data:
                    await self.storage.store_heatmap(heatmap)

    def _bar_changed(self, bar: OHLCVBar) -> bool:
        key = (bar.symbol, bar.timeframe, bar.timestamp)
        sig = (bar.trade_count, bar.close, bar.high, bar.low)
        if self._bar_sigs.get((bar.symbol, bar.timeframe)) == (key, sig):
            return False
        self._bar_sigs[(bar.symbol, bar.timeframe)] = (key, sig)
        return True

    async def advance_to(self, ts: datetime) -> None:
        """Replay: run the aggregation tick at event time ``ts``."""
        await self.tick(ts.timestamp())

    async def _publish_bar(self, bar: OHLCVBar, latest: bool = True) -> None:
        """Publish a consolidated bar (a repaired one is re-sent, but is not the latest) and store a closed one."""
        if bar.exchange is None:  # the channel carries the consolidated bars; venues' bars are in storage
            await self.publisher.publish(f"ohlcv:{bar.symbol}:{bar.timeframe}", bar, bar.timestamp, None,
                                         latest=(f"ohlcv:{bar.timeframe}", bar.symbol) if latest else None)
        if bar.closed and self.storage is not None:
            await self.storage.store_ohlcv(bar)


def _export_market(result: Any) -> None:
    """The tick's figures as Prometheus gauges (live only; the market dashboard reads them)."""
    for (symbol, exchange), m in result.metrics.items():
        _gauge(BOOK_MID, exchange, symbol).set(m.mid_price)
        _gauge(BOOK_SPREAD, exchange, symbol).set(m.spread)
    for symbol, book in result.books.items():
        if book.best_bid is not None:
            _gauge(NBBO_BID, symbol).set(book.best_bid)
        if book.best_ask is not None:
            _gauge(NBBO_ASK, symbol).set(book.best_ask)
    for (symbol, exchange), imb in result.venue_imbalances.items():
        _gauge(IMBALANCE, exchange, symbol).set(imb.top_of_book)
    for symbol, imb in result.imbalances.items():
        _gauge(IMBALANCE, "consolidated", symbol).set(imb.top_of_book)


@lru_cache(maxsize=None)  # a gauge's child per label values, looked up once: labels() is most of a set's cost
def _gauge(gauge: Any, *labels: str) -> Any:
    return gauge.labels(*labels)


def _count_late(exchange: str, repaired: bool) -> None:
    """Live only: a replay meets no late trade (it merges stored trades in time order)."""
    (OHLCV_REPAIRED if repaired else OHLCV_LATE).labels(exchange).inc()


def _make_engine(settings: Settings, stale_by: str) -> Any:
    from coby.buckets import AggregationEngine
    from coby.aggregate.heatmap import HeatmapSeries
    return AggregationEngine.from_settings(settings, heatmaps=HeatmapSeries(store_interval=settings.heatmap_interval),
                                           stale_by=stale_by)
