"""Scale-out capacity (issue 19): collectors' CPU per venue-symbol, split over processes, and API nodes' fan-out.

    .venv/bin/python bench/scale.py [--venues binance,okx,bybit,coinbase,kraken] [--rate 10] [--busy-rate 50]
                                    [--seconds 20] [--warmup 15] [--redis redis://127.0.0.1:6379/13]

The simulator runs in its own process (``coby simulate``) at ``--rate`` updates per second per market. Each
measurement starts its coby processes (``coby run --role collector`` / ``--role api``, PostgreSQL in a fresh
database, one Redis db), waits ``--warmup`` seconds, then reads their CPU (user + system, all threads, from
``/proc``) over ``--seconds``:

1. one collector at 2, 4, 8 and 16 symbols (x the venues): CPU seconds per venue-symbol per second, and at
   8 symbols the same at ``--busy-rate`` (a busy market);
2. the 12-symbol load split over 1, 2 and 3 collectors (``--shard K/N``): the same figure over the sum of
   their CPU (what splitting costs or saves);
3. one collector (8 symbols) and 1 or 2 API nodes, ``--clients`` WebSocket clients per node (one client
   process per node) each subscribed to every book, consolidated and trades channel: messages per second delivered,
   the API nodes' CPU, and so the microseconds of API CPU per delivered message.

The machine is shared (2 cores, other work running): figures are noisy; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
from bench.daemon import cpu_seconds, drop_db, http, new_db, sent  # noqa: E402
from bench.ingest import free_port  # noqa: E402

from coby.instruments import SYMBOLS as INSTRUMENTS  # noqa: E402

SYMBOLS = [s for s in INSTRUMENTS if INSTRUMENTS[s].activity >= 0.3][:16]
COBY = [sys.executable, "-m", "coby.cli", "run"]

CLIENTS = r"""
import asyncio, json, sys, time
import aiohttp
ports, channels, n, warmup, seconds = json.loads(sys.argv[1])
counts = [0]
async def client(port, t0):
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"http://127.0.0.1:{port}/ws", max_msg_size=0) as ws:
            await ws.send_json({"op": "subscribe", "channels": channels, "id": 1})
            async for msg in ws:
                if warmup <= time.monotonic() - t0 < warmup + seconds:
                    counts[0] += 1
async def main():
    t0 = time.monotonic()
    tasks = [asyncio.ensure_future(client(p, t0)) for p in ports for _ in range(n)]
    await asyncio.sleep(warmup + seconds)
    for t in tasks: t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"messages": counts[0], "seconds": seconds}))
