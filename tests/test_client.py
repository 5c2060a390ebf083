"""coby.client against a real daemon fed by the simulator (ten venues, PostgreSQL, Redis, a bearer token):
typed live events, replay of a recorded span equal to what was stored, a daemon restart survived
mid-stream, clear errors. One daemon shared by the module; the restart test replaces it."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import pytest_asyncio
import redis.asyncio as redis

from coby.client import AuthError, ClientError, CobyClient, Event, Gap, Reconnected, ReplayFinished
from coby.models import (ConnectionStatus, ConsolidatedOrderBook, HeatmapData, ImbalanceMetrics, OHLCVBar,
                         OrderBookMetrics, OrderBookSnapshot, TradeEvent, utcnow)
from tests.conftest import REDIS_URL, TABLES, RunningDaemon, free_port, make_settings

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]
TOKEN = "client-test-token"
SYM = "BTC-USDT"
CHANNELS = [f"trades:{SYM}", f"consolidated:{SYM}", f"book:okx:{SYM}", f"book:binance:{SYM}", f"metrics:{SYM}",
            f"heatmap:{SYM}", f"ohlcv:{SYM}:1m", "status"]
TYPES = {"trades": TradeEvent, "consolidated": ConsolidatedOrderBook, "book": OrderBookSnapshot,
         "heatmap": HeatmapData, "ohlcv": OHLCVBar, "metrics": dict, "status": dict}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def coby(pg_url, tmp_path_factory):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('trade_events')").fetchone()[0]:
            conn.execute(f"TRUNCATE {', '.join(TABLES)}")
    async with redis.Redis.from_url(REDIS_URL) as r:
        await r.flushdb()  # no latest state left by an earlier daemon
    settings = make_settings(tmp_path_factory.mktemp("client"), db_url=pg_url, redis_url=REDIS_URL, simulate=True,
                             simulator_port=0, api_port=free_port(), api_token=TOKEN, flush_interval=0.2,
                             snapshot_interval=0.5, ohlcv_grace=0.5, heatmap_interval=1.0)
    running = RunningDaemon(settings)
    await running.start()
    yield running
    await running.stop()


def client(coby: RunningDaemon, **kw: Any) -> CobyClient:
    return CobyClient(coby.url, token=TOKEN, timeout=5.0, backoff_initial=0.1, backoff_max=0.5, **kw)


async def _collect(source: Any, until: Any, timeout: float = 20.0) -> list:
    """Items of ``source`` until ``until(items)`` holds (fails after ``timeout`` s)."""
    items: list = []
    async with asyncio.timeout(timeout):
        async for item in source:
            items.append(item)
            if until(items):
                return items
    return items


def _by_channel(items: list) -> dict[str, list[Event]]:
    out: dict[str, list[Event]] = {}
    for it in items:
        if isinstance(it, Event):
            out.setdefault(it.channel, []).append(it)
    return out


def _envelope(channel: str, seq: int, received: str, data: Any) -> str:
    return orjson.dumps({"channel": channel, "type": "update", "seq": seq, "ts": None, "received": received,
                         "data": data}).decode()


async def test_sequence_rules_drop_duplicates_and_surface_gaps_on_queued_channels():
    """Per channel: a seq already delivered is dropped; a jump on trades/ohlcv queues a Gap before the event
    (not on book-like channels); a seq going back with a later receive time is a restarted numbering
    (Gap with missing None); after a reconnect the first message is delivered whatever its seq."""
    sub = CobyClient("http://127.0.0.1:9").stream(["trades:BTC-USDT"])  # never connected: fed by hand
    trade = {"symbol": SYM, "exchange": "okx", "timestamp": "2026-01-01T00:00:00Z", "price": 1.0, "size": 1.0,
             "side": "buy", "trade_id": "1"}
    feed = [("trades:BTC-USDT", 1, "2026-01-01T00:00:01Z"), ("trades:BTC-USDT", 1, "2026-01-01T00:00:01Z"),
            ("trades:BTC-USDT", 4, "2026-01-01T00:00:02Z"), ("status", 7, "2026-01-01T00:00:02Z"),
            ("status", 7, "2026-01-01T00:00:02Z"), ("status", 9, "2026-01-01T00:00:03Z"),
            ("trades:BTC-USDT", 2, "2026-01-01T00:00:09Z")]
    for channel, seq, received in feed:
        sub._on_text(_envelope(channel, seq, received, trade if channel.startswith("trades") else {"exchanges": {}}))
    got = [(type(i).__name__, getattr(i, "channel", ""), getattr(i, "seq", None) or getattr(i, "reason", None))
           for i in sub._pending]
    assert got == [("Event", "trades:BTC-USDT", 1), ("Gap", "trades:BTC-USDT", "sequence"),
                   ("Event", "trades:BTC-USDT", 4), ("Event", "status", 7),
                   ("Event", "status", 9), ("Gap", "trades:BTC-USDT", "restart"),
                   ("Event", "trades:BTC-USDT", 2)]
    gaps = [i for i in sub._pending if isinstance(i, Gap)]
    assert [g.missing for g in gaps] == [2, None]
    sub._pending.clear()
    sub._fresh = {"trades:BTC-USDT"}  # as after a reconnect
    sub._on_text(_envelope("trades:BTC-USDT", 6, "2026-01-01T00:00:10Z", trade))
    assert [(type(i).__name__, getattr(i, "missing", None)) for i in sub._pending] == [("Gap", 3), ("Event", None)]
    assert sub._pending[0].reason == "reconnect"
    await sub.aclose()


async def test_live_stream_yields_typed_events_from_several_venues(coby):
    """stream() yields Events whose data is coby's own model class for each channel kind, trades from
    several venues, book-like channels starting with the server's snapshot, seqs increasing."""
    def enough(items: list) -> bool:
        chans = _by_channel(items)
        venues = {e.data.exchange for e in chans.get(f"trades:{SYM}", [])}
        return len(chans) == len(CHANNELS) and len(venues) >= 5

    async with asyncio.timeout(20):  # a stored state to be sent as the snapshot
        while not (await coby.daemon.cache.get_latest("consolidated", SYM)
                   and await coby.daemon.cache.get_latest("status", "*")):
            await asyncio.sleep(0.1)
    async with client(coby) as c:
        items = await _collect(c.stream(CHANNELS), enough)
    chans = _by_channel(items)
    assert set(chans) == set(CHANNELS)
    for channel, events in chans.items():
        want = TYPES[channel.split(":", 1)[0]]
        assert all(type(e.data) is want and e.replay is None for e in events), channel
        seqs = [e.seq for e in events]
        assert seqs == sorted(set(seqs)), f"{channel}: seqs not increasing: {seqs[:10]}"
    assert len({e.data.exchange for e in chans[f"trades:{SYM}"]}) >= 5
    assert chans[f"consolidated:{SYM}"][0].kind == "snapshot" and chans["status"][0].kind == "snapshot"
    metrics = chans[f"metrics:{SYM}"][-1].data
    assert all(type(m) is OrderBookMetrics for m in metrics["metrics"].values())
    assert all(type(m) is ImbalanceMetrics for m in metrics["imbalance"].values())
    assert all(type(s) is ConnectionStatus for s in chans["status"][-1].data["exchanges"].values())
    assert not [it for it in items if isinstance(it, (Gap, Reconnected))]


