"""End to end: `coby run --simulate` in-process - ten venues x two symbols through unmodified ccxt.pro,
normalisation, the pipeline, aggregation, PostgreSQL and Redis. One daemon shared by the module."""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest
import pytest_asyncio

from coby.config import EXCHANGES
from coby.daemon import Daemon
from tests.conftest import REDIS_URL, make_settings

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
SYMBOLS = ("BTC-USDT", "ETH-USDT")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def daemon(pg_url, tmp_path_factory):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('trade_events')").fetchone()[0]:
            conn.execute("TRUNCATE order_book_snapshots, trade_events, heatmap_data, ohlcv_data, connection_events")
    settings = make_settings(tmp_path_factory.mktemp("e2e"), db_url=pg_url, redis_url=REDIS_URL, simulate=True,
                             simulator_port=0, api_port=0, flush_interval=0.2, heatmap_interval=1.0,
                             snapshot_interval=0.5, ohlcv_grace=0.5)
    d = Daemon(settings)
    await d.start()
    yield d
    await d.stop()


async def _counts(d: Daemon, table: str) -> dict[tuple[str, str], int]:
    rows = await d.storage.fetch(f"SELECT exchange, symbol, count(*) FROM {table} GROUP BY 1, 2", [])
    return {(r[0], r[1]): r[2] for r in rows}


async def _poll(check, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.5)


async def test_all_ten_venues_store_trades_and_books_within_30s(daemon):
    """Within 30 s of start, every venue x symbol has trades and book snapshots in PostgreSQL."""
    want = {(e, s) for e in EXCHANGES for s in SYMBOLS}

    async def done() -> bool:
        trades, books = await _counts(daemon, "trade_events"), await _counts(daemon, "order_book_snapshots")
        return want <= trades.keys() and want <= books.keys()

    await _poll(done, 30)
    events = await daemon.storage.get_connection_events()
    assert {e.exchange for e in events if e.event == "connected"} == set(EXCHANGES)


async def test_frozen_simulator_books_equal_the_true_books(daemon):
    """With the simulator frozen, every venue's latest book (top 20 levels; kraken: its depth of 10) equals
    the simulator's true book."""
    sim = daemon.simulator
    sim.freeze()
    try:
        async def equal() -> bool:
            for ex in EXCHANGES:
                for sym in SYMBOLS:
                    depth = 10 if ex == "kraken" else 20
                    book = daemon.connectors[ex].latest_book(sym)
                    if book is None:
                        return False
                    bids, asks = sim.true_book(ex, sym, depth)
                    got = ([(lv.price, lv.size) for lv in book.bids[:depth]],
                           [(lv.price, lv.size) for lv in book.asks[:depth]])
                    if got != ([tuple(b) for b in bids], [tuple(a) for a in asks]):
                        return False
            return True

        await _poll(equal, 20)
    finally:
        sim.unfreeze()


async def test_aggregates_flow_to_cache_and_storage(daemon):
    """The tick publishes consolidated books naming all ten venues; heatmaps and closed OHLCV bars
    (per venue and consolidated) are stored."""
    async def ready() -> bool:
        cons = await daemon.cache.get_latest("consolidated", "BTC-USDT")
        heat = await daemon.storage.fetch("SELECT count(*) FROM heatmap_data", [])
        bars = await daemon.storage.fetch("SELECT count(DISTINCT exchange) FROM ohlcv_data WHERE timeframe = '1s'", [])
        return bool(cons and len(cons["data"]["exchanges"]) == 10 and heat[0][0] > 0 and bars[0][0] == 11)

    await _poll(ready, 30)
    cons = await daemon.cache.get_latest("consolidated", "BTC-USDT")
    assert cons["channel"] == "consolidated:BTC-USDT" and cons["seq"] >= 1
    assert cons["data"]["best_bid"] < cons["data"]["best_ask"] or cons["data"]["crossed"]
