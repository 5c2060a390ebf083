"""The REST API under /api/v1: latest state from the cache, history from storage, every parameter validated.

Latest-state routes answer with the envelope the pipeline stored last (the same one a
WebSocket client gets as its snapshot): ``{"ok": true, "channel", "seq", "ts",
"received", "data"}``. History routes page by keyset: ``next`` is an opaque cursor (the
key of the last row) to pass back as ``cursor=`` with the same query.

Validation lives in one place, ``coby.api.params``: every failure is an ``ApiError`` (status + one
line), which the error boundary in ``coby.http`` renders as ``{"ok": false, ...}``.
"""

from __future__ import annotations

import time
from collections import deque
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from coby import __version__
from coby.codec import to_dict
from coby.api.params import (DEFAULT_PAGE, MAX_DEPTH, TIMEFRAMES, ApiError, check_query, decode_cursor,
                             encode_cursor, float_param, int_param, json_response, order_param, parse_time,
                             time_range, valid_exchange, valid_symbol, valid_timeframe)
from coby.config import Settings
from coby.eventloop import running as running_loop
from coby.db.tables import CONSOLIDATED
from coby.api.heatmap_history import MAX_BUCKET, MIN_BUCKET, MAX_RANGE as HEATMAP_MAX_RANGE, column_step, heatmap_history
from coby.models import UTC, utcnow

DAEMON_KEY: web.AppKey[Any] = web.AppKey("daemon", object)
# --- helpers ----------------------------------------------------------------------------------
def _daemon(request: web.Request) -> Any:
    return request.app[DAEMON_KEY]


def _latest_response(env: Any, what: str, depth: int | None = None) -> web.Response:
    if not isinstance(env, dict) or "data" not in env:
        raise ApiError(404, f"no {what} yet")
    data = env["data"]
    if depth is not None and isinstance(data, dict):
        data = {**data, "bids": data.get("bids", [])[:depth], "asks": data.get("asks", [])[:depth]}
    return json_response({"ok": True, "channel": env.get("channel"), "seq": env.get("seq"), "ts": env.get("ts"),
                          "received": env.get("received"), "data": data})


def _page(rows: list, limit: int, key: Any) -> str | None:
    return encode_cursor(key(rows[-1])) if rows and len(rows) == limit else None


class FeedRates:
    """Messages per second per venue over the last ``window`` seconds, from the connectors' counters.

    ``coby.http``'s monitor samples the counters every second; a status request divides
    the count now by the oldest sample still in the window.
    """

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, dict[str, int]]] = deque()

    def sample(self, now: float, counts: dict[str, int]) -> None:
        self._samples.append((now, counts))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()

    def rate(self, exchange: str, messages: int, now: float) -> float | None:
        for t, counts in self._samples:
            if exchange in counts and now - t > 0.5:
                return round(max(0, messages - counts[exchange]) / (now - t), 2)
        return None


RATES_KEY: web.AppKey[FeedRates] = web.AppKey("rates", FeedRates)
CLIENT_COUNT_KEY: web.AppKey[Any] = web.AppKey("ws_client_count", object)


# --- routes -----------------------------------------------------------------------------------
async def status(request: web.Request) -> web.Response:
    """The daemon and each venue: state, age of the last message, messages/s, reconnects, rejects, circuits."""
    check_query(request, ())
    daemon = _daemon(request)
    rates = request.app[RATES_KEY]
    now_wall, now_mono = time.time(), time.monotonic()
    venues = {}
    ohlcv = daemon.pipeline.ohlcv if getattr(daemon, "pipeline", None) is not None else None
    backfill = daemon.backfill.status() if getattr(daemon, "backfill", None) is not None else {}
    for name, conn in daemon.connectors.items():
        st = conn.get_connection_status()
        last = st.last_message_at
        venues[name] = {
            "exchange": name,
            "state": getattr(st.state, "value", str(st.state)),
            "last_message_at": last,
            "age_s": round(now_wall - last.timestamp(), 3) if last is not None else None,
            "messages": st.messages,
            "messages_per_s": rates.rate(name, st.messages, now_mono),
            "reconnects": st.reconnects,
            "rejects": dict(st.rejects),
            "circuit": st.circuit,
            "circuits": dict(st.circuits),
            "error": st.error,
            "ohlcv_late_trades": ohlcv.late_by_exchange.get(name, 0) if ohlcv is not None else 0,
            "ohlcv_repaired_trades": ohlcv.repaired_by_exchange.get(name, 0) if ohlcv is not None else 0,
            "backfill": backfill.get(name),  # gaps closed / narrowed, trades recovered; null: not filled
        }
    storage, cache = daemon.storage, daemon.cache
    return json_response({
        "ok": True,
        "version": __version__,
        "uptime_s": round(now_wall - daemon.started_at, 1),
        "event_loop": running_loop(),  # uvloop or asyncio (the event_loop setting)
        "storage": _storage_status(storage),
        "cache": {"kind": cache.kind, "connected": cache.connected},
        "api": {"ws_clients": request.app[CLIENT_COUNT_KEY]()},
        "exchanges": venues,
        **({"load": daemon.load.status()} if getattr(daemon, "load", None) is not None else {}),
        **({"cluster": await daemon.cluster.status()} if getattr(daemon, "cluster", None) is not None else {}),
    })


