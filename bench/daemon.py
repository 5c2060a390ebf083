"""Whole-daemon cost and capacity: ``coby run`` (10 venues x N symbols) beside ccxt.pro alone, one run.

    .venv/bin/python bench/daemon.py [--symbols 22] [--rate 10] [--seconds 30] [--base /work/base-g]
                                     [--repeat 3] [--pin 1,0] [--variant uvloop:event_loop=uvloop]
    .venv/bin/python bench/daemon.py --overload 2.0 [--symbols 22]     # 2x capacity, then back to normal

The simulator runs in its own process (``coby simulate``) at ``--rate`` updates per second per market.
Against it, one after the other, each in its own process for the same window after a warm-up:

- **ccxt.pro alone**: a ``watch_order_book`` and a ``watch_trades`` loop per venue and symbol (one ccxt
  client per venue and kind), doing nothing else; books at the depth coby asks each venue for
  (``Venue.book_limit(book_depth)``: kraken 100, not ccxt's default 10; bitfinex 100, not 25...), so that
  both get the same frames;
- **coby**: ``coby run`` of this tree (PostgreSQL in a fresh database, in-process cache), exactly as a
  user starts it;
- **coby (base)**: the same command with ``PYTHONPATH`` at ``--base``, a checkout of an older commit;
- **coby (NAME)**, each ``--variant NAME:KEY=VALUE[,KEY=VALUE]``: this tree with those settings (as
  ``COBY_<KEY>``), e.g. ``--variant uvloop:event_loop=uvloop``: a setting's cost, in the same rounds.

Cost runs keep coby from degrading (``overload_after`` out of reach), so both trees do the same work; the
seconds that would have counted as overloaded are reported. Messages are the frames the simulator wrote to that process' sockets in the window (``/_sim/health``
``sent``), so every run counts the same thing; CPU is the process' user + system time over the window
(all threads: the storage writer too), from ``/proc``. Figures: CPU us per message, each over ccxt.pro
alone, and the N at which one core is full: ``1e6 / (us per message x messages per second per symbol)``.

``--overload F``: only coby; the rate is raised step by step (``--step`` 1.5 every ``--step-seconds`` 20)
until the daemon says ``overloaded``: the highest rate it held for a whole step is what it takes. After it
is back to normal at ``--rate``, F times that rate is offered for ``--hold`` seconds (60), then ``--rate``
again; status is polled every second: when ``overloaded`` shows, resident memory, trades counted by the
connectors against trades stored, rows lost, and when the daemon is back to normal.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import psycopg

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
from bench.ingest import PG, free_port  # noqa: E402

from coby.config import EXCHANGES  # noqa: E402
from coby.instruments import SYMBOLS as INSTRUMENTS  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
PIN: dict[str, set[int]] = {}  # --pin: the CPU of the measured process ("run") and of the simulator ("sim")


def pinned(role: str):
    """A ``preexec_fn`` that pins the child to ``--pin``'s CPU for ``role`` (none without ``--pin``)."""
    cpus = PIN.get(role)
    return None if cpus is None else (lambda: os.sched_setaffinity(0, cpus))

CCXT_ALONE = r"""
import asyncio, sys
from coby.config import Settings
from coby.collector.markets import MarketCatalog
from coby.symbols import SymbolMap
from coby.collector.venues import VENUES, build_client, override_base
from coby.eventloop import run

async def main():
    settings = Settings.load()
    loops = []
    for ex in settings.exchanges:
        limit = VENUES[ex].book_limit(settings.book_depth)  # the depth coby asks for: the same stream
        catalog = MarketCatalog(ex, settings, SymbolMap(settings.symbol_map))
        base = override_base(settings, ex)
        books = build_client(ex, catalog.markets_for(list(settings.symbols)), base)
        trades = build_client(ex, catalog.markets_for(list(settings.symbols)), base)
        for sym in settings.symbols:
            unified = SymbolMap(settings.symbol_map).unified(ex, sym)
            loops += [watch(books.watch_order_book, unified, limit), watch(trades.watch_trades, unified)]
    await asyncio.gather(*loops)

async def watch(method, *args):
    while True:
        try:
            await method(*args)
        except Exception:
            await asyncio.sleep(1)

run(main(), "uvloop" if "--uvloop" in sys.argv else "asyncio")  # coby run's loops (coby.eventloop)
"""


