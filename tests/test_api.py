"""The REST API through aiohttp's test client on the real app: real PostgreSQL/SQLite and Redis/in-process cache."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import jsonschema_rs
import pytest
from typer.testing import CliRunner

from coby.cli import app as cli_app
from coby.models import ConnectionState, utcnow
from tests.api_fixtures import (
    EXCHANGES, SYMBOLS, Host, Publisher, Venue, bar, book, consolidated, heatmap, metrics_data, open_test_cache,
    serving, trade, until,
)
from tests.conftest import make_settings


def settings(tmp_path, **kw):
    return make_settings(tmp_path, exchanges=EXCHANGES, symbols=SYMBOLS, **kw)


def venues():
    now = utcnow()
    return {"binance": Venue("binance", ConnectionState.CONNECTED, last_message_at=now - timedelta(seconds=2),
                             messages=1000, reconnects=2, rejects={"crossed_book": 3}),
            "okx": Venue("okx", ConnectionState.CIRCUIT_OPEN, messages=10, reconnects=5, circuit="open",
                         error="timeout")}


class Schemas:
    """Validates response bodies against the app's own OpenAPI document."""

    def __init__(self, doc):
        self.doc = doc
        self._cache = {}

    def check(self, path: str, status: int, body) -> None:
        op = self.doc["paths"][path]["get"]
        ref = op["responses"][str(status)]["content"]["application/json"]["schema"]
        key = ref.get("$ref", str(ref))
        if key not in self._cache:
            self._cache[key] = jsonschema_rs.validator_for({**ref, "components": self.doc["components"]},
                                                           validate_formats=True)
        errors = [e.message for e in self._cache[key].iter_errors(body)]
        assert not errors, (path, status, errors[:5])


async def get(client, url, status=200, schemas: Schemas | None = None, template: str | None = None, **kw):
    r = await client.get(url, **kw)
    body = await r.json()
    assert r.status == status, (url, r.status, body)
    if status >= 400 and not url.startswith("/ready"):  # /ready's 503 is its own body
        assert body["ok"] is False and body["status"] == status and body["error"], body
    if schemas is not None:
        schemas.check(template or url.split("?")[0], status, body)
    return body


async def test_health_ready_and_status(tmp_path, storage, cache):
    """/health is alive; /ready needs storage and a live venue; status gives each venue's state, age of its last
    message, messages/s, reconnects, rejects by reason, circuit state and trades left out of / repaired into
    OHLCV bars."""
    from coby.models import TradeEvent
    from coby.pipeline import Pipeline

    conns = venues()
    host = Host(settings(tmp_path), storage, cache, conns)
    host.pipeline = Pipeline(host.settings, None, cache, run_timers=False)
    now = utcnow()
    host.pipeline.ohlcv.advance(now - timedelta(minutes=5))  # started 5 minutes ago
    host.pipeline.ohlcv.advance(now)
    for minutes in (1, 1, 120):  # two within the repair window, one beyond it
        ts = now - timedelta(minutes=minutes)
        host.pipeline.ohlcv.add(TradeEvent("BTC-USDT", "binance", ts, 30000.0, 1.0, "buy", str(minutes), ts))
    async with serving(host) as client:
        doc = await get(client, "/api/v1/openapi.json")
        schemas = Schemas(doc)
        assert await get(client, "/health", schemas=schemas) == {"ok": True}
        ready = await get(client, "/ready", schemas=schemas)
        assert ready["ok"] and ready["storage"] and ready["live_exchanges"] == ["binance"]
        conns["binance"].status = conns["okx"].status
        ready = await get(client, "/ready", 503, schemas=schemas)
        assert ready == {"ok": False, "storage": True, "live_exchanges": []}
        conns.update(venues())

        async def rate_known():  # the monitor samples the counters every second
            conns["binance"].status = Venue("binance", ConnectionState.CONNECTED, last_message_at=utcnow(),
                                            messages=conns["binance"].status.messages + 50,
                                            reconnects=2, rejects={"crossed_book": 3}).status
            body = await get(client, "/api/v1/status", schemas=schemas)
            return body["exchanges"]["binance"]["messages_per_s"]
        await until(rate_known, "a messages/s figure")
        status = await get(client, "/api/v1/status", schemas=schemas)
        b, o = status["exchanges"]["binance"], status["exchanges"]["okx"]
        assert b["state"] == "connected" and 0 <= b["age_s"] < 60 and b["messages_per_s"] > 0
        assert b["reconnects"] == 2 and b["rejects"] == {"crossed_book": 3} and b["circuit"] == "closed"
        assert (b["ohlcv_late_trades"], b["ohlcv_repaired_trades"], o["ohlcv_late_trades"]) == (1, 2, 0)
        assert o["state"] == "circuit_open" and o["circuit"] == "open" and o["age_s"] is None and o["error"]
        assert status["storage"]["kind"] == storage.kind and status["cache"]["kind"] == cache.kind
        assert status["api"]["ws_clients"] == 0


