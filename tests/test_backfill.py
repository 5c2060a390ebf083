"""Gap filling (coby.collector.backfill) against the simulator's REST trade history, with unmodified ccxt.

Each test runs a daemon on the simulator (SQLite in a fresh file, one symbol, fast trades), breaks a
venue's trade stream the way the simulator's faults do, and then compares the stored trades of the
market with the simulator's own record of every trade it made (``Market.trades``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from datetime import datetime

import pytest

from coby.daemon import Daemon
from coby.models import utc_from_ms
from coby.aggregate.ohlcv import OHLCVBuilder
from coby.simulator.venues._ids import uuid_id
from coby.simulator.venues.base import fmt_num
from tests.conftest import make_settings

SYMBOL = "BTC-USDT"


BY_CONTENT = ("kucoin", "mexc")  # their history carries no id the WebSocket sends: compared by content
LATEST_ONLY = {"bybit": 60, "kucoin": 100, "htx": 2000}  # the latest N only: a longer gap is narrowed


def _wire_id(exchange: str, trade) -> str:
    return uuid_id(SYMBOL, trade.trade_id) if exchange == "bybit" else str(trade.trade_id)


def _fp(ts_ms: int, price: float, size: float, side: str) -> tuple:
    return (ts_ms, price, size, side)


def _key_of_stored(exchange: str, t) -> object:
    if exchange in BY_CONTENT:
        return _fp(round(t.timestamp.timestamp() * 1000), t.price, t.size, t.side)
    return t.trade_id


def _key_of_made(exchange: str, t, market) -> object:
    """A made trade as coby stores it: by content, its price and size as the venue prints them."""
    if exchange in BY_CONTENT:
        return _fp(t.ts_ms, float(fmt_num(t.price, market.price_decimals)),
                   float(fmt_num(t.size, market.size_decimals)), t.side)
    return _wire_id(exchange, t)


async def _daemon(tmp_path, exchanges, **kw) -> Daemon:
    settings = make_settings(tmp_path, db_url=f"sqlite:///{tmp_path / 'coby.sqlite3'}", simulate=True,
                             simulator_port=0, api_port=0, exchanges=tuple(exchanges), symbols=(SYMBOL,),
                             backoff_initial=0.5, ohlcv_grace=0.5, **kw)
    d = Daemon(settings)
    await d.start()
    d.simulator.set_rate(40.0)
    return d


async def _until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"not in time: {what}"
        await asyncio.sleep(0.2)


async def _settle(sim) -> None:
    """Stop the market and let what is on the wire arrive: the stored trades are compared with the simulator's
    record up to the last one stored, and a trade of that same millisecond still in flight (binance sends one
    frame per trade) would otherwise count as missing."""
    sim.freeze()
    await asyncio.sleep(1.0)


async def _stored(d: Daemon, exchange: str) -> list:
    await d.storage.flush()
    return [t for t in await d.storage.get_trades(SYMBOL, exchange=exchange, limit=100_000)]


async def _gap_events(d: Daemon, exchange: str) -> list:
    await d.storage.flush()
    return [e for e in await d.storage.get_connection_events(exchange=exchange)
            if e.event in ("gap_closed", "gap_narrowed")]


async def _has_trades(d: Daemon, exchanges) -> bool:
    for ex in exchanges:
        if len(await _stored(d, ex)) < 5:
            return False
    return True


def _missing(sim, exchange: str, stored: list) -> list:
    """The simulator's trades between the first and last stored trade that are not stored (oldest first);
    asserts none is stored twice (by id; by content on kucoin and mexc, counted)."""
    ids = [t.trade_id for t in stored]
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    assert not dupes, f"{exchange}: duplicated {dupes[:5]}"
    lo = min(round(t.timestamp.timestamp() * 1000) for t in stored)
    hi = max(round(t.timestamp.timestamp() * 1000) for t in stored)
    market = sim.market(exchange, SYMBOL)
    made = [t for t in market.trades if lo <= t.ts_ms <= hi]
    have = Counter(_key_of_stored(exchange, t) for t in stored)
    want = Counter(_key_of_made(exchange, t, market) for t in made)
    extra = have - want
    assert not extra, f"{exchange}: stored but never made (or twice): {list(extra)[:5]} " + str(
        [(t.trade_id, t.received_at) for t in stored if _key_of_stored(exchange, t) in extra])
    missing = []
    for t in made:
        k = _key_of_made(exchange, t, market)
        if have[k] > 0:
            have[k] -= 1
        else:
            missing.append(t)
    return missing


def _assert_equal_to_simulator(d, exchange: str, stored: list) -> None:
    """Every trade the simulator made between the first and last stored trade is stored, once."""
    missing = _missing(d.simulator, exchange, stored)
    assert not missing, f"{exchange}: {len(missing)} trades missing: {missing[:5]}"


async def _assert_bars_recomputed(d: Daemon, exchange: str, stored: list, lo_ms: int, hi_ms: int) -> int:
    """The stored 1 s bars of [lo_ms, hi_ms) equal bars recomputed from the stored trades (in trade order).
    (The second of the gap's upper end is left out: a trade fetched after the gap that shares the millisecond
    of the first live trade arrives after it, so a tie of open or close there may go the other way.)"""
    order = {_wire_id(exchange, t): t.trade_id for t in d.simulator.market(exchange, SYMBOL).trades}
    builder = OHLCVBuilder(timeframes=("1s",), grace=0.0, consolidated=False)
    for t in sorted(stored, key=lambda t: (t.timestamp, order.get(t.trade_id, 0))):
        builder.add(t)
    want = {b.timestamp: b for b in builder.advance(utc_from_ms(hi_ms + 3_600_000))
            if lo_ms <= b.timestamp.timestamp() * 1000 < hi_ms // 1000 * 1000}
    await d.storage.flush()
    got = {b.timestamp: b for b in await d.storage.get_ohlcv(SYMBOL, "1s", utc_from_ms(lo_ms),
                                                              utc_from_ms(hi_ms // 1000 * 1000), exchange=exchange)}
    assert sorted(got) == sorted(want)
    for ts, w in want.items():
        g = got[ts]
        if exchange in ("bybit", "kucoin", "mexc"):  # no trade order within a millisecond is known (open, close)
            assert (g.high, g.low, g.trade_count) == (w.high, w.low, w.trade_count), (exchange, ts)
        else:
            assert (g.open, g.high, g.low, g.close, g.trade_count) == (w.open, w.high, w.low, w.close,
                                                                       w.trade_count), (exchange, ts)
        assert g.volume == pytest.approx(w.volume, rel=1e-9), ts
    return len(want)


VENUES = ("binance", "okx", "bybit", "coinbase", "kraken", "bitfinex", "gate", "htx", "kucoin", "mexc")
# bitfinex's trade stream takes ~20 s (connect_timeout) to come back after a stall: its fill is shown after drops only
STALLED = tuple(v for v in VENUES if v != "bitfinex")
RESEND = ("coinbase", "kraken", "bitfinex")  # send their last 50 trades on subscribe: a short gap may need no fill


def _span(event) -> tuple[int, int]:
    start, end = (datetime.fromisoformat(x.rstrip(";")) for x in event.detail.split()[4:7:2])
    return round(start.timestamp() * 1000), round(end.timestamp() * 1000)


def _assert_gaps(d: Daemon, exchange: str, events: list, stored: list) -> None:
    """0 duplicated; a closed gap has 0 missing; a narrowed one (a latest-N venue only) misses only its oldest
    trades - the venue's latest N reach back only so far - and says how many it recovered (at most N)."""
    missing = _missing(d.simulator, exchange, stored)
    for e in events:
        lo, hi = _span(e)
        gone = [t for t in missing if lo <= t.ts_ms <= hi]
        recovered = int(e.detail.split()[1])
        if e.event == "gap_closed":
            assert not gone, (exchange, e.detail, gone[:3])
            continue
        assert exchange in LATEST_ONLY and "does not reach back" in e.detail, (exchange, e.detail)
        # (bybit keeps ~2 s of trades here: a fill slowed down by a busy machine may find none of the gap's left)
        assert 0 <= recovered <= LATEST_ONLY[exchange], (exchange, e.detail)
        made = [t for t in d.simulator.market(exchange, SYMBOL).trades if lo < t.ts_ms < hi]
        oldest = {id(t) for t in made[:len(gone)]}
        assert all(id(t) in oldest for t in gone), (exchange, "narrowed from the old end", len(gone))
    spans = [_span(e) for e in events]
    first = min(round(t.timestamp.timestamp() * 1000) for t in stored)
    assert all(any(lo <= t.ts_ms <= hi for lo, hi in spans) for t in missing), (exchange, missing[:3], spans, first,
                                                                               len(missing))