async def test_rest_helpers_return_models(coby):
    """The REST helpers give the latest book, consolidated book, metrics and heatmap, and stored trades and
    candles followed across pages, as model objects."""
    async with asyncio.timeout(20):
        while len(await coby.daemon.storage.get_trades(SYM, exchange="binance", limit=12)) < 12:
            await asyncio.sleep(0.2)
    async with client(coby, page_size=4) as c:
        book = await c.latest_book("okx", SYM, depth=5)
        assert type(book) is OrderBookSnapshot and book.exchange == "okx" and len(book.bids) == 5
        cons = await c.consolidated_book(SYM, depth=3)
        assert type(cons) is ConsolidatedOrderBook and len(cons.asks) <= 3 and cons.exchanges
        assert type((await c.metrics(SYM))["imbalance"]["consolidated"]) is ImbalanceMetrics
        assert type(await c.heatmap(SYM)) is HeatmapData
        trades = await c.trades(SYM, utcnow() - timedelta(minutes=5), limit=10)
        assert len(trades) == 10 and all(type(t) is TradeEvent for t in trades)  # pages of 4, 4 and 2
        assert [t.timestamp for t in trades] == sorted(t.timestamp for t in trades)
        newest = await c.trades(SYM, exchange="binance", limit=3, order="desc")
        assert [t.exchange for t in newest] == ["binance"] * 3 and newest[0].timestamp >= newest[-1].timestamp
        bars = await c.ohlcv(SYM, "1m", utcnow() - timedelta(minutes=5))
        assert all(type(b) is OHLCVBar and b.exchange is None for b in bars)
        with pytest.raises(ClientError, match="unknown symbol") as err:
            await c.consolidated_book("DOGE-USDT")
        assert err.value.status == 404 and not isinstance(err.value, AuthError)


