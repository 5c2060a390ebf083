"""The OpenAPI 3.1 document of the REST API, served at /api/v1/openapi.json.

Model schemas are derived from the dataclasses in ``coby.models`` (their type hints,
read the way ``coby.codec`` writes them), so the document cannot drift from the JSON
the API sends. The document is built per app from its settings: exchanges, symbols and
limits appear as enums and bounds. Every route the app serves is here (a test checks it): the
REST routes, the operations routes, ``/ws`` and the dashboard's files (described: OpenAPI has no
vocabulary for a WebSocket's messages; docs/api.md is their reference), and the replay routes,
which ``coby.api.replay_routes`` adds with ``Document.extend``.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from datetime import datetime
from typing import Any

from aiohttp import web

from coby import __version__, models
from coby.api.params import MAX_DEPTH, MAX_MS, TIMEFRAMES
from coby.codec import dumps
from coby.config import Settings
from coby.api.heatmap_history import (
    MAX_BUCKET as HEATMAP_MAX_BUCKET, MAX_COLUMNS as HEATMAP_MAX_COLUMNS, MAX_RANGE as HEATMAP_MAX_RANGE,
    MIN_BUCKET as HEATMAP_MIN_BUCKET,
)

REF = "#/components/schemas/"
EXPOSED = (models.PriceLevel, models.OrderBookSnapshot, models.TradeEvent, models.OrderBookMetrics,
           models.HeatmapPoint, models.HeatmapData, models.ImbalanceMetrics, models.ConsolidatedLevel,
           models.ConsolidatedOrderBook, models.OHLCVBar)


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return {"anyOf": [schema, {"type": "null"}]}
    t = schema["type"]
    return {**schema, "type": [*(t if isinstance(t, list) else [t]), "null"]}


def type_schema(hint: Any) -> dict[str, Any]:
    """JSON Schema of one type hint, as coby.codec encodes values of it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        schema = type_schema(inner[0]) if len(inner) == 1 else {"anyOf": [type_schema(a) for a in inner]}
        return _nullable(schema) if type(None) in args else schema
    if hint is datetime:
        return {"type": "string", "format": "date-time"}
    if hint is models.Levels:  # a book side: encoded as its levels, best first
        return {"type": "array", "items": {"$ref": REF + "PriceLevel"}}
    if hint is models.MergedLevels:  # a consolidated side: its levels, best first
        return {"type": "array", "items": {"$ref": REF + "ConsolidatedLevel"}}
    if hint is bool:
        return {"type": "boolean"}
    if hint is int:
        return {"type": "integer"}
    if hint is float:
        return {"type": "number"}
    if hint is str:
        return {"type": "string"}
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"type": "string", "enum": [m.value for m in hint]}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return {"$ref": REF + hint.__name__}
    if origin in (tuple, list):
        return {"type": "array", "items": type_schema(args[0]) if args else {}}
    if origin is dict:  # keys are strings in JSON (bucket prices, bands, venues)
        return {"type": "object", "additionalProperties": type_schema(args[1]) if args else {}}
    raise TypeError(f"no schema for {hint!r}")  # pragma: no cover - a new kind of field in models


