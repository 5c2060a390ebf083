"""Replay sessions: storage -> pipeline -> the session's bus, in time order, paced, paused, sought.

Pacing tests run on ``ManualClock`` (time moves when the test says so), except one real-clock
check of the 10x speed with a +-10% bound on a one-second span.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from coby.cache import MemoryCache
from coby.db import open_storage
from coby.models import (
    ConnectionEvent, OrderBookSnapshot, PriceLevel, ReplayState, TradeEvent, utc_from_ms,
)
from coby.replay import (
    InvalidReplayRequest, ReplayConflict, ReplayLimitReached, ReplayManager, ReplayNotFound, parse_time,
)
from coby.api.replay_bus import ReplayBus, ReplayEnded
from coby.api.replay_clock import ManualClock
from coby.api.replay_stream import merged_events
from tests.conftest import make_settings

T0 = utc_from_ms(1_790_000_040_000)  # a minute boundary
VENUES = ("binance", "okx", "kraken")


def ms(n: float) -> timedelta:
    return timedelta(milliseconds=n)


def trade(venue: str, at: timedelta, i: int, symbol: str = "BTC-USDT", price: float = 30000.0) -> TradeEvent:
    ts = T0 + at
    return TradeEvent(symbol, venue, ts, price + (i % 17) * 0.5, 0.01 * (1 + i % 5), "buy" if i % 3 else "sell",
                      f"{venue}-{i}", ts + ms(2))


def book(venue: str, at: timedelta, seq: int, symbol: str = "BTC-USDT", mid: float = 30000.0) -> OrderBookSnapshot:
    ts = T0 + at
    bids = tuple(PriceLevel(mid - 0.5 - k, 1.0 + k + seq % 3) for k in range(5))
    asks = tuple(PriceLevel(mid + 0.5 + k, 1.5 + k + seq % 2) for k in range(5))
    return OrderBookSnapshot(symbol, venue, ts, bids, asks, seq, ts + ms(1))


async def store(storage: Any, *items: Any) -> None:
    for it in items:
        if isinstance(it, TradeEvent):
            await storage.store_trade(it)
        elif isinstance(it, OrderBookSnapshot):
            await storage.store_orderbook(it)
        else:
            await storage.store_connection_event(it)
    await storage.flush()


def settings_for(tmp_path: Path, storage: Any, **kw: Any):
    base = dict(db_url=storage.settings.db_url, exchanges=",".join(VENUES), symbols="BTC-USDT,ETH-USDT")
    base.update(kw)
    return make_settings(tmp_path, **base)


async def until(cond: Any, timeout: float = 10.0) -> None:
    """Wait (real time) until ``cond()`` holds."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


async def read_all(sub: Any) -> list[dict]:
    return [orjson.loads(p) | {"_channel": ch} async for ch, p in sub]


class Collector:
    """Stands where the pipeline's storage would be: keeps what the replay would have stored."""

    def __init__(self) -> None:
        self.ohlcv: list = []
        self.heatmaps: list = []
        self.rows = 0

    async def store_trade(self, t: Any) -> bool:
        self.rows += 1
        return True

    async def store_orderbook(self, b: Any) -> bool:
        return True

    async def store_connection_event(self, e: Any) -> bool:
        return True

    async def store_ohlcv(self, bar: Any) -> bool:
        self.ohlcv.append(bar)
        return True

    async def store_heatmap(self, h: Any) -> bool:
        self.heatmaps.append(h)
        return True


