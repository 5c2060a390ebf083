"""bench/replay.py's stage figures: where an in-process replay's time goes, and the floor under it.

- ``breakdown``: one in-process replay with timers around the pipeline's intake, the aggregation
  tick and its parts (wall time inside each, per stored event); the rest is reading, merging,
  pacing, the bus and the reader.
- ``floor``: the path every replayed event must take, without the pipeline, built up a stage at a
  time on the same rows: the session's own SELECTs (rows parsed by psycopg), then rows made into
  models, then merged in time order, then each wrapped in an envelope and delivered through a
  ``ReplayBus`` to a reader taking objects. Wall time and this process's CPU time per event: the
  server's share of a read runs on another core while a replay works (the next chunk is
  prefetched), so for a replay, which is CPU-bound, the CPU figure is the floor. Last, a whole
  session with the aggregation switched off (no tick, no OHLCV builder): the session's and the
  pipeline's own per-event cost, for comparison only - a real replay always aggregates.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any, Awaitable, Callable

from coby.db.tables import CONNECTION_EVENTS, SNAPSHOTS, TRADES


async def breakdown(manager: Any, start: datetime, end: datetime,
                    in_process: Callable[..., Awaitable[tuple[int, int, float]]]) -> None:
    """Where the time of an in-process replay goes: wall time inside each stage, per stored event."""
    from coby.buckets import AggregationEngine
    from coby.aggregate.ohlcv import OHLCVBuilder
    from coby.pipeline import Pipeline

    spent: dict[str, float] = {}

    def timed(cls: type, name: str, label: str, is_async: bool) -> Any:
        orig = getattr(cls, name)
        spent[label] = 0.0
        if is_async:
            async def wrapper(self: Any, *a: Any, **k: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return await orig(self, *a, **k)
                finally:
                    spent[label] += time.perf_counter() - t0
        else:
            def wrapper(self: Any, *a: Any, **k: Any) -> Any:  # type: ignore[misc]
                t0 = time.perf_counter()
                try:
                    return orig(self, *a, **k)
                finally:
                    spent[label] += time.perf_counter() - t0
        setattr(cls, name, wrapper)
        return orig

    patched = [(Pipeline, "on_event", "pipeline.on_event (intake, publish)", True),
               (Pipeline, "advance_to", "pipeline.advance_to (the tick)", True),
               (AggregationEngine, "tick", "  of which AggregationEngine.tick", False),
               (OHLCVBuilder, "advance", "  of which OHLCVBuilder.advance", False),
               (OHLCVBuilder, "open_bars", "  of which OHLCVBuilder.open_bars", False)]
    originals = [timed(cls, name, label, a) for cls, name, label, a in patched]
    try:
        ev, _, secs = await in_process(manager, start, end, raw=True)
    finally:
        for (cls, name, _, _), orig in zip(patched, originals):
            setattr(cls, name, orig)
    print(f"breakdown of one in-process replay (objects, all channels), {secs / ev * 1e6:.1f} us per event:")
    for label, total in spent.items():
        print(f"  {label:<40} {total / ev * 1e6:6.1f} us/event")
    rest = secs - spent["pipeline.on_event (intake, publish)"] - spent["pipeline.advance_to (the tick)"]
    print(f"  {'the rest (read, merge, pace, bus, reader)':<40} {rest / ev * 1e6:6.1f} us/event")


async def floor(manager: Any, start: datetime, end: datetime,
                in_process: Callable[..., Awaitable[tuple[int, int, float]]]) -> None:
    """The path each replayed event must take, without the pipeline, a stage at a time (see the module)."""
    from coby.publisher import Publisher
    from coby.api.replay_bus import ReplayBus, ReplayEnded
    from coby.api.replay_stream import merged_events

    storage, chunk = manager.storage, manager.settings.replay_chunk

    async def fetch_only() -> int:
        n = 0
        for table in (TRADES, SNAPSHOTS, CONNECTION_EVENTS):
            async for rows in storage.iter_rows(table, start, end, chunk=chunk):
                n += len(rows)
        return n

    async def models() -> int:
        n = 0
        for it in (storage.iter_trades, storage.iter_snapshots, storage.iter_connection_events):
            async for events in it(start, end, chunk=chunk):
                n += len(events)
        return n

    async def merged() -> int:
        n = 0
        async for batch in merged_events(storage, start, end, chunk=chunk):
            n += len(batch)
        return n

    async def delivered() -> int:
        bus = ReplayBus(maxsize=manager.settings.replay_queue_size)
        sub = bus.subscribe("*", raw=True)
        publisher = Publisher(bus, "floor")

        async def read() -> None:  # as bench/replay.py's in-process reader
            queue = sub.queue
            try:
                while True:
                    await sub.get()
                    while queue.qsize() > 1:
                        queue.get_nowait()
            except ReplayEnded:
                pass

        reader = asyncio.get_running_loop().create_task(read())
        n = 0
        async for batch in merged_events(storage, start, end, chunk=chunk):
            for ev in batch:
                await publisher.publish("events", ev, ev.timestamp, ev.timestamp)
            n += len(batch)
        await bus.finish()
        await reader
        return n

    async def unaggregated() -> int:
        from coby.aggregate.ohlcv import OHLCVBuilder
        from coby.pipeline import Pipeline

        async def no_tick(self: Any, ts: datetime) -> None:
            return None

        patched = [(Pipeline, "advance_to", no_tick), (OHLCVBuilder, "add", lambda self, trade: True)]
        originals = [getattr(cls, name) for cls, name, _ in patched]
        for cls, name, stub in patched:
            setattr(cls, name, stub)
        try:
            return (await in_process(manager, start, end, raw=True))[0]
        finally:
            for (cls, name, _), orig in zip(patched, originals):
                setattr(cls, name, orig)

    print("floor: the path each event must take, without the pipeline (cumulative, us per event):")
    for label, stage in (("fetch (SELECT pages, rows parsed)", fetch_only), ("+ rows to models", models),
                         ("+ merge in time order", merged), ("+ envelope, bus, reader", delivered),
                         ("a session, aggregation off (comparison)", unaggregated)):
        t0, c0 = time.perf_counter(), time.process_time()
        n = await stage()
        secs, cpu = time.perf_counter() - t0, time.process_time() - c0
        print(f"  {label:<40} wall {secs / n * 1e6:5.2f}  CPU {cpu / n * 1e6:5.2f} us/event "
              f"({n / cpu:>10,.0f} events per CPU second)")