async def _gap(d: Daemon, fault: str, exchanges) -> None:
    """Break every venue's trade stream with ``fault`` and wait for each gap's outcome."""
    before = {ex: len(await _gap_events(d, ex)) for ex in exchanges}
    for ex in exchanges:  # nothing is sent while stalled (trades made meanwhile are lost on the wire) ...
        d.simulator.venues[ex].faults.stall(1.0 if fault == "drop" else 15.0)
    if fault == "drop":  # ... and the connections drop during it; a 15 s stall: the watchdog (1.5 s) recycles the feed until it ends
        await asyncio.sleep(0.5)
        for ex in exchanges:
            await d.simulator.inject(ex, "drop")

    async def outcomes() -> bool:
        for ex in exchanges:
            if len(await _gap_events(d, ex)) <= before[ex]:
                return False
        return True
    await _until(outcomes, 40, f"every venue's outcome after a {fault}: {before}")


async def test_drops_and_stalls_are_filled_from_history_closed_on_every_venue(tmp_path):
    """On all ten venues: after the venue drops every connection (trades made meanwhile never sent) and after a
    stall the watchdog recovers from, the stored trades of the market equal the simulator's full list for the
    period (0 missing, 0 duplicated: by id, on kucoin and mexc by content), each gap's event says gap_closed
    with the count - or, on a venue serving only its latest N trades (bybit 60, kucoin 100) when the gap held
    more, gap_narrowed with the count, missing only the gap's oldest trades - status counts them, and the
    1 s bars of the gaps equal a recomputation from the stored trades."""
    d = await _daemon(tmp_path, VENUES, stale_after=1.5, trade_stale_after=1.5)
    try:
        await _until(lambda: _has_trades(d, VENUES), 20, "first trades")
        await _gap(d, "drop", VENUES)
        await _gap(d, "stall", STALLED)
        await asyncio.sleep(1.5)  # live trades after the fills; the repaired 1 s bars stored by the ticks
        await _settle(d.simulator)
        for ex in VENUES:
            events = await _gap_events(d, ex)
            # one per fault (the machine is shared: a slow second may add a gap, e.g. a stale stream resubscribed)
            assert len(events) >= (2 if ex in STALLED else 1), (ex, events)
            gaps = len(events)
            if ex not in LATEST_ONLY:
                assert [e.event for e in events] == ["gap_closed"] * gaps, (ex, events)
            recovered = [int(e.detail.split()[1]) for e in events]
            # coinbase, kraken and bitfinex resend their last trades on subscribe: a short gap may need none
            assert sum(recovered) > 0 or ex in RESEND or ex in LATEST_ONLY, (ex, events)
            stored = await _stored(d, ex)
            _assert_gaps(d, ex, events, stored)
            closed = sum(e.event == "gap_closed" for e in events)
            assert d.backfill.status()[ex] == {"closed": closed, "narrowed": gaps - closed, "trades": sum(recovered)}
            bars = 0
            for e in events:
                lo, hi = _span(e)
                bars += await _assert_bars_recomputed(d, ex, stored, lo // 1000 * 1000, hi)
            assert bars >= 2 or ex in RESEND, (ex, "the gaps' seconds have bars")
    finally:
        await d.stop()


async def test_a_venue_whose_history_is_too_short_narrows_the_gap_with_the_count(tmp_path):
    """bybit spot serves only its latest 60 trades (``recent-trade``, spot limit 60): a gap of more (~4 s at
    ~30 trades a second) is narrowed - the newest of the missed trades are recovered (counted in the event),
    only the gap's oldest are missing, nothing is stored twice, and /metrics and status count a narrowed gap."""
    d = await _daemon(tmp_path, ["bybit"])
    try:
        await _until(lambda: _has_trades(d, ["bybit"]), 20, "first trades")
        d.simulator.venues["bybit"].faults.stall(4.0)
        await asyncio.sleep(0.5)
        await d.simulator.inject("bybit", "drop")
        await _until(lambda: _gap_events(d, "bybit"), 20, "the gap's outcome")
        [event] = await _gap_events(d, "bybit")
        assert event.event == "gap_narrowed", event
        assert "does not reach back" in event.detail
        recovered = int(event.detail.split()[1])
        assert 0 < recovered <= 60
        stored = await _stored(d, "bybit")
        _assert_gaps(d, "bybit", [event], stored)
        assert len(_missing(d.simulator, "bybit", stored)) > 0
        assert d.backfill.status()["bybit"] == {"closed": 0, "narrowed": 1, "trades": recovered}
        from coby.metrics import REGISTRY
        assert REGISTRY.get_sample_value("coby_backfill_gaps_total", {"exchange": "bybit", "outcome": "narrowed"}) >= 1
    finally:
        await d.stop()


async def test_a_429_slows_the_fill_and_never_trips_the_live_circuit(tmp_path):
    """With the venue's REST limit exhausted, its history answers 429 to the first requests: the fill waits
    and asks again (slower), still closes the gap of a dropped connection, and the live streams' circuits
    (opening after 2 failures: the drop is one) stay closed."""
    d = await _daemon(tmp_path, ["okx"], circuit_failures=2)  # the drop is one failure; 429s would be more
    try:
        await _until(lambda: _has_trades(d, ["okx"]), 20, "first trades")
        limit = d.simulator.venues["okx"].rest_limit
        limit.set(0.4, 1)
        limit.take()  # the bucket is empty: the next request is refused, and the one ~1 s later too
        began = time.monotonic()
        await d.simulator.inject("okx", "drop")
        await _until(lambda: _gap_events(d, "okx"), 30, "the gap's outcome")
        took = time.monotonic() - began
        [event] = await _gap_events(d, "okx")
        assert event.event == "gap_closed", event
        assert limit.refused >= 1 and took >= 1.0
        status = d.connectors["okx"].get_connection_status()
        assert status.circuits == {"book": "closed", "trades": "closed"}
        events = await d.storage.get_connection_events(exchange="okx")
        assert not [e for e in events if e.event == "circuit_open"], events
        await _settle(d.simulator)
        _assert_equal_to_simulator(d, "okx", await _stored(d, "okx"))
    finally:
        await d.stop()


async def test_kill_9_and_a_restart_later_fill_the_downtime_from_the_last_stored_trade(tmp_path):
    """`coby run` (binance, okx, htx, mexc, kucoin in one daemon) against a simulator of its own is killed with
    SIGKILL (its last second of rows may be lost) and started again 20 s later: at start each market is filled
    from its last stored trade; the gap's event says gap_closed and the stored trades equal the simulator's
    full list (0 missing, 0 duplicated) - on kucoin, whose history is its last 100 trades, gap_narrowed with
    the count, only the downtime's oldest trades missing. The stored bars (1 s, 1 m, 1 h, 1 d) of every
    venue equal a recomputation from its stored trades: the downtime's bars were rebuilt, and those open
    across the restart were given the earlier process' part."""
    import signal
    import sqlite3
    import sys

    from coby.db import open_storage
    from coby.simulator.server import Simulator
    from tests.conftest import free_port

    venues = ("binance", "okx", "htx", "mexc", "kucoin")
    db = tmp_path / "coby.sqlite3"
    async with Simulator(exchanges=venues, symbols=(SYMBOL,), port=0, rate=40.0) as sim:
        env = {**os.environ, "COBY_EXCHANGES": ",".join(venues), "COBY_SYMBOLS": SYMBOL, "COBY_DB_URL": f"sqlite:///{db}",
               "COBY_EXCHANGE_URLS": f"*={sim.url}", "COBY_DATA_DIR": str(tmp_path / "d"), "COBY_LOG_LEVEL": "WARNING",
               "API_PORT": str(free_port())}

        def count(sql: str) -> int:
            try:
                with sqlite3.connect(db) as conn:
                    return conn.execute(sql).fetchone()[0]
            except sqlite3.Error:
                return 0

        async def run() -> asyncio.subprocess.Process:
            return await asyncio.create_subprocess_exec(sys.executable, "-m", "coby.cli", "run", env=env,
                                                        stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.DEVNULL)

        first = await run()
        try:
            async def stored() -> bool:
                return count("SELECT count(DISTINCT exchange) FROM trade_events") == len(venues)
            await _until(stored, 30, "trades stored by the first run")
            await asyncio.sleep(1.0)
        finally:
            first.send_signal(signal.SIGKILL)
            await first.wait()
        await asyncio.sleep(20.0)  # the daemon is down: every trade of these seconds is only in the venues' history
        second = await run()
        try:
            async def filled() -> bool:
                return count("SELECT count(*) FROM connection_events WHERE event LIKE 'gap_%'") >= len(venues)
            await _until(filled, 60, "the restart's gaps filled")
            await asyncio.sleep(3.0)  # the repaired bars stored by the ticks
            await _settle(sim)
        finally:
            second.send_signal(signal.SIGTERM)
            await second.wait()
        settings = make_settings(tmp_path, db_url=f"sqlite:///{db}", data_dir=str(tmp_path / "check"))
        storage = open_storage(settings, settings.db_url)
        await storage.start()
        try:
            class View:  # what _assert_equal_to_simulator reads of a daemon
                simulator = sim
            events = [e for e in await storage.get_connection_events() if e.event.startswith("gap_")]
            assert sorted(e.exchange for e in events) == sorted(venues), events
            for e in events:
                assert int(e.detail.split()[1]) > 40, e
                assert e.event == ("gap_narrowed" if e.exchange == "kucoin" else "gap_closed"), e
            for ex in venues:
                stored_trades = await storage.get_trades(SYMBOL, exchange=ex, limit=100_000)
                _assert_gaps(View, ex, [e for e in events if e.exchange == ex], stored_trades)
                await _assert_every_bar_recomputed(storage, sim, ex, stored_trades)
        finally:
            await storage.aclose()


async def _assert_every_bar_recomputed(storage, sim, exchange: str, stored: list) -> None:
    """Every stored 1 s, 1 m, 1 h and 1 d bar of the venue equals one recomputed from its stored trades (in
    trade order; open and close not compared where no order within a millisecond is known), and no bar of
    the stored trades is missing."""
    frames = ("1s", "1m", "1h", "1d")
    order = {_wire_id(exchange, t): t.trade_id for t in sim.market(exchange, SYMBOL).trades}
    builder = OHLCVBuilder(timeframes=frames, grace=0.0, consolidated=False)
    for t in sorted(stored, key=lambda t: (t.timestamp, order.get(t.trade_id, 0))):
        builder.add(t)
    last = max(round(t.timestamp.timestamp() * 1000) for t in stored)
    want = {(b.timeframe, b.timestamp): b for b in builder.advance(utc_from_ms(last + 2 * 86_400_000))}
    got = {}
    for tf in frames:
        got.update(((b.timeframe, b.timestamp), b) for b in await storage.get_ohlcv(SYMBOL, tf, exchange=exchange,
                                                                                   limit=100_000))
    assert sorted(got) == sorted(want), (exchange, set(got) ^ set(want))
    for key, w in want.items():
        g = got[key]
        assert (g.high, g.low, g.trade_count) == (w.high, w.low, w.trade_count), (exchange, key, g, w)
        if exchange not in ("bybit", "kucoin", "mexc"):
            assert (g.open, g.close) == (w.open, w.close), (exchange, key, g, w)
        assert g.volume == pytest.approx(w.volume, rel=1e-9) and g.vwap == pytest.approx(w.vwap, rel=1e-9), key


def test_the_backfill_setting_chooses_the_venues_filled(tmp_path):
    """``backfill`` names the venues filled ('*': every venue; empty: none)."""
    from coby.collector.backfill import Backfill
    every = Backfill(make_settings(tmp_path), None, None)
    assert [ex for ex in ("binance", "okx", "bybit", "kraken", "htx", "kucoin", "mexc") if every.enabled(ex)] == \
        ["binance", "okx", "bybit", "kraken", "htx", "kucoin", "mexc"]
    assert not Backfill(make_settings(tmp_path, backfill=()), None, None).enabled("binance")
    only = Backfill(make_settings(tmp_path, backfill=("okx",)), None, None)
    assert (only.enabled("okx"), only.enabled("binance")) == (True, False)


async def test_under_overload_the_fill_asks_no_page_until_the_overload_passes(tmp_path):
    """With the load governor saying overloaded (forced), a dropped connection's fill asks the venue for no
    page and stores nothing; once it is not overloaded the fill runs and closes the gap (0 missing)."""
    d = await _daemon(tmp_path, ["binance"])

    class Forced:
        overloaded = True
    try:
        d.backfill.load = Forced()
        await _until(lambda: _has_trades(d, ["binance"]), 20, "first trades")
        limit = d.simulator.venues["binance"].rest_limit
        d.simulator.venues["binance"].faults.stall(1.0)
        await asyncio.sleep(0.5)
        await d.simulator.inject("binance", "drop")
        served = limit.served

        async def paused() -> bool:
            return d.backfill.paused > 0
        await _until(paused, 20, "the fill waiting for the overload to pass")
        await asyncio.sleep(2.0)
        assert limit.served == served and not await _gap_events(d, "binance")
        Forced.overloaded = False
        await _until(lambda: _gap_events(d, "binance"), 20, "the gap's outcome")
        [event] = await _gap_events(d, "binance")
        assert event.event == "gap_closed" and int(event.detail.split()[1]) > 0, event
        assert limit.served > served
        await _settle(d.simulator)
        _assert_equal_to_simulator(d, "binance", await _stored(d, "binance"))
    finally:
        await d.stop()


async def test_a_start_with_the_database_down_waits_for_it_then_fills(tmp_path, pg_url):
    """A daemon stopped, trades made meanwhile, started again with PostgreSQL cut (tests/netproxy.py): its start
    fill waits for the database - no failure, no outcome while it is down - and once it answers reads the last
    stored trade and closes the gap: the stored trades equal the simulator's (0 missing, 0 duplicated)."""
    import psycopg

    from coby.errors import StorageUnavailable
    from coby.simulator.server import Simulator
    from tests.netproxy import TcpProxy

    symbol_sql = "DELETE FROM {} WHERE exchange = 'binance' AND symbol = %s"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for table in ("trade_events", "connection_events"):
            if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0]:
                conn.execute(symbol_sql.format(table), (SYMBOL,))
    proxy = await TcpProxy("127.0.0.1", 5432).start()
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    async with Simulator(exchanges=("binance",), symbols=(SYMBOL,), port=0, rate=40.0) as sim:
        def settings(name: str):
            return make_settings(tmp_path, db_url=url, exchanges=("binance",), symbols=(SYMBOL,), api_port=0,
                                 exchange_urls={"*": sim.url}, data_dir=str(tmp_path / name))
        first = Daemon(settings("first"))
        await first.start()
        try:
            await _until(lambda: _has_trades(first, ["binance"]), 20, "first trades")
        finally:
            await first.stop()
        await asyncio.sleep(1.5)  # trades made while no daemon runs
        proxy.cut()
        second = Daemon(settings("second"))
        try:
            await second.start()
            await asyncio.sleep(3.0)  # live trades flow into the journal; the start fill waits for the database
            assert second.backfill.status()["binance"] == {"closed": 0, "narrowed": 0, "trades": 0}
            proxy.restore()

            async def outcome() -> bool:
                try:
                    return bool(await _gap_events(second, "binance"))
                except StorageUnavailable:  # the writer probes the database every 0.5 s
                    return False
            await _until(outcome, 30, "the start fill's outcome")
            [event] = await _gap_events(second, "binance")
            assert event.event == "gap_closed" and int(event.detail.split()[1]) > 20, event
            second.simulator = sim  # what _assert_equal_to_simulator reads
            _assert_equal_to_simulator(second, "binance", await _stored(second, "binance"))
        finally:
            proxy.restore()
            await second.stop()
            await proxy.aclose()