# --- order -------------------------------------------------------------------------------------------
async def test_events_from_every_venue_and_table_arrive_in_time_order(storage, tmp_path):
    """Trades, books and connection events of three venues come out merged by timestamp, read in chunks
    of 7 rows; at one timestamp a connection event precedes a book, which precedes a trade."""
    items: list[Any] = []
    for k, venue in enumerate(VENUES):  # each venue on its own irregular clock
        items += [trade(venue, ms(13 * i + 5 * k + (i * i) % 11), i) for i in range(60)]
        items += [book(venue, ms(100 * i + 3 * k), i) for i in range(8)]
    tie = ms(1500)
    items += [trade("okx", tie, 1000), book("kraken", tie, 99),
              ConnectionEvent("binance", None, T0 + tie, "disconnected", "test")]
    await store(storage, *items)
    s = settings_for(tmp_path, storage, replay_chunk=7, book_publish_interval=0)  # every book published
    manager = ReplayManager(s, storage)
    sid = manager.create_replay_session(T0, T0 + timedelta(seconds=2), speed=0)
    assert manager.get_replay_status(sid).start.isoformat() == "2026-09-21T14:14:00+00:00"
    sub = manager.session(sid).bus.subscribe("*")
    await manager.start_replay(sid)
    got = await read_all(sub)
    events = [m for m in got if m["_channel"].split(":")[0] in ("trades", "book", "status")]
    stamps = [parse_time(m["ts"]) for m in events]
    assert stamps == sorted(stamps)
    assert sum(m["_channel"].startswith("trades:") for m in events) == 181
    assert sum(m["_channel"].startswith("book:") for m in events) == 25
    at_tie = [m["_channel"].split(":")[0] for m, at in zip(events, stamps) if at == T0 + tie]
    assert at_tie == ["status", "book", "trades"]
    assert all(m["replay"] == sid for m in got)
    st = manager.get_replay_status(sid)
    assert st.state == ReplayState.FINISHED and st.events_emitted == 181 + 25 + 1 and st.progress == 1.0
    await manager.aclose()


