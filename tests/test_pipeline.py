"""The pipeline's throttles: book publishing and snapshot storage run on coby's own monotonic clock
live (never a venue's clock, never the wall clock), and on event time in a replay."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from coby.cache import MemoryCache
from coby.db.tables import SNAPSHOTS
from coby.models import OrderBookSnapshot, PriceLevel, utc_from_ms
from coby.pipeline import Pipeline
from tests.conftest import make_settings

T0 = utc_from_ms(1_790_000_040_000)


class LocalClock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def book(at: float, seq: int) -> OrderBookSnapshot:
    ts = T0 + timedelta(seconds=at)
    return OrderBookSnapshot("BTC-USDT", "binance", ts, (PriceLevel(29999.5, 1.0),), (PriceLevel(30000.5, 1.0),),
                             seq, ts)


async def test_snapshots_keep_being_stored_after_a_venue_timestamp_goes_backwards(storage, tmp_path: Path):
    """binance's first book comes from REST stamped with local time; the WebSocket books after it carry
    the venue's time, 30 s earlier. Over 10 s of the local clock (one book every 0.1 s) a snapshot is
    still stored every snapshot_interval (1 s): ~10 rows, not the 1 a venue-clock throttle stored."""
    local = LocalClock()
    s = make_settings(tmp_path, db_url=storage.settings.db_url)
    pipeline = Pipeline(s, storage, MemoryCache(), run_timers=False, monotonic=local, clock=lambda: 0.0)
    await pipeline.on_event(book(30.0, 0))  # REST: local time, ahead of the venue's
    for i in range(1, 101):
        local.t += 0.1
        await pipeline.on_event(book(0.1 * i, i))  # WebSocket: the venue's time
    await storage.flush()
    rows = await storage.rows(SNAPSHOTS, None, None, limit=1000)
    assert 9 <= len(rows) <= 12, len(rows)


async def test_book_publishing_runs_on_the_monotonic_clock_even_when_wall_time_steps_back(tmp_path: Path):
    """A wall clock stepped back a minute (NTP) does not silence a book channel: with the local
    monotonic clock moving 1/16 s per book, a book goes out every book_publish_interval (1/8 s)."""
    local, wall = LocalClock(), [T0.timestamp() + 60.0]
    pipeline = Pipeline(make_settings(tmp_path, book_publish_interval=0.125), None, MemoryCache(),
                        run_timers=False, monotonic=local, clock=lambda: wall[0])
    for i in range(40):
        if i == 10:
            wall[0] -= 60.0
        local.t += 0.0625
        await pipeline.on_event(book(0.0625 * i, i))
    assert pipeline.publisher._seq["book:binance:BTC-USDT"] == 20


async def test_replay_throttles_on_event_time(tmp_path: Path):
    """A replay's pipeline throttles on the events' own time, whatever the local clock does, so a replay
    publishes the same books however fast it runs."""
    local = LocalClock()  # never moves
    pipeline = Pipeline(make_settings(tmp_path, book_publish_interval=0.125), None, MemoryCache(), replay_id="r1",
                        run_timers=False, monotonic=local)
    for i in range(40):
        await pipeline.on_event(book(0.0625 * i, i))
    assert pipeline.publisher._seq["book:binance:BTC-USDT"] == 20
