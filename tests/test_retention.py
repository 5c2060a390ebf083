"""Retention in every storage mode: old rows go, recent ones stay, writes go on meanwhile."""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace
from datetime import timedelta

import psycopg
import pytest

from coby.config import Settings
from coby.db import open_storage
from coby.db.migrations import CREATE_TABLE, load_migrations
from coby.db.retention import Retention
from coby.db.tables import CONNECTION_EVENTS, HEATMAP, OHLCV, SNAPSHOTS, TRADES
from coby.db.timescale import setup_timescale
from coby.models import ConnectionEvent, utcnow
from tests.api_fixtures import bar, book, heatmap, trade
from tests.conftest import make_settings

DAY = timedelta(days=1)


def test_sqlite_is_bounded_by_default_and_postgresql_keeps_all():
    """Unset, SQLite keeps 7 days (book snapshots 2) and PostgreSQL everything; set, both obey the settings,
    snapshots following retention_days unless snapshot_retention_days is given."""
    s = Settings.load(env={})
    assert s.retention(sqlite=True) == (7.0, 2.0)
    assert s.retention(sqlite=False) == (0.0, 0.0)
    s = Settings.load(env={"COBY_RETENTION_DAYS": "30"})
    assert s.retention(sqlite=True) == (30.0, 30.0) == s.retention(sqlite=False)
    s = Settings.load(env={"COBY_RETENTION_DAYS": "0", "COBY_SNAPSHOT_RETENTION_DAYS": "1"})
    assert s.retention(sqlite=True) == (0.0, 1.0)


async def test_old_rows_are_deleted_in_batches_while_writes_go_on(db_url, tmp_path):
    """retention_days=5, snapshot_retention_days=1, batches of 7 rows: a pass deletes every row of every table
    older than its window (snapshots of 3 days ago too, trades of 3 days ago not), counts them, and the
    trades written meanwhile through the write path are all stored."""
    settings = make_settings(tmp_path, db_url=db_url, retention_days=5, snapshot_retention_days=1,
                             retention_batch=7)
    storage = open_storage(settings, db_url)
    await storage.start()
    try:
        now = utcnow()
        for age, n in ((10 * DAY, 40), (3 * DAY, 20), (timedelta(minutes=1), 5)):
            ts = now - age
            await storage.store_trades([trade("RET-USDT", "binance", int(age.total_seconds()) + i,
                                              ts + timedelta(milliseconds=i)) for i in range(n)])
            for i in range(n):
                await storage.store_orderbook(book("binance", "RET-USDT", ts=ts + timedelta(seconds=i)))
                await storage.store_ohlcv(bar("RET-USDT", ts, i, exchange="binance"))
                await storage.store_heatmap(heatmap("RET-USDT", ts + timedelta(seconds=i)))
                await storage.store_connection_event(ConnectionEvent("binance", "RET-USDT", ts + timedelta(seconds=i),
                                                                     "connected", "book"))
        await storage.flush()

        async def keep_writing() -> int:
            written = 0
            while True:
                await storage.store_trades([trade("LIVE-USDT", "okx", written + i) for i in range(50)])
                written += 50
                await asyncio.sleep(0.01)

        writer = asyncio.create_task(keep_writing())
        try:
            deleted = await Retention(storage).run_once()
        finally:
            writer.cancel()
        await storage.flush()

        assert deleted == {TRADES.name: 40, SNAPSHOTS.name: 60, OHLCV.name: 40, HEATMAP.name: 80,
                           CONNECTION_EVENTS.name: 40}
        assert len(await storage.rows(TRADES, None, None, symbols=["RET-USDT"])) == 25
        assert all(now - t.timestamp < 5 * DAY for t in await storage.get_trades("RET-USDT"))
        assert len(await storage.get_snapshots("RET-USDT")) == 5
        assert len(await storage.rows(OHLCV, None, None, symbols=["RET-USDT"])) == 25
        live = await storage.rows(TRADES, None, None, symbols=["LIVE-USDT"], limit=100_000)
        assert len(live) >= 50 and len(live) % 50 == 0  # every batch accepted meanwhile is stored
        assert await Retention(storage).run_once() == {t: 0 for t in deleted}  # nothing left to do
    finally:
        await storage.aclose()