async def test_symbols_and_latest_state_routes(tmp_path, pg, cache):
    """symbols lists the configuration; orderbook, consolidated, heatmap and metrics serve the latest stored
    envelope (404 before the first one), depth cuts both sides, unknown names are 404."""
    host = Host(settings(tmp_path), pg, cache, {})
    pub = Publisher(cache)
    async with serving(host) as client:
        schemas = Schemas(await get(client, "/api/v1/openapi.json"))
        sym = await get(client, "/api/v1/symbols", schemas=schemas)
        assert sym["symbols"] == ["BTC-USDT", "ETH-USDT"] and sym["exchanges"] == ["binance", "okx"]
        assert "1m" in sym["timeframes"]
        t_book = "/api/v1/orderbook/{exchange}/{symbol}"
        await get(client, "/api/v1/orderbook/binance/BTC-USDT", 404, schemas, t_book)
        await get(client, "/api/v1/consolidated/BTC-USDT", 404, schemas, "/api/v1/consolidated/{symbol}")

        ts = utcnow()
        await pub.publish("book:binance:BTC-USDT", book("binance", "BTC-USDT", 100.0, ts=ts), ts)
        last = await pub.publish("book:binance:BTC-USDT", book("binance", "BTC-USDT", 101.0, ts=ts), ts)
        await pub.publish("consolidated:BTC-USDT", consolidated("BTC-USDT"), ts)
        await pub.publish("heatmap:BTC-USDT", heatmap("BTC-USDT"), ts)
        await pub.publish("metrics:BTC-USDT", metrics_data("BTC-USDT"), ts)

        ob = await get(client, "/api/v1/orderbook/binance/BTC-USDT?depth=5", 200, schemas, t_book)
        assert ob["seq"] == 2 and ob["channel"] == "book:binance:BTC-USDT" and ob["received"] and ob["ts"]
        assert len(ob["data"]["bids"]) == 5 and len(ob["data"]["asks"]) == 5
        assert ob["data"]["bids"][0] == last["data"]["bids"][0] == [100.5, 1.0]  # levels are [price, size]
        full = await get(client, "/api/v1/orderbook/Binance/btc-usdt", 200, schemas, t_book)
        assert len(full["data"]["bids"]) == 20
        c = await get(client, "/api/v1/consolidated/BTC-USDT?depth=3", 200, schemas, "/api/v1/consolidated/{symbol}")
        assert len(c["data"]["asks"]) == 3 and c["data"]["best_ask_exchange"] == "okx"
        h = await get(client, "/api/v1/heatmap/BTC-USDT", 200, schemas, "/api/v1/heatmap/{symbol}")
        assert h["data"]["bucket_size"] == 10.0 and len(h["data"]["data"]) == 2
        m = await get(client, "/api/v1/metrics/BTC-USDT", 200, schemas, "/api/v1/metrics/{symbol}")
        assert set(m["data"]["metrics"]) == {"binance", "okx"}
        assert m["data"]["imbalance"]["consolidated"]["depth"] == {"0.001": 0.1, "0.01": -0.3}
        await get(client, "/api/v1/heatmap/ETH-USDT", 404, schemas, "/api/v1/heatmap/{symbol}")
        await get(client, "/api/v1/orderbook/kraken/BTC-USDT", 404, schemas, t_book)  # not configured
        await get(client, "/api/v1/orderbook/binance/DOGE-USDT", 404, schemas, t_book)