def _storage_status(storage: Any) -> dict:
    buf = storage.buffer
    ok, why = storage.ready()
    return {"kind": storage.kind, "mode": storage.mode, "state": buf.state, "healthy": ok, "error": why,
            "pending_rows": buf.pending(), "journal_bytes": buf.journal_bytes(), "lost_rows": buf.lost_rows}


async def symbols(request: web.Request) -> web.Response:
    check_query(request, ())
    s = _daemon(request).settings
    return json_response({"ok": True, "symbols": list(s.symbols), "exchanges": list(s.exchanges),
                          "timeframes": list(TIMEFRAMES),
                          "bucket_sizes": {sym: s.bucket_size(sym) for sym in s.symbols}})


def _depth(request: web.Request, settings: Settings) -> int | None:
    return int_param(request, "depth", None, 1, max(MAX_DEPTH, settings.book_depth))


async def orderbook(request: web.Request) -> web.Response:
    check_query(request, ("depth",))
    daemon = _daemon(request)
    s = daemon.settings
    ex = valid_exchange(s, request.match_info["exchange"])
    sym = valid_symbol(s, request.match_info["symbol"])
    depth = _depth(request, s)
    return _latest_response(await daemon.cache.get_book(ex, sym), f"order book for {ex} {sym}", depth)


async def consolidated(request: web.Request) -> web.Response:
    check_query(request, ("depth",))
    daemon = _daemon(request)
    sym = valid_symbol(daemon.settings, request.match_info["symbol"])
    depth = _depth(request, daemon.settings)
    return _latest_response(await daemon.cache.get_latest("consolidated", sym), f"consolidated book for {sym}",
                            depth)


def _latest_route(kind: str, what: str) -> Any:
    async def handler(request: web.Request) -> web.Response:
        check_query(request, ())
        daemon = _daemon(request)
        sym = valid_symbol(daemon.settings, request.match_info["symbol"])
        return _latest_response(await daemon.cache.get_latest(kind, sym), f"{what} for {sym}")
    handler.__name__ = kind
    return handler


async def trades(request: web.Request) -> web.Response:
    check_query(request, ("exchange", "start", "end", "limit", "cursor", "order"))
    daemon = _daemon(request)
    s = daemon.settings
    sym = valid_symbol(s, request.match_info["symbol"])
    ex = valid_exchange(s, request.query["exchange"]) if "exchange" in request.query else None
    start, end = time_range(request, s)
    limit = int_param(request, "limit", min(DEFAULT_PAGE, s.api_max_page), 1, s.api_max_page)
    desc = order_param(request)
    after = decode_cursor(request, 4)
    rows = await daemon.storage.get_trades(sym, start, end, exchange=ex, limit=limit, after=after, newest_first=desc)
    return json_response({"ok": True, "symbol": sym, "exchange": ex, "start": start, "end": end, "count": len(rows),
                          "next": _page(rows, limit, lambda t: (t.timestamp, t.symbol, t.exchange, t.trade_id)),
                          "trades": to_dict(rows)})


