"""Storage contract: the same tests against PostgreSQL and SQLite (the ``backend`` fixture)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import random
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from coby.db import buffer, journal, open_storage
from coby.db.migrations import load_migrations
from coby.db.tables import TRADES
from coby.errors import StorageUnavailable
from coby.metrics import ROWS_DUPLICATE
from coby.models import (
    ConnectionEvent, Levels, OHLCVBar, OrderBookSnapshot, PriceLevel, TradeEvent, constructor, utc_from_ms,
)
from tests.conftest import make_settings
from tests.netproxy import TcpProxy

T0 = utc_from_ms(1_790_000_000_000)


def trade(i: int, exchange: str = "binance", symbol: str = "BTC-USDT", ms: int | None = None) -> TradeEvent:
    ts = T0 + timedelta(milliseconds=ms if ms is not None else i * 10)
    return TradeEvent(symbol, exchange, ts, round(30000.0 + i * 0.1, 8), round(0.01 + i * 1e-4, 8), "buy" if i % 2 else "sell",
                      str(i), ts + timedelta(milliseconds=3))


def book(i: int, exchange: str = "okx") -> OrderBookSnapshot:
    ts = T0 + timedelta(seconds=i)
    bids = tuple(PriceLevel(30000.0 - k * 0.5, 1.0 + k) for k in range(30))
    asks = tuple(PriceLevel(30000.5 + k * 0.5, 2.0 + k) for k in range(30))
    return OrderBookSnapshot("BTC-USDT", exchange, ts, bids, asks, 1000 + i, ts)


async def test_round_trip_of_every_kind(storage):
    """Trades, book snapshots (top snapshot_depth levels), OHLCV and connection events come back equal."""
    trades = [trade(i) for i in range(50)]
    await storage.store_trades(trades)
    await storage.store_orderbook(book(1))
    bar = OHLCVBar("BTC-USDT", None, "1m", T0, 1.0, 2.0, 0.5, 1.5, 10.0, 3, 1.25, 6.0, 4.0)
    await storage.store_ohlcv(bar)
    ev = ConnectionEvent("kraken", "BTC-USDT", T0, "disconnected", "network error")
    await storage.store_connection_event(ev)
    await storage.flush()

    assert await storage.get_trades("BTC-USDT", limit=100) == trades
    [snap] = await storage.get_snapshots("BTC-USDT")
    depth = storage.settings.snapshot_depth
    assert snap.bids == book(1).bids[:depth] and snap.asks == book(1).asks[:depth] and type(snap.bids) is Levels
    assert snap.sequence_id == 1001 and snap.timestamp == book(1).timestamp
    [got_bar] = await storage.get_ohlcv("BTC-USDT", "1m")
    assert got_bar == OHLCVBar(**{**{f: getattr(bar, f) for f in bar.__dataclass_fields__}, "closed": True})
    assert await storage.get_connection_events() == [ev]


def test_row_constructor_makes_what_the_class_makes():
    """tables.constructor builds a frozen dataclass equal to cls(...) (defaults included) that stays frozen,
    and refuses a class whose __init__ does more than set fields."""
    from dataclasses import FrozenInstanceError, dataclass

    t = trade(1)
    made = constructor(TradeEvent)(t.symbol, t.exchange, t.timestamp, t.price, t.size, t.side, t.trade_id,
                                   t.received_at)
    assert type(made) is TradeEvent and made == t and hash(made) == hash(t)
    assert constructor(PriceLevel)(1.5, 2.0) == PriceLevel(1.5, 2.0)
    with pytest.raises(FrozenInstanceError):
        made.price = 1.0  # type: ignore[misc]

    @dataclass(frozen=True, slots=True)
    class Checked:
        x: int

        def __post_init__(self) -> None: ...

    with pytest.raises(TypeError):
        constructor(Checked)


async def test_duplicate_trade_is_stored_once_and_never_fails_its_batch(storage):
    """A trade seen again (after a reconnect) is stored once; the rest of its batch is stored."""
    before = ROWS_DUPLICATE.labels("trade_events")._value.get()
    await storage.store_trades([trade(i) for i in range(10)])
    await storage.flush()
    await storage.store_trades([trade(5), trade(6), trade(10), trade(11)])
    await storage.flush()
    got = await storage.get_trades("BTC-USDT", limit=100)
    assert [t.trade_id for t in got] == [str(i) for i in range(12)]
    assert ROWS_DUPLICATE.labels("trade_events")._value.get() - before == 2


async def test_ohlcv_bar_updated_by_a_late_trade_replaces_the_stored_bar(storage):
    """OHLCV rows are upserted: the later version of a bar wins."""
    bar = OHLCVBar("BTC-USDT", "binance", "1m", T0, 1.0, 2.0, 0.5, 1.5, 10.0, 3, 1.2, 5.0, 5.0)
    await storage.store_ohlcv(bar)
    await storage.flush()
    late = OHLCVBar("BTC-USDT", "binance", "1m", T0, 1.0, 2.5, 0.5, 2.5, 11.0, 4, 1.3, 6.0, 5.0)
    await storage.store_ohlcv(late)
    await storage.store_ohlcv(late)  # twice in one batch is fine too
    await storage.flush()
    [got] = await storage.get_ohlcv("BTC-USDT", "1m", exchange="binance")
    assert (got.high, got.close, got.trade_count) == (2.5, 2.5, 4)


async def test_range_iterator_is_time_ordered_and_chunked(storage):
    """iter_trades yields every row of [start, end) once, in time order, at most ``chunk`` rows at a time,
    including across many rows sharing one timestamp (keyset pagination on the full key)."""
    trades = [trade(i, exchange=ex, ms=(i // 7) * 5) for i in range(300) for ex in ("binance", "okx")]
    await storage.store_trades(trades)
    await storage.flush()
    start, end = T0, T0 + timedelta(milliseconds=150)
    chunks = [c async for c in storage.iter_trades(start, end, chunk=64)]
    assert all(len(c) <= 64 for c in chunks) and len(chunks) > 3
    got = [t for c in chunks for t in c]
    expected = sorted((t for t in trades if start <= t.timestamp < end),
                      key=lambda t: (t.timestamp, t.symbol, t.exchange, t.trade_id))
    assert got == expected
    okx = [t async for c in storage.iter_trades(start, end, exchanges=["okx"], chunk=50) for t in c]
    assert {t.exchange for t in okx} == {"okx"} and len(okx) == len([t for t in expected if t.exchange == "okx"])


async def test_migrations_are_idempotent(storage, db_url):
    """Running the schema set-up again applies nothing and keeps the data."""
    await storage.store_trade(trade(1))
    await storage.flush()
    await storage.setup_database_schema()
    await storage.setup_database_schema()
    rows = await storage.fetch("SELECT version FROM schema_migrations", [])
    assert [r[0] for r in rows] == [m.version for m in load_migrations("postgres" if "postgres" in db_url else "sqlite")]
    assert len(await storage.get_trades("BTC-USDT")) == 1


async def test_clean_shutdown_flushes_everything(db_url, tmp_path):
    """Rows still buffered at aclose() are written before it returns."""
    settings = make_settings(tmp_path, db_url=db_url, flush_interval=60.0, batch_write_size=5000,
                             data_buffer_size=10000)
    st = open_storage(settings, db_url)
    await st.start()
    await st.store_trades([trade(i) for i in range(2500)])
    assert st.buffer.pending() == 2500
    await st.aclose()
    st2 = open_storage(settings, db_url)
    await st2.start()
    assert len(await st2.get_trades("BTC-USDT", limit=5000)) == 2500
    await st2.aclose()


async def test_historical_and_latest_data(storage):
    """get_historical_data merges trades and books in time order; get_latest_data has the newest per venue."""
    await storage.store_trades([trade(i) for i in range(5)])
    await storage.store_orderbook(book(0))
    await storage.store_orderbook(book(1))
    await storage.flush()
    hist = await storage.get_historical_data("BTC-USDT", T0, T0 + timedelta(minutes=1))
    assert [h["type"] for h in hist][:2] == ["orderbook", "trade"]
    assert len(hist) == 7
    latest = await storage.get_latest_data("BTC-USDT")
    assert latest["orderbooks"]["okx"]["sequence_id"] == 1001
    assert latest["trades"]["binance"]["trade_id"] == "4"


async def test_postgres_rejects_only_the_bad_rows(pg_url, tmp_path):
    """A value the database refuses (a side longer than VARCHAR(4)) goes to the rejected file; the rest is stored."""
    settings = make_settings(tmp_path, db_url=pg_url)
    async with open_storage(settings, pg_url) as st:
        await st.fetch("TRUNCATE trade_events", [])
        bad = TradeEvent("BTC-USDT", "binance", T0, 30000.0, 1.0, "sideways", "bad", T0)
        await st.store_trades([trade(1), bad, trade(2), trade(3)])
        await st.flush()
        assert [t.trade_id for t in await st.get_trades("BTC-USDT")] == ["1", "2", "3"]
    rejected = (Path(settings.data_dir) / "rejected" / "trade_events.jsonl").read_text()
    assert '"bad"' in rejected


async def test_database_outage_keeps_rows_in_the_journal(pg_url, tmp_path):
    """PostgreSQL unreachable: rows are journalled on disk (more than the memory holds); once it is back
    every row is stored and the journal is emptied."""
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    settings = make_settings(tmp_path, db_url=url, batch_write_size=100, data_buffer_size=500)
    st = open_storage(settings, url)
    try:
        await st.start()
        await st.fetch("TRUNCATE trade_events", [])
        proxy.cut()
        await st.store_trades([trade(i) for i in range(800)])
        with pytest.raises(StorageUnavailable):
            await st.flush()
        assert st.buffer.state == "down"
        assert st.buffer.pending() == 800
        assert st.buffer.journal_bytes() > 0
        assert st.ready() == (False, st.ready()[1]) and "database down" in st.ready()[1]
        proxy.restore()
        for _ in range(100):  # the writer probes every 0.5 s
            try:
                await st.flush()
                break
            except StorageUnavailable:
                await asyncio.sleep(0.1)
        assert len(await st.get_trades("BTC-USDT", limit=2000)) == 800
        assert st.buffer.journal_bytes() == 0 and st.buffer.pending() == 0
        assert st.ready() == (True, None)
    finally:
        await st.aclose()
        await proxy.aclose()


@contextlib.asynccontextmanager
async def _storage_and_locker(pg_url: str, tmp_path: Path, **settings):
    """A started storage with empty trade and snapshot tables, and a second connection to lock them with
    (the writer writes order_book_snapshots first: a lock there holds it back, a slow database)."""
    st = open_storage(make_settings(tmp_path, db_url=pg_url, **settings), pg_url)
    locker = psycopg.connect(pg_url)
    try:
        await st.start()
        await st.fetch("TRUNCATE trade_events, order_book_snapshots", [])
        yield st, locker
    finally:
        locker.close()
        await st.aclose()


async def test_a_backlog_partly_in_memory_is_written_whole(pg_url, tmp_path):
    """The writer behind (here: held up by a lock on another table it writes first): a trade record that fits
    in memory (data_buffer_size), one that does not (on disk only), then one that fits again. Every row is
    stored. (The writer took the two records in memory as one batch and skipped the one between them on
    disk: half of a daemon's trades under overload, silently, while its journal said it was caught up.)"""
    async with _storage_and_locker(pg_url, tmp_path, batch_write_size=500, data_buffer_size=500,
                                   flush_interval=0.1) as (st, locker):
        locker.execute("LOCK TABLE order_book_snapshots IN ACCESS EXCLUSIVE MODE")
        await st.store_orderbook(book(0))
        await asyncio.sleep(0.5)  # journalled; the writer waits on the lock
        for lo, n in ((0, 100), (100, 450), (550, 100)):  # held in memory, on disk only, held again
            await st.store_trades([trade(i) for i in range(lo, lo + n)])
            await asyncio.sleep(0.5)  # one journal record each
        assert st.buffer.pending() == 651
        locker.rollback()
        await asyncio.wait_for(st.flush(), 30)
        stored = sorted(int(t.trade_id) for t in await st.get_trades("BTC-USDT", limit=2000))
        assert len(stored) == 650 and stored == list(range(650))
        assert st.buffer.pending() == 0 and st.buffer.journal_bytes() == 0


@pytest.mark.parametrize("segment_bytes", [None, 20_000])
async def test_a_writer_held_back_at_random_stores_every_row(pg_url, tmp_path, monkeypatch, segment_bytes):
    """Records of random sizes journalled while the writer is held back at random (a lock on the table it
    writes first, taken and released), memory smaller than the backlog, with and without the journal
    moving to a new segment every 20 KB: every trade is stored, once."""
    if segment_bytes is not None:
        monkeypatch.setattr(buffer, "Journal", functools.partial(journal.Journal, segment_bytes=segment_bytes))
    rng = random.Random(int(os.environ.get("TEST_SEED", "16")))
    async with _storage_and_locker(pg_url, tmp_path, batch_write_size=300, data_buffer_size=300,
                                   flush_interval=0.02) as (st, locker):
        n, locked = 0, False
        for step in range(120):
            if rng.random() < 0.2:
                if locked:
                    locker.rollback()
                else:
                    locker.execute("LOCK TABLE order_book_snapshots IN ACCESS EXCLUSIVE MODE")
                locked = not locked
            if rng.random() < 0.3:
                await st.store_orderbook(book(step))
            size = rng.choice((1, 5, 40, 120, 250, 299))
            await st.store_trades([trade(i) for i in range(n, n + size)])
            n += size
            await asyncio.sleep(rng.choice((0.0, 0.01, 0.03)))
        if locked:
            locker.rollback()
        await asyncio.wait_for(st.flush(), 60)
        stored = sorted(int(t.trade_id) for t in await st.get_trades("BTC-USDT", limit=n + 100))
        assert stored == list(range(n))
        assert st.buffer.pending() == 0 and st.buffer.journal_bytes() == 0


async def test_shutdown_during_outage_keeps_the_journal_and_next_start_writes_it(pg_url, tmp_path):
    """aclose() with the database down keeps the rows in the journal; the next start stores them."""
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    settings = make_settings(tmp_path, db_url=url, shutdown_timeout=2.0, flush_interval=30.0)
    st = open_storage(settings, url)
    await st.start()
    await st.fetch("TRUNCATE trade_events", [])
    proxy.cut()
    await st.store_trades([trade(i) for i in range(120)])
    await st.aclose()
    assert not (Path(settings.data_dir) / "rejected").exists()
    proxy.restore()
    st2 = open_storage(settings, url)
    await st2.start()
    await st2.flush()
    assert len(await st2.get_trades("BTC-USDT", limit=500)) == 120
    await st2.aclose()
    await proxy.aclose()


async def test_postgres_mode_is_reported(pg_url, tmp_path):
    """Without the TimescaleDB extension the plain-PostgreSQL mode is in force, with time indexes."""
    async with open_storage(make_settings(tmp_path, db_url=pg_url), pg_url) as st:
        assert st.mode in {"postgresql", "timescaledb", "timescaledb-apache"}
        with psycopg.connect(pg_url) as conn:
            idx = {r[0] for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s",
                                              (TRADES.name,))}
        assert "trade_events_symbol_ts" in idx