async def test_replay_yields_the_same_types_and_the_stored_events(coby):
    """A replay of a recorded span yields the same event types per channel as the live stream, every trade
    stored in the span - equal as models, in storage order - and the stored books of a venue, then
    ReplayFinished."""
    channels = [f"trades:{SYM}", f"consolidated:{SYM}", f"book:okx:{SYM}", f"metrics:{SYM}"]
    start = utcnow()
    async with client(coby) as c:
        live = await _collect(c.stream(channels), lambda items: len(_by_channel(items)) == len(channels))
        await asyncio.sleep(max(0.0, 3.0 - (utcnow() - start).total_seconds()))
        end = utcnow()
        await asyncio.sleep(1.5)  # trades stamped before `end` arrive and are flushed (flush_interval 0.2)
        replayed = await _collect(c.replay(start, end, channels, speed=0, symbols=[SYM]),
                                  lambda items: isinstance(items[-1], ReplayFinished), timeout=60)
    finished = replayed[-1]
    assert isinstance(finished, ReplayFinished) and finished.state == "finished" and finished.error is None
    events = [it for it in replayed if isinstance(it, Event)]
    assert len(events) == len(replayed) - 1 and {e.replay for e in events} == {finished.replay}
    live_types = {ch: {type(e.data) for e in evs} for ch, evs in _by_channel(live).items()}
    assert {ch: {type(e.data) for e in evs} for ch, evs in _by_channel(events).items()} == live_types

    storage = coby.daemon.storage
    stored = await storage.get_trades(SYM, start, end, limit=1_000_000)
    got = [e.data for e in events if e.channel == f"trades:{SYM}"]
    assert len(stored) > 20 and got == stored
    books = await storage.get_snapshots(SYM, start, end, exchange="okx", limit=1_000_000)
    got_books = [e.data for e in events if e.channel == f"book:okx:{SYM}" and e.data.timestamp >= start]
    assert len(books) >= 3 and got_books == books


async def test_replay_without_channels_delivers_the_stored_events_of_its_filters(coby):
    """replay() without channels subscribes to what storage holds - trades and each venue's book - of the
    symbols and exchanges it is narrowed to."""
    async with client(coby) as c:
        items = await _collect(c.replay(utcnow() - timedelta(seconds=2), utcnow(), symbols=[SYM],
                                        exchanges=["okx", "kraken"], speed=0),
                               lambda items: isinstance(items[-1], ReplayFinished))
    chans = _by_channel(items)
    assert set(chans) == {f"trades:{SYM}", f"book:okx:{SYM}", f"book:kraken:{SYM}"}
    assert {e.data.exchange for e in chans[f"trades:{SYM}"]} <= {"okx", "kraken"}


async def test_closing_a_replay_early_stops_its_session(coby):
    """A replay of a channel spelt in lower case delivers it (canonical name); aclose() on the unfinished
    replay stops the session on the server; aclose is idempotent."""
    async with client(coby) as c:
        oldest = (await coby.daemon.storage.get_trades(SYM, limit=1))[0].timestamp
        sub = c.replay(oldest, oldest + timedelta(minutes=5), ["trades:btc-usdt"], speed=1)  # minutes to run
        first = await anext(sub)
        assert isinstance(first, Event) and first.replay and first.channel == f"trades:{SYM}"
        await sub.aclose()
        await sub.aclose()
        assert coby.daemon.replay.get_replay_status(first.replay).state.value == "stopped"
        with pytest.raises(StopAsyncIteration):
            await anext(sub)
    await c.aclose()


async def test_bad_or_missing_token_raises_auth_error_with_the_servers_message(coby):
    """A wrong or missing token fails the stream and the REST helpers with AuthError carrying the server's
    message; an invalid channel fails with ClientError naming it; no retries for either."""
    for token, message in (("wrong", "missing or wrong bearer token"), (None, "bearer token required")):
        async with CobyClient(coby.url, token=token, timeout=5.0) as c:
            with pytest.raises(AuthError, match=message) as err:
                await anext(c.stream([f"trades:{SYM}"]))
            assert err.value.status == 401 and "token=" in str(err.value)
            with pytest.raises(AuthError, match=message):
                await c.latest_book("okx", SYM)
            with pytest.raises(AuthError, match=message):
                await anext(c.replay(utcnow() - timedelta(seconds=5), utcnow(), [f"trades:{SYM}"]))
    async with client(coby) as c:
        with pytest.raises(ClientError, match="unknown symbol 'DOGE-USDT'"):
            await anext(c.stream(["trades:DOGE-USDT"]))
        with pytest.raises(ClientError, match="start must be before end") as err:
            await anext(c.replay(utcnow(), utcnow() - timedelta(seconds=5), [f"trades:{SYM}"]))
        assert err.value.status == 400
    async with CobyClient(f"http://127.0.0.1:{free_port()}", timeout=2.0) as c:
        with pytest.raises(ClientError, match="cannot reach coby"):
            await anext(c.stream([f"trades:{SYM}"]))


