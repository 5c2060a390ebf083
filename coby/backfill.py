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
between the two whose id was neither seen live nor stored is recovered.

Paging (:data:`PAGING`, one row per venue): ``since`` - forward by time from the lower end (binance);
``window`` - newest first within [lower, upper], backwards by time (coinbase); ``before_id`` - newest
first, backwards by trade id (okx's history-trades); ``latest`` - the latest page only, no paging
(bybit keeps the last 1000); kraken and bitfinex page forward by time, gate backwards by id. The outcome is **closed** when the fetched history reaches back to the
lower end (it holds that trade, or an older one), else **narrowed** with the reason: the venue keeps
too little history, the gap is longer than ``backfill_max_gap``, or the fetch failed.

Failure policy: the fill never touches the live streams. It runs on a ccxt client of its own (REST
only, ``enableRateLimit``), at most :data:`PER_VENUE` fills of a venue at once; a 429 (``RateLimited``)
waits - doubling from 1 s - and retries the same page, so the venue's limit slows the fill and never
reaches the live circuit breakers. Any other error ends the fill as ``narrowed``. Every task is owned
by :class:`Backfill` and cancelled by ``aclose()``.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog

from coby.ccxterrors import translate_ccxt_error
from coby.errors import RateLimited
from coby.metrics import BACKFILL_GAPS, BACKFILL_RATE_LIMITED, BACKFILL_TRADES
from coby.models import ConnectionEvent, ConnectionEventKind, TradeEvent, utc_from_ms, utcnow
from coby.venues import build_client, override_base

log = structlog.get_logger("coby.backfill")

PER_VENUE = 2  # fills of one venue at once
LIVE_IDS = 5_000  # trade ids remembered per market, to tell a fetched trade from one that came live
MAX_PAGES = 200  # a bound on one fill's requests, whatever the venue answers
RETRIES = 6  # 429s in a row on one page before the fill gives up (narrowed)
HAND_ON = 500  # fetched trades handed to the pipeline at once
CLOSED, NARROWED = "closed", "narrowed"


@dataclass(frozen=True, slots=True)
class Paging:
    mode: str  # since | window | before_id | latest
    limit: int  # the venue's largest page
    params: dict[str, Any] | None = None  # extra ccxt params (the method ccxt must call)
    cursor: str = "after"  # before_id: the parameter naming the id to page back from
    numbered: bool = True  # trade ids are numbers in trade order (bybit's are UUIDs)


# Venues not listed have no history coby can page through and dedupe by id: htx and kucoin serve the
# latest trades only, under ids their WebSocket does not use; mexc's aggTrades carry no id.
PAGING: dict[str, Paging] = {
    "binance": Paging("since", 1000),
    "okx": Paging("before_id", 100, {"method": "publicGetMarketHistoryTrades"}),
    "bybit": Paging("latest", 1000, numbered=False),
    "coinbase": Paging("window", 1000),
    "kraken": Paging("since", 1000),
    "bitfinex": Paging("since", 10_000),
    "gate": Paging("before_id", 1000, {"reverse": "true"}, cursor="last_id"),
}


@dataclass(frozen=True, slots=True)
class Mark:
    """One end of a gap: a trade's time (ms) and id."""

    ts: int
    id: str

    @classmethod
    def of(cls, t: TradeEvent) -> "Mark":
        return cls(round(t.timestamp.timestamp() * 1000), t.trade_id)


_STORED = object()  # the gap's lower end is the last stored trade (a daemon start)


class Backfill:
    """Fills the gaps of every attached connector's trade streams. See the module docstring."""

    def __init__(self, settings: Any, storage: Any, pipeline: Any, *,
                 client_factory: Callable[..., Any] = build_client) -> None:
        self.settings, self.storage, self.pipeline = settings, storage, pipeline
        self._factory = client_factory
        self._enabled = set(settings.exchanges) if "*" in settings.backfill else set(settings.backfill)
        self._connectors: dict[str, Any] = {}
        self._clients: dict[str, Any] = {}
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._last: dict[tuple[str, str], Mark] = {}
        self._live: dict[tuple[str, str], tuple[set[str], deque[str]]] = {}
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
            ids = self._live.get(key)
            if ids is None:
                ids = self._live[key] = (set(), deque())
            if len(ids[1]) >= LIVE_IDS:
                ids[0].discard(ids[1].popleft())
            ids[0].add(mark.id)
            ids[1].append(mark.id)
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
                try:
                    if lower is _STORED:
                        lower = await self._last_stored(exchange, symbol, upper)
                        if lower is None:
                            return  # nothing stored yet: no gap to fill
                    recovered, outcome, reason = await self._recover(exchange, symbol, lower, upper)
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
        seen = self._live.get((exchange, symbol), (set(), None))[0]
        skip = set(seen) | {lower.id} | await self._stored_ids(exchange, symbol, lower, upper)
        wanted = [r for r in raws if r.get("id") is not None and str(r["id"]) not in skip
                  and lower.ts <= r["timestamp"] <= upper.ts]
        trades = self._connectors[exchange].processor.process_trades(wanted, exchange, symbol) if wanted else []
        for t in trades:
            seen.add(t.trade_id)
        for i in range(0, len(trades), HAND_ON):  # in slices, the loop free between them: live data first
            await self.pipeline.on_backfill(trades[i:i + HAND_ON])
            await asyncio.sleep(0)
        return len(trades), CLOSED if reached and not reason else NARROWED, reason

    async def _fetch(self, exchange: str, symbol: str, lower: Mark, upper: Mark) -> tuple[list[dict], bool]:
        """The venue's trades from ``lower`` to ``upper`` as ccxt parses them; and whether they reach ``lower``."""
        paging = PAGING[exchange]
        unified = self._connectors[exchange].symbol_map.unified(exchange, symbol)
        params = dict(paging.params or {})
        got: dict[str, dict] = {}
        pages: list[list[dict]] = []

        def reached() -> bool:
            return lower.id in got or any(r["timestamp"] < lower.ts for r in got.values())

        cursor_ts, until = lower.ts, upper.ts
        cursor_id: str | None = None
        for _ in range(MAX_PAGES):
            if paging.mode == "since":
                page = await self._page(exchange, unified, cursor_ts, paging.limit, params)
            elif paging.mode == "window":
                page = await self._page(exchange, unified, lower.ts, paging.limit, {**params, "until": until + 1000})
            elif paging.mode == "before_id":
                page = await self._page(exchange, unified, None, paging.limit,
                                        {**params, paging.cursor: cursor_id} if cursor_id else params)
            else:
                page = await self._page(exchange, unified, None, paging.limit, params)
            new = [r for r in page if r.get("id") is not None and str(r["id"]) not in got]
            got.update((str(r["id"]), r) for r in new)
            pages.append(new)
            if not page or not new or len(page) < paging.limit or paging.mode == "latest":
                break
            if paging.mode == "since":
                last = max(r["timestamp"] for r in page)
                if last >= upper.ts:
                    break
                cursor_ts = last if last > cursor_ts else cursor_ts + 1
            else:
                oldest = min(page, key=lambda r: r["timestamp"])
                if reached() or oldest["timestamp"] < lower.ts:
                    break
                until, cursor_id = oldest["timestamp"], str(oldest["id"])
        # In trade order (trades of one millisecond too: OHLCV's open and close depend on it): by id where ids
        # are numbers; else ccxt's order, which sorts a page by time stably, keeping the venue's newest-first
        # order within a millisecond - undone by reversing (pages and trades) before a stable sort.
        ordered = [r for page in reversed(pages) for r in reversed(page)]
        if paging.numbered:
            ordered.sort(key=lambda r: (r["timestamp"], int(r["id"])))
        else:
            ordered.sort(key=lambda r: r["timestamp"])
        return ordered, reached()

    async def _page(self, exchange: str, unified: str, since: int | None, limit: int, params: dict) -> list[dict]:
        """One request; a 429 waits (doubling from 1 s) and asks again, so the venue's limit slows the fill."""
        client = self._client(exchange)
        delay = 1.0
        for attempt in range(RETRIES + 1):
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
        """The market's last stored trade before ``upper`` (what an earlier run received), or None."""
        if self.storage is None:
            return None
        try:  # an earlier run's journalled rows reach the database first (bounded: it may be down)
            await asyncio.wait_for(self.storage.flush(), 10.0)
        except Exception as exc:  # noqa: BLE001 - read what the database has
            log.info("backfill_flush_skipped", error=repr(exc)[:200])
        rows = await self.storage.get_trades(symbol, None, utc_from_ms(upper.ts), exchange=exchange, limit=1,
                                             newest_first=True)
        return Mark.of(rows[0]) if rows else None

    async def _stored_ids(self, exchange: str, symbol: str, lower: Mark, upper: Mark) -> set[str]:
        if self.storage is None:
            return set()
        rows = await self.storage.get_trades(symbol, utc_from_ms(lower.ts), utc_from_ms(upper.ts) +
                                             timedelta(milliseconds=1), exchange=exchange, limit=100_000)
        return {t.trade_id for t in rows}

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
