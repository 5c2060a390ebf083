"""Overload: the governor (coby.collector.load) says ``overloaded`` from loop lag, feed delay and memory, degrades in
its fixed order and recovers by itself; trades are never thinned; a hogged loop shows in /ready and status.

Time is injected (one ``observe`` per simulated second); the hogged-loop test waits for a state, never
for a duration."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from coby.cache import MemoryCache
from coby.collector.load import LEVELS, LoadGovernor, Slowdown, VenueSample
from coby.models import ConnectionState, OrderBookSnapshot, PriceLevel, TradeEvent, utc_from_ms, utcnow
from coby.pipeline import Pipeline
from tests.api_fixtures import Host, Venue, serving
from tests.conftest import make_settings

T0 = utc_from_ms(1_790_000_040_000)


def governor(tmp_path, **kw):
    applied: list[Slowdown] = []
    kw.setdefault("overload_warmup", 0)
    return LoadGovernor(make_settings(tmp_path, **kw), applied.append), applied


def test_a_lag_hovering_around_the_threshold_is_overload(tmp_path):
    """Bad and clear seconds alternating (a shared core): overload_after bad seconds within twice that count,
    so it is seen within 10 s; a lone bad second now and then is not overload."""
    g, _ = governor(tmp_path)
    t = 0.0
    for i, lag in enumerate([0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3] + [0.0] * 6):
        t += 1
        g.observe(t, [lag] * 10, steady(t, i))
    assert not g.overloaded
    for i, lag in enumerate([0.3, 0.0, 0.3, 0.0, 0.3]):
        t += 1
        g.observe(t, [lag] * 10, steady(t, 20 + i))
        assert g.overloaded is (i == 4)


def test_the_start_up_burst_is_not_overload(tmp_path):
    """Loop lags of the first overload_warmup seconds (every venue's clients built at once) neither make the
    daemon overloaded nor enter the loop-lag p99; the same lag after the warm-up does."""
    g, applied = governor(tmp_path, overload_warmup=20)
    t = 0.0
    for i in range(19):
        t += 1
        g.observe(t, [0.8] * 10, steady(t, i))
        assert g.status()["warming_up"] and g.reasons == ["event loop lag 0.80 s"]
    assert not g.overloaded and applied == [] and g.loop_lag_p99() == 0.0
    for i in range(19, 24):
        t += 1
        g.observe(t, [0.8] * 10, steady(t, i))
    assert g.overloaded and not g.status()["warming_up"] and g.loop_lag_p99() == 0.8


def steady(t: float, n: int, behind: float = 0.0, skew: float = 0.0) -> dict[str, VenueSample]:
    """A venue at second ``t``: 100 messages a second, its newest book ``behind`` + ``skew`` seconds old."""
    venue_time = 1_790_000_000.0 + t - behind
    return {"binance": VenueSample(100 * n, venue_time, venue_time + behind + skew)}


def test_a_lagging_loop_is_overloaded_after_overload_after_seconds_then_degrades_in_order_and_recovers(tmp_path):
    """Lag at or over overload_loop_lag for overload_after (3) seconds: overloaded, level 1 (publish x4,
    tick x2); 10 more overloaded seconds: level 2 (also book emit x4); overload_recover (10) clear
    seconds: back to level 0 with the settings' intervals."""
    g, applied = governor(tmp_path)
    t = 0.0
    for i in range(5):  # healthy
        t += 1
        g.observe(t, [0.01] * 10, steady(t, i))
    assert not g.overloaded and applied == []
    for i in range(2):
        t += 1
        g.observe(t, [0.3] * 10, steady(t, 5 + i))
    assert not g.overloaded  # two seconds is not yet overload
    t += 1
    g.observe(t, [0.3] * 10, steady(t, 7))
    assert g.overloaded and g.level == 1 and applied == [LEVELS[1]]
    assert g.reasons == ["event loop lag 0.30 s"] and g.status()["state"] == "overloaded"
    for i in range(10):
        t += 1
        g.observe(t, [0.3] * 10, steady(t, 8 + i))
    assert g.level == 2 and applied == [LEVELS[1], LEVELS[2]] and LEVELS[2] == Slowdown(10, 4, 4)
    for i in range(9):
        t += 1
        g.observe(t, [0.01] * 10, steady(t, 18 + i))
    assert g.overloaded  # nine clear seconds: still degraded
    t += 1
    g.observe(t, [0.01] * 10, steady(t, 27))
    assert not g.overloaded and g.level == 0 and applied[-1] == LEVELS[0] and g.status()["state"] == "ok"


def test_a_venue_falling_behind_is_overloaded_but_a_skewed_clock_is_not(tmp_path):
    """A venue whose books arrive 5 s behind its clock from the start (skew) is fine; one whose delay grows
    by 0.5 s a second (coby reads half as fast as it sends) is overloaded within 10 s, with the reason
    naming the venue, and its expected rate (messages over the venue time they cover) is twice the delivered."""
    g, _ = governor(tmp_path)
    for t in range(1, 31):
        g.observe(float(t), [0.0], steady(t, t, skew=5.0))
    assert not g.overloaded and g.status()["venues"]["binance"]["delay_s"] == 0.0
    g, _ = governor(tmp_path)
    for t in range(1, 4):
        g.observe(float(t), [0.0], steady(t, t))
    said = None
    for t in range(4, 20):
        behind = 0.5 * (t - 3)
        g.observe(float(t), [0.0], steady(t, t, behind=behind))
        if g.overloaded and said is None:
            said = t - 3
    assert said is not None and said <= 10, said
    v = g.status()["venues"]["binance"]
    assert g.reasons and g.reasons[0].startswith("binance ") and v["delay_s"] >= 1.0
    assert v["delivered_per_s"] == 100.0 and abs(v["expected_per_s"] - 200.0) < 1.0


def test_memory_over_the_limit_is_overload(tmp_path):
    """Resident memory at or above overload_memory_mb counts (0 turns the check off)."""
    g, _ = governor(tmp_path, overload_memory_mb=100)
    for t in range(1, 4):
        g.observe(float(t), [0.0], {}, rss_bytes=200 * 2 ** 20)
    assert g.overloaded and g.reasons == ["memory 200 MB"]
    g, _ = governor(tmp_path, overload_memory_mb=0)
    for t in range(1, 4):
        g.observe(float(t), [0.0], {}, rss_bytes=200 * 2 ** 20)
    assert not g.overloaded


def book(at: float, seq: int) -> OrderBookSnapshot:
    ts = T0 + timedelta(seconds=at)
    return OrderBookSnapshot("BTC-USDT", "binance", ts, (PriceLevel(29999.5, 1.0),), (PriceLevel(30000.5, 1.0),),
                             seq, ts)


async def test_under_degradation_books_publish_less_often_and_every_trade_still_passes(tmp_path):
    """At level 2 the book channel carries one state per 10 x book_publish_interval (the newest), while every
    trade is still published: trades are never thinned."""
    clock = [1000.0]
    bus = MemoryCache()
    await bus.start()
    pipeline = Pipeline(make_settings(tmp_path, book_publish_interval=0.1), None, bus, run_timers=False,
                        monotonic=lambda: clock[0], clock=lambda: T0.timestamp())
    sub_books, sub_trades = bus.subscribe("book:binance:BTC-USDT"), bus.subscribe("trades:BTC-USDT")
    counts = {}
    for level in (0, 2):
        pipeline.slow_down(LEVELS[level].publish, LEVELS[level].aggregate)
        books = trades = 0
        for i in range(100):  # 10 s at 10 books and 10 trades a second
            clock[0] += 0.1
            await pipeline.on_event(book(i * 0.1, i))
            ts = T0 + timedelta(seconds=i * 0.1)
            await pipeline.on_event(TradeEvent("BTC-USDT", "binance", ts, 30000.0, 1.0, "buy", f"{level}-{i}", ts))
        while not sub_books.queue.empty():
            sub_books.queue.get_nowait()
            books += 1
        while not sub_trades.queue.empty():
            sub_trades.queue.get_nowait()
            trades += 1
        counts[level] = (books, trades)
    assert counts[0][1] == counts[2][1] == 100
    assert counts[0][0] >= 90 and counts[2][0] <= 11, counts
    assert pipeline.aggregate_interval == 4 * pipeline.settings.aggregate_interval
    await bus.aclose()


async def test_a_hogged_event_loop_makes_ready_503_with_the_reason_and_status_shows_it(tmp_path, storage, cache):
    """A task that blocks the loop for 0.4 s at a time: the monitor's lag samples reach the governor, the
    daemon says overloaded, /ready answers 503 naming the loop lag, status shows the load; once the hog
    stops the daemon recovers by itself (overload_after 2, overload_recover 2, to keep the test short)."""
    host = Host(make_settings(tmp_path, overload_after=2, overload_recover=2, overload_warmup=0), storage, cache,
                {"binance": Venue("binance", ConnectionState.CONNECTED, last_message_at=utcnow())})
    host.load = LoadGovernor(host.settings)
    hog = {"on": True}

    async def hogging() -> None:
        while hog["on"]:
            time.sleep(0.4)  # noqa: ASYNC251 - the point: the loop is blocked
            await asyncio.sleep(0)

    async with serving(host) as client:
        task = asyncio.ensure_future(hogging())
        try:
            for _ in range(200):
                if host.load.overloaded:
                    break
                await asyncio.sleep(0.05)
        finally:
            hog["on"] = False
            await task
        assert host.load.overloaded
        r = await client.get("/ready")
        body = await r.json()
        assert r.status == 503 and body["overloaded"] is True and any("event loop lag" in x for x in body["overload"])
        status = await (await client.get("/api/v1/status")).json()
        assert status["load"]["overloaded"] and status["load"]["degradation_level"] >= 1
        assert status["load"]["loop_lag_p99_s"] >= 0.25 and status["load"]["rss_bytes"] > 0
        for _ in range(400):
            if not host.load.overloaded:
                break
            await asyncio.sleep(0.05)
        assert not host.load.overloaded
        r = await client.get("/ready")
        assert r.status == 200 and (await r.json())["overloaded"] is False


def test_coby_status_prints_the_load_line(tmp_path):
    """`coby status` shows the load: state and reasons, level, loop lag, CPU, memory, backlog, and per venue
    delivered/expected messages and how far behind."""
    from coby.cli import _status_table
    g, _ = governor(tmp_path)
    for t in range(1, 5):
        g.observe(float(t), [0.3], steady(t, t, behind=0.0))
    text = _status_table({"exchanges": {}, "storage": {}, "cache": {}, "load": g.status()})
    assert "load OVERLOADED (event loop lag 0.30 s), degradation level 1" in text
    assert "delivered/expected: binance 100/100 msg/s 0.0 s behind" in text
