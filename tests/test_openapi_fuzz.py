"""Property-based fuzz of the OpenAPI document (schemathesis): the real app, real PostgreSQL and Redis, no 5xx,
every response as documented."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import urllib.request
from datetime import timedelta

import pytest
import redis.asyncio as aioredis
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from coby.cache import RedisCache
from coby.config import Settings
from coby.db import open_storage
from coby.http import create_app
from coby.api.openapi import build_document
from coby.models import ConnectionState, utcnow
from tests.api_fixtures import (
    EXCHANGES, SYMBOLS, Host, Publisher, Venue, bar, book, consolidated, heatmap, metrics_data, trade,
)
from tests.conftest import REDIS_URL, TABLES, make_settings


class ThreadedApi:
    """The app served on a free port from a thread with its own event loop (schemathesis calls it with
    blocking requests), over storage and a cache that hold some data, so 200s are fuzzed as well as 4xx."""

    def __init__(self, pg_url: str, data_dir) -> None:
        self.pg_url = pg_url
        self.data_dir = data_dir
        self.port = 0
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="coby-fuzz-api")

    def __enter__(self) -> "ThreadedApi":
        self._thread.start()
        if not self.ready.wait(60) or self.error:
            raise RuntimeError(f"the API did not start: {self.error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # noqa: BLE001 - reported to the test through __enter__
            self.error = e
            self.ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        s = make_settings(self.data_dir, db_url=self.pg_url, exchanges=EXCHANGES, symbols=SYMBOLS)
        storage = open_storage(s, self.pg_url)
        await storage.start()
        await storage.fetch(f"TRUNCATE {', '.join(TABLES)}", [])
        r = aioredis.from_url(REDIS_URL)
        await r.flushdb()
        await r.aclose()
        cache = RedisCache(REDIS_URL, interval=0.01)
        await cache.start()
        runner = None
        try:
            await self._fill(storage, cache)
            venues = {"binance": Venue("binance", ConnectionState.CONNECTED, last_message_at=utcnow(), messages=5),
                      "okx": Venue("okx", ConnectionState.STALE, rejects={"stale": 1})}
            runner = web.AppRunner(create_app(Host(s, storage, cache, venues)), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.ready.set()
            await self._stop.wait()
        finally:
            if runner is not None:
                await runner.cleanup()
            await cache.aclose()
            await storage.aclose()

    @staticmethod
    async def _fill(storage, cache) -> None:
        now = utcnow()
        t0 = now - timedelta(hours=2)
        await storage.store_trades([trade("BTC-USDT", ex, i, t0 + timedelta(seconds=i)) for i in range(300)
                                    for ex in ("binance", "okx")])
        for i in range(50):
            await storage.store_orderbook(book("binance", "BTC-USDT", 100.0 + i, ts=t0 + timedelta(seconds=i)))
            await storage.store_ohlcv(bar("BTC-USDT", t0, i))
        await storage.flush()
        pub = Publisher(cache)  # BTC-USDT has every latest state; ETH-USDT has none (404s)
        await pub.publish("book:binance:BTC-USDT", book("binance", "BTC-USDT"), now)
        await pub.publish("consolidated:BTC-USDT", consolidated("BTC-USDT"), now)
        await pub.publish("heatmap:BTC-USDT", heatmap("BTC-USDT"), now)
        await pub.publish("metrics:BTC-USDT", metrics_data("BTC-USDT"), now)


@pytest.fixture(scope="module")
def live_api(pg_url, tmp_path_factory):
    with ThreadedApi(pg_url, tmp_path_factory.mktemp("fuzz")) as api:
        yield f"http://127.0.0.1:{api.port}"


# Built here, at collection, from the settings the server runs with (schemathesis' lazy from_fixture relies on
# a pytest internal that pytest 9 removed); test_the_served_document_is_the_fuzzed_one ties the two together.
SETTINGS = Settings.load(env={}, exchanges=EXCHANGES, symbols=SYMBOLS)
# /ws and the dashboard's files are described, not fuzzable: a WebSocket handshake and static files
schema = schemathesis.openapi.from_dict(build_document(SETTINGS)).exclude(path_regex="^/ws$|^/$|^/static/")


def test_the_served_document_is_the_fuzzed_one(live_api):
    """/api/v1/openapi.json serves exactly the document fuzzed below."""
    with urllib.request.urlopen(f"{live_api}/api/v1/openapi.json", timeout=10) as r:
        assert json.loads(r.read()) == json.loads(json.dumps(build_document(SETTINGS)))


# What the document cannot say (a cursor is a value the server issued; start before end; at most
# api_max_range_days): a schema-valid request may be refused for these reasons, and for no other.
CROSS_PARAMETER_RULES = ("invalid cursor", "start must be before end", "time range too long")


def valid_requests_refused_only_by_cross_parameter_rules(ctx, response, case) -> None:
    if case.meta is None or not case.meta.generation.mode.is_positive or response.status_code != 400:
        return None
    error = response.json()["error"]
    assert error.startswith(CROSS_PARAMETER_RULES), f"a schema-valid request was refused: {error}"
    return None


@schema.parametrize()
@settings(max_examples=int(os.environ.get("COBY_FUZZ_EXAMPLES", "60")), deadline=None,
          suppress_health_check=list(HealthCheck))
def test_no_5xx_and_responses_as_documented(case, live_api):
    """Generated requests (valid and invalid) never get a 5xx, every response matches the document, invalid
    requests are refused, and valid ones are refused only by the cross-parameter rules above."""
    case.call_and_validate(base_url=live_api,
                           excluded_checks=[positive_data_acceptance],
                           additional_checks=[valid_requests_refused_only_by_cross_parameter_rules])