asyncio.run(main())
"""


def load_average() -> str:
    with open("/proc/loadavg") as fh:
        return fh.read().split()[0]


def clear_redis(url: str) -> None:
    import redis
    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter("coby:*", count=1000))
    for i in range(0, len(keys), 500):
        r.delete(*keys[i:i + 500])
    r.close()


class Cluster:
    """coby processes of one measurement, on one fresh database and one Redis db."""

    def __init__(self, args: argparse.Namespace, symbols: list[str]) -> None:
        self.args, self.symbols = args, symbols
        self.db = new_db()
        clear_redis(args.redis)
        self.procs: list[tuple[str, subprocess.Popen, int]] = []

    def env(self, port: int) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("COBY_")}
        env.update(PYTHONPATH=HERE, COBY_EXCHANGE_URLS=f"*=http://127.0.0.1:{self.args.sim_port}",
                   COBY_SYMBOLS=",".join(self.symbols), COBY_EXCHANGES=self.args.venues, COBY_LOG_LEVEL="WARNING",
                   COBY_DATA_DIR=tempfile.mkdtemp(), API_PORT=str(port), COBY_DB_URL=self.db,
                   COBY_REDIS_URL=self.args.redis, COBY_EVENT_LOOP=self.args.event_loop)
        return env

    def start(self, name: str, *flags: str, drop: str | None = None) -> int:
        port = free_port()
        env = self.env(port)
        env.pop(drop or "", None)
        proc = subprocess.Popen([*COBY, *flags], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, cwd="/tmp")
        self.procs.append((name, proc, port))
        return port

    def cpu(self, prefix: str) -> float:
        return sum(cpu_seconds(p.pid) for n, p, _ in self.procs if n.startswith(prefix))

    def close(self) -> None:
        for _, p, _ in self.procs:
            p.terminate()
        for _, p, _ in self.procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
        drop_db(self.db)


def collectors(args: argparse.Namespace, symbols: list[str], processes: int, role: str = "collector",
               redis: bool = True) -> dict:
    """``processes`` collectors sharing ``symbols``: CPU seconds per venue-symbol per second (their sum).
    ``role="all"``: one single process instead (``redis=False``: with the in-process cache), to compare."""
    c = Cluster(args, symbols)
    try:
        for k in range(processes):
            flags = ["--role", role] + (["--collector-id", f"bench-{k}"] if role == "collector" else [])
            if processes > 1:
                flags += ["--shard", f"{k}/{processes}"]
            c.start(f"collector-{k}", *flags, **({} if redis else {"drop": "COBY_REDIS_URL"}))
        time.sleep(args.warmup)
        for name, p, _ in c.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}")
        m0, c0, t0 = sent(args.simurl), c.cpu("collector"), time.monotonic()
        time.sleep(args.seconds)
        m1, cpu, wall = sent(args.simurl), c.cpu("collector") - c0, time.monotonic() - t0
    finally:
        c.close()
    vs = len(symbols) * len(args.venues.split(","))
    msgs = max(1, m1 - m0)
    # per venue-symbol per second at the offered rate: CPU per message x messages per venue-symbol per second
    return {"venue_symbols": vs, "cpu_per_s": cpu / wall, "per_vs": cpu / wall / vs, "load": load_average(),
            "msg_per_s": msgs / wall, "us_per_msg": cpu / msgs * 1e6}


def api_nodes(args: argparse.Namespace, symbols: list[str], nodes: int) -> dict:
    """One collector, ``nodes`` API nodes, ``--clients`` WebSocket clients per node on every channel."""
    c = Cluster(args, symbols)
    venues = args.venues.split(",")
    channels = [f"book:{v}:{s}" for v in venues for s in symbols] + \
        [f"consolidated:{s}" for s in symbols] + [f"trades:{s}" for s in symbols]
    try:
        c.start("collector", "--role", "collector")
        ports = [c.start(f"api-{k}", "--role", "api") for k in range(nodes)]
        time.sleep(args.warmup / 2)
        clients = [subprocess.Popen([sys.executable, "-c", CLIENTS,  # one client process per node: not the limit
                                     json.dumps([[port], channels, args.clients, args.warmup / 2, args.seconds])],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                    env={**os.environ, "PYTHONPATH": HERE}) for port in ports]
        time.sleep(args.warmup / 2)
        a0, t0 = c.cpu("api"), time.monotonic()
        time.sleep(args.seconds)
        cpu, wall = c.cpu("api") - a0, time.monotonic() - t0
        got = {"messages": 0, "seconds": args.seconds}
        for proc in clients:
            out, _ = proc.communicate(timeout=args.seconds + 60)
            got["messages"] += json.loads(out)["messages"]
    finally:
        c.close()
    per_s = got["messages"] / got["seconds"]
    return {"delivered_per_s": per_s, "api_cpu_per_s": cpu / wall,
            "us_per_msg": cpu / max(1, got["messages"]) * 1e6, "load": load_average()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--venues", default="binance,okx,bybit,coinbase,kraken")
    p.add_argument("--rate", type=float, default=10.0)
    p.add_argument("--busy-rate", type=float, default=50.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=15.0)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    p.add_argument("--event-loop", default="auto", choices=("auto", "uvloop", "asyncio"),
                   help="the coby processes' event_loop (auto: uvloop for collectors, asyncio for API nodes)")
    p.add_argument("--only", default="1,2,3", help="which parts to run (1: symbols, 2: split, 3: API nodes; "
                                                    "0: a collector against role all, with and without Redis)")
    args = p.parse_args()
    args.sim_port = free_port()
    sim = subprocess.Popen([sys.executable, "-m", "coby.cli", "simulate", "--port", str(args.sim_port),
                            "--exchanges", args.venues, "--symbols", ",".join(SYMBOLS), "--rate", str(args.rate)],
                           env={**os.environ, "PYTHONPATH": HERE}, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, cwd="/tmp")
    simurl = args.simurl = f"http://127.0.0.1:{args.sim_port}"
    parts = set(args.only.split(","))
    try:
        time.sleep(3)
        print(f"venues {args.venues}; rate {args.rate:g}/s per market; window {args.seconds:g} s after "
              f"{args.warmup:g} s; load average {load_average()} at start", flush=True)
        if "1" in parts:
            for n in (2, 4, 8, 16):
                r = collectors(args, SYMBOLS[:n], 1)
                print(f"1 collector, {n:2d} symbols ({r['venue_symbols']:3d} venue-symbols): {r['cpu_per_s']:.2f} core, "
                      f"{r['msg_per_s']:.0f} msg/s, {r['us_per_msg']:.0f} us/msg, {r['per_vs'] * 1000:.2f} ms CPU per "
                      f"venue-symbol per s -> {1 / r['per_vs']:.0f} venue-symbols per core (load {r['load']})",
                      flush=True)
            http(f"{simurl}/_sim/rate", {"rate": args.busy_rate})
            r = collectors(args, SYMBOLS[:8], 1)
            http(f"{simurl}/_sim/rate", {"rate": args.rate})
            print(f"busy ({args.busy_rate:g}/s): 1 collector, 8 symbols: {r['cpu_per_s']:.2f} core, "
                  f"{r['msg_per_s']:.0f} msg/s, {r['us_per_msg']:.0f} us/msg, {r['per_vs'] * 1000:.2f} ms per venue-symbol per s -> {1 / r['per_vs']:.0f} venue-symbols per "
                  f"core (load {r['load']})", flush=True)
        if "2" in parts:
            for k in (1, 2, 3):
                r = collectors(args, SYMBOLS[:12], k)
                print(f"12 symbols over {k} collector(s): {r['cpu_per_s']:.2f} core in all, {r['msg_per_s']:.0f} "
                      f"msg/s, {r['us_per_msg']:.0f} us/msg, {r['per_vs'] * 1000:.2f} ms per venue-symbol per s (load {r['load']})", flush=True)
        if "0" in parts:  # the same 8 symbols: a collector against one process, with and without Redis
            for label, role, redis in (("role all, in-process cache", "all", False), ("role all, Redis", "all", True),
                                       ("role collector (Redis)", "collector", True)):
                r = collectors(args, SYMBOLS[:8], 1, role, redis)
                print(f"8 symbols, {label}: {r['cpu_per_s']:.2f} core, {r['msg_per_s']:.0f} msg/s, "
                      f"{r['us_per_msg']:.0f} us/msg (load {r['load']})", flush=True)
        if "3" in parts:
            for k in (1, 2):
                r = api_nodes(args, SYMBOLS[:8], k)
                print(f"{k} API node(s), {args.clients * k} clients on every channel: {r['delivered_per_s']:.0f} msg/s "
                      f"delivered, API CPU {r['api_cpu_per_s']:.2f} core, {r['us_per_msg']:.1f} us per delivered "
                      f"message -> {1e6 / r['us_per_msg']:.0f} msg/s per core (load {r['load']})", flush=True)
    finally:
        sim.terminate()
        sim.wait(30)


if __name__ == "__main__":
    main()