def test_a_trade_validated_live_but_never_handed_on_is_recovered_not_rejected():
    """The rare binance flake (1 in ~12 runs, one trade missing after a fill): a live batch is validated - every
    id remembered as seen - and then handed on one trade at a time; a stream cancelled between the two (the
    watchdog, a drop) loses the rest of the batch, which the fill then fetched and the validator rejected as
    duplicates. Recovered trades are now checked with ``recovered=True``: accepted, counted in ``relost``."""
    from coby.collector.normalize import DataProcessor
    raw = {"id": "42", "timestamp": int(time.time() * 1000), "price": 30000.0, "amount": 0.5, "side": "buy",
           "info": {}}
    p = DataProcessor()
    assert len(p.process_trades([raw], "binance", SYMBOL)) == 1  # validated live ... and never handed on
    assert p.process_trades([raw], "binance", SYMBOL) == []  # what the fill used to get: a "duplicate"
    [t] = p.process_trades([raw], "binance", SYMBOL, recovered=True)
    assert (t.trade_id, p.relost) == ("42", 1)


def test_kucoin_nanoseconds_are_divided_exactly_live_and_fetched_alike():
    """ccxt parses kucoin's nanosecond times through a float (1 ms early for some values); coby times the
    trade from the raw integer - live and fetched alike, so the fill's content match finds the live copy (a
    trade stored twice in 2 of 8 runs before)."""
    from coby.collector.normalize import DataProcessor, trade_ms
    ns = 1796613530410000000
    assert int(float(ns)) // 1_000_000 != ns // 1_000_000  # what ccxt gets for this one
    raw = {"id": None, "timestamp": int(float(ns)) // 1_000_000, "price": 1.0, "amount": 1.0, "side": "buy",
           "info": {"time": ns}}
    assert trade_ms(raw, "kucoin") == 1796613530410 and trade_ms(raw, "binance") == raw["timestamp"]
    p = DataProcessor(max_age=1e12)
    [t] = p.process_trades([raw], "kucoin", SYMBOL)
    assert round(t.timestamp.timestamp() * 1000) == 1796613530410


