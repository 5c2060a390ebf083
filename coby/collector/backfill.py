"""Gap filling: after a trade stream's gap, fetch the trades it missed from the venue's REST history.

Data flow::

    connector events ─► Backfill.observe ─(gap over: first live trade)─► fill task (per venue: a semaphore)
        ccxt fetch_trades, paged the venue's way, enableRateLimit ─► normalise + validate (the connector's
        DataProcessor) ─► dedupe by trade id (live + stored) ─► Pipeline.on_backfill (store, publish with
        ``"backfill": true``, fold into OHLCV bars) ─► a ``gap_closed`` / ``gap_narrowed`` ConnectionEvent

When: whenever a trade stream delivers again (``ExchangeConnector.add_resume_callback``): its first
trades (a daemon start: the gap since the last stored trade), after every reconnect, resync, stall
recovery or circuit close, and after quiet trades were resubscribed (reported only if trades were
missed) - the next live trade of that market is the gap's upper end. The lower end is the last trade
seen live before the gap, or at a start the last trade stored for the market. Every trade stamped
between the two that was neither seen live nor stored is recovered: known by the venue's trade id, or -
kucoin, mexc, whose histories carry no id the WebSocket sends - by content, counted (coby.collector.backfill_paging).

Paging, per venue: :data:`coby.collector.backfill_paging.PAGING` (by time, by id, or the latest N only). The outcome is
**closed** when the fetched history reaches back to the lower end (it holds that trade, or an older one),
else **narrowed** with the reason: the venue keeps too little history (bybit spot serves its latest 60, kucoin
its last 100), the gap is longer than ``backfill_max_gap``, or the fetch failed. After a start fill, the
downtime's OHLCV bars are rebuilt from the stored trades (``Pipeline.rebuild_after_restart``).

Failure policy: the fill never touches the live streams. It runs on a ccxt client of its own (REST
only, ``enableRateLimit``), at most :data:`PER_VENUE` fills of a venue at once; a 429 (``RateLimited``)
waits - doubling from 1 s - and retries the same page, so the venue's limit slows the fill and never
reaches the live circuit breakers. Any other error ends the fill as ``narrowed``. While the daemon is
overloaded (coby.collector.load) no page is asked and no slice handed on. At a start with the database down, the fill
waits for it (the last stored trade is its lower end). Every task is owned by :class:`Backfill` and
cancelled by ``aclose()``.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import structlog

from coby.collector.backfill_paging import LIVE_IDS, PAGING, Mark, fetch, new_by_content
from coby.collector.ccxterrors import translate_ccxt_error
from coby.errors import RateLimited
from coby.metrics import BACKFILL_GAPS, BACKFILL_RATE_LIMITED, BACKFILL_TRADES
from coby.collector.normalize import INFO_TIME_NS, trade_ms
from coby.collector.recentkeys import RecentKeys
from coby.models import ConnectionEvent, ConnectionEventKind, TradeEvent, utc_from_ms, utcnow
from coby.collector.venues import build_client, override_base

log = structlog.get_logger("coby.backfill")

PER_VENUE = 2  # fills of one venue at once
RETRIES = 6  # 429s in a row on one page before the fill gives up (narrowed)
HAND_ON = 500  # fetched trades handed to the pipeline at once
STORAGE_RETRY, STORAGE_RETRY_MAX = 0.5, 5.0  # seconds between reads of the last stored trade while the DB is down
OVERLOAD_POLL = 0.5  # seconds between looks at the load governor while the daemon is overloaded
CLOSED, NARROWED = "closed", "narrowed"



def _before(raw: dict, upper: Mark, paging: Any) -> bool:
    """Made before the gap's upper end (the first live trade after it). Of that trade's millisecond, only those
    with a smaller id where ids count in trade order; none by content (kucoin, mexc): the rest of that
    millisecond may still be on its way live, and a fill that took them for missed would store them twice."""
    ts = raw["timestamp"]
    if ts != upper.ts:
        return ts < upper.ts
    if paging.by_content:
        return False
    if paging.numbered and str(raw["id"]).isdigit() and upper.id.isdigit():
        return int(raw["id"]) < int(upper.id)
    return True


_STORED = object()  # the gap's lower end is the last stored trade (a daemon start)


class Backfill:
    """Fills the gaps of every attached connector's trade streams. See the module docstring."""

    def __init__(self, settings: Any, storage: Any, pipeline: Any, *,
                 client_factory: Callable[..., Any] = build_client, load: Any = None) -> None:
        self.settings, self.storage, self.pipeline = settings, storage, pipeline
        # ids of live trades remembered per market: never more than the normaliser's (one knob for both)
        self._live_ids = min(LIVE_IDS, settings.trade_id_memory)
        self.load = load  # the daemon's LoadGovernor (coby.collector.load): while it says overloaded, no new page is asked
        self.paused = 0  # times a fill waited for an overload to pass
        self._factory = client_factory
        self._enabled = set(settings.exchanges) if "*" in settings.backfill else set(settings.backfill)
        self._connectors: dict[str, Any] = {}
        self._clients: dict[str, Any] = {}
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._last: dict[tuple[str, str], Mark] = {}
        self._live: dict[tuple[str, str], RecentKeys] = {}  # per market: live trade ids (by_content: fingerprints)
        self._waiting: dict[tuple[str, str], tuple[Any, bool]] = {}  # market -> (lower end: a Mark or _STORED, quiet)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.counts: dict[str, dict[str, int]] = {}
        self._closed = False

    def enabled(self, exchange: str) -> bool:
        return exchange in self._enabled and exchange in PAGING

    def attach(self, connector: Any) -> None:
        """Watch ``connector``'s events (its trades and trade-stream gaps) and fill its gaps."""
        if not self.enabled(connector.exchange):
            return
        self._connectors[connector.exchange] = connector
        self.counts[connector.exchange] = {CLOSED: 0, NARROWED: 0, "trades": 0}
        connector.add_data_callback(self.observe, lazy_books=True)  # books unused
        connector.add_resume_callback(self.resumed)

    def status(self) -> dict[str, dict[str, int]]:
        """Per venue: gaps closed, gaps narrowed, trades recovered."""
        return {ex: dict(c) for ex, c in self.counts.items()}

    # ------------------------------------------------------------------ intake (the connector's task)

    def observe(self, event: Any) -> None:
        """O(1) per trade: remember the last live trade and its id; start a fill when a gap is over."""
        if type(event) is TradeEvent:
            key = (event.exchange, event.symbol)
            mark = Mark.of(event)
            live = self._live.get(key)
            if live is None:
                live = self._live[key] = RecentKeys(self._live_ids)
            live.push(mark.fp if PAGING[event.exchange].by_content else mark.id)
            if key in self._waiting:
                lower, quiet = self._waiting[key]
                if lower is _STORED or mark.ts >= lower.ts:  # not an old trade resent on subscribe
                    del self._waiting[key]
                    self._spawn(self._fill(key, lower, mark, quiet))
            self._last[key] = mark

    def resumed(self, exchange: str, symbol: str, first: bool, quiet: bool) -> None:
        """A trade stream delivers again (the connector calls this before emitting those trades): its next
        trade is the upper end of a gap whose lower end is the last trade seen (at a start: the last stored)."""
        key = (exchange, symbol)
        self._waiting[key] = (_STORED if first else self._last.get(key, _STORED), quiet)

    def _spawn(self, coro: Any) -> None:
        if self._closed:
            coro.close()
            return
        # a context of its own: not the connector task's (its stream and feed are bound in it)
        task = asyncio.get_running_loop().create_task(coro, context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------------------------ a fill

    async def _fill(self, key: tuple[str, str], lower: Any, upper: Mark, quiet: bool = False) -> None:
        exchange, symbol = key
        limit = self._limits.setdefault(exchange, asyncio.Semaphore(PER_VENUE))
        async with limit:
            started = time.monotonic()
            with structlog.contextvars.bound_contextvars(exchange=exchange, symbol=symbol):
                start = lower is _STORED
                try:
                    if start:
                        lower = await self._last_stored(exchange, symbol, upper)
                        if lower is None:
                            return  # nothing stored yet: no gap to fill
                    recovered, outcome, reason = await self._recover(exchange, symbol, lower, upper)
                    if start:  # the downtime's bars, from the stored trades (an earlier process stored the rest)
                        await self._rebuild_bars(exchange, symbol, lower)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a fill that fails is reported, never fatal
                    log.exception("backfill_failed")
                    recovered, outcome, reason = 0, NARROWED, f"failed: {exc!r}"[:200]
            if quiet and outcome == CLOSED and not recovered:
                return  # quiet trades resubscribed, and nothing was missed: a quiet market, not a gap
            await self._report(exchange, symbol, lower, upper, recovered, outcome, reason,
                               time.monotonic() - started)

    async def _recover(self, exchange: str, symbol: str, lower: Mark, upper: Mark) -> tuple[int, str, str]:
        """Fetch, filter, normalise and hand on the trades of (lower, upper); (count, outcome, reason)."""
        reason = ""
        start = lower
        max_gap_ms = int(self.settings.backfill_max_gap * 1000)
        if upper.ts - lower.ts > max_gap_ms:
            start = Mark(upper.ts - max_gap_ms, "")
            reason = f"gap of {(upper.ts - lower.ts) / 1000:.0f}s is longer than backfill_max_gap"
        try:
            raws, reached = await self._fetch(exchange, symbol, start, upper)
        except RateLimited as exc:
            return 0, NARROWED, f"rate limited: {exc}"[:200]
        except Exception as exc:  # noqa: BLE001 - translated once, reported as the reason
            err = translate_ccxt_error(exchange, exc)
            return 0, NARROWED, f"fetch failed: {err}"[:200]
        if not reached and not reason:
            oldest = min((r["timestamp"] for r in raws if r.get("timestamp") is not None), default=None)
            reason = "the venue's history does not reach back to the last trade before the gap" + \
                (f" (it starts at {utc_from_ms(oldest).isoformat()})" if oldest is not None else "")
        live = self._live.setdefault((exchange, symbol), RecentKeys(self._live_ids))
        stored = await self._stored(exchange, symbol, lower, upper)
        raws = [r for r in raws if lower.ts <= r["timestamp"] and _before(r, upper, PAGING[exchange])]
        if PAGING[exchange].by_content:
            wanted = new_by_content(raws, live, stored)
        else:
            skip = {t.trade_id for t in stored} | {lower.id}
            wanted = [r for r in raws if r.get("id") is not None and str(r["id"]) not in skip
                      and str(r["id"]) not in live]
        processor = self._connectors[exchange].processor
        relost = processor.relost
        trades = processor.process_trades(wanted, exchange, symbol, recovered=True) if wanted else []
        if processor.relost > relost:  # validated live but never handed on (coby.collector.normalize.process_trades)
            log.warning("backfill_recovered_unsent_live_trades", trades=processor.relost - relost)
        for t in trades:
            live.push(Mark.of(t).fp if PAGING[exchange].by_content else t.trade_id)
        for i in range(0, len(trades), HAND_ON):  # in slices, the loop free between them: live data first
            await self._give_way()
            await self.pipeline.on_backfill(trades[i:i + HAND_ON])
            await asyncio.sleep(0)
        return len(trades), CLOSED if reached and not reason else NARROWED, reason

    async def _fetch(self, exchange: str, symbol: str, lower: Mark, upper: Mark) -> tuple[list[dict], bool]:
        unified = self._connectors[exchange].symbol_map.unified(exchange, symbol)

        async def page_of(since: int | None, limit: int, params: dict) -> list[dict]:
            page = await self._page(exchange, unified, since, limit, params)
            if exchange in INFO_TIME_NS:  # timed as coby times live trades (ccxt's float division may lose 1 ms)
                page = [{**r, "timestamp": trade_ms(r, exchange)} for r in page]
            return page
        return await fetch(page_of, PAGING[exchange], lower, upper)

    async def _page(self, exchange: str, unified: str, since: int | None, limit: int, params: dict) -> list[dict]:
        """One request; a 429 waits (doubling from 1 s) and asks again, so the venue's limit slows the fill."""
        client = self._client(exchange)
        delay = 1.0
        for attempt in range(RETRIES + 1):
            await self._give_way()
            try:
                return await client.fetch_trades(unified, since, limit, dict(params))
            except Exception as exc:  # noqa: BLE001 - translated once (ccxterrors)
                err = translate_ccxt_error(exchange, exc)
                if not isinstance(err, RateLimited) or attempt == RETRIES:
                    raise err from exc
                BACKFILL_RATE_LIMITED.labels(exchange).inc()
                log.info("backfill_rate_limited", retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _rebuild_bars(self, exchange: str, symbol: str, lower: Mark) -> None:
        numbered = PAGING[exchange].numbered

        def order(t: TradeEvent) -> tuple:
            return (t.timestamp, int(t.trade_id) if numbered and t.trade_id.isdigit() else 0)
        try:
            await self.pipeline.rebuild_after_restart(exchange, symbol, lower.ts, order)
        except Exception:  # noqa: BLE001 - the fill stands; the bars stay as they were
            log.exception("backfill_bars_failed")

    async def _give_way(self) -> None:
        """While the daemon is overloaded (coby.collector.load), wait: no page is asked, no slice handed on, until it is not."""
        if self.load is None or not self.load.overloaded:
            return
        self.paused += 1
        log.info("backfill_paused", reason="overloaded")
        while self.load.overloaded:
            await asyncio.sleep(OVERLOAD_POLL)
        log.info("backfill_resumed")

    def _client(self, exchange: str) -> Any:
        """The venue's REST client for fills (its own: a 429 on it never touches a live feed's client)."""
        client = self._clients.get(exchange)
        if client is None:
            conn = self._connectors[exchange]
            client = self._factory(exchange, conn.catalog.markets_for(self.settings.symbols),
                                   override_base(self.settings, exchange))
            client.enableRateLimit = True
            self._clients[exchange] = client
        return client

    # --------------------------------------------------------------------------------- storage

    async def _last_stored(self, exchange: str, symbol: str, upper: Mark) -> Mark | None:
        """The market's last stored trade before ``upper`` (what an earlier run received), or None. While the
        database is down (a daemon started without it), waits - retrying every ``STORAGE_RETRY`` doubling to
        ``STORAGE_RETRY_MAX`` seconds - until the earlier run's rows can be read: a fill needs its lower end."""
        if self.storage is None:
            return None
        delay, waiting = STORAGE_RETRY, False
        while True:
            try:  # an earlier run's journalled rows reach the database first
                await asyncio.wait_for(self.storage.flush(), 10.0)
                rows = await self.storage.get_trades(symbol, None, utc_from_ms(upper.ts), exchange=exchange,
                                                     limit=1, newest_first=True)
                break
            except Exception as exc:  # noqa: BLE001 - StorageUnavailable and the drivers' own: wait, ask again
                if not waiting:
                    log.warning("backfill_waiting_for_storage", error=repr(exc)[:200])
                    waiting = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, STORAGE_RETRY_MAX)
        if waiting:
            log.info("backfill_storage_back")
        return Mark.of(rows[0]) if rows else None

    async def _stored(self, exchange: str, symbol: str, lower: Mark, upper: Mark) -> list[TradeEvent]:
        """The market's stored trades of [lower, upper]."""
        if self.storage is None:
            return []
        return await self.storage.get_trades(symbol, utc_from_ms(lower.ts), utc_from_ms(upper.ts) +
                                             timedelta(milliseconds=1), exchange=exchange, limit=100_000)

    # ---------------------------------------------------------------------------------- output

    async def _report(self, exchange: str, symbol: str, lower: Mark, upper: Mark, recovered: int, outcome: str,
                      reason: str, seconds: float) -> None:
        counts = self.counts[exchange]
        counts[outcome] += 1
        counts["trades"] += recovered
        BACKFILL_GAPS.labels(exchange, outcome).inc()
        BACKFILL_TRADES.labels(exchange).inc(recovered)
        span = f"{utc_from_ms(lower.ts).isoformat()} to {utc_from_ms(upper.ts).isoformat()}"
        detail = f"trades: {recovered} recovered from {span}" + (f"; {reason}" if reason else "")
        kind = ConnectionEventKind.GAP_CLOSED if outcome == CLOSED else ConnectionEventKind.GAP_NARROWED
        log.info("backfill_done", outcome=outcome, recovered=recovered, reason=reason, seconds=round(seconds, 3))
        await self.pipeline.on_event(ConnectionEvent(exchange, symbol, utcnow(), kind.value, detail[:500]))

    async def aclose(self) -> None:
        """Cancel and await every fill, close the REST clients. Idempotent."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(asyncio.wait_for(c.close(), 10.0) for c in clients), return_exceptions=True)