async def test_history_routes_page_through_storage(tmp_path, storage):
    """trades, ohlcv and history/orderbook read storage in [start, end), filtered, in key order, paged by a cursor
    that returns every row exactly once; order=desc gives the newest first."""
    cache = await open_test_cache("memory")
    host = Host(settings(tmp_path), storage, cache, {})
    t0 = utcnow().replace(microsecond=0) - timedelta(hours=1)
    await storage.store_trades([trade("BTC-USDT", ex, i, t0 + timedelta(seconds=i // 2))
                                for i in range(250) for ex in ("binance", "okx")])
    await storage.store_trades([trade("ETH-USDT", "binance", i, t0) for i in range(5)])
    for i in range(30):
        await storage.store_orderbook(book("okx", "BTC-USDT", 100.0 + i, ts=t0 + timedelta(seconds=i)))
    for i in range(12):
        await storage.store_ohlcv(bar("BTC-USDT", t0, i))
        await storage.store_ohlcv(bar("BTC-USDT", t0, i, exchange="binance"))
    await storage.flush()
    try:
        async with serving(host) as client:
            schemas = Schemas(await get(client, "/api/v1/openapi.json"))
            tt = "/api/v1/trades/{symbol}"
            seen, cursor, pages = [], None, 0
            while True:
                url = "/api/v1/trades/BTC-USDT?exchange=binance&limit=100" + (f"&cursor={cursor}" if cursor else "")
                page = await get(client, url, 200, schemas, tt)
                seen += [(t["timestamp"], t["trade_id"]) for t in page["trades"]]
                pages += 1
                cursor = page["next"]
                if cursor is None:
                    break
            assert pages == 3 and len(seen) == 250 == len(set(seen)) and seen == sorted(seen)
            all_ex = await get(client, "/api/v1/trades/BTC-USDT?limit=1000", 200, schemas, tt)
            assert all_ex["count"] == 500 and all_ex["next"] is None
            start, end = (t0 + timedelta(seconds=10)).isoformat(), (t0 + timedelta(seconds=20)).isoformat()
            window = await get(client, "/api/v1/trades/BTC-USDT", 200, schemas, tt,
                               params={"start": start, "end": end, "exchange": "okx", "order": "desc"})
            assert window["count"] == 20 and window["trades"][0]["timestamp"] > window["trades"][-1]["timestamp"]
            assert (await get(client, "/api/v1/trades/ETH-USDT", 200, schemas, tt))["count"] == 5

            th = "/api/v1/history/orderbook/{exchange}/{symbol}"
            p1 = await get(client, "/api/v1/history/orderbook/okx/BTC-USDT?limit=20", 200, schemas, th)
            p2 = await get(client, f"/api/v1/history/orderbook/okx/BTC-USDT?limit=20&cursor={p1['next']}", 200,
                           schemas, th)
            assert p1["count"] == 20 and p2["count"] == 10 and p2["next"] is None
            assert p2["snapshots"][0]["bids"][0] == [119.5, 1.0]
            assert (await get(client, "/api/v1/history/orderbook/binance/BTC-USDT", 200, schemas, th))["count"] == 0

            to = "/api/v1/ohlcv/{symbol}"
            cons = await get(client, "/api/v1/ohlcv/BTC-USDT?timeframe=1m&limit=5", 200, schemas, to)
            assert cons["count"] == 5 and cons["exchange"] is None and cons["bars"][0]["exchange"] is None
            rest = await get(client, f"/api/v1/ohlcv/BTC-USDT?timeframe=1m&cursor={cons['next']}", 200, schemas, to)
            assert rest["count"] == 7 and rest["next"] is None
            venue = await get(client, "/api/v1/ohlcv/BTC-USDT?exchange=binance", 200, schemas, to)
            assert venue["count"] == 12 and venue["bars"][0]["exchange"] == "binance"
            assert (await get(client, "/api/v1/ohlcv/BTC-USDT?timeframe=1h", 200, schemas, to))["count"] == 0
    finally:
        await cache.aclose()


BAD_REQUESTS = [
    ("/api/v1/orderbook/binance/BTC-USDT?depth=0", 400, "depth"),
    ("/api/v1/orderbook/binance/BTC-USDT?depth=ten", 400, "depth"),
    ("/api/v1/consolidated/BTC-USDT?depth=100000", 400, "depth"),
    ("/api/v1/trades/BTC-USDT?limit=1001", 400, "limit"),
    ("/api/v1/trades/BTC-USDT?limit=-1", 400, "limit"),
    ("/api/v1/trades/BTC-USDT?start=2024-01-02T00:00:00Z&end=2024-01-01T00:00:00Z", 400, "before"),
    ("/api/v1/trades/BTC-USDT?start=2024-01-01T00:00:00Z&end=2024-03-01T00:00:00Z", 400, "api_max_range_days"),
    ("/api/v1/trades/BTC-USDT?start=2020-01-01T00:00:00Z", 400, "too long"),
    ("/api/v1/trades/BTC-USDT?start=2024-05-01", 400, "RFC 3339"),
    ("/api/v1/trades/BTC-USDT?start=2024-05-01T00:00:00", 400, "RFC 3339"),  # no offset: ambiguous
    ("/api/v1/trades/BTC-USDT?start=yesterday", 400, "start"),
    ("/api/v1/trades/BTC-USDT?end=99999999999999999", 400, "end"),
    ("/api/v1/trades/BTC-USDT?exchange=ftx", 404, "exchange"),
    ("/api/v1/trades/BTC-USDT?order=sideways", 400, "order"),
    ("/api/v1/trades/BTC-USDT?cursor=not-a-cursor", 400, "cursor"),
    ("/api/v1/trades/BTC-USDT?limt=5", 400, "limt"),
    ("/api/v1/trades/BTC-USDT?limit=5&limit=6", 400, "more than once"),
    ("/api/v1/ohlcv/BTC-USDT?timeframe=7m", 400, "timeframe"),
    ("/api/v1/history/orderbook/binance/BTC-USDT?order=desc&cursor=W10", 400, "cursor"),
    ("/api/v1/heatmap/BTC-USDT?depth=5", 400, "depth"),
    ("/api/v1/trades/BTC%00USDT", 404, "symbol"),
    ("/api/v1/nothing", 404, "no route"),
]


@pytest.mark.parametrize("url, status, needle", BAD_REQUESTS)
async def test_every_parameter_is_validated(tmp_path, storage, url, status, needle):
    """A bad parameter is a 4xx {"ok": false, "error": ...} naming the problem, never a 5xx or a silent default."""
    cache = await open_test_cache("memory")
    try:
        async with serving(Host(settings(tmp_path), storage, cache, {})) as client:
            body = await get(client, url, status)
            assert needle in body["error"], body
    finally:
        await cache.aclose()


async def test_errors_are_json_and_storage_outage_is_503(tmp_path, storage):
    """Wrong method is a JSON 405; storage that fails a query is a JSON 503, not a 500."""
    cache = await open_test_cache("memory")
    try:
        async with serving(Host(settings(tmp_path), storage, cache, {})) as client:
            r = await client.post("/api/v1/symbols")
            assert r.status == 405 and (await r.json())["ok"] is False
            await storage.disconnect()
            body = await get(client, "/api/v1/trades/BTC-USDT", 503)
            assert body["error"] == "storage unavailable"
    finally:
        await cache.aclose()


@pytest.mark.parametrize("token", [None, "s3cret-token"])
async def test_bearer_token_on_and_off(tmp_path, pg, token):
    """With api_token set, every route but /health needs it (header; ?token= on a WebSocket upgrade); without
    it, everything is open."""
    cache = await open_test_cache("redis")
    host = Host(settings(tmp_path, api_token=token), pg, cache, {})
    routes = ["/api/v1/status", "/api/v1/symbols", "/metrics", "/api/v1/openapi.json", "/ready",
              "/api/v1/heatmap/BTC-USDT"]
    try:
        async with serving(host) as client:
            assert (await client.get("/health")).status == 200
            for route in routes:
                r = await client.get(route)
                if token:
                    assert r.status == 401, route
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
                    assert (await r.json())["error"] == "bearer token required"
                    bad = await client.get(route, headers={"Authorization": "Bearer nope"})
                    assert bad.status == 401
                    r = await client.get(route, headers={"Authorization": f"Bearer {token}"})
                assert r.status in (200, 404, 503), (route, r.status)
            if token:
                r = await client.get("/ws")
                assert r.status == 401
                async with client.ws_connect(f"/ws?token={token}") as ws:
                    await ws.send_json({"op": "ping"})
                    assert (await ws.receive_json(timeout=10))["type"] == "pong"
                async with client.ws_connect("/ws", headers={"Authorization": f"Bearer {token}"}) as ws:
                    await ws.send_json({"op": "ping"})
                    assert (await ws.receive_json(timeout=10))["type"] == "pong"
    finally:
        await cache.aclose()


async def test_cors_is_closed_by_default(tmp_path, pg):
    """No CORS headers and a refused preflight unless the origin is listed in api_cors_origins."""
    cache = await open_test_cache("memory")
    origin = {"Origin": "https://desk.example"}
    preflight = {**origin, "Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
    try:
        async with serving(Host(settings(tmp_path), pg, cache, {})) as client:
            r = await client.get("/api/v1/symbols", headers=origin)
            assert r.status == 200 and "Access-Control-Allow-Origin" not in r.headers
            assert (await client.options("/api/v1/symbols", headers=preflight)).status == 403
        async with serving(Host(settings(tmp_path, api_cors_origins="https://desk.example"), pg, cache, {})) as c2:
            r = await c2.get("/api/v1/symbols", headers=origin)
            assert r.headers["Access-Control-Allow-Origin"] == "https://desk.example"
            r = await c2.options("/api/v1/symbols", headers=preflight)
            assert r.status == 204 and "Authorization" in r.headers["Access-Control-Allow-Headers"]
            r = await c2.get("/api/v1/symbols", headers={"Origin": "https://other.example"})
            assert "Access-Control-Allow-Origin" not in r.headers
    finally:
        await cache.aclose()


async def test_metrics_exposes_the_operational_metrics(tmp_path, pg):
    """/metrics has messages, rejects, reconnects, book staleness, write latency and buffer depth, WebSocket
    clients, event-loop lag (measured by the app's own monitor task) and request counts."""
    cache = await open_test_cache("memory")
    try:
        async with serving(Host(settings(tmp_path), pg, cache, venues())) as client:
            await client.get("/api/v1/symbols")
            async with client.ws_connect("/ws"):
                async def lag_measured():
                    text = await (await client.get("/metrics")).text()
                    return "coby_ws_clients 1.0" in text and "coby_feed_age_seconds{exchange=\"binance\"}" in text
                await until(lag_measured, "the monitor's first sample")
            text = await (await client.get("/metrics")).text()
            for name in ("coby_messages_total", "coby_rejects_total", "coby_reconnects_total", "coby_book_age_seconds",
                         "coby_storage_flush_seconds", "coby_storage_buffer_rows", "coby_ws_clients",
                         "coby_event_loop_lag_seconds", "coby_ws_messages_sent_total", "coby_ws_disconnects_total"):
                assert f"# TYPE {name}" in text, name
            assert 'coby_http_requests_total{route="/api/v1/symbols",status="200"}' in text
    finally:
        await cache.aclose()


async def test_coby_status_prints_the_table(tmp_path, pg):
    """`coby status --url ... --token ...` prints one row per venue from a running daemon's API."""
    cache = await open_test_cache("memory")
    try:
        async with serving(Host(settings(tmp_path, api_token="tok"), pg, cache, venues())) as client:
            url = str(client.make_url("/")).rstrip("/")
            runner = CliRunner()
            r = await asyncio.to_thread(runner.invoke, cli_app, ["status", "--url", url, "--token", "tok"])
            assert r.exit_code == 0, r.output
            lines = r.output.splitlines()
            assert lines[0].split()[:3] == ["exchange", "state", "age_s"]
            row = next(line for line in lines if line.startswith("binance"))
            assert "connected" in row and "crossed_book=3" in row
            assert any(line.startswith("okx") and "circuit_open" in line for line in lines)
            r = await asyncio.to_thread(runner.invoke, cli_app, ["status", "--url", url])
            assert r.exit_code == 1 and "401" in r.output
    finally:
        await cache.aclose()