def cpu_seconds(pid: int) -> float:
    return sum(cpu_split(pid))


def cpu_split(pid: int) -> tuple[float, float]:
    """The process' user and system CPU seconds (all threads)."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK  # utime, stime


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def http(url: str, body: dict | None = None) -> dict:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:  # /ready's 503 has a body
        return json.loads(e.read())


def sent(sim: str) -> int:
    return sum(http(f"{sim}/_sim/health")["sent"].values())


def new_db() -> str:
    name = f"coby_bench_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(PG, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return PG.rpartition("/")[0] + "/" + name


def drop_db(url: str) -> None:
    with psycopg.connect(PG, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{url.rpartition("/")[2]}" WITH (FORCE)')


def env_for(sim_port: int, symbols: list[str], pythonpath: str, db: str | None, api_port: int) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COBY_")}
    env.update(PYTHONPATH=pythonpath, COBY_EXCHANGE_URLS=f"*=http://127.0.0.1:{sim_port}",
               COBY_SYMBOLS=",".join(symbols), COBY_EXCHANGES=",".join(EXCHANGES), COBY_LOG_LEVEL="WARNING",
               COBY_DATA_DIR=tempfile.mkdtemp(), API_PORT=str(api_port))
    if db is not None:
        env["COBY_DB_URL"] = db
    return env


def measure(kind: str, sim: str, sim_port: int, symbols: list[str], warmup: float, seconds: float,
            pythonpath: str = HERE, degrade: bool = False, profile: str | None = None,
            settings: dict[str, str] | None = None) -> dict:
    """One process of ``kind`` (ccxt, coby) against the simulator: messages, CPU and RSS over the window.
    ``profile``: a file for py-spy's samples of the window (collapsed stacks, idle frames left out);
    ``settings``: coby settings for this run, e.g. {"event_loop": "uvloop"} (the environment's COBY_ are not
    passed: unset, each is its default)."""
    db = new_db() if kind == "coby" else None
    api_port = free_port()
    env = env_for(sim_port, symbols, pythonpath, db, api_port)
    if not degrade:  # a cost run: both trees do the same work (a degraded daemon normalises fewer books)
        env["COBY_OVERLOAD_AFTER"] = "1000000"
    env.update({f"COBY_{k.upper()}": v for k, v in (settings or {}).items()})
    cmd = [sys.executable, "-m", "coby.cli", "run"] if kind == "coby" else \
        [sys.executable, "-c", CCXT_ALONE] + (["--uvloop"] if kind == "ccxt-uvloop" else [])
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/tmp",
                            preexec_fn=pinned("run"))
    try:
        time.sleep(warmup)
        if proc.poll() is not None:
            raise RuntimeError(f"{kind} exited with {proc.returncode}")
        for _ in range(120 if kind == "coby" else 0):  # past the governor's start-up grace (overload_warmup)
            try:
                if not (http(f"http://127.0.0.1:{api_port}/api/v1/status").get("load") or {}).get("warming_up"):
                    break
            except OSError:
                pass
            time.sleep(1)
        py_spy = shutil.which("py-spy", path=os.path.dirname(sys.executable)) or "py-spy"
        spy = None if profile is None else subprocess.Popen(
            [py_spy, "record", "--pid", str(proc.pid), "--duration", str(int(seconds)), "--rate", "250",
             "--nonblocking", "--threads", "--format", "raw", "--output", profile], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, preexec_fn=pinned("sim"))
        m0, (u0, s0), t0 = sent(sim), cpu_split(proc.pid), time.monotonic()
        lags, overloaded = [], 0
        while time.monotonic() - t0 < seconds:
            time.sleep(1)
            if kind == "coby":
                load = http(f"http://127.0.0.1:{api_port}/api/v1/status").get("load") or {}
                lags.append(load.get("loop_lag_s") or 0.0)  # the worst lag of the last second
                overloaded += bool(load.get("reasons"))  # seconds that would count (degrading is off)
        m1, (u1, s1), t1 = sent(sim), cpu_split(proc.pid), time.monotonic()
        out = {"messages": m1 - m0, "cpu": u1 - u0 + s1 - s0, "sys": s1 - s0, "wall": t1 - t0,
               "rss_mb": rss_mb(proc.pid)}
        if spy is not None:
            spy.wait(seconds + 30)
        if lags:
            lags.sort()
            out["loop_lag_p99_s"] = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
            out["overloaded_s"] = overloaded
        return out
    finally:
        proc.terminate()
        proc.wait(30)
        if db is not None:
            drop_db(db)


def report(name: str, r: dict, base_us: float | None, symbols: int) -> str:
    us = r["cpu"] / r["messages"] * 1e6
    per_symbol = r["messages"] / r["wall"] / symbols
    full = 1e6 / (us * per_symbol)
    ratio = f"{us / base_us:5.2f}x" if base_us else "    - "
    extra = f", loop lag p99 {r['loop_lag_p99_s'] * 1000:.0f} ms, overloaded seconds {r['overloaded_s']}" \
        if "loop_lag_p99_s" in r else ""
    sys_us = r["sys"] / r["messages"] * 1e6
    return (f"{name:<14} {r['messages'] / r['wall']:>7.0f} msg/s  {r['cpu'] / r['wall']:5.2f} core  {us:6.1f} us/msg "
            f"(system {sys_us:5.1f}) "
            f"{ratio}  one core full at N = {full:5.1f}  RSS {r['rss_mb']:.0f} MB{extra}")


def _status(api: str) -> tuple[dict, dict]:
    return http(f"{api}/api/v1/status").get("load") or {}, http(f"{api}/ready")


def _line(t: float, rate: float, offered: float, st: dict, ready: dict, pid: int) -> str:
    return (f"t={t:6.1f}s rate={rate:6.1f} offered={offered:6.0f} msg/s {st.get('state')} "
            f"level={st.get('degradation_level')} lag={st.get('loop_lag_s')} ready={ready.get('ok')} "
            f"rss={rss_mb(pid):.0f} MB reasons={st.get('reasons')}")


def overload(args: argparse.Namespace, sim: str, sim_port: int, symbols: list[str]) -> None:
    """Find the rate one core takes by raising it (x ``--step`` every ``--step-seconds``) until the daemon
    says ``overloaded``; let it recover at ``--rate``; then offer ``--overload`` times the highest rate it
    took, for ``--hold`` seconds, and back to ``--rate``. (The cost of a 10/s run overstates the cost per
    message at higher rates - ccxt and the throttles merge more per wake-up - so a capacity computed from it
    is no overload on a quiet machine.)"""
    db, api_port = new_db(), free_port()
    env = env_for(sim_port, symbols, HERE, db, api_port)
    # --hog: a busy loop on coby's CPU (--pin) takes about half of it, so the simulator (one process, which
    # costs about as much per message as coby) can offer twice what coby gets
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=pinned("run")) \
        if args.hog else None
    proc = subprocess.Popen([sys.executable, "-m", "coby.cli", "run"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd="/tmp", preexec_fn=pinned("run"))
    api = f"http://127.0.0.1:{api_port}"
    t0 = time.monotonic()
    rate, offered, m_prev, t_prev = args.rate, 0.0, 0, t0

    def tick() -> tuple[float, dict, dict]:
        nonlocal offered, m_prev, t_prev
        time.sleep(1)
        now, m = time.monotonic(), sent(sim)
        offered, m_prev, t_prev = (m - m_prev) / (now - t_prev), m, now
        st, ready = _status(api)
        print(_line(now - t0, rate, offered, st, ready, proc.pid), flush=True)
        return now - t0, st, ready

    def set_rate(r: float) -> None:
        nonlocal rate
        rate = r
        http(f"{sim}/_sim/rate", {"rate": r})

    def until_normal(limit: float) -> float | None:
        t_fell = time.monotonic()
        while time.monotonic() - t_fell < limit:
            _, st, ready = tick()
            if not st.get("overloaded") and ready.get("ok"):
                return time.monotonic() - t_fell
        return None

    try:
        time.sleep(args.warmup)
        for _ in range(120):  # the governor's start-up grace (overload_warmup) must be over first
            if not (http(f"{api}/api/v1/status").get("load") or {}).get("warming_up", False):
                break
            time.sleep(1)
        sc0 = http(f"{sim}/_sim/health")["slow_consumers"]
        m_prev, t_prev = sent(sim), time.monotonic()
        # 1. the ramp: the highest rate held for a whole step without `overloaded`
        taken, found = args.rate, None
        while found is None and rate < 5000:
            set_rate(rate * args.step)
            step_start = time.monotonic()
            while time.monotonic() - step_start < args.step_seconds:
                t, st, _ = tick()
                if st.get("overloaded"):
                    found = rate
                    break
            else:
                taken = rate
        print(f"# ramp: overloaded at {found}/s per market; highest rate taken {taken:g}/s", flush=True)
        set_rate(args.rate)
        first_recovery = until_normal(180)
        print(f"# back to normal {first_recovery} s after the ramp's load fell", flush=True)
        # 2. the overload: F x the highest rate taken, held, then back to normal
        high = taken * args.overload
        set_rate(high)
        t_rose, said, asked, peak = time.monotonic(), None, None, 0.0
        while time.monotonic() - t_rose < args.hold:
            t, st, _ = tick()
            peak = max(peak, rss_mb(proc.pid))
            if said is None and st.get("overloaded"):  # asked for at t, answered now: a lagging loop answers late
                said, asked = time.monotonic() - t_rose, t0 + t - t_rose
        set_rate(args.rate)
        recovered = until_normal(120)
        time.sleep(5)
        metrics = urllib.request.urlopen(f"{api}/metrics", timeout=10).read().decode()
        sc1 = http(f"{sim}/_sim/health")["slow_consumers"]
    finally:
        proc.terminate()
        proc.wait(60)
        if hog is not None:
            hog.kill()
    received_by: dict[str, float] = {}  # trades the connectors handed on, per venue
    for line in metrics.splitlines():
        if line.startswith("coby_messages_total{") and 'kind="trade"' in line:
            received_by[line.split('exchange="', 1)[1].split('"', 1)[0]] = float(line.rsplit(" ", 1)[1])
    received = sum(received_by.values())
    lost = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("coby_storage_lost_rows_total{"))
    with psycopg.connect(db) as c:
        stored = c.execute("SELECT count(*) FROM trade_events").fetchone()[0]
        by_venue = dict(c.execute("SELECT exchange, count(*) FROM trade_events GROUP BY exchange").fetchall())
    drop_db(db)
    for venue, got in received_by.items():
        short = " MISSING" if by_venue.get(venue, 0) < got else ""
        print(f"#   {venue:9} received {got:9.0f} stored {by_venue.get(venue, 0):9d}{short}")
    print(f"# overload at {args.overload:g} x {taken:g} = {high:g}/s per market: overloaded reported {said} s after "
          f"the load rose (in the answer to a status request sent at {asked} s); back to normal {recovered} s "
          f"after it fell; peak RSS {peak:.0f} MB; trades received "
          f"{received:.0f}, stored {stored} (duplicates keyed away), lost rows {lost:.0f}; simulator slow-consumer "
          f"disconnects {sum(sc1.values()) - sum(sc0.values())}; load {os.getloadavg()[0]:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--symbols", type=int, default=22, help=f"symbols per venue (the first {len(INSTRUMENTS)} from the instrument "
                    "table, then plain mid-priced markets)")
    ap.add_argument("--rate", type=float, default=10.0, help="book updates per second per market")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=15.0)
    ap.add_argument("--base", default=None, help="a checkout of an older commit, measured the same way")
    ap.add_argument("--overload", type=float, default=0.0, help="offered load over capacity (e.g. 2)")
    ap.add_argument("--hold", type=float, default=60.0, help="seconds the overload lasts")
    ap.add_argument("--hog", action="store_true", help="--overload: a busy loop shares coby's CPU (with --pin)")
    ap.add_argument("--step", type=float, default=1.5, help="--overload's ramp: the rate's factor per step")
    ap.add_argument("--step-seconds", type=float, default=20.0, help="--overload's ramp: seconds per step")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of ccxt.pro alone, coby, base (alternating)")
    ap.add_argument("--ccxt-uvloop", action="store_true",
                    help="also ccxt.pro alone on uvloop (coby run's loop), each round: how much of coby's figure "
                         "is the loop")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE]",
                    help="also coby with these settings, each round (repeatable), e.g. uvloop:event_loop=uvloop "
                         "or tick1s:aggregate_interval=1.0")
    ap.add_argument("--profile", default=None, metavar="DIR",
                    help="py-spy (beside this Python, or on PATH) samples each measured process' window into "
                         "DIR/<name>-<round>.txt (collapsed stacks; sampling costs the process a little: not for the "
                         "figures)")
    ap.add_argument("--pin", default=None, metavar="RUN[,SIM]",
                    help="pin the measured process (ccxt.pro alone or coby) to CPU RUN and the simulator to CPU SIM, "
                         "e.g. 1,0: 'one core' is then one core, not a share of a busy machine (the simulator "
                         "costs about as much per message as coby: unpinned, it is not the first to saturate)")
    args = ap.parse_args()
    variants = []
    for v in args.variant:
        name, _, pairs = v.partition(":")
        try:
            variants.append((name, dict(kv.split("=", 1) for kv in pairs.split(","))))
        except ValueError:
            ap.error(f"--variant {v!r}: expected NAME:KEY=VALUE[,KEY=VALUE]")
    if args.pin:
        cpus = [int(x) for x in args.pin.split(",")]
        PIN["run"] = {cpus[0]}
        if len(cpus) > 1:
            PIN["sim"] = {cpus[1]}
    # beyond the instrument table: plain mid-priced markets (coby.instruments.DEFAULT_SPEC), named XA01-USDT...
    symbols = (list(INSTRUMENTS) + [f"XA{i:02d}-USDT" for i in range(1, 100)])[:args.symbols]
    sim_port = free_port()
    sim_proc = subprocess.Popen([sys.executable, "-m", "coby.cli", "simulate", "--port", str(sim_port), "--rate",
                                 str(args.rate), "--symbols", ",".join(symbols)],
                                env={**os.environ, "PYTHONPATH": HERE}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, preexec_fn=pinned("sim"))
    sim = f"http://127.0.0.1:{sim_port}"
    try:
        for _ in range(100):
            try:
                http(f"{sim}/_sim/health")
                break
            except OSError:
                time.sleep(0.2)
        if args.overload:
            overload(args, sim, sim_port, symbols)
            return
        if args.profile:
            os.makedirs(args.profile, exist_ok=True)
        for i in range(args.repeat):  # ABAB...: each round's ratios against that round's ccxt.pro alone
            tag = f" #{i + 1}" if args.repeat > 1 else ""

            def spy(name: str) -> str | None:
                return None if not args.profile else os.path.join(os.path.abspath(args.profile), f"{name}-{i + 1}.txt")
            results = [("ccxt.pro alone" + tag, measure("ccxt", sim, sim_port, symbols, args.warmup, args.seconds,
                                                        profile=spy("ccxt")))]
            results.append(("coby" + tag, measure("coby", sim, sim_port, symbols, args.warmup, args.seconds,
                                                  profile=spy("coby"))))
            for name, settings in variants:
                results.append((f"coby ({name})" + tag, measure("coby", sim, sim_port, symbols, args.warmup,
                                                                args.seconds, profile=spy(f"coby-{name}"),
                                                                settings=settings)))
            if args.ccxt_uvloop:
                results.append(("ccxt.pro alone, uvloop" + tag, measure("ccxt-uvloop", sim, sim_port, symbols,
                                                                        args.warmup, args.seconds,
                                                                        profile=spy("ccxt-uvloop"))))
            if args.base:
                results.append(("coby (base)" + tag, measure("coby", sim, sim_port, symbols, args.warmup,
                                                             args.seconds, pythonpath=args.base, profile=spy("base"))))
            print(f"10 venues x {len(symbols)} symbols at {args.rate:g} updates/s/market, {args.seconds:g} s each "
                  f"after {args.warmup:g} s warm-up, load {os.getloadavg()[0]:.1f}", flush=True)
            r0 = results[0][1]
            base_us = r0["cpu"] / r0["messages"] * 1e6
            for name, r in results:
                print(report(name, r, None if r is r0 else base_us, len(symbols)), flush=True)
    finally:
        sim_proc.terminate()
        sim_proc.wait(30)


if __name__ == "__main__":
    main()
