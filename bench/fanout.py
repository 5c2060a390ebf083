"""WebSocket fan-out: N clients on consolidated and trades channels while messages are published at set rates.

    .venv/bin/python bench/fanout.py [--clients 200] [--symbols BTC-USDT,ETH-USDT] [--book-hz 10]
                                     [--trades 100] [--levels 100] [--duration 30] [--cache redis|memory]
    .venv/bin/python bench/fanout.py --source daemon [--clients 200] [--duration 30] [--client-procs 2]

Three processes, so that the server's CPU is its own:
- server: the real app (``coby.http.create_app``: middleware, /ws, ``coby.api.hub`` and ``coby.api.ws``) over a
  RedisCache (or MemoryCache) and SQLite storage, plus a publisher that calls ``cache.publish`` exactly as
  the pipeline does (envelope per message, per-channel seq, latest state stored first) at the set rates:
  ``--book-hz`` consolidated books of ``--levels`` levels a side per symbol, ``--trades`` trades/s per symbol
  (in 10 ms ticks). The envelope's ``received`` is the publish time;
- clients: ``--clients`` WebSocket clients in one process, each subscribed to consolidated:SYM and trades:SYM
  of every symbol; latency = the time the bytes reached the client process - the envelope's ``received``
  (same machine, same clock). The clients are a minimal RFC 6455 client on asyncio.Protocol that only walks
  frame headers and reads three fields, so that one process can keep up with 200 connections (aiohttp's
  client costs ~10x more per message and became the bottleneck, not the server);
- this driver: starts both, waits for every client's snapshots, lets the publisher run ``--duration`` s,
  drains, and prints p50/p99/max latency per channel kind, messages per client (min/max: no one starved,
  every trade delivered), disconnects, and each process's CPU (% of one core).

``--source daemon`` instead starts ``coby run --simulate`` (ten venues through ccxt.pro against the
built-in simulator, the real pipeline and aggregation) and connects the clients to it; latency is then
measured from the pipeline's own ``received`` (coby's receive time of the trade; the tick time of a
consolidated book), and the fan-out's CPU is the daemon's CPU with clients minus without, same run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def emit(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class LagProbe:
    """This process's event-loop lag: how late a 5 ms sleep wakes. On an idle machine it is ~0; a large
    p99 here, with little CPU used, means the process was waiting for a core (other load), not working."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t = loop.time()
            await asyncio.sleep(0.005)
            self.lags.append(loop.time() - t - 0.005)

    def stop(self) -> dict:
        self.task.cancel()
        xs = sorted(self.lags) or [0.0]
        return {"p50": round(1000 * xs[len(xs) // 2], 1), "p99": round(1000 * xs[int(0.99 * (len(xs) - 1))], 1)}


async def read_line() -> str:
    return (await asyncio.to_thread(sys.stdin.readline)).strip()


# --- server -------------------------------------------------------------------------------------
async def server(args: argparse.Namespace) -> None:
    from aiohttp import web

    from coby.cache import MemoryCache, RedisCache
    from coby.codec import to_dict
    from coby.config import Settings
    from coby.db import open_storage
    from coby.http import create_app
    from coby.models import ConsolidatedLevel, ConsolidatedOrderBook, TradeEvent, utcnow

    symbols = args.symbols.split(",")
    data_dir = tempfile.mkdtemp(prefix="coby-fanout-")
    settings = Settings.load(env={}, exchanges="binance,okx,bybit,kraken,coinbase", symbols=args.symbols,
                             data_dir=data_dir, log_level="WARNING", ws_max_connections_per_ip=args.clients + 10,
                             api_port=0)
    storage = open_storage(settings)
    await storage.start()
    cache = RedisCache(args.redis) if args.cache == "redis" else MemoryCache()
    await cache.start()

    class Host:
        pass

    host = Host()
    host.settings, host.storage, host.cache, host.connectors, host.started_at = \
        settings, storage, cache, {}, time.time()
    runner = web.AppRunner(create_app(host), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    emit({"ready": site._server.sockets[0].getsockname()[1]})  # type: ignore[union-attr]

    venues = {"binance": 0.4, "okx": 0.3, "bybit": 0.2, "kraken": 0.1}
    books = {}
    for i, sym in enumerate(symbols):
        mid = 30000.0 / (i + 1)
        lv = lambda p: ConsolidatedLevel(p, 1.0, venues)  # noqa: E731
        books[sym] = to_dict(ConsolidatedOrderBook(
            sym, utcnow(), tuple(lv(mid - 0.5 - k) for k in range(args.levels)),
            tuple(lv(mid + 0.5 + k) for k in range(args.levels)), mid - 0.5, "binance", mid + 0.5, "okx", False,
            tuple(venues), ()))
    seq: dict[str, int] = {}

    async def publish(channel: str, data: dict, latest: tuple[str, str] | None = None) -> None:
        seq[channel] = seq.get(channel, 0) + 1
        now = utcnow()
        env = {"channel": channel, "type": "update", "seq": seq[channel], "ts": now, "received": now, "data": data}
        if latest:
            await cache.set_latest(latest[0], latest[1], env)
        await cache.publish(channel, env)

    for sym in symbols:  # the snapshots clients get at subscribe
        await publish(f"consolidated:{sym}", books[sym], ("consolidated", sym))

    assert await read_line() == "go"
    loop = asyncio.get_running_loop()
    probe = LagProbe()
    cpu0, t0 = cpu_seconds(), loop.time()
    tick, n_trades, next_book = 0.01, 0, t0
    trade_seq = 0
    while (now := loop.time()) - t0 < args.duration:
        due = int((now - t0) * args.trades) - n_trades
        for _ in range(due):
            trade_seq += 1
            for sym in symbols:
                t = utcnow()
                await publish(f"trades:{sym}", to_dict(TradeEvent(sym, "binance", t, 30000.0, 0.01, "buy",
                                                                  str(trade_seq), t)))
        n_trades += due
        if now >= next_book:
            for sym in symbols:
                await publish(f"consolidated:{sym}", books[sym], ("consolidated", sym))
            next_book += 1.0 / args.book_hz
        await asyncio.sleep(tick)
    elapsed = loop.time() - t0
    cpu = cpu_seconds() - cpu0
    emit({"published": dict(seq), "elapsed": elapsed, "cpu_pct": round(100 * cpu / elapsed, 1),
          "loop_lag_ms": probe.stop()})
    await read_line()  # "quit"
    await runner.cleanup()
    await cache.aclose()
    await storage.aclose()


# --- clients ------------------------------------------------------------------------------------
def received_at(payload: bytes) -> float | None:
    """The envelope's ``received`` as epoch seconds, without parsing the whole message."""
    i = payload.find(b'"received":"')
    if i < 0:
        return None  # null
    i += 12
    text = payload[i:payload.index(b'"', i)].decode().replace("Z", "+00:00")
    return datetime.fromisoformat(text).timestamp()


def seq_of(payload: bytes) -> int:
    i = payload.find(b'"seq":') + 6
    return int(payload[i:payload.index(b",", i)])


class WsClient(asyncio.Protocol):
    """A minimal WebSocket client (RFC 6455) that costs the bench little: it walks frame headers as bytes
    arrive, stamps each message with that arrival time, and reads only ``received``, ``seq`` and the
    channel's kind from the payload. Answers pings; masks what it sends, as a client must."""

    def __init__(self, host: str, port: int, subscribe: bytes, on_message: Any) -> None:
        self.request = (f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        self.subscribe = subscribe
        self.on_message = on_message
        self.buf = bytearray()
        self.upgraded = False
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0xFE]) + n.to_bytes(2, "big"))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(head + mask + masked)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        now = time.time()
        buf = self.buf
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            assert buf.startswith(b"HTTP/1.1 101"), bytes(buf[:200])
            del buf[:end + 4]
            self.upgraded = True
            self.send(0x1, self.subscribe)
        pos, size = 0, len(buf)
        while size - pos >= 2:
            n, hdr = buf[pos + 1] & 0x7F, 2
            if n == 126:
                if size - pos < 4:
                    break
                n, hdr = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif n == 127:
                if size - pos < 10:
                    break
                n, hdr = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            if size - pos < hdr + n:
                break
            opcode = buf[pos] & 0x0F
            payload = bytes(buf[pos + hdr:pos + hdr + n])
            pos += hdr + n
            if opcode == 0x1:
                self.on_message(payload, now)
            elif opcode == 0x9:
                self.send(0xA, payload)
            elif opcode == 0x8 and not self.closed.done():
                self.closed.set_result(payload)
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(b"")


async def clients(args: argparse.Namespace) -> None:
    symbols = args.symbols.split(",")
    channels = [f"{k}:{s}" for s in symbols for k in ("consolidated", "trades")]
    subscribe = json.dumps({"op": "subscribe", "channels": channels}).encode()
    lat: dict[str, list[float]] = {"consolidated": [], "trades": []}
    counts: list[dict[str, int]] = []
    ready = asyncio.Event()
    state = {"snapshotted": 0, "gaps": 0}
    loop = asyncio.get_running_loop()

    def handler() -> Any:
        mine = {"consolidated": 0, "trades": 0, "snapshots": 0}
        counts.append(mine)
        last_seq: dict[bytes, int] = {}

        def on_message(data: bytes, now: float) -> None:
            if not data.startswith(b'{"channel":'):
                return  # the subscribe reply
            if data.find(b'"type":"snapshot"', 0, 200) >= 0:
                mine["snapshots"] += 1
                if mine["snapshots"] == len(symbols):
                    state["snapshotted"] += 1
                    if state["snapshotted"] == args.clients:
                        ready.set()
                return
            kind = "trades" if data.startswith(b'{"channel":"trades') else "consolidated"
            mine[kind] += 1
            sent_at = received_at(data)
            if sent_at is not None:
                lat[kind].append(now - sent_at)
            if kind == "trades":
                channel, seq = data[12:data.index(b'"', 12)], seq_of(data)
                state["gaps"] += channel in last_seq and seq != last_seq[channel] + 1
                last_seq[channel] = seq
        return on_message

    conns = []
    for _ in range(args.clients):
        _, proto = await loop.create_connection(lambda: WsClient("127.0.0.1", args.port, subscribe, handler()),
                                                "127.0.0.1", args.port)
        conns.append(proto)
    await ready.wait()
    for k in lat:  # latency and counts from here: every client subscribed (clients subscribe over a while)
        lat[k].clear()
        for c in counts:
            c[k] = 0
    emit({"subscribed": args.clients})
    probe = LagProbe()
    cpu0, t0 = cpu_seconds(), time.monotonic()
    assert await read_line() == "stop"
    elapsed, cpu = time.monotonic() - t0, cpu_seconds() - cpu0
    closed = sum(c.closed.done() for c in conns)
    for c in conns:
        c.transport.close()  # type: ignore[union-attr]

    def pct(xs: list[float], q: float) -> float:
        xs = sorted(xs)
        return round(1000 * xs[min(len(xs) - 1, int(q * len(xs)))], 2) if xs else float("nan")

    emit({"latency_ms": {k: {"p50": pct(v, 0.5), "p99": pct(v, 0.99), "max": pct(v, 1.0), "n": len(v)}
                         for k, v in lat.items()},
          "hist": {k: Counter(int(x * 1e5) for x in v) for k, v in lat.items()},  # 0.01 ms bins, for merging
          "per_client": {k: [min(c[k] for c in counts), max(c[k] for c in counts)] for k in lat},
          "disconnected": closed, "trade_gaps": state["gaps"], "cpu_pct": round(100 * cpu / elapsed, 1),
          "loop_lag_ms": probe.stop()})


# --- driver -------------------------------------------------------------------------------------
def spawn(role: str, argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--role", role, *argv], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def expect(proc: subprocess.Popen, key: str) -> dict:
    while True:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            raise SystemExit(f"{key}: the {proc.args[3]} process ended early (exit {proc.wait()})")
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if key in msg:
            return msg


def send(proc: subprocess.Popen, line: str) -> None:
    proc.stdin.write(line + "\n")  # type: ignore[union-attr]
    proc.stdin.flush()  # type: ignore[union-attr]


def start_clients(args: argparse.Namespace, argv: list[str], port: int) -> list[subprocess.Popen]:
    """``--client-procs`` processes sharing ``--clients`` between them; returns once all are subscribed."""
    k = max(1, min(args.client_procs, args.clients))
    shares = [args.clients // k + (i < args.clients % k) for i in range(k)]
    procs = [spawn("clients", [*argv, "--port", str(port), "--clients", str(n)]) for n in shares]
    for p in procs:
        expect(p, "subscribed")
    return procs


def stop_clients(procs: list[subprocess.Popen]) -> dict:
    """Stop the client processes and merge what they measured (latencies from their 0.01 ms histograms)."""
    for p in procs:
        send(p, "stop")
    parts = [expect(p, "latency_ms") for p in procs]

    def at(hist: list[tuple[int, int]], total: int, q: float) -> float:
        """The q-quantile in ms of a sorted 0.01 ms histogram of ``total`` samples."""
        rank, seen = min(total - 1, int(q * total)), 0
        for b, n in hist:
            seen += n
            if seen > rank:
                return round(b / 100, 2)
        return float("nan")
    latency = {}
    for kind in parts[0]["latency_ms"]:
        merged: Counter[int] = Counter()
        for part in parts:
            merged.update({int(b): n for b, n in part["hist"][kind].items()})
        hist, total = sorted(merged.items()), sum(merged.values())
        latency[kind] = {q: at(hist, total, f) for q, f in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))}
        latency[kind]["n"] = total
    return {"latency_ms": latency,
            "per_client": {k: [min(p["per_client"][k][0] for p in parts), max(p["per_client"][k][1] for p in parts)]
                           for k in latency},
            "disconnected": sum(p["disconnected"] for p in parts), "trade_gaps": sum(p["trade_gaps"] for p in parts),
            "cpu_pct": round(sum(p["cpu_pct"] for p in parts), 1),
            "loop_lag_ms": {q: max(p["loop_lag_ms"][q] for p in parts) for q in ("p50", "p99")}}


def drive(args: argparse.Namespace, argv: list[str]) -> None:
    srv = spawn("server", argv)
    cli: list[subprocess.Popen] = []
    try:
        port = expect(srv, "ready")["ready"]
        cli = start_clients(args, argv, port)
        send(srv, "go")
        pub = expect(srv, "published")
        time.sleep(2.0)  # let the last messages arrive
        res = stop_clients(cli)
        send(srv, "quit")
    finally:
        for p in (*cli, srv):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    symbols = args.symbols.split(",")
    trades = sum(v for k, v in pub["published"].items() if k.startswith("trades:"))
    books = sum(v for k, v in pub["published"].items() if k.startswith("consolidated:")) - len(symbols)
    print(f"{args.clients} clients x {len(symbols)} symbols (consolidated {args.book_hz:g}/s of {args.levels} "
          f"levels a side, trades {args.trades:g}/s, per symbol), {pub['elapsed']:.0f} s, cache {args.cache}")
    print(f"published: {trades} trades, {books} consolidated books; "
          f"sent: {args.clients * (trades + books) / pub['elapsed']:.0f} messages/s")
    for kind, v in res["latency_ms"].items():
        lo, hi = res["per_client"][kind]
        print(f"  {kind:12s} p50 {v['p50']:7.2f} ms  p99 {v['p99']:7.2f} ms  max {v['max']:8.2f} ms   "
              f"per client min {lo} max {hi}")
    print(f"every trade to every client: {res['per_client']['trades'][0] == trades}; "
          f"disconnected: {res['disconnected']}")
    print(f"CPU: server {pub['cpu_pct']}% of one core (app + publisher), clients {res['cpu_pct']}%; "
          f"event-loop lag p50/p99: server {pub['loop_lag_ms']['p50']}/{pub['loop_lag_ms']['p99']} ms, "
          f"clients {res['loop_lag_ms']['p50']}/{res['loop_lag_ms']['p99']} ms; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def http_ok(url: str) -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def drive_daemon(args: argparse.Namespace, argv: list[str]) -> None:
    """``coby run --simulate`` as the source: the real pipeline at the simulator's rates."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    data_dir = tempfile.mkdtemp(prefix="coby-fanout-daemon-")
    env = {**os.environ, "COBY_WS_MAX_CONNECTIONS_PER_IP": str(args.clients + 10), "LOG_LEVEL": "WARNING",
           "COBY_SIMULATOR_PORT": "0", "COBY_SYMBOLS": args.symbols, "COBY_REDIS_URL": args.redis,
           "PYTHONPATH": str(ROOT)}
    if args.cache == "memory":
        env.pop("COBY_REDIS_URL")
    daemon = subprocess.Popen([sys.executable, "-m", "coby.cli", "run", "--simulate", "--port", str(port),
                               "--data-dir", data_dir], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    cli: list[subprocess.Popen] = []
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while not all(http_ok(f"{base}/api/v1/consolidated/{s}") for s in args.symbols.split(",")):
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise SystemExit("the daemon did not come up with consolidated books within 120 s")
            time.sleep(0.5)
        time.sleep(5)  # settle: every venue connected
        c0 = proc_cpu(daemon.pid)
        time.sleep(args.duration)
        idle = 100 * (proc_cpu(daemon.pid) - c0) / args.duration
        cli = start_clients(args, argv, port)
        c0, t0 = proc_cpu(daemon.pid), time.monotonic()
        time.sleep(args.duration)
        busy = 100 * (proc_cpu(daemon.pid) - c0) / (time.monotonic() - t0)
        res = stop_clients(cli)
    finally:
        for p in cli:
            p.wait(timeout=30)
        daemon.terminate()
        daemon.wait(timeout=60)
    n = sum(res["latency_ms"][k]["n"] for k in res["latency_ms"])
    print(f"{args.clients} clients on consolidated and trades of {args.symbols}, source: coby run --simulate "
          f"(ten venues, simulator defaults), {args.duration:.0f} s, cache {args.cache}")
    print(f"received: {n / args.duration:.0f} messages/s in all")
    for kind, v in res["latency_ms"].items():
        lo, hi = res["per_client"][kind]
        print(f"  {kind:12s} p50 {v['p50']:7.2f} ms  p99 {v['p99']:7.2f} ms  max {v['max']:8.2f} ms   "
              f"per client min {lo} max {hi}")
    print(f"trade seq gaps: {res['trade_gaps']}; disconnected: {res['disconnected']}")
    print(f"CPU: daemon {idle:.1f}% of one core without clients, {busy:.1f}% with them "
          f"(fan-out: {busy - idle:+.1f}%); clients {res['cpu_pct']}% ({len(cli)} process(es)); "
          f"client event-loop lag p50/p99 "
          f"{res['loop_lag_ms']['p50']}/{res['loop_lag_ms']['p99']} ms; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} CPUs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--role", choices=["driver", "server", "clients"], default="driver")
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--symbols", default="BTC-USDT,ETH-USDT")
    ap.add_argument("--book-hz", type=float, default=10.0)
    ap.add_argument("--trades", type=float, default=100.0)
    ap.add_argument("--levels", type=int, default=100)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--cache", choices=["redis", "memory"], default="redis")
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--client-procs", type=int, default=1,
                    help="client processes sharing --clients (one process can be the bottleneck of the figures)")
    ap.add_argument("--source", choices=["synthetic", "daemon"], default="synthetic",
                    help="synthetic: a publisher at the set rates; daemon: coby run --simulate")
    args = ap.parse_args()
    if args.role == "server":
        asyncio.run(server(args))
    elif args.role == "clients":
        asyncio.run(clients(args))
    else:
        argv = [a for a in sys.argv[1:]]
        (drive_daemon if args.source == "daemon" else drive)(args, argv)


if __name__ == "__main__":
    main()
