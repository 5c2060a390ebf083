"""Ingest cost: coby's whole live path beside ccxt.pro alone, on the same simulated stream, in one run.

    .venv/bin/python bench/ingest.py [--exchange binance] [--rate 300] [--low-rate 50] [--seconds 20]
    .venv/bin/python bench/ingest.py --paced [--seconds 20]      # 5, 10, 50 and 300 updates/s per market
    .venv/bin/python bench/ingest.py --soak 600 [--rate 10]      # memory over time, all ten venues

The simulator runs in a separate process (``coby simulate``), so its CPU is not counted. In this
process, for the same window and the same feed, two runs one after the other:

- **ccxt.pro alone**: ``watch_order_book`` + ``watch_trades`` loops per symbol, doing nothing else;
- **coby**: ``ExchangeConnector`` (ccxt.pro + normalisation + validation + watchdog) feeding the
  ``Pipeline`` (storage in PostgreSQL with binary COPY, the in-process cache/bus, the aggregation tick).

Messages are counted from the book's own sequence (binance: the depth update id, one per update
message) plus trades, so both runs count the same thing even though ``watch_order_book`` coalesces
bursts. CPU is this process's ``process_time`` over the window. The figure of merit is CPU per
message, coby over ccxt.pro alone (target: at most 1.30), at two rates; the difference between them
is the marginal cost per message, without the per-second costs (ticks, flushes, keepalives) that
dominate at low rates.

``--paced``: the rates users run - 5, 10 and 50 updates/s per market, where ``watch_order_book``
wakes once per message and no throttle merges anything - beside 300/s, where bursts coalesce; the
same two runs at each rate.

``--soak N``: all ten venues x two symbols through the full daemon for N seconds, RSS sampled
every 30 s (memory must stay flat).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import psycopg

from coby.config import Settings

SYMBOLS = ("BTC-USDT", "ETH-USDT")
PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb() -> float:
    with open(f"/proc/{os.getpid()}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def wait_port(port: int) -> None:
    for _ in range(200):
        with contextlib.suppress(OSError):
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("simulator did not start")


async def set_rate(port: int, rate: float) -> None:
    import aiohttp
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{port}/_sim/rate", json={"rate": rate}) as r:
            r.raise_for_status()


async def ccxt_alone(settings: Settings, exchange: str, seconds: float) -> tuple[int, float]:
    # the same preset markets, URL overrides and client-per-symbol layout the connector uses
    from coby.collector.markets import MarketCatalog
    from coby.symbols import SymbolMap
    from coby.collector.venues import build_client, override_base
    catalog = MarketCatalog(exchange, settings, SymbolMap(settings.symbol_map))
    clients = {s: build_client(exchange, catalog.markets_for([s]), override_base(settings, exchange)) for s in SYMBOLS}
    counts = {"trades": 0}
    nonces: dict[str, list[int]] = {}

    async def books(sym: str) -> None:
        unified = sym.replace("-", "/")
        while True:
            ob = await clients[sym].watch_order_book(unified)
            nonces.setdefault(sym, [ob["nonce"], ob["nonce"]])[1] = ob["nonce"]

    async def trades(sym: str) -> None:
        seen: set[str] = set()
        while True:
            for t in await clients[sym].watch_trades(sym.replace("-", "/")):
                if t["id"] not in seen:
                    seen.add(t["id"])
                    counts["trades"] += 1

    tasks = [asyncio.ensure_future(f(s)) for s in SYMBOLS for f in (books, trades)]
    await asyncio.sleep(3)  # warm-up: connect, snapshot
    nonces.clear()
    counts["trades"] = 0
    cpu0 = time.process_time()
    await asyncio.sleep(seconds)
    cpu = time.process_time() - cpu0
    msgs = sum(b - a for a, b in nonces.values()) + counts["trades"]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for c in clients.values():
        await c.close()
    return msgs, cpu


async def coby_path(settings: Settings, exchange: str, seconds: float) -> tuple[int, float]:
    from coby.cache import MemoryCache
    from coby.db import open_storage
    from coby.exchanges import ExchangeConnector
    from coby.models import OrderBookSnapshot, TradeEvent
    from coby.pipeline import Pipeline

    storage = open_storage(settings)
    await storage.start()
    bus = MemoryCache()
    await bus.start()
    pipeline = Pipeline(settings, storage, bus)
    await pipeline.start()
    seqs: dict[str, list[int]] = {}
    counts = {"trades": 0}

    async def on_event(ev: object) -> None:
        await pipeline.on_event(ev)
        if isinstance(ev, OrderBookSnapshot) and ev.sequence_id is not None:
            seqs.setdefault(ev.symbol, [ev.sequence_id, ev.sequence_id])[1] = ev.sequence_id
        elif isinstance(ev, TradeEvent):
            counts["trades"] += 1

    conn = ExchangeConnector(exchange, settings, on_event)
    await conn.connect()
    for sym in SYMBOLS:
        await conn.subscribe_orderbook(sym)
        await conn.subscribe_trades(sym)
    await asyncio.sleep(3)
    seqs.clear()
    counts["trades"] = 0
    cpu0 = time.process_time()
    await asyncio.sleep(seconds)
    cpu = time.process_time() - cpu0
    msgs = sum(b - a for a, b in seqs.values()) + counts["trades"]
    await conn.disconnect()
    await pipeline.aclose()
    await storage.aclose()
    await bus.aclose()
    return msgs, cpu


async def soak(seconds: float, rate: float, db: str, port: int) -> None:
    from coby.daemon import Daemon
    data = tempfile.mkdtemp()
    # COBY_* variables apply (e.g. COBY_TRADE_ID_MEMORY to see a bounded cache fill sooner)
    settings = Settings.load(db_url=db, simulate=True, simulator_port=port, api_port=0, data_dir=data,
                             log_level="WARNING")
    d = Daemon(settings)
    await d.start()
    d.simulator.set_rate(rate)
    t0 = time.monotonic()
    samples = []
    try:
        while time.monotonic() - t0 < seconds:
            await asyncio.sleep(min(30, seconds))
            samples.append((round(time.monotonic() - t0), round(rss_mb(), 1), d.pipeline.events))
            print(f"t={samples[-1][0]:>5}s rss={samples[-1][1]:>7.1f} MB events={samples[-1][2]}", flush=True)
    finally:
        await d.stop()
    first, last = samples[0], samples[-1]
    print(f"RSS {first[1]} MB at {first[0]} s -> {last[1]} MB at {last[0]} s "
          f"({last[1] - first[1]:+.1f} MB); {last[2] / last[0]:.0f} events/s")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--exchange", default="binance")
    ap.add_argument("--rate", type=float, default=300.0, help="book updates per second per market")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--low-rate", type=float, default=50.0,
                    help="also measure at this rate: the difference gives the marginal cost per message (0: skip)")
    ap.add_argument("--soak", type=float, default=0.0, help="seconds of the all-venue memory soak")
    ap.add_argument("--paced", action="store_true", help="measure at 5, 10, 50 and 300 updates/s per market")
    args = ap.parse_args()
    name = f"coby_bench_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(PG, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    db = PG.rpartition("/")[0] + "/" + name
    try:
        if args.soak:
            await soak(args.soak, args.rate, db, free_port())
            return
        port = free_port()
        rates = [args.low_rate, args.rate] if args.low_rate else [args.rate]
        if args.paced:
            rates = [5.0, 10.0, 50.0, 300.0]
        sim = subprocess.Popen([sys.executable, "-m", "coby.cli", "simulate", "--port", str(port), "--rate",
                                str(rates[0]), "--exchanges", args.exchange], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        results = []
        try:
            await wait_port(port)
            settings = Settings.load(env={}, db_url=db, exchanges=args.exchange, simulate=True,
                                     simulator_port=port, data_dir=tempfile.mkdtemp(), log_level="WARNING")
            for rate in rates:
                await set_rate(port, rate)
                base = await ccxt_alone(settings, args.exchange, args.seconds)
                full = await coby_path(settings, args.exchange, args.seconds)
                results.append((rate, base, full))
        finally:
            sim.terminate()
            sim.wait()
        print(f"exchange={args.exchange} x {len(SYMBOLS)} symbols, {args.seconds:g} s per run, load {os.getloadavg()[0]:.1f}")
        for rate, (bm, bc), (cm, cc) in results:
            b, c = bc / bm * 1e6, cc / cm * 1e6
            print(f"rate {rate:>5g}/s/market  ccxt.pro alone {bm / args.seconds:>6.0f} msg/s {b:6.1f} us CPU/msg | "
                  f"coby {cm / args.seconds:>6.0f} msg/s {c:6.1f} us CPU/msg | ratio {c / b:.2f}")
        if len(results) == 2 and not args.paced:
            (_, (bm0, bc0), (cm0, cc0)), (_, (bm1, bc1), (cm1, cc1)) = results
            mb = (bc1 - bc0) / (bm1 - bm0) * 1e6
            mc = (cc1 - cc0) / (cm1 - cm0) * 1e6
            print(f"marginal CPU per message (between the two rates, fixed per-second costs removed): "
                  f"ccxt.pro {mb:.1f} us, coby {mc:.1f} us, ratio {mc / mb:.2f}")
    finally:
        with psycopg.connect(PG, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    asyncio.run(main())