async def ohlcv(request: web.Request) -> web.Response:
    check_query(request, ("timeframe", "exchange", "start", "end", "limit", "cursor"))
    daemon = _daemon(request)
    s = daemon.settings
    sym = valid_symbol(s, request.match_info["symbol"])
    tf = valid_timeframe(request.query.get("timeframe", "1m"))
    ex = valid_exchange(s, request.query["exchange"]) if "exchange" in request.query else None
    start, end = time_range(request, s)
    limit = int_param(request, "limit", min(DEFAULT_PAGE, s.api_max_page), 1, s.api_max_page)
    after = decode_cursor(request, 4)
    rows = await daemon.storage.get_ohlcv(sym, tf, start, end, exchange=ex, limit=limit, after=after)
    return json_response({"ok": True, "symbol": sym, "exchange": ex, "timeframe": tf, "start": start, "end": end,
                          "count": len(rows),
                          "next": _page(rows, limit, lambda b: (b.timestamp, b.symbol, b.exchange or CONSOLIDATED,
                                                                b.timeframe)),
                          "bars": to_dict(rows)})


async def orderbook_history(request: web.Request) -> web.Response:
    check_query(request, ("start", "end", "limit", "cursor", "order"))
    daemon = _daemon(request)
    s = daemon.settings
    ex = valid_exchange(s, request.match_info["exchange"])
    sym = valid_symbol(s, request.match_info["symbol"])
    start, end = time_range(request, s)
    limit = int_param(request, "limit", min(DEFAULT_PAGE, s.api_max_page), 1, s.api_max_page)
    desc = order_param(request)
    after = decode_cursor(request, 3)
    rows = await daemon.storage.get_snapshots(sym, start, end, exchange=ex, limit=limit, after=after,
                                              newest_first=desc)
    return json_response({"ok": True, "symbol": sym, "exchange": ex, "start": start, "end": end, "count": len(rows),
                          "next": _page(rows, limit, lambda b: (b.timestamp, b.symbol, b.exchange)),
                          "snapshots": to_dict(rows)})


async def heatmap_history_route(request: web.Request) -> web.Response:
    """Columns of the consolidated book in buckets of any width, from stored snapshots (coby.api.heatmap_history)."""
    check_query(request, ("start", "end", "bucket_size", "step"))
    daemon = _daemon(request)
    s = daemon.settings
    sym = valid_symbol(s, request.match_info["symbol"])
    q = request.query
    end = parse_time("end", q["end"]) if "end" in q else utcnow()
    try:
        start = parse_time("start", q["start"]) if "start" in q else end - timedelta(minutes=10)
    except OverflowError:  # an end within 10 minutes of year 1
        start = datetime.min.replace(tzinfo=UTC)
    if start >= end:
        raise ApiError(400, "start must be before end")
    if (end - start).total_seconds() > HEATMAP_MAX_RANGE:
        raise ApiError(400, f"time range too long: {(end - start).total_seconds():g} s > {HEATMAP_MAX_RANGE:g} s; "
                            "ask for shorter ranges")
    configured = s.bucket_size(sym)
    # any width: a column has at most one bucket per stored level whatever it is; prices are exact to 1e-9
    width = float_param(request, "bucket_size", MIN_BUCKET, MAX_BUCKET) or configured
    bucket = max(1, round(width * 1e9)) / 1e9
    step = column_step(start, end, float_param(request, "step", 0.5, HEATMAP_MAX_RANGE), s.snapshot_interval)
    columns = await heatmap_history(daemon.storage, sym, start, end, bucket_size=bucket, step=step,
                                    stale_after=s.stale_after)
    return json_response({"ok": True, "symbol": sym, "start": start, "end": end, "bucket_size": bucket,
                          "configured_bucket_size": configured, "step": step, "count": len(columns),
                          "columns": columns})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/api/v1/status", status)
    r.add_get("/api/v1/symbols", symbols)
    r.add_get("/api/v1/orderbook/{exchange}/{symbol}", orderbook)
    r.add_get("/api/v1/consolidated/{symbol}", consolidated)
    r.add_get("/api/v1/heatmap/{symbol}", _latest_route("heatmap", "heatmap"))
    r.add_get("/api/v1/heatmap/{symbol}/history", heatmap_history_route)
    r.add_get("/api/v1/metrics/{symbol}", _latest_route("metrics", "metrics"))
    r.add_get("/api/v1/trades/{symbol}", trades)
    r.add_get("/api/v1/ohlcv/{symbol}", ohlcv)
    r.add_get("/api/v1/history/orderbook/{exchange}/{symbol}", orderbook_history)
