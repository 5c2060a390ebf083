"""Replay throughput at speed 0, in-process and over WebSocket, beside a raw COPY scan of the same rows.

    .venv/bin/python bench/replay.py [--events 1000000] [--rounds 3] [--breakdown] [--memory-events 5000000]
                                     [--pg URL]

On a scratch PostgreSQL database (created and dropped here) the server generates a recorded
period: trades of 5 venues x 2 symbols, one every millisecond; a 20-level book snapshot per
(venue, symbol) every second; a disconnect/reconnect pair every minute. Then, in each of
``--rounds`` interleaved rounds (medians are printed; each replay's ratio is to the baseline of
its own round, so that a machine whose speed drifts still gives a fair ratio):

- baseline: ``COPY (SELECT ... ORDER BY key) TO STDOUT (FORMAT BINARY)`` of the same rows, the
  three tables one after the other, taking the bytes only (the scan's ceiling, and the target's
  reference); the same COPY with every row parsed into a tuple by psycopg's COPY reader (a Python
  call per row); and the same SELECTs through a binary server-side cursor, fetched ``replay_chunk``
  rows at a time, each row parsed into a tuple by psycopg's C loaders - the parsing a replay's
  reads do, without their keyset pages: the fair "parsed" baseline;
- in-process: a session at speed 0 with one subscriber to every channel, which takes (a) the
  envelope objects (``subscribe("*", raw=True)``), (b) the JSON bytes a WebSocket client or the
  CLI gets; and (c) objects again, with the aggregate channels filtered out (the ticks still run:
  they flush held-back books and apply the OHLCV builder's trades);
- WebSocket: a client on a real TCP socket subscribed to every channel of the data through
  ``/api/v1/replay/{id}/ws`` (client and server in this one process);
- also (a') objects, every channel, under Python's default collector thresholds: the script
  otherwise runs as coby's commands do, after ``coby.gcpolicy.tune_gc()``;
- ``--breakdown``: the time of one in-process replay split by stage (pipeline intake, the
  aggregation tick and its parts, the rest: storage reads, merge, pacing, bus, reader), and the
  floor under any replay: the reads, models, merge and delivery alone (``bench/replay_stages.py``);
- memory (``--memory-events``): RSS sampled while a session replays that many events; memory
  must not grow with the length of the range.

Rates are stored events replayed per second (aggregates and gap messages come on top).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from statistics import median
from typing import Any

import aiohttp
import psycopg
from aiohttp import web

from replay_stages import breakdown, floor

from coby.cache import MemoryCache
from coby.gcpolicy import tune_gc
from coby.config import Settings
from coby.db import open_storage
from coby.db.tables import CONNECTION_EVENTS, SNAPSHOTS, TRADES
from coby.http import create_app
from coby.models import utc_from_ms
from coby.replay import ReplayManager
from coby.api.replay_routes import add_replay_routes

VENUES = ("binance", "okx", "bybit", "kraken", "coinbase")
SYMBOLS = ("BTC-USDT", "ETH-USDT")
T0 = utc_from_ms(1_790_000_040_000)
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE / 2**20


async def generate(url: str, events: int) -> tuple[datetime, datetime, int]:
    """Let the server write the recorded period; returns its range and the number of stored events."""
    trades = int(events * 0.99)
    seconds = max(1, trades // 1000)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO trade_events (symbol, exchange, timestamp, price, size, side, trade_id, received_at) "
            "SELECT (%(sym)s::text[])[1 + (i / 5) %% 2], (%(ven)s::text[])[1 + i %% 5], "
            "%(t0)s + i * interval '1 millisecond', 30000 + (i %% 1000) * 0.1, 0.001 * (1 + i %% 50), "
            "CASE WHEN i %% 2 = 0 THEN 'buy' ELSE 'sell' END, i::text, "
            "%(t0)s + i * interval '1 millisecond' + interval '3 milliseconds' "
            "FROM generate_series(0, %(n)s - 1) AS i",
            {"sym": list(SYMBOLS), "ven": list(VENUES), "t0": T0, "n": trades})
        await conn.execute(
            "INSERT INTO order_book_snapshots (symbol, exchange, timestamp, bids, asks, sequence_id, mid_price, "
            "spread, bid_volume, ask_volume, received_at) "
            "SELECT s, v, %(t0)s + k * interval '1 second' + o * interval '7 milliseconds', "
            "(SELECT jsonb_agg(jsonb_build_array(m - 0.5 - l, 1 + l)) FROM generate_series(0, 19) l), "
            "(SELECT jsonb_agg(jsonb_build_array(m + 0.5 + l, 1 + l)) FROM generate_series(0, 19) l), "
            "k, m, 1, 210, 210, %(t0)s + k * interval '1 second' + o * interval '7 milliseconds' "
            "FROM generate_series(0, %(n)s - 1) AS k, unnest(%(sym)s::text[]) WITH ORDINALITY AS a(s, so), "
            "unnest(%(ven)s::text[]) WITH ORDINALITY AS b(v, o), "
            "LATERAL (SELECT (CASE WHEN s = 'BTC-USDT' THEN 30000 ELSE 2000 END) + (k %% 100) * 0.5 AS m) AS mm",
            {"sym": list(SYMBOLS), "ven": list(VENUES), "t0": T0, "n": seconds})
        await conn.execute(
            "INSERT INTO connection_events (timestamp, exchange, symbol, event, detail) "
            "SELECT %(t0)s + (j * 60 + 20 + d * 3) * interval '1 second', 'kraken', '', "
            "CASE WHEN d = 0 THEN 'disconnected' ELSE 'connected' END, 'bench' "
            "FROM generate_series(0, %(n)s - 1) AS j, generate_series(0, 1) AS d",
            {"t0": T0, "n": max(1, seconds // 60)})
        await conn.execute("ANALYZE")
        total = 0
        for table in ("trade_events", "order_book_snapshots", "connection_events"):
            cur = await conn.execute(f"SELECT count(*) FROM {table}")
            total += (await cur.fetchone())[0]
    return T0, T0 + timedelta(seconds=seconds + 1), total


async def copy_scan(storage: Any, url: str, start: datetime, end: datetime, parse: bool) -> tuple[int, float]:
    """COPY of the rows a replay reads (the same SELECTs, one table after the other): (rows or bytes, seconds).

    ``parse=False`` takes the bytes only (the scan's ceiling); ``parse=True`` makes a tuple of every row.
    """
    count = 0
    t0 = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        for table in (TRADES, SNAPSHOTS, CONNECTION_EVENTS):
            sql, params = storage.select(table, start, end, limit=1)
            sql = sql.rsplit(" LIMIT ", 1)[0]
            async with conn.cursor(binary=True).copy(f"COPY ({sql}) TO STDOUT (FORMAT BINARY)", params) as cp:
                if parse:
                    cp.set_types([{"text": "text", "ts": "timestamptz", "float": "float8", "int": "int8",
                                   "json": "text"}[c.kind] for c in table.columns])
                    async for _ in cp.rows():
                        count += 1
                else:
                    async for block in cp:
                        count += len(block)
    return count, time.perf_counter() - t0


async def select_scan(storage: Any, url: str, start: datetime, end: datetime, chunk: int) -> tuple[int, float]:
    """The same SELECTs through a binary server-side cursor, ``chunk`` rows a fetch, parsed into tuples
    by psycopg's C loaders (as a replay's reads are): (rows, seconds)."""
    count = 0
    t0 = time.perf_counter()
    async with await psycopg.AsyncConnection.connect(url) as conn:
        for table in (TRADES, SNAPSHOTS, CONNECTION_EVENTS):
            sql, params = storage.select(table, start, end, limit=1)
            async with conn.transaction(), conn.cursor("scan", binary=True) as cur:
                await cur.execute(sql.rsplit(" LIMIT ", 1)[0], params)
                while rows := await cur.fetchmany(chunk):
                    count += len(rows)
    return count, time.perf_counter() - t0


async def in_process(manager: ReplayManager, start: datetime, end: datetime, *, raw: bool,
                     channels: list[str] | None = None, sample: list | None = None) -> tuple[int, int, float]:
    """One session at speed 0 read by one subscriber to everything: (events, messages, seconds)."""
    sid = manager.create_replay_session(start, end, 0, channels=channels)
    session = manager.session(sid)
    sub = session.bus.subscribe("*", raw=raw)
    queue = sub.queue
    messages = 0
    next_sample = time.monotonic()
    t0 = time.perf_counter()
    await manager.start_replay(sid)
    try:
        while True:
            await sub.get()
            messages += 1
            while queue.qsize() > 1:
                queue.get_nowait()
                messages += 1
            if sample is not None and time.monotonic() >= next_sample:
                sample.append((session.events, rss_mb()))
                next_sample += 0.25
    except Exception as e:  # noqa: BLE001 - ReplayEnded: the stream is over
        if type(e).__name__ != "ReplayEnded":
            raise
    elapsed = time.perf_counter() - t0
    events = manager.get_replay_status(sid).events_emitted
    await manager.stop_replay(sid) if session.active else None
    return events, messages, elapsed


class StandIn:
    def __init__(self, settings: Settings, storage: Any) -> None:
        self.settings, self.storage, self.cache = settings, storage, MemoryCache()
        self.connectors: dict[str, Any] = {}
        self.started_at = time.time()
        self.replay = None


async def over_websocket(settings: Settings, storage: Any, manager: ReplayManager, start: datetime,
                         end: datetime) -> tuple[int, int, float]:
    app = create_app(StandIn(settings, storage))
    add_replay_routes(app, manager)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    base = f"http://127.0.0.1:{port}"
    channels = ["status"] + [f"{k}:{s}" for s in SYMBOLS for k in ("trades", "consolidated", "heatmap", "metrics")] \
        + [f"ohlcv:{s}:1m" for s in SYMBOLS] + [f"book:{v}:{s}" for v in VENUES for s in SYMBOLS]
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{base}/api/v1/replay", json={"start": start.isoformat(), "end": end.isoformat(),
                                                                "speed": 0}) as r:
                sid = (await r.json())["replay"]["id"]
            messages = 0
            async with http.ws_connect(f"{base}/api/v1/replay/{sid}/ws", max_msg_size=0) as ws:
                await ws.send_json({"op": "subscribe", "channels": channels})
                await ws.receive()
                t0 = time.perf_counter()
                async with http.post(f"{base}/api/v1/replay/{sid}/start") as r:
                    assert r.status == 200, await r.text()
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        break
                    messages += 1
                elapsed = time.perf_counter() - t0
            events = manager.get_replay_status(sid).events_emitted
    finally:
        await runner.cleanup()
    return events, messages, elapsed


async def run(args: argparse.Namespace) -> None:
    name = f"coby_bench_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(args.pg, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = args.pg.rpartition("/")[0] + "/" + name
    tmp = tempfile.mkdtemp()
    settings = Settings.load(env={}, db_url=url, data_dir=tmp, log_level="WARNING", exchanges=",".join(VENUES),
                             symbols=",".join(SYMBOLS), ws_queue_size=2000)
    storage = open_storage(settings, url)
    await storage.start()
    try:
        start, end, n = await generate(url, args.events)
        print(f"stored events={n:,} over {(end - start).total_seconds():,.0f} s of market time "
              f"(5 venues x 2 symbols; trades 1/ms, 20-level books 1/s per book)")
        manager = ReplayManager(settings, storage)
        labels = ("COPY bytes", "COPY parsed", "SELECT parsed", "objects, all channels",
                  "objects, all channels, default GC", "JSON bytes, all channels", "objects, events' channels",
                  "WebSocket, every channel")
        rates: dict[str, list[float]] = {k: [] for k in labels}
        ratios: dict[str, list[tuple[float, float]]] = {k: [] for k in labels[3:]}
        messages: dict[str, int] = {}
        rss = [rss_mb()]
        for _ in range(args.rounds):  # interleaved, each replay measured against its own round's baseline
            scans = (await copy_scan(storage, url, start, end, parse=False),
                     await copy_scan(storage, url, start, end, parse=True),
                     await select_scan(storage, url, start, end, settings.replay_chunk))
            assert scans[1][0] == scans[2][0] == n, (scans, n)
            for label, (_, secs) in zip(labels, scans):
                rates[label].append(n / secs)
            base, parsed = rates["COPY bytes"][-1], rates["SELECT parsed"][-1]
            runs = [await in_process(manager, start, end, raw=True)]
            tuned = gc.get_threshold()
            gc.set_threshold(700, *tuned[1:])  # Python's default
            try:
                runs.append(await in_process(manager, start, end, raw=True))
            finally:
                gc.set_threshold(*tuned)
            runs += (await in_process(manager, start, end, raw=False),
                     await in_process(manager, start, end, raw=True, channels=["trades", "book", "status", "gap"]),
                     await over_websocket(settings, storage, manager, start, end))
            for label, (ev, msgs, secs) in zip(labels[3:], runs):
                rates[label].append(ev / secs)
                ratios[label].append((ev / secs / base, ev / secs / parsed))
                messages[label] = msgs
            rss.append(rss_mb())
        if args.breakdown:
            await breakdown(manager, start, end, in_process)
            await floor(manager, start, end, in_process)
        await manager.aclose()
        print(f"{args.rounds} interleaved rounds; medians (per-round ratios to the same round's baselines)")
        print(f"baseline COPY ... TO STDOUT (binary), bytes only  {median(rates['COPY bytes']):>10,.0f} rows/s")
        print(f"baseline COPY ... TO STDOUT, rows parsed (COPY)   {median(rates['COPY parsed']):>10,.0f} rows/s")
        print(f"baseline SELECT, binary, rows parsed (C loaders)  {median(rates['SELECT parsed']):>10,.0f} rows/s")
        for label in labels[3:]:
            print(f"replay {label:<34} {median(rates[label]):>10,.0f} events/s  "
                  f"{median(r[0] for r in ratios[label]):5.0%} of COPY bytes, "
                  f"{median(r[1] for r in ratios[label]):5.0%} of SELECT parsed  ({messages[label]:,} messages)")
        print("RSS after generating, then after each round: " + ", ".join(f"{r:.0f} MB" for r in rss))
    finally:
        await storage.aclose()
        with psycopg.connect(args.pg, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)
    if args.memory_events:
        await memory(args)


async def memory(args: argparse.Namespace) -> None:
    name = f"coby_bench_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(args.pg, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    url = args.pg.rpartition("/")[0] + "/" + name
    tmp = tempfile.mkdtemp()
    settings = Settings.load(env={}, db_url=url, data_dir=tmp, log_level="WARNING", exchanges=",".join(VENUES),
                             symbols=",".join(SYMBOLS))
    storage = open_storage(settings, url)
    await storage.start()
    try:
        start, end, n = await generate(url, args.memory_events)
        manager = ReplayManager(settings, storage)
        before = rss_mb()
        samples: list[tuple[int, float]] = []
        ev, msgs, secs = await in_process(manager, start, end, raw=True, sample=samples)
        await manager.aclose()
        peak = max(r for _, r in samples)
        tenth = next(r for e, r in samples if e >= ev / 10)
        print(f"memory: {ev:,} events replayed in {secs:.0f} s ({ev / secs:,.0f}/s); RSS before {before:.0f} MB, "
              f"at 10% {tenth:.0f} MB, peak {peak:.0f} MB, at the end {samples[-1][1]:.0f} MB")
        for e, r in samples[:: max(1, len(samples) // 10)]:
            print(f"  {e:>10,} events  RSS {r:7.1f} MB")
    finally:
        await storage.aclose()
        with psycopg.connect(args.pg, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every measurement")
    ap.add_argument("--breakdown", action="store_true", help="also time the stages of one in-process replay")
    ap.add_argument("--memory-events", type=int, default=0, help="also measure RSS over a replay of this many")
    ap.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    tune_gc()  # as coby's commands do at start-up
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