async def test_low_priced_instruments_round_trip_exactly(storage):
    """A symbol priced ~0.0003 (tick 1e-8) with heatmap buckets of 0.001 and 0.000001 at the same instant,
    a 123,456,789.5-unit trade and a mid price between two 1e-8 ticks: every number comes back as
    stored, and the two bucket sizes' rows do not collide in the primary key (DECIMAL(10,2) stored
    both sizes as 0.00)."""
    from coby.buckets import bucket_price
    from coby.db.tables import HEATMAP, SNAPSHOTS
    from coby.models import HeatmapData, HeatmapPoint

    prices = [0.00030001 + k * 1e-8 for k in range(40)]
    heatmaps = []
    for size in (0.001, 0.000001):
        cells = sorted({bucket_price(p, "bid", size) for p in prices} | {bucket_price(p, "ask", size) for p in prices})
        points = tuple(HeatmapPoint(price, 1234567.125 + i, 0.5, side, 2)
                       for i, price in enumerate(cells) for side in ("bid", "ask"))
        heatmaps.append(HeatmapData("PEPE-USDT", T0, size, points))
    for h in heatmaps:
        await storage.store_heatmap(h)
    tr = TradeEvent("PEPE-USDT", "binance", T0, 0.00030001, 123456789.5, "buy", "1", T0)
    await storage.store_trade(tr)
    snap = OrderBookSnapshot("PEPE-USDT", "binance", T0, (PriceLevel(0.00030001, 123456789.5),),
                             (PriceLevel(0.00030002, 1e8),), 7, T0)
    await storage.store_orderbook(snap)
    bar = OHLCVBar("PEPE-USDT", "binance", "1m", T0, 0.00030001, 0.00030009, 0.00029999, 0.00030002,
                   123456789.5, 3, 0.000300012345678, 100000000.25, 23456789.25)
    await storage.store_ohlcv(bar)
    await storage.flush()

    rows = await storage.rows(HEATMAP, None, None, limit=10_000)
    want = sorted((h.symbol, h.timestamp, h.bucket_size, p.price, p.volume, p.side, p.exchange_count)
                  for h in heatmaps for p in h.data)
    assert sorted(rows) == want
    assert {r[2] for r in rows} == {0.001, 0.000001}
    assert await storage.get_trades("PEPE-USDT") == [tr]
    [row] = await storage.rows(SNAPSHOTS, None, None)
    assert row[6:10] == ((0.00030001 + 0.00030002) / 2, 0.00030002 - 0.00030001, 123456789.5, 1e8)
    [got] = await storage.get_ohlcv("PEPE-USDT", "1m", exchange="binance")
    assert got == OHLCVBar(**{**{f: getattr(bar, f) for f in bar.__dataclass_fields__}, "closed": True})


