"""The aggregation tick in parts (issue 16, loop lag): a tick computed a few symbols at a time, with the event
loop running between the parts, gives exactly what one pass gives - the same ``TickResult``, the same
messages in the same order - and the loop does get its turn between parts."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import coby.pipeline
from coby.buckets import AggregationEngine
from coby.cache import MemoryCache
from coby.models import OrderBookSnapshot, PriceLevel
from coby.pipeline import Pipeline
from tests.conftest import make_settings

T0 = datetime(2026, 12, 7, 6, tzinfo=timezone.utc)
VENUES = ("binance", "coinbase", "kraken", "okx", "bybit", "bitfinex", "gate", "kucoin", "mexc", "htx")
SYMBOLS = {"BTC-USDT": 60_000.0, "ETH-USDT": 3_000.0, "SOL-USDT": 150.0, "XRP-USDT": 0.6, "ADA-USDT": 0.45}
SIZES = {"BTC": 10.0, "ETH": 1.0, "SOL": 0.1, "XRP": 0.01, "ADA": 0.01}


def book(rng: random.Random, symbol: str, venue: str, at: datetime, levels: int = 40) -> OrderBookSnapshot:
    mid, tick = SYMBOLS[symbol], SYMBOLS[symbol] * 1e-5
    bids, asks, t = [], [], rng.randint(1, 3)
    for _ in range(levels):
        bids.append(PriceLevel(round(mid - t * tick, 8), round(rng.expovariate(1.0), 6)))
        asks.append(PriceLevel(round(mid + t * tick, 8), round(rng.expovariate(1.0), 6)))
        t += rng.randint(1, 4)
    return OrderBookSnapshot(symbol, venue, at, tuple(bids), tuple(asks), None, at)


def rounds(seed: int, n: int = 6) -> list[tuple[datetime, list[OrderBookSnapshot]]]:
    """Per tick, the books handed in before it: some symbols all new, some untouched (re-stamped), one
    venue going quiet until it is stale (``stale_after`` 10 s on the books' receive time)."""
    rng = random.Random(seed)
    out = []
    for k in range(n):
        now = T0 + timedelta(seconds=5 * k)
        books = [book(rng, s, v, now) for s in SYMBOLS for v in VENUES
                 if not (s == "SOL-USDT" and k % 2) and not (v == "htx" and k >= 1)]
        out.append((now, books))
    return out


def engine() -> AggregationEngine:
    return AggregationEngine(bucket_size=SIZES, consolidated_depth=25)


@pytest.mark.parametrize("books_per_part", [1, 10, 20, 25, 1000])
def test_a_tick_in_parts_gives_the_one_pass_result(books_per_part: int):
    """Planned, computed in parts of whole symbols and assembled, every tick equals ``tick(now)`` of an
    engine fed the same books: new, unchanged (re-stamped) and stale symbols alike, the heatmaps due too."""
    one, parted = engine(), engine()
    for now, books in rounds(7):
        for b in books:
            one.update_book(b)
            parted.update_book(b)
        expected = one.tick(now)
        plan = parted.plan(now)
        parts = plan.parts(books_per_part)
        assert [g for part in parts for g in part] == plan.dirty
        assert all(len({g[0] for g in part}) == len(part) for part in parts)  # a symbol is never split
        for part in parts:
            parted.compute(plan, part)
        got = parted.result(plan)
        assert got == expected
        assert got.stale == expected.stale
    assert expected.stale == {s: ("htx",) for s in SYMBOLS}


def test_a_book_handed_in_between_parts_waits_for_the_next_tick():
    """The books of a tick are those held when it was planned: a newer book arriving between two parts
    changes nothing in this tick's result, and is aggregated by the next tick."""
    (now, books), (later, newer) = rounds(3, 2)
    ref, parted = engine(), engine()
    for b in books:
        ref.update_book(b)
        parted.update_book(b)
    plan = parted.plan(now)
    first, *rest = plan.parts(10)
    parted.compute(plan, first)
    for b in newer:  # a venue's newer state, handed in while the tick is half done
        parted.update_book(b)
    for part in rest:
        parted.compute(plan, part)
    assert parted.result(plan) == ref.tick(now)
    for b in newer:
        ref.update_book(b)
    assert parted.tick(later) == ref.tick(later)


async def published(tmp_path: Path, monkeypatch, books_per_part: int) -> list[tuple]:
    """Everything a live pipeline publishes over four ticks, in order, with ``books_per_part`` a part."""
    monkeypatch.setattr(coby.pipeline, "TICK_PART_BOOKS", books_per_part)
    clock = [0.0]
    pipeline = Pipeline(make_settings(tmp_path, bucket_sizes=SIZES, book_depth=25), None, MemoryCache(),
                        run_timers=False, monotonic=lambda: clock[0], clock=lambda: clock[0])
    sent: list[tuple] = []
    publish = pipeline.publisher.publish

    async def record(channel, data, ts=None, received=None, **kw):
        sent.append((channel, data, ts, received, tuple(sorted(kw.items()))))
        return await publish(channel, data, ts, received, **kw)

    pipeline.publisher.publish = record
    for now, books in rounds(11, 4):
        clock[0] = now.timestamp()
        for b in books:
            await pipeline.on_event(b)
        await pipeline.tick(now.timestamp())
    return sent


async def test_a_pipeline_tick_in_parts_publishes_what_one_pass_publishes(tmp_path: Path, monkeypatch):
    """The pipeline's tick in parts of 10 books (one symbol) publishes the same messages, in the same order
    and with the same content, as with parts so large that the tick is one pass."""
    one = await published(tmp_path / "one", monkeypatch, 10 ** 9)
    parted = await published(tmp_path / "parts", monkeypatch, 10)
    assert len(one) > 4 * 3 * len(SYMBOLS)
    assert [m[0] for m in parted] == [m[0] for m in one]
    assert parted == one


async def test_the_event_loop_runs_between_the_parts_of_a_tick(tmp_path: Path, monkeypatch):
    """While a tick of five symbols runs in parts of one symbol, a concurrent task gets the loop between the
    parts: it sees the tick with 1, 2, 3 and 4 parts done."""
    monkeypatch.setattr(coby.pipeline, "TICK_PART_BOOKS", 10)
    pipeline = Pipeline(make_settings(tmp_path, bucket_sizes=SIZES), None, MemoryCache(), run_timers=False,
                        monotonic=lambda: 0.0, clock=lambda: 0.0)
    now, books = rounds(5, 1)[0]
    for b in books:
        await pipeline.on_event(b)
    done = [0]
    compute = pipeline.engine.compute

    def counting(plan, part):
        compute(plan, part)
        done[0] += 1

    pipeline.engine.compute = counting
    seen: list[int] = []
    ticking = asyncio.Event()

    async def other() -> None:
        await ticking.wait()
        while True:
            seen.append(done[0])
            await asyncio.sleep(0)

    task = asyncio.get_running_loop().create_task(other())
    await asyncio.sleep(0)
    ticking.set()
    await pipeline.tick(now.timestamp())
    task.cancel()
    assert done[0] == len(SYMBOLS)
    assert set(range(1, len(SYMBOLS))) <= set(seen)
