"""Exports, imports and backups: PostgreSQL -> files -> SQLite -> files -> PostgreSQL gives the same rows; an
online backup of a running daemon's SQLite restores with every row it had; pg_dump/pg_restore as documented."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import orjson
import polars as pl
import psycopg
import pytest

from coby.archive import export, import_export
from coby.db import open_storage
from coby.db.tables import JSON, TABLES
from coby.models import ConnectionEvent, utcnow
from tests.api_fixtures import bar, book, heatmap, trade, until
from tests.conftest import PG_ADMIN, TABLES as TABLE_NAMES, _with_db, free_port, make_settings

COBY = [sys.executable, "-m", "coby.cli"]


def _normal(table, rows: list[tuple]) -> list[tuple]:
    """Rows comparable across backends: JSON columns parsed (jsonb spaces its text, SQLite keeps coby's)."""
    js = [i for i, c in enumerate(table.columns) if c.kind == JSON]
    return [tuple(orjson.loads(v) if i in js and v is not None else v for i, v in enumerate(r)) for r in rows]


async def _all_rows(storage) -> dict[str, list[tuple]]:
    return {name: _normal(t, await storage.rows(t, None, None, limit=100_000)) for name, t in TABLES.items()}


@pytest.fixture
def fresh_pg():
    """A new, empty PostgreSQL database (dropped after the test)."""
    name = f"coby_import_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _with_db(PG_ADMIN, name)
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _fill(storage, start) -> None:
    """Every table, over two UTC days, with nulls where columns allow them; plus rows after the range."""
    for day in range(2):
        t0 = start + timedelta(days=day, hours=23)
        await storage.store_trades([trade("BTC-USDT", ex, day * 100 + i, t0 + timedelta(seconds=i))
                                    for ex in ("binance", "okx") for i in range(30)])
        for i in range(10):
            await storage.store_orderbook(book("okx", "BTC-USDT", mid=30000.5 + i, ts=t0 + timedelta(seconds=i),
                                               seq=i if i % 2 else None))
            await storage.store_ohlcv(bar("BTC-USDT", t0, i, exchange="okx" if i % 2 else None))
            await storage.store_heatmap(heatmap("BTC-USDT", t0 + timedelta(seconds=i)))
            await storage.store_connection_event(ConnectionEvent("okx", None if i % 2 else "BTC-USDT",
                                                                 t0 + timedelta(seconds=i), "connected", "book"))
    await storage.store_trades([trade("BTC-USDT", "okx", 999, start + timedelta(days=3))])  # outside the range
    await storage.flush()


async def test_export_import_round_trip_postgresql_sqlite_postgresql(pg_url, fresh_pg, tmp_path):
    """PostgreSQL -> parquet -> SQLite -> CSV (coby export) -> a fresh PostgreSQL (coby import): every table's
    rows of the range are identical at each step; the files open in polars partitioned by day; importing
    the same export twice changes nothing."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('trade_events')").fetchone()[0]:
            conn.execute(f"TRUNCATE {', '.join(TABLE_NAMES)}")
    start = utcnow().replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=5)
    end = start + timedelta(days=2)
    source = open_storage(make_settings(tmp_path / "pg", db_url=pg_url), pg_url)
    await source.start()
    try:
        await _fill(source, start)
        expected = {name: _normal(t, await source.rows(t, start, end, limit=100_000)) for name, t in TABLES.items()}
        manifest = await export(source, tmp_path / "a", start, end, tables=list(TABLES.values()), chunk=17)
    finally:
        await source.aclose()
    assert {n: t["rows"] for n, t in manifest["tables"].items()} == {n: len(r) for n, r in expected.items()}
    assert len(expected["trade_events"]) == 120
    days = sorted(p.name for p in (tmp_path / "a" / "trade_events").iterdir())
    assert days == [f"date={(start + timedelta(days=d)).date()}" for d in range(2)]
    frame = pl.scan_parquet(tmp_path / "a" / "trade_events" / "**" / "*.parquet").collect()
    assert frame.height == 120 and frame.schema["timestamp"] == pl.Datetime("us", "UTC")

    lite_url = f"sqlite:///{tmp_path / 'lite.sqlite3'}"
    lite = open_storage(make_settings(tmp_path / "lite", db_url=lite_url), lite_url)
    await lite.connect()
    await lite.setup_database_schema()
    try:
        counts = await import_export(lite, tmp_path / "a")
        assert await _all_rows(lite) == expected
        assert counts["trade_events"] == {"rows": 120, "new": 120}
    finally:
        await lite.disconnect()

    env = {**os.environ, "LOG_LEVEL": "WARNING"}
    for args in (["export", "--db", lite_url, "--start", start.isoformat(), "--end", end.isoformat(), "--format",
                  "csv", "--out", str(tmp_path / "b")],
                 ["import", str(tmp_path / "b"), "--db", fresh_pg],
                 ["import", str(tmp_path / "b"), "--db", fresh_pg]):
        r = await asyncio.to_thread(subprocess.run, [*COBY, *args], capture_output=True, text=True, timeout=120,
                                    env=env)
        assert r.returncode == 0, r.stderr
    assert "trade_events: 120 rows read, 0 new" in r.stdout  # the second import: nothing new
    pg2 = open_storage(make_settings(tmp_path / "pg2", db_url=fresh_pg), fresh_pg)
    await pg2.connect()
    try:
        assert await _all_rows(pg2) == expected
    finally:
        await pg2.disconnect()


async def test_backup_of_a_running_daemon_restores_every_row_up_to_it(tmp_path):
    """`coby backup` while the daemon writes (simulated venues, SQLite): the backup is one consistent SQLite
    file that, used as a daemon's database (the restore drill), holds every row the database had
    before the backup began."""
    from coby.daemon import Daemon
    settings = make_settings(tmp_path, exchanges="binance,okx", symbols="BTC-USDT", simulate=True,
                             simulator_port=0, api_port=free_port())
    daemon = Daemon(settings)
    await daemon.start()
    db_path = Path(settings.data_dir) / "coby.sqlite3"
    try:
        def keys() -> set[tuple]:
            with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
                return set(conn.execute("SELECT timestamp, symbol, exchange, trade_id FROM trade_events"))

        await until(lambda: len(keys()) >= 20, "trades stored")
        before = keys()
        r = await asyncio.to_thread(subprocess.run, [*COBY, "backup", "--data-dir", settings.data_dir, "--out",
                                                     str(tmp_path / "backup" / "coby.sqlite3")],
                                    capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        await until(lambda: len(keys()) > len(before), "the daemon writing on")
    finally:
        await daemon.stop()

    restored = make_settings(tmp_path / "restored", data_dir=str(tmp_path / "backup"))
    storage = open_storage(restored)
    await storage.start()  # the restore: a daemon's storage opened on the backup file
    try:
        rows = await storage.rows(TABLES["trade_events"], None, None, limit=100_000)
        with sqlite3.connect(tmp_path / "backup" / "coby.sqlite3") as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            got = set(conn.execute("SELECT timestamp, symbol, exchange, trade_id FROM trade_events"))
        assert before <= got and len(rows) == len(got)
    finally:
        await storage.aclose()


def test_pg_dump_restore_drill(pg_url, fresh_pg, tmp_path):
    """The PostgreSQL procedure of docs/operations.md: pg_dump -Fc, then pg_restore into an empty database,
    gives the same rows (plain PostgreSQL; TimescaleDB adds its pre/post restore calls)."""
    dump = tmp_path / "coby.dump"
    subprocess.run(["pg_dump", "-Fc", "-f", str(dump), pg_url], check=True, timeout=120)
    subprocess.run(["pg_restore", "--no-owner", "-d", fresh_pg, str(dump)], check=True, timeout=120)
    with psycopg.connect(pg_url) as a, psycopg.connect(fresh_pg) as b:
        for table in TABLE_NAMES:
            q = f"SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t::text)) FROM {table} t"
            assert a.execute(q).fetchone() == b.execute(q).fetchone(), table
        assert json.dumps(a.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()) == \
            json.dumps(b.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall())