def test_content_dedupe_counts_alike_trades():
    """By content (kucoin, mexc): of 3 fetched trades alike (same ms, price, amount, side) with 1 known live and
    1 stored (the same one: the larger count is taken), 2 are new, numbered on from the known one; an unlike
    trade known nowhere is new too."""
    from datetime import UTC, datetime

    from coby.collector.backfill_paging import LIVE_IDS, new_by_content
    from coby.collector.recentkeys import RecentKeys
    from coby.models import TradeEvent
    alike = {"timestamp": 1_000, "price": 30000.0, "amount": 0.5, "side": "buy", "id": None}
    other = {**alike, "price": 30001.0}
    live = RecentKeys(LIVE_IDS)
    live.push((1_000, 30000.0, 0.5, "buy"))
    stored = [TradeEvent(SYMBOL, "mexc", datetime.fromtimestamp(1.0, UTC), 30000.0, 0.5, "buy", "x", None)]
    new = new_by_content([alike, dict(alike), other, dict(alike)], live, stored)
    assert [r["id"] for r in new] == ["1000:30000.0:0.5:buy:1", "1000:30001.0:0.5:buy:0", "1000:30000.0:0.5:buy:2"]


def test_the_fillers_memory_of_live_trades_is_bounded_by_trade_id_memory(tmp_path):
    """The gap filler remembers at most ``trade_id_memory`` live trades per market (and at most 5,000): the
    one knob that bounds the memory of trade ids, which fills at the market's trade rate."""
    from datetime import timezone

    from coby.collector.backfill import Backfill
    from coby.config import Settings
    from coby.models import TradeEvent

    now = datetime.now(timezone.utc)
    for memory, held in ((100, 100), (50_000, 5_000)):
        s = Settings.load(env={}, data_dir=str(tmp_path), trade_id_memory=memory)
        fill = Backfill(s, None, None)
        for i in range(6_000):
            fill.observe(TradeEvent("BTC-USDT", "binance", now, 30_000.0, 0.1, "buy", str(i), now))
        assert len(fill._live[("binance", "BTC-USDT")]) == held