def model_schema(cls: type) -> dict[str, Any]:
    if cls is models.PriceLevel:  # coby.codec encodes a level as a pair, for every venue
        return {"type": "array", "description": "A book level: [price, size].",
                "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    doc = (cls.__doc__ or "").strip().split("\n")[0]
    return {"type": "object", "description": doc, "required": [f.name for f in fields],
            "properties": {f.name: type_schema(hints[f.name]) for f in fields}}


def _obj(required: dict[str, Any], **optional: Any) -> dict[str, Any]:
    return {"type": "object", "required": list(required), "properties": {**required, **optional}}


def _ok() -> dict[str, Any]:
    return {"type": "boolean", "const": True}


def _latest(data: dict[str, Any]) -> dict[str, Any]:
    nullable_str = {"type": ["string", "null"]}
    return _obj({"ok": _ok(), "channel": {"type": ["string", "null"]}, "seq": {"type": ["integer", "null"]},
                 "ts": nullable_str, "received": nullable_str, "data": data})


def _history(items_key: str, item: str, **extra: Any) -> dict[str, Any]:
    ts = {"type": "string", "format": "date-time"}
    return _obj({"ok": _ok(), "symbol": {"type": "string"}, "exchange": {"type": ["string", "null"]}, **extra,
                 "start": ts, "end": ts, "count": {"type": "integer", "minimum": 0},
                 "next": {"type": ["string", "null"], "description": "cursor of the next page; null: last page"},
                 items_key: {"type": "array", "items": {"$ref": REF + item}}})


def _schemas() -> dict[str, Any]:
    out = {cls.__name__: model_schema(cls) for cls in EXPOSED}
    # coby.codec writes a book level as a pair for every venue; order counts (bitfinex) travel apart
    out["PriceLevel"] = {"type": "array", "description": "[price, size]",
                         "prefixItems": [{"type": "number"}, {"type": "number"}],
                         "minItems": 2, "maxItems": 2, "items": False}
    counts = {"type": "array", "items": {"type": ["integer", "null"]},
              "description": "order count per level, in the order of the levels; only from venues that send "
                             "counts (bitfinex)"}
    out["OrderBookSnapshot"]["properties"].update(bid_counts=counts, ask_counts=counts)
    out["Error"] = _obj({"ok": {"type": "boolean", "const": False}, "error": {"type": "string"},
                         "status": {"type": "integer"}},
                        request_id={"type": "string", "description": "the request's X-Request-ID (see info)"})
    venue = _obj({
        "exchange": {"type": "string"},
        "state": {"type": "string", "enum": [s.value for s in models.ConnectionState]},
        "last_message_at": {"type": ["string", "null"], "format": "date-time"},
        "age_s": {"type": ["number", "null"], "description": "seconds since the last message"},
        "messages": {"type": "integer"},
        "messages_per_s": {"type": ["number", "null"], "description": "over the last ~10 s; null at start-up"},
        "ohlcv_late_trades": {"type": "integer", "minimum": 0,
                              "description": "trades left out of OHLCV (older than their open bar, beyond "
                                             "ohlcv_repair_window); stored all the same"},
        "ohlcv_repaired_trades": {"type": "integer", "minimum": 0,
                                  "description": "trades older than their open bar folded into their closed bars"},
        "backfill": {"type": ["object", "null"], "additionalProperties": {"type": "integer", "minimum": 0},
                     "description": "gaps filled from the venue's REST history: closed, narrowed, and the trades "
                                    "recovered; null where the venue is not filled"},
        "reconnects": {"type": "integer"},
        "rejects": {"type": "object", "additionalProperties": {"type": "integer"},
                    "description": "items rejected by validation, by reason"},
        "circuit": {"type": "string", "description": "the worst of circuits"},
        "circuits": {"type": "object", "additionalProperties": {"type": "string"},
                     "description": "circuit breaker state per stream kind (book, trades)"},
        "error": {"type": ["string", "null"]},
    })
    out["VenueStatus"] = venue
    out["Status"] = _obj({
        "ok": _ok(), "version": {"type": "string"}, "uptime_s": {"type": "number"},
        "event_loop": {"type": "string", "enum": ["uvloop", "asyncio"],
                       "description": "the event loop the daemon runs on (setting event_loop)"},
        "storage": _obj({"kind": {"type": "string"}, "mode": {"type": "string"}, "healthy": {"type": "boolean"},
                         "pending_rows": {"type": "integer"}}),
        "cache": _obj({"kind": {"type": "string"}, "connected": {"type": "boolean"}}),
        "api": _obj({"ws_clients": {"type": "integer"}}),
        "exchanges": {"type": "object", "additionalProperties": {"$ref": REF + "VenueStatus"}},
    }, load=_obj({
        "state": {"type": "string", "enum": ["ok", "overloaded"]}, "overloaded": {"type": "boolean"},
        "reasons": {"type": "array", "items": {"type": "string"}, "description": "of the last second"},
        "degradation_level": {"type": "integer", "minimum": 0, "description": "0 normal; 1, 2: intervals "
                                                                              "stretched (docs/operations.md)"},
        "loop_lag_s": {"type": "number"}, "loop_lag_p99_s": {"type": "number", "description": "over a minute"},
        "rss_bytes": {"type": "integer"}, "write_backlog_rows": {"type": "integer"},
        "venues": {"type": "object", "additionalProperties": _obj({}, delivered_per_s={"type": ["number", "null"]},
                                                                   expected_per_s={"type": ["number", "null"]},
                                                                   delay_s={"type": ["number", "null"]})},
    }, cpu={"type": ["number", "null"], "description": "cores used by the process over 10 s"},
        slowdown={"type": "object", "additionalProperties": {"type": "number"}}),
        cluster={"type": "object", "description": "roles collector and api only (docs/scaling.md): this node, "
                                                  "every live collector's registration, each symbol's owner, "
                                                  "the symbols nobody owns",
                 "properties": {
                     "node": {"type": "object"},
                     "collectors": {"type": "array", "items": {"type": "object"}},
                     "owners": {"type": "object", "additionalProperties": {"type": ["string", "null"]}},
                     "uncovered": {"type": "array", "items": {"type": "string"}},
                     "refused": {"type": "array", "items": {"type": "string"},
                                 "description": "symbols a second collector claimed and refused"},
                     "covered": {"type": "integer"}, "symbols": {"type": "integer"},
                     "error": {"type": "string", "description": "Redis unreachable"}}})
    out["Symbols"] = _obj({"ok": _ok(), "symbols": {"type": "array", "items": {"type": "string"}},
                           "exchanges": {"type": "array", "items": {"type": "string"}},
                           "timeframes": {"type": "array", "items": {"type": "string"}}},
                          bucket_sizes={"type": "object", "additionalProperties": {"type": "number"},
                                        "description": "each symbol's configured bucket width"})
    out["MetricsData"] = _obj({
        "metrics": {"type": "object", "additionalProperties": {"$ref": REF + "OrderBookMetrics"},
                    "description": "per exchange"},
        "imbalance": {"type": "object", "additionalProperties": {"$ref": REF + "ImbalanceMetrics"},
                      "description": "per exchange, and 'consolidated'"}})
    out["LatestOrderBook"] = _latest({"$ref": REF + "OrderBookSnapshot"})
    out["LatestConsolidated"] = _latest({"$ref": REF + "ConsolidatedOrderBook"})
    out["LatestHeatmap"] = _latest({"$ref": REF + "HeatmapData"})
    out["LatestMetrics"] = _latest({"$ref": REF + "MetricsData"})
    out["TradesPage"] = _history("trades", "TradeEvent")
    out["OHLCVPage"] = _history("bars", "OHLCVBar", timeframe={"type": "string"})
    out["OrderBookHistoryPage"] = _history("snapshots", "OrderBookSnapshot")
    cell = {"type": "array", "description": "[bucket price, summed size, venues in the bucket]",
            "prefixItems": [{"type": "number"}, {"type": "number"}, {"type": "integer", "minimum": 0}],
            "minItems": 3, "maxItems": 3, "items": False}
    ts = {"type": "string", "format": "date-time"}
    price = {"type": ["number", "null"]}
    out["HeatmapColumn"] = _obj({"timestamp": ts, "bids": {"type": "array", "items": cell,
                                                           "description": "best (highest) first; key: lower edge"},
                                 "asks": {"type": "array", "items": cell,
                                          "description": "best (lowest) first; key: upper edge"},
                                 "best_bid": price, "best_ask": price})
    out["HeatmapHistory"] = _obj({"ok": _ok(), "symbol": {"type": "string"}, "start": ts, "end": ts,
                                  "bucket_size": {"type": "number"}, "configured_bucket_size": {"type": "number"},
                                  "step": {"type": "number", "description": "seconds per column"},
                                  "count": {"type": "integer", "minimum": 0},
                                  "columns": {"type": "array", "items": {"$ref": REF + "HeatmapColumn"}}})
    out["Health"] = _obj({"ok": _ok()})
    out["Ready"] = _obj({"ok": {"type": "boolean"}, "storage": {"type": "boolean"},
                         "live_exchanges": {"type": "array", "items": {"type": "string"}}},
                        overloaded={"type": "boolean"},
                        overload={"type": "array", "items": {"type": "string"}, "description": "why (coby.collector.load)"})
    return out


def _json(ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": REF + ref}}}}


WS_DESCRIPTION = """The live WebSocket (RFC 6455; JSON text frames). Send
`{"op": "subscribe", "channels": ["consolidated:BTC-USDT", "trades:BTC-USDT"]}` (also `unsubscribe`,
`ping`); channels `book:{exchange}:{symbol}`, `consolidated:{symbol}`, `heatmap:{symbol}`,
`metrics:{symbol}`, `trades:{symbol}`, `ohlcv:{symbol}:{timeframe}`, `status`. Each channel sends a
snapshot first, then envelopes `{"channel", "type": "update", "seq", "ts", "received", "data"}` with
per-channel sequence numbers. A client more than ws_queue_size trades behind is sent an `error` and
closed with code 4008; book-like channels coalesce to the latest state instead. A client that
reconnects (to any API node) adds `"resume": {"trades:BTC-USDT": <last seq received>}` to its subscribe:
it gets the messages it missed, then the live ones, with no gap - or first `{"channel", "type": "gap",
"from", "to"}` for those no longer kept. With api_token set,
pass it as `Authorization: Bearer` or `?token=`. Reference: docs/api.md."""


def ws_and_dashboard_paths(settings: Settings) -> dict[str, Any]:
    """/ws and the dashboard's files: what they are, the upgrade's refusals."""
    refused = {"400": _json("Error", "not a WebSocket upgrade request"),
               "401": _json("Error", "missing or wrong bearer token"),
               "403": _json("Error", "origin not allowed (api_cors_origins)"),
               "429": _json("Error", f"too many connections from one address (ws_max_connections_per_ip="
                                     f"{settings.ws_max_connections_per_ip})")}
    html = {"text/html": {"schema": {"type": "string"}}}
    return {
        "/ws": {"get": {"operationId": "websocket", "summary": "live data over a WebSocket",
                        "description": WS_DESCRIPTION,
                        "parameters": [{"name": "token", "in": "query", "required": False,
                                        "schema": {"type": "string"},
                                        "description": "the bearer token, for browsers (cannot set headers)"}],
                        "responses": {"101": {"description": "switching to the WebSocket protocol"}, **refused}}},
        "/": {"get": {"operationId": "dashboard", "summary": "the web dashboard (docs/dashboard.md)",
                      "security": [], "responses": {"200": {"description": "its page", "content": html}}}},
        "/static/{path}": {"get": {"operationId": "dashboard_file", "summary": "the dashboard's static files",
                                   "security": [],
                                   "parameters": [{"name": "path", "in": "path", "required": True,
                                                   "schema": {"type": "string"}}],
                                   "responses": {"200": {"description": "a file (script, style, image)"},
                                                 "404": _json("Error", "no such file")}}},
    }


def build_document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document for an app running with ``settings``."""
    symbol = {"name": "symbol", "in": "path", "required": True, "description": "canonical symbol",
              "schema": {"type": "string", "enum": list(settings.symbols)}}
    exchange_path = {"name": "exchange", "in": "path", "required": True,
                     "schema": {"type": "string", "enum": list(settings.exchanges)}}
    exchange_q = {"name": "exchange", "in": "query", "required": False,
                  "schema": {"type": "string", "enum": list(settings.exchanges)}}
    depth = {"name": "depth", "in": "query", "required": False, "description": "levels per side (default: all)",
             "schema": {"type": "integer", "minimum": 1, "maximum": max(MAX_DEPTH, settings.book_depth)}}
    t = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "integer", "minimum": 0, "maximum": MAX_MS}],
         "description": "RFC 3339 date-time with offset, or integer epoch milliseconds"}
    history = [
        {"name": "start", "in": "query", "required": False, "schema": t,
         "description": f"inclusive; default end - api_max_range_days ({settings.api_max_range_days:g})"},
        {"name": "end", "in": "query", "required": False, "schema": t, "description": "exclusive; default now"},
        {"name": "limit", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": settings.api_max_page}},
        {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"},
         "description": "the 'next' value of the previous page"},
    ]
    order = {"name": "order", "in": "query", "required": False, "schema": {"type": "string", "enum": ["asc", "desc"]}}
    timeframe = {"name": "timeframe", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": list(TIMEFRAMES), "default": "1m"}}
    errors = {"400": _json("Error", "invalid parameter"), "401": _json("Error", "missing or wrong bearer token")}
    not_found = {"404": _json("Error", "unknown exchange or symbol, or no state yet")}
    unavailable = {"503": _json("Error", "storage unavailable")}

    def get(summary: str, params: list, ok: str, *extra: dict, op: str) -> dict[str, Any]:
        responses: dict[str, Any] = {"200": _json(ok, summary), **errors}
        for e in extra:
            responses.update(e)
        return {"get": {"operationId": op, "summary": summary, "parameters": params, "responses": responses}}

    paths = {
        "/health": {"get": {"operationId": "health", "summary": "liveness (never needs the token)",
                            "responses": {"200": _json("Health", "alive")}}},
        "/ready": get("storage reachable and at least one venue live", [], "Ready",
                      {"503": _json("Ready", "not ready")}, op="ready"),
        "/metrics": {"get": {"operationId": "metrics", "summary": "Prometheus metrics",
                             "responses": {"200": {"description": "text exposition format",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}},
                                           **errors}}},
        "/api/v1/status": get("daemon and per-venue status", [], "Status", op="status"),
        "/api/v1/symbols": get("configured symbols, exchanges, timeframes and bucket sizes", [], "Symbols", op="symbols"),
        "/api/v1/orderbook/{exchange}/{symbol}": get("latest order book of one venue", [exchange_path, symbol, depth],
                                                     "LatestOrderBook", not_found, op="orderbook"),
        "/api/v1/consolidated/{symbol}": get("latest consolidated book", [symbol, depth], "LatestConsolidated",
                                             not_found, op="consolidated"),
        "/api/v1/heatmap/{symbol}": get("latest heatmap", [symbol], "LatestHeatmap", not_found, op="heatmap"),
        "/api/v1/heatmap/{symbol}/history": get(
            "the consolidated book in buckets of any width, one column per step, from stored snapshots",
            [symbol,
             {"name": "start", "in": "query", "required": False, "schema": t,
              "description": "inclusive; default end - 10 minutes"},
             {"name": "end", "in": "query", "required": False, "schema": t,
              "description": f"exclusive; default now; at most {HEATMAP_MAX_RANGE:g} s after start"},
             {"name": "bucket_size", "in": "query", "required": False,
              "schema": {"type": "number", "minimum": HEATMAP_MIN_BUCKET, "maximum": HEATMAP_MAX_BUCKET},
              "description": "bucket width in quote currency, rounded to 1e-9; default: the symbol's configured "
                             "bucket size"},
             {"name": "step", "in": "query", "required": False,
              "schema": {"type": "number", "minimum": 0.5, "maximum": HEATMAP_MAX_RANGE},
              "description": f"seconds per column; default snapshot_interval; widened to at most "
                             f"{HEATMAP_MAX_COLUMNS} columns"}],
            "HeatmapHistory", not_found, unavailable, op="heatmap_history"),
        "/api/v1/metrics/{symbol}": get("latest book metrics and imbalance", [symbol], "LatestMetrics", not_found,
                                        op="book_metrics"),
        "/api/v1/trades/{symbol}": get("stored trades, paged", [symbol, exchange_q, *history, order], "TradesPage",
                                       not_found, unavailable, op="trades"),
        "/api/v1/ohlcv/{symbol}": get("stored candles, paged (no exchange: consolidated)",
                                      [symbol, timeframe, exchange_q, *history], "OHLCVPage", not_found,
                                      unavailable, op="ohlcv"),
        "/api/v1/history/orderbook/{exchange}/{symbol}": get("stored book snapshots, paged",
                                                             [exchange_path, symbol, *history, order],
                                                             "OrderBookHistoryPage", not_found, unavailable,
                                                             op="orderbook_history"),
        "/api/v1/openapi.json": {"get": {"operationId": "openapi", "summary": "this document",
                                         "responses": {"200": {"description": "OpenAPI 3.1",
                                                               "content": {"application/json": {
                                                                   "schema": {"type": "object"}}}}, **errors}}},
        **ws_and_dashboard_paths(settings),
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "coby", "version": __version__,
                 "description": "Live and stored market data of coby. Errors are {\"ok\": false, \"error\": ..., "
                                "\"status\": N, \"request_id\": ...}. Every response carries X-Request-ID: the "
                                "client's own (letters, digits, ._:-, at most 128) or a new one; the daemon's log "
                                "lines about the request carry it as request_id. WebSocket protocol at /ws: see "
                                "docs/api.md."},
        "paths": paths,
        "components": {"schemas": _schemas(),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "required when COBY_API_TOKEN is set"}}},
        "security": [{"bearer": []}, {}],
    }


class Document:
    """An app's OpenAPI document: coby's routes, plus those other modules register with ``extend`` while
    the app is assembled (e.g. replay); rendered once, at the first request."""

    def __init__(self, settings: Settings) -> None:
        self.doc = build_document(settings)
        self._rendered: bytes | None = None

    def extend(self, paths: dict[str, Any], schemas: dict[str, Any] | None = None) -> None:
        """Add path items (and component schemas they ``$ref`` as ``#/components/schemas/NAME``)."""
        if self._rendered is not None:
            raise RuntimeError("the OpenAPI document has been served already: extend it while building the app")
        self.doc["paths"].update(paths)
        self.doc["components"]["schemas"].update(schemas or {})

    def render(self) -> bytes:
        if self._rendered is None:
            self._rendered = dumps(self.doc)
        return self._rendered


OPENAPI_KEY: web.AppKey[Document] = web.AppKey("openapi", Document)