async def test_a_running_daemon_deletes_old_rows_while_it_writes(tmp_path):
    """A daemon (simulated binance, SQLite with its default bound: 7 days, snapshots 2) owns the retention
    task; a pass run while its feeds write deletes the rows older than the windows, keeps the live ones,
    and the daemon goes on storing; stop cancels the task."""
    from coby.daemon import Daemon
    from tests.api_fixtures import until
    from tests.conftest import free_port
    d = Daemon(make_settings(tmp_path, exchanges="binance", symbols="BTC-USDT", simulate=True, simulator_port=0,
                             api_port=free_port()))
    await d.start()
    try:
        assert d.retention.task is not None and not d.retention.task.done() and d.retention.applies
        st, now = d.storage, utcnow()
        await st.store_trades([trade("BTC-USDT", "binance", i, now - 8 * DAY + timedelta(seconds=i))
                               for i in range(30)])
        for i in range(30):
            await st.store_orderbook(book("binance", "BTC-USDT", ts=now - 3 * DAY + timedelta(seconds=i)))

        async def live_trades() -> int:
            return len(await st.rows(TRADES, now - DAY, None, limit=100_000))

        async def some_live() -> bool:
            return await live_trades() >= 10

        await until(some_live, "live trades stored")
        before = await live_trades()
        deleted = await d.retention.run_once()
        assert deleted[TRADES.name] == 30 and deleted[SNAPSHOTS.name] == 30
        assert await st.rows(TRADES, None, now - DAY) == [] and await st.rows(SNAPSHOTS, None, now - DAY) == []

        async def more_live() -> bool:
            return await live_trades() > before

        await until(more_live, "the daemon writing on")
    finally:
        await d.stop()
    assert d.retention.task is None


TIMESCALE = os.environ.get("COBY_TEST_TIMESCALE")  # e.g. the WASM TimescaleDB: /work/shared/tools/timescale


@pytest.mark.skipif(not TIMESCALE, reason="COBY_TEST_TIMESCALE (a TimescaleDB URL) not set")
async def test_timescaledb_drops_old_chunks_by_its_policy_with_a_window_for_snapshots(tmp_path):
    """TimescaleDB: a retention policy per hypertable, order_book_snapshots with its own window; running the
    policy drops the chunks older than it; coby's own retention job leaves hypertables alone."""
    settings = make_settings(tmp_path, retention_days=5, snapshot_retention_days=1)
    async with await psycopg.AsyncConnection.connect(TIMESCALE, autocommit=True) as conn:
        for t in ("order_book_snapshots", "trade_events", "heatmap_data", "ohlcv_data", "connection_events",
                  "schema_migrations"):
            await conn.execute(f"DROP TABLE IF EXISTS {t} CASCADE")
        await conn.execute(CREATE_TABLE)
        for m in load_migrations("postgres"):
            await conn.execute(m.sql)
        mode = await setup_timescale(conn, settings)
        assert mode.startswith("timescaledb")
        cur = await conn.execute("SELECT hypertable_name, config->>'drop_after', job_id "
                                 "FROM timescaledb_information.jobs WHERE proc_name = 'policy_retention'")
        jobs = {name: (after, job) for name, after, job in await cur.fetchall()}
        assert jobs["order_book_snapshots"][0] == "1 day" and jobs["trade_events"][0] == "5 days"
        now = utcnow()
        for age in (10 * DAY, 3 * DAY, timedelta(minutes=1)):
            await conn.execute("INSERT INTO trade_events (symbol, exchange, timestamp, price, size, side, trade_id) "
                               "VALUES (%s, %s, %s, %s, %s, %s, %s)", ("TS-USDT", "okx", now - age, 1.0, 1.0, "buy",
                                                                      str(age)))
            await conn.execute("INSERT INTO order_book_snapshots (symbol, exchange, timestamp, bids, asks) "
                               "VALUES (%s, %s, %s, '[]', '[]')", ("TS-USDT", "okx", now - age))
        for table in ("trade_events", "order_book_snapshots"):
            await conn.execute(f"CALL run_job({int(jobs[table][1])})")
        cur = await conn.execute("SELECT count(*) FROM trade_events")
        assert (await cur.fetchone())[0] == 2
        cur = await conn.execute("SELECT count(*) FROM order_book_snapshots")
        assert (await cur.fetchone())[0] == 1

    hypertables = SimpleNamespace(kind="postgresql", mode=mode, settings=settings)
    assert not Retention(hypertables).applies
