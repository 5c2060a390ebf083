"""Storage contract: the same tests against PostgreSQL and SQLite (the ``backend`` fixture)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest

from coby.db import open_storage
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
    assert [r[0] for r in rows] == [1]
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
    """A value the database refuses (price beyond DECIMAL(20,8)) goes to the rejected file; the rest is stored."""
    settings = make_settings(tmp_path, db_url=pg_url)
    async with open_storage(settings, pg_url) as st:
        await st.fetch("TRUNCATE trade_events", [])
        bad = TradeEvent("BTC-USDT", "binance", T0, 1e15, 1.0, "buy", "bad", T0)
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