def _upgrade_targets() -> list:
    targets = ["postgresql"]
    if os.environ.get("COBY_TEST_TIMESCALE"):  # e.g. the WASM TimescaleDB of /work/shared/tools/timescale
        targets.append("timescaledb")
    return targets


@pytest.fixture(params=_upgrade_targets())
def empty_pg(request) -> str:
    """An empty PostgreSQL database of its own (or the TimescaleDB server of COBY_TEST_TIMESCALE, emptied)."""
    from tests.conftest import PG_ADMIN, TABLES, _with_db

    if request.param == "timescaledb":
        url = os.environ["COBY_TEST_TIMESCALE"]
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DEALLOCATE ALL")  # the WASM server keeps one session across client connections
            for table in ("schema_migrations", *TABLES):  # one at a time: hypertables are dropped alone
                conn.execute(f"DROP TABLE IF EXISTS {table}")
        yield url
        return
    name = f"coby_upgrade_{os.getpid()}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield _with_db(PG_ADMIN, name)
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def test_a_database_at_migration_1_is_upgraded_to_exact_numbers(empty_pg, tmp_path, monkeypatch):
    """A database made by migration 0001 (with TimescaleDB: hypertables, compression on, chunks
    compressed) holding rows is upgraded by 0002: every numeric column becomes double precision, the
    rows are kept, compression is on again afterwards, and small bucket sizes are then stored exactly.
    The TimescaleDB case runs when COBY_TEST_TIMESCALE names a server (e.g. the WASM TimescaleDB of
    /work/shared/tools/timescale: it refuses ALTER ... TYPE while compression is on)."""
    from coby.db import postgres
    from coby.db.postgres import PostgresStorage
    from coby.db.timescale import HYPERTABLES

    s = make_settings(tmp_path, db_url=empty_pg, db_pool_size=1)
    first = load_migrations("postgres")[:1]
    monkeypatch.setattr(postgres, "load_migrations", lambda backend: first)
    st = PostgresStorage(s, empty_pg)
    await st.connect()
    try:
        await st.setup_database_schema()
        async with st.pool.connection() as conn:  # plain INSERTs: the WASM server has no COPY
            await conn.execute("INSERT INTO heatmap_data VALUES ('BTC-USDT', %s, 10, 30000, 1.5, 'bid', 2), "
                               "('BTC-USDT', %s, 10, 30010, 2.25, 'ask', 1)", (T0, T0))
            await conn.execute("INSERT INTO trade_events (symbol, exchange, timestamp, price, size, side, trade_id) "
                               "VALUES ('BTC-USDT', 'okx', %s, 30000.5, 0.125, 'buy', '1')", (T0,))
            if st.mode == "timescaledb":
                await conn.execute("SELECT compress_chunk(c) FROM show_chunks('heatmap_data') c")
        monkeypatch.undo()
        await st.setup_database_schema()
        types = await st.fetch("SELECT table_name, column_name, data_type FROM information_schema.columns "
                               "WHERE table_schema = current_schema() AND data_type IN ('numeric', 'double precision')",
                               ())
        assert {t for _, _, t in types} == {"double precision"} and len(types) == 17
        assert [r[0] for r in await st.fetch("SELECT version FROM schema_migrations ORDER BY 1", ())] == [1, 2]
        assert sorted(await st.fetch("SELECT bucket_size, price_bucket, volume FROM heatmap_data", ())) == \
            [(10.0, 30000.0, 1.5), (10.0, 30010.0, 2.25)]
        assert await st.fetch("SELECT price, size FROM trade_events", ()) == [(30000.5, 0.125)]
        if st.mode == "timescaledb":
            rows = await st.fetch("SELECT hypertable_name::text FROM timescaledb_information.hypertables "
                                  "WHERE compression_enabled ORDER BY 1", ())
            assert [r[0] for r in rows] == sorted(HYPERTABLES)
        async with st.pool.connection() as conn:
            await conn.execute("INSERT INTO heatmap_data VALUES ('PEPE-USDT', %s, 0.001, 0.001, 5, 'ask', 1), "
                               "('PEPE-USDT', %s, 0.000001, 0.000301, 5, 'ask', 1)", (T0, T0))
        assert sorted(await st.fetch("SELECT bucket_size, price_bucket FROM heatmap_data WHERE symbol = 'PEPE-USDT'",
                                     ())) == [(0.000001, 0.000301), (0.001, 0.001)]
    finally:
        await st.disconnect()