class _ChunkedStorage:
    """A storage stand-in whose trade iterator counts what it has handed out."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.handed = 0

    async def iter_trades(self, start: Any, end: Any, chunk: int = 5000, **_: Any):
        for i in range(0, self.n, chunk):
            rows = [trade("binance", ms(j), j) for j in range(i, min(i + chunk, self.n))]
            self.handed += len(rows)
            yield rows

    async def iter_snapshots(self, start: Any, end: Any, **_: Any):
        return
        yield

    async def iter_connection_events(self, start: Any, end: Any, **_: Any):
        return
        yield


async def test_merge_holds_a_bounded_number_of_rows_whatever_the_range():
    """Memory does not grow with the range: the merge never holds more than two chunks of a source."""
    src = _ChunkedStorage(20_000)
    seen = worst = 0
    async for batch in merged_events(src, T0, T0 + timedelta(hours=1), chunk=100):
        seen += len(batch)
        worst = max(worst, src.handed - seen)
    assert seen == 20_000 and worst <= 2 * 100


# --- speed -------------------------------------------------------------------------------------------
async def _ten_second_span(storage: Any) -> None:
    await store(storage, *(trade(VENUES[i % 3], ms(50 * i), i) for i in range(201)))  # T0 .. T0+10 s


async def test_ten_seconds_at_10x_take_one_second_of_the_clock(storage, tmp_path):
    """Speed 10 maps a 10 s span onto 1 s of the (injected) clock; the events keep their spacing."""
    await _ten_second_span(storage)
    clock = ManualClock(auto=True)
    manager = ReplayManager(settings_for(tmp_path, storage), storage, clock=clock, sleep=clock.sleep)
    sid = manager.create_replay_session(T0, T0 + timedelta(seconds=10), speed=10)
    session = manager.session(sid)
    sub = session.bus.subscribe("trades:BTC-USDT")
    began = clock()
    await manager.start_replay(sid)
    seen = []
    async for _, payload in sub:
        seen.append((clock() - began, orjson.loads(payload)["data"]["timestamp"]))
    elapsed = clock() - began
    assert abs(elapsed - 1.0) <= 0.1 and len(seen) == 200
    # no event is delivered before its due time: event i is due at i * 5 ms
    late = [(i, at) for i, (at, _) in enumerate(seen) if at < i * 0.005 - 1e-6]  # float seconds since 1970
    assert not late, late[:5]
    await manager.aclose()


async def test_ten_seconds_at_10x_take_one_second_of_real_time(storage, tmp_path):
    """The same on the real clock: first to last event of a 10 s span at 10x in 1 s +- 10%."""
    await store(storage, *(trade(VENUES[i % 3], ms(50 * i), i) for i in range(201)))
    manager = ReplayManager(settings_for(tmp_path, storage), storage)
    sid = manager.create_replay_session(T0, T0 + timedelta(seconds=10, milliseconds=1), speed=10)
    sub = manager.session(sid).bus.subscribe("trades:BTC-USDT")
    await manager.start_replay(sid)
    stamps = [time.monotonic() async for _ in sub]
    assert len(stamps) == 201
    assert 0.9 <= stamps[-1] - stamps[0] <= 1.1
    await manager.aclose()


async def test_speed_zero_waits_for_a_slow_reader_and_drops_nothing(storage, tmp_path):
    """At speed 0 the session runs as fast as its subscriber reads: a full queue holds it back, and
    every message arrives, in sequence."""
    await store(storage, *(trade(VENUES[i % 3], ms(7 * i), i) for i in range(400)))
    manager = ReplayManager(settings_for(tmp_path, storage, replay_queue_size=5), storage)
    sid = manager.create_replay_session(T0, T0 + timedelta(seconds=5), speed=0)
    session = manager.session(sid)
    sub = session.bus.subscribe("trades:BTC-USDT")
    await manager.start_replay(sid)
    await until(lambda: session.bus.blocked_since is not None)
    held_at = session.events
    await asyncio.sleep(0.05)
    assert session.events == held_at and session.state == ReplayState.RUNNING  # waiting for the reader
    seqs = []
    async for _, payload in sub:
        seqs.append(orjson.loads(payload)["seq"])
        await asyncio.sleep(0)
    assert seqs == list(range(1, 401)) and sub.dropped == 0
    assert manager.get_replay_status(sid).state == ReplayState.FINISHED
    await manager.aclose()


# --- pause, resume, seek, stop ------------------------------------------------------------------------
async def _second_by_second(storage: Any) -> None:
    await store(storage, *(trade("binance", timedelta(seconds=k), k) for k in range(10)),
                *(book("okx", timedelta(seconds=k), k) for k in range(0, 10, 2)))


def _trade_ids(messages: list[tuple[str, bytes]]) -> list[str]:
    return [orjson.loads(p)["data"]["trade_id"] for ch, p in messages if ch.startswith("trades:")]


async def _drain(sub: Any, into: list) -> None:
    while not sub.queue.empty():
        into.append(await sub.get())


async def test_pause_holds_and_resume_continues_from_the_next_event(storage, tmp_path):
    """Paused, no event leaves however long the clock runs; resumed, the next event comes after the
    wait that remained when the session paused - nothing skipped, nothing repeated."""
    await _second_by_second(storage)
    clock = ManualClock()
    manager = ReplayManager(settings_for(tmp_path, storage), storage, clock=clock, sleep=clock.sleep)
    sid = manager.create_replay_session(T0, T0 + timedelta(seconds=10), speed=1)
    session = manager.session(sid)
    sub = session.bus.subscribe("trades:BTC-USDT")
    got: list = []
    await manager.start_replay(sid)
    await until(lambda: clock.sleepers == 1)
    await clock.advance(1.0)
    await until(lambda: clock.sleepers == 1 and session.events >= 3)
    await _drain(sub, got)
    assert _trade_ids(got) == ["binance-0", "binance-1"]
    await clock.advance(0.4)
    await manager.pause_replay(sid)
    assert manager.get_replay_status(sid).state == ReplayState.PAUSED
    await clock.advance(100.0)
    await asyncio.sleep(0.05)
    await _drain(sub, got)
    assert _trade_ids(got) == ["binance-0", "binance-1"]
    await manager.resume_replay(sid)
    await clock.advance(0.5)
    await asyncio.sleep(0.05)
    await _drain(sub, got)
    assert _trade_ids(got) == ["binance-0", "binance-1"]  # 0.6 s remained
    await clock.advance(0.1)
    await until(lambda: not sub.queue.empty())
    await _drain(sub, got)
    assert _trade_ids(got) == ["binance-0", "binance-1", "binance-2"]
    with pytest.raises(ReplayConflict):
        await manager.resume_replay(sid)
    await manager.aclose()


async def test_seek_restarts_at_the_new_time_with_the_books_of_that_moment(storage, tmp_path):
    """Seek forward and back: the next trade is the first at or after the target, the venue's latest
    book before the target is delivered first, and sequence numbers keep increasing."""
    await _second_by_second(storage)
    clock = ManualClock()
    manager = ReplayManager(settings_for(tmp_path, storage), storage, clock=clock, sleep=clock.sleep)
    sid = manager.create_replay_session(T0, T0 + timedelta(seconds=10), speed=1)
    session = manager.session(sid)
    sub = session.bus.subscribe("trades:BTC-USDT", "book:okx:BTC-USDT")
    got: list = []
    await manager.start_replay(sid)
    await until(lambda: clock.sleepers == 1)
    await manager.seek_replay(sid, T0 + timedelta(seconds=6.5))
    assert manager.get_replay_status(sid).position == T0 + timedelta(seconds=6.5)
    await until(lambda: clock.sleepers == 1)
    await clock.advance(0.5)
    await until(lambda: clock.sleepers == 1 and session.events >= 4)
    await manager.seek_replay(sid, (T0 + timedelta(seconds=1.5)).isoformat())
    await until(lambda: clock.sleepers == 1)
    await clock.advance(0.5)
    await until(lambda: clock.sleepers == 1 and session.events >= 7)
    await _drain(sub, got)
    order = [(ch.split(":")[0], orjson.loads(p)["data"].get("trade_id") or orjson.loads(p)["data"]["sequence_id"])
             for ch, p in got]
    assert order == [("book", 0), ("trades", "binance-0"),  # the start
                     ("book", 6), ("trades", "binance-7"),  # seek to +6.5 s
                     ("book", 0), ("book", 2), ("trades", "binance-2")]  # seek back to +1.5 s
    trade_seqs = [orjson.loads(p)["seq"] for ch, p in got if ch.startswith("trades:")]
    assert trade_seqs == sorted(trade_seqs) and len(set(trade_seqs)) == 3
    with pytest.raises(InvalidReplayRequest):
        await manager.seek_replay(sid, T0 + timedelta(seconds=11))
    await manager.aclose()


async def test_stop_ends_the_subscribers_stream(storage, tmp_path):
    """Stopping a running session ends every subscriber's iteration; the session stays readable as
    stopped until reaped, and refuses further control."""
    await _second_by_second(storage)
    clock = ManualClock()
    manager = ReplayManager(settings_for(tmp_path, storage), storage, clock=clock, sleep=clock.sleep)
    sid = manager.create_replay_session(T0, T0 + timedelta(seconds=10), speed=1)
    sub = manager.session(sid).bus.subscribe("*")
    await manager.start_replay(sid)
    await until(lambda: clock.sleepers == 1)
    await manager.stop_replay(sid)
    got = await asyncio.wait_for(read_all(sub), 5)
    assert got and got[-1]["_channel"] == "replay" and got[-1]["data"]["event"] == "stopped"
    assert manager.get_replay_status(sid).state == ReplayState.STOPPED
    with pytest.raises(ReplayConflict):
        await manager.start_replay(sid)
    with pytest.raises(ReplayEnded):
        await sub.get()
    await manager.aclose()


# --- gaps ------------------------------------------------------------------------------------------------
async def test_stored_connection_events_become_explicit_gaps(storage, tmp_path):
    """A disconnect and the reconnect after it become a gap opened then closed (with its duration); a
    gap already open at the start of the range is announced first."""
    await store(storage,
                ConnectionEvent("okx", None, T0 - timedelta(seconds=1), "stale", "no book for 10 s"),
                *(trade("binance", timedelta(seconds=k), k) for k in range(8)),
                ConnectionEvent("kraken", "BTC-USDT", T0 + timedelta(seconds=2), "disconnected", "reset by peer"),
                ConnectionEvent("okx", None, T0 + timedelta(seconds=3), "connected", ""),
                ConnectionEvent("kraken", "BTC-USDT", T0 + timedelta(seconds=5), "connected", ""))
    manager = ReplayManager(settings_for(tmp_path, storage), storage)
    sid = manager.create_replay_session(T0, T0 + timedelta(seconds=8), speed=0)
    sub = manager.session(sid).bus.subscribe("gap", "status")
    await manager.start_replay(sid)
    got = await read_all(sub)
    gaps = [(m["data"]["exchange"], m["data"]["state"], m["data"]["duration_s"]) for m in got if m["_channel"] == "gap"]
    assert gaps == [("okx", "open", None), ("kraken", "open", None), ("okx", "closed", 4.0),
                    ("kraken", "closed", 3.0)]
    assert [m["data"]["event"]["event"] for m in got if m["_channel"] == "status"] == \
        ["disconnected", "connected", "connected"]
    await manager.aclose()


# --- filters, limits, reaping ----------------------------------------------------------------------------
async def test_filters_keep_to_the_venues_symbols_and_channels_asked(storage, tmp_path):
    """exchanges=, symbols= narrow what is read; channels= what is published."""
    await store(storage, *(trade(VENUES[i % 3], ms(10 * i), i, symbol=("BTC-USDT", "ETH-USDT")[i % 2])
                           for i in range(60)), *(book("okx", ms(100 * i), i) for i in range(5)))
    manager = ReplayManager(settings_for(tmp_path, storage), storage)
    sid = manager.create_replay_session(T0, T0 + timedelta(seconds=1), 0, exchanges=["okx", "Binance"],
                                        symbols=["eth/usdt"], channels=["trades"])
    sub = manager.session(sid).bus.subscribe("*")
    await manager.start_replay(sid)
    got = await read_all(sub)
    assert got and {m["_channel"] for m in got} == {"trades:ETH-USDT"}
    assert {m["data"]["exchange"] for m in got} == {"okx", "binance"}
    assert len(got) == 20
    await manager.aclose()


async def test_requests_outside_the_limits_are_refused(storage, tmp_path):
    """Bad ranges, speeds and names are refused with a clear error, as is a session over the limit."""
    manager = ReplayManager(settings_for(tmp_path, storage, replay_max_sessions=2, replay_max_range_days=1),
                            storage)
    end = T0 + timedelta(hours=1)
    for kwargs, needle in [({"start": end, "end": T0}, "before"),
                           ({"end": T0 + timedelta(days=2)}, "replay_max_range_days"),
                           ({"speed": -1}, "speed"), ({"speed": float("nan")}, "speed"), ({"speed": "fast"}, "speed"),
                           ({"exchanges": ["ftx"]}, "ftx"), ({"symbols": ["DOGE-USDT"]}, "DOGE-USDT"),
                           ({"channels": ["candles"]}, "candles"), ({"start": "yesterday"}, "start")]:
        args = {"start": T0, "end": end, "speed": 1.0, **kwargs}
        with pytest.raises(InvalidReplayRequest, match=needle):
            manager.create_replay_session(**args)
    a = manager.create_replay_session("2026-09-21T14:14:00Z", str(int(end.timestamp() * 1000)), 1)
    assert manager.get_replay_status(a).start == T0 and manager.get_replay_status(a).end == end
    manager.create_replay_session(T0, end, 1)
    with pytest.raises(ReplayLimitReached):
        manager.create_replay_session(T0, end, 1)
    await manager.stop_replay(a)  # an ended session no longer counts
    manager.create_replay_session(T0, end, 1)
    with pytest.raises(ReplayNotFound):
        manager.get_replay_status("nope")
    await manager.aclose()


async def test_abandoned_and_ended_sessions_are_reaped_after_the_idle_ttl(storage, tmp_path):
    """A session nobody touches for replay_idle_ttl - never started, paused, ended, or running but
    blocked on a reader that stopped reading - is stopped and forgotten."""
    await store(storage, *(trade("binance", ms(10 * i), i) for i in range(50)))
    clock = ManualClock()
    s = settings_for(tmp_path, storage, replay_idle_ttl=60, replay_queue_size=2)
    manager = ReplayManager(s, storage, clock=clock, sleep=clock.sleep)
    idle = manager.create_replay_session(T0, T0 + timedelta(seconds=1), 0)
    blocked = manager.create_replay_session(T0, T0 + timedelta(seconds=1), 0)
    sub = manager.session(blocked).bus.subscribe("trades:BTC-USDT")
    await manager.start_replay(blocked)
    await until(lambda: manager.session(blocked).bus.blocked_since is not None)
    await clock.advance(30)
    kept = manager.create_replay_session(T0, T0 + timedelta(seconds=1), 0)
    assert {s.id for s in manager.sessions()} == {idle, blocked, kept}
    await clock.advance(31)
    manager.get_replay_status(kept)  # touched: kept
    assert {s.id for s in manager.sessions()} == {kept}
    with pytest.raises(ReplayNotFound):
        manager.get_replay_status(idle)
    rest = await asyncio.wait_for(read_all(sub), 5)  # the reader's stream ends too
    assert len(rest) <= 2
    await manager.aclose()


async def test_bus_end_reaches_a_late_subscriber_and_closing_releases_the_publisher():
    """A subscription made after the end ends at once; closing a full subscription frees the bus."""
    bus = ReplayBus(maxsize=1)
    sub = bus.subscribe("x")
    await bus.publish("x", {"a": 1})
    blocked = asyncio.ensure_future(bus.publish("x", {"a": 2}))
    await asyncio.sleep(0.01)
    assert not blocked.done() and bus.blocked_since is not None
    sub.close()
    await asyncio.wait_for(blocked, 1)
    bus.end()
    with pytest.raises(ReplayEnded):
        await bus.subscribe("x").get()


# --- fidelity: replay reproduces the stored aggregates ---------------------------------------------------
class Recorder(Collector):
    """A sink that writes the aggregates the replay would store into the same tables as the live run
    (upserts: a differing bar would replace the live one), and remembers them."""

    def __init__(self, storage: Any) -> None:
        super().__init__()
        self.storage = storage

    async def store_ohlcv(self, bar: Any) -> bool:
        await super().store_ohlcv(bar)
        return await self.storage.store_ohlcv(bar)

    async def store_heatmap(self, h: Any) -> bool:
        await super().store_heatmap(h)
        return await self.storage.store_heatmap(h)


async def _record_live_run(storage: Any, settings: Any, seconds: int) -> None:
    """What `coby run` does with these events: the pipeline stores trades, snapshots and, on its
    ticks, closed OHLCV bars and heatmaps; at shutdown the bars still open. Ticks here fall on
    aggregate_interval boundaries; coby's local clock keeps pace with the events."""
    from coby.pipeline import Pipeline

    local = [0.0]
    pipeline = Pipeline(settings, storage, MemoryCache(), run_timers=False, monotonic=lambda: local[0])
    await pipeline.start()
    events: list[Any] = []
    for k, venue in enumerate(VENUES):
        events += [trade(venue, ms(97 * i + 31 * k), i, price=30000.0 + 40 * (i // 300)) for i in
                   range(seconds * 10)]
        events += [book(venue, ms(250 * i + 17 * k), i, mid=30000.0 + 5 * (i // 20)) for i in range(seconds * 4)]
    events = [e for e in sorted(events, key=lambda e: e.timestamp) if e.timestamp < T0 + timedelta(seconds=seconds)]
    step = settings.aggregate_interval
    t_next = T0.timestamp()
    for e in events:
        while t_next <= e.timestamp.timestamp():
            await pipeline.tick(t_next)
            t_next += step
        local[0] = e.timestamp.timestamp()
        await pipeline.on_event(e)
    while t_next <= T0.timestamp() + seconds:
        await pipeline.tick(t_next)
        t_next += step
    await pipeline.aclose()
    await storage.flush()


async def _replay_into(storage: Any, settings: Any, seconds: int) -> Recorder:
    sink = Recorder(storage)
    manager = ReplayManager(settings, storage)
    sid = manager.create_replay_session(T0, T0 + timedelta(seconds=seconds), 0, sink=sink)
    await manager.start_replay(sid)
    await asyncio.wait_for(manager.session(sid).done.wait(), 60)
    assert manager.get_replay_status(sid).state == ReplayState.FINISHED
    await manager.aclose()
    await storage.flush()
    return sink


async def test_replay_of_a_recorded_live_run_reproduces_the_stored_ohlcv_exactly(storage, tmp_path):
    """Record a live run (three venues, 3 minutes), replay its range: the replay produces every OHLCV
    bar the live run stored - per venue and consolidated, every timeframe - and nothing else, and
    storing them over the live rows changes no row."""
    from coby.db.tables import OHLCV

    s = settings_for(tmp_path, storage)
    await _record_live_run(storage, s, 180)
    live = sorted(await storage.rows(OHLCV, None, None, limit=100_000))
    assert len({(r[3], r[1]) for r in live}) >= 4 * 3  # timeframes x (venues + consolidated)
    sink = await _replay_into(storage, s, 180)
    assert sorted(await storage.rows(OHLCV, None, None, limit=100_000)) == live
    key = {(r[2], r[0], None if r[1] == "consolidated" else r[1], r[3]) for r in live}
    assert {(b.timestamp, b.symbol, b.exchange, b.timeframe) for b in sink.ohlcv} == key


async def test_replay_of_a_recorded_live_run_reproduces_the_stored_heatmaps(storage, tmp_path):
    """The heatmaps a replay would store equal those stored live: the pipeline's recorder computes them
    from the stored snapshots only, at epoch-aligned heatmap_interval boundaries."""
    from coby.db.tables import HEATMAP

    s = settings_for(tmp_path, storage)
    await _record_live_run(storage, s, 30)
    live = sorted(await storage.rows(HEATMAP, None, None, limit=100_000))
    sink = await _replay_into(storage, s, 30)
    assert live and sorted(await storage.rows(HEATMAP, None, None, limit=100_000)) == live
    assert {(h.timestamp, h.symbol) for h in sink.heatmaps} == {(r[1], r[0]) for r in live}


def _late_snapshot_run(window_start: float) -> list[tuple[float, Any]]:
    """(arrival second, trade): binance trades every second for 5 minutes; at 240 s coinbase subscribes
    and sends its 30 recent trades, stamped from ``window_start`` s on (minutes old). Prices in halves
    and sizes in eighths, so every sum is exact in any order."""
    out: list[tuple[float, Any]] = []
    for i in range(300):
        ts = T0 + ms(1000 * i + 250)
        out.append((i + 0.25, TradeEvent("BTC-USDT", "binance", ts, 30000.0 + 0.5 * (i % 7), 0.125 * (1 + i % 4),
                                         "buy" if i % 3 else "sell", f"b{i}", ts)))
    for i in range(30):
        ts = T0 + ms(1000 * window_start + 2000 * i + 500)
        out.append((240.0, TradeEvent("BTC-USDT", "coinbase", ts, 29990.0 + 0.5 * (i % 5), 0.25 * (1 + i % 3),
                                      "sell" if i % 2 else "buy", f"c{i}", ts)))
    return sorted(out, key=lambda x: x[0])


async def _live_run_with_arrivals(storage: Any, settings: Any, arrivals: list[tuple[float, Any]], seconds: int) -> Any:
    """A live pipeline fed trades at their arrival seconds (ticks every aggregate_interval, as `coby run`)."""
    from coby.pipeline import Pipeline

    pipeline = Pipeline(settings, storage, MemoryCache(), run_timers=False)
    step, t = settings.aggregate_interval, 0.0
    for arrival, event in arrivals:
        while t <= arrival:
            await pipeline.tick(T0.timestamp() + t)
            t += step
        await pipeline.on_event(event)
    while t <= seconds:
        await pipeline.tick(T0.timestamp() + t)
        t += step
    await pipeline.aclose()
    await storage.flush()
    return pipeline


async def test_trades_minutes_late_are_folded_into_the_stored_bars_as_a_replay_computes_them(storage, tmp_path):
    """coinbase's snapshot of its recent trades arrives 30-90 s after they happened (well past the OHLCV
    grace): the live run folds them into their closed bars, stores those again (upsert) and re-publishes
    the consolidated ones; every stored bar then equals what a replay of the stored trades computes."""
    from coby.db.tables import OHLCV

    s = settings_for(tmp_path, storage, exchanges="binance,coinbase", ohlcv_repair_window=120)
    pipeline = await _live_run_with_arrivals(storage, s, _late_snapshot_run(150), 300)
    assert (pipeline.ohlcv.repaired_trades, pipeline.ohlcv.late_trades) == (30, 0)
    live = sorted(await storage.rows(OHLCV, None, None, limit=100_000))
    assert {r[1] for r in live if r[3] == "1m"} == {"binance", "coinbase", "consolidated"}
    sink = await _replay_into(storage, s, 300)
    assert sink.ohlcv and sorted(await storage.rows(OHLCV, None, None, limit=100_000)) == live


async def test_trades_beyond_the_repair_window_are_counted_and_left_out(storage, tmp_path):
    """Trades older than ohlcv_repair_window behind the close horizon are stored but left out of every bar:
    counted per venue by the builder (the status API) and in coby_ohlcv_late_trades_total."""
    from coby.metrics import OHLCV_LATE

    before = OHLCV_LATE.labels("coinbase")._value.get()
    s = settings_for(tmp_path, storage, exchanges="binance,coinbase", ohlcv_repair_window=60)
    pipeline = await _live_run_with_arrivals(storage, s, _late_snapshot_run(150), 300)
    # at 240 s the close horizon is 238 s, the window reaches back to 178 s: the 14 trades stamped
    # 150.5-176.5 s are left out, the 16 stamped 178.5-208.5 s repaired in
    assert pipeline.ohlcv.late_by_exchange == {"coinbase": 14}
    assert pipeline.ohlcv.repaired_by_exchange == {"coinbase": 16}
    assert OHLCV_LATE.labels("coinbase")._value.get() - before == 14
    assert len(await storage.get_trades("BTC-USDT", exchange="coinbase", limit=100)) == 30
    bars = await storage.get_ohlcv("BTC-USDT", "1m", exchange="coinbase")
    assert sum(b.trade_count for b in bars) == 16


# --- CLI -----------------------------------------------------------------------------------------------
def test_cli_prints_the_replay_as_ndjson(tmp_path):
    """`coby replay` writes one JSON envelope per line to stdout, each marked as replay; no progress bar
    when stderr is not a terminal."""
    url = f"sqlite:///{tmp_path / 'cli.sqlite3'}"

    async def fill() -> None:
        st = open_storage(make_settings(tmp_path, db_url=url), url)
        await st.start()
        await store(st, *(trade(VENUES[i % 3], ms(100 * i), i) for i in range(30)))
        await st.aclose()

    asyncio.run(fill())
    r = subprocess.run([sys.executable, "-m", "coby.cli", "replay", "--start", T0.isoformat(),
                        "--end", str(int((T0 + timedelta(seconds=3)).timestamp() * 1000)), "--db", url,
                        "--exchanges", "binance,okx", "--channels", "trades"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = [orjson.loads(line) for line in r.stdout.splitlines()]
    assert len(lines) == 20 and all(m["channel"] == "trades:BTC-USDT" and m["replay"] for m in lines)
    stamps = [parse_time(m["data"]["timestamp"]) for m in lines]
    assert stamps == sorted(stamps)
    assert "\r" not in r.stderr
    bad = subprocess.run([sys.executable, "-m", "coby.cli", "replay", "--start", "soon", "--end", "later",
                          "--db", url], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert bad.returncode == 2 and "start" in bad.stderr and bad.stderr.count("\n") == 1


def test_cli_start_up_collects_cyclic_garbage_less_often():
    """tune_gc (run by `coby run`, `coby replay`, `coby simulate` at start-up) raises the collector's
    first-generation threshold to GC_THRESHOLD and keeps the older generations' thresholds."""
    import gc

    from coby.gcpolicy import GC_THRESHOLD, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (GC_THRESHOLD, *before[1:]) and GC_THRESHOLD > before[0]
    finally:
        gc.set_threshold(*before)


def test_cli_draws_a_progress_bar_on_a_terminal(tmp_path):
    """With stderr on a terminal, `coby replay` redraws one progress line there and ends it at 100%."""
    import os
    import pty

    url = f"sqlite:///{tmp_path / 'tty.sqlite3'}"

    async def fill() -> None:
        st = open_storage(make_settings(tmp_path, db_url=url), url)
        await st.start()
        await store(st, *(trade("okx", ms(100 * i), i) for i in range(10)))
        await st.aclose()

    asyncio.run(fill())
    master, slave = pty.openpty()
    r = subprocess.run([sys.executable, "-m", "coby.cli", "replay", "--start", T0.isoformat(), "--end",
                        (T0 + timedelta(seconds=1)).isoformat(), "--db", url, "--channels", "trades"],
                       stdout=subprocess.PIPE, stderr=slave, timeout=120, cwd=tmp_path)
    os.close(slave)
    err = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        err += chunk
    os.close(master)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 10
    assert b"\r[" in err and b"100.0%" in err and b"10 events" in err