async def test_orchestrator_example_runs_unchanged_on_stream_and_replay(coby):
    """examples/orchestrator.py's loop consumes client.stream and client.replay with the same code."""
    path = Path(__file__).parent.parent / "examples" / "orchestrator.py"
    spec = importlib.util.spec_from_file_location("coby_example_orchestrator", path)
    example = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(example)
    channels = [f"consolidated:{SYM}", f"trades:{SYM}"]
    start = utcnow()
    async with client(coby) as c:
        live = example.ImbalanceStrategy(threshold=0.0)
        async with asyncio.timeout(20):
            await example.run(c.stream(channels), live, max_events=150)
        end = utcnow()
        await asyncio.sleep(1.0)
        replayed = example.ImbalanceStrategy(threshold=0.0)
        async with asyncio.timeout(30):
            await example.run(c.replay(start, end, channels, speed=0, symbols=[SYM]), replayed)
    for strategy in (live, replayed):
        assert strategy.books > 0 and strategy.trades > 0 and strategy.last_price and strategy.signals
    assert replayed.notes[-1].startswith("replay ") and "finished" in replayed.notes[-1]


async def test_daemon_restart_mid_stream_is_survived(coby):
    """The whole daemon stops and a new one starts on the same port: the stream goes on by itself with a
    Reconnected event, the consolidated book's snapshot re-read, then the new daemon's books and trades.
    With Redis the trades' numbering goes on from the channel's stream (coby.streams) and the client resumes
    from the last seq it received: no message twice, none missing, no Gap."""
    channels = [f"trades:{SYM}", f"consolidated:{SYM}"]
    restarted = float("inf")

    def resumed(items: list) -> dict[str, list[Event]]:
        i = next((n for n, it in enumerate(items) if isinstance(it, Reconnected)), len(items))
        return _by_channel(items[i + 1:])

    def new_daemon_heard(items: list) -> bool:
        chans = resumed(items)
        return all(any(e.received.timestamp() >= restarted for e in chans.get(ch, ())) for ch in channels)

    async with client(coby) as c:
        sub = c.stream(channels)
        before = await _collect(sub, lambda items: len(_by_channel(items)) == 2)

        async def restart() -> None:  # while the stream is being read
            nonlocal restarted
            await coby.stop()
            await asyncio.sleep(1.0)  # a few refused reconnects
            restarted = time.time()
            await coby.start()

        restarting = asyncio.get_running_loop().create_task(restart())
        after = await _collect(sub, new_daemon_heard, timeout=30)
        await restarting
        await sub.aclose()
    assert not any(isinstance(i, (Reconnected, Gap)) for i in before)
    i = next(n for n, item in enumerate(after) if isinstance(item, Reconnected))
    rec = after[i]
    assert set(rec.channels) == set(channels) and rec.attempts >= 2 and rec.downtime >= 1.0
    assert "server shutting down" in rec.reason
    chans = resumed(after)
    assert chans[f"consolidated:{SYM}"][0].kind == "snapshot"
    trades = [e.seq for e in _by_channel(before + after[:i]).get(f"trades:{SYM}", [])]
    resumed_trades = [e.seq for e in chans[f"trades:{SYM}"]]
    assert resumed_trades == list(range(trades[-1] + 1, trades[-1] + 1 + len(resumed_trades)))
    assert any(e.received.timestamp() >= restarted for e in chans[f"trades:{SYM}"])
    assert not [g for g in after[i + 1:] if isinstance(g, Gap)]


async def test_a_replay_cut_by_a_daemon_stop_raises_a_clear_error(coby):
    """A daemon that stops in the middle of a replay ends the iteration with a ClientError saying the session
    is gone unfinished - not a silent end, a hang, or a reconnect to a session that no longer exists."""
    async with asyncio.timeout(20):
        while not (trades := await coby.daemon.storage.get_trades(SYM, limit=1)):
            await asyncio.sleep(0.2)
    async with client(coby) as c:
        sub = c.replay(trades[0].timestamp, trades[0].timestamp + timedelta(minutes=5), [f"trades:{SYM}"], speed=1)
        first = await anext(sub)
        assert isinstance(first, Event) and first.replay
        stopping = asyncio.get_running_loop().create_task(coby.stop())
        try:
            with pytest.raises(ClientError, match=f"replay session {first.replay} no longer exists") as err:
                async with asyncio.timeout(20):
                    async for _ in sub:
                        pass
            assert err.value.status == 404
        finally:
            await stopping
            await coby.start()
