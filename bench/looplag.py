"""Event-loop lag of ``coby run`` and the loop steps behind it: this tree beside a base checkout, alternating.

    .venv/bin/python bench/looplag.py --base /work/base-lag [--base OTHER] [--symbols 10,16] [--rate 10] [--seconds 60]

The simulator runs in its own process (``coby simulate``) at ``--rate`` updates per second per market; against
it, one after the other and alternating (this tree, base, base, this tree, ... for each symbol count), ``coby run``
(10 venues x N symbols, PostgreSQL in a fresh database, the in-process cache) started as ``bench/daemon.py``
starts it, with degradation out of reach (both trees do the same work), inside a *step watch*:

- every event-loop step (``asyncio.Handle._run``: one callback, or one resumption of a task up to its next
  real suspension) is timed, wall and the loop thread's CPU time; steps of at least ``--limit`` (10 ms) are
  kept with what ran: the task's name and coroutine, or the callback, and where the loop thread was (a
  sampler thread takes the loop thread's stack every 3 ms while a step is 5 ms old or more: the innermost
  coby frame, else the innermost frame);
- garbage collections of at least 5 ms, by generation (``gc.callbacks``).

Per run, over ``--seconds`` after the governor's start-up grace: the governor's loop-lag p99 (``/api/v1/status``
``load.loop_lag_p99_s``: the worst ``asyncio.sleep(0.1)`` overshoot of each 0.1 s sample, p99 over the last
minute), the steps of >= 10 ms (count per minute, p50 / p99 / max, the share of their wall time the loop
thread was on the CPU) and the top kinds of step by time. The watch itself costs a clock read or two per step
(the same in both trees). The machine's load average is printed with each run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict

import psycopg

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, HERE)
from bench.daemon import TICK, drop_db, env_for, http  # noqa: E402
from bench.ingest import PG, free_port  # noqa: E402

from coby.instruments import SYMBOLS as INSTRUMENTS  # noqa: E402

# Run as ``python -c STEPWATCH`` with the tree on PYTHONPATH: the watch installed, then ``coby run``.
STEPWATCH = r"""
import asyncio, asyncio.events, gc, json, os, runpy, sys, threading, time
OUT, LIMIT = os.environ["LOOPLAG_OUT"], float(os.environ["LOOPLAG_LIMIT"])
LOOP = threading.get_ident()
now, cpu = time.perf_counter, time.thread_time
current = [0.0, None]          # the running step's start (0: none) and the stacks sampled in it
steps, gcs = [], []            # (start monotonic, wall, cpu, what, {where: samples}); (start, wall, generation)
hist = [0] * 8                 # all steps: < 1, 1-2, 2-5, 5-10, 10-20, 20-50, 50-100, >= 100 ms
EDGES = (0.001, 0.002, 0.005, 0.010, 0.020, 0.050, 0.100)
run = asyncio.events.Handle._run

def what(h):
    cb = h._callback
    task = getattr(cb, "__self__", None)
    if isinstance(task, asyncio.Task):
        coro = task.get_coro()
        return task.get_name().split("-")[0] + " " + getattr(coro, "__qualname__", type(coro).__name__)
    return getattr(cb, "__qualname__", type(cb).__name__)

def timed(self):
    t0, c0 = now(), cpu()
    current[0], current[1] = t0, None
    try:
        return run(self)
    finally:
        dt = now() - t0
        current[0] = 0.0
        i = 0
        while i < 7 and dt >= EDGES[i]:
            i += 1
        hist[i] += 1
        if dt >= LIMIT:
            steps.append((time.monotonic() - dt, dt, cpu() - c0, what(self), current[1] or {}))

asyncio.events.Handle._run = timed

def where(frame):
    leaf = None
    while frame is not None:
        f = frame.f_code.co_filename
        if leaf is None:
            leaf = f.rsplit("/", 1)[-1] + ":" + frame.f_code.co_name
        if "/coby/" in f and "/site-packages/" not in f:
            return f.rsplit("/coby/", 1)[1] + ":" + frame.f_code.co_name + " <" + leaf
        frame = frame.f_back
    return leaf

def sampler():
    while True:
        time.sleep(0.003)
        t0 = current[0]
        if t0 and now() - t0 >= 0.005:
            frame = sys._current_frames().get(LOOP)
            if frame is not None and current[0] == t0:
                seen = current[1] if current[1] is not None else {}
                key = where(frame)
                seen[key] = seen.get(key, 0) + 1
                current[1] = seen

gc_start = [0.0]
def on_gc(phase, info):
    if phase == "start":
        gc_start[0] = now()
    elif now() - gc_start[0] >= 0.005:
        gcs.append((time.monotonic(), now() - gc_start[0], info["generation"]))
gc.callbacks.append(on_gc)

def dump():
    while True:
        time.sleep(2)
        try:  # a record the sampler is still filling may change under the encoder: the next dump has it
            names = {t.native_id: t.name for t in threading.enumerate()}
            text = json.dumps({"steps": list(steps), "gc": list(gcs), "hist": list(hist), "threads": names})
        except RuntimeError:
            continue
        with open(OUT + ".tmp", "w") as fh:
            fh.write(text)
        os.replace(OUT + ".tmp", OUT)

threading.Thread(target=sampler, daemon=True, name="looplag-sampler").start()
threading.Thread(target=dump, daemon=True, name="looplag-dump").start()
sys.argv = ["coby", "run"]
runpy.run_module("coby.cli", run_name="__main__")
"""


def new_db() -> str:
    """A fresh database for one run (``coby_bench_lag_*``; dropped after it)."""
    name = f"coby_bench_lag_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(PG, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return PG.rpartition("/")[0] + "/" + name


def watch(tree: str, sim_port: int, symbols: list[str], warmup: float, seconds: float, limit: float) -> dict:
    """One ``coby run`` of ``tree`` inside the step watch: the governor's lag and the steps of the window."""
    db, api_port = new_db(), free_port()
    env = env_for(sim_port, symbols, tree, db, api_port)
    env["COBY_OVERLOAD_AFTER"] = "1000000"  # no degradation: both trees do the same work
    out = tempfile.mktemp(prefix="looplag-", suffix=".json")
    env.update(LOOPLAG_OUT=out, LOOPLAG_LIMIT=str(limit))
    proc = subprocess.Popen([sys.executable, "-c", STEPWATCH], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd="/tmp")
    api = f"http://127.0.0.1:{api_port}/api/v1/status"
    try:
        time.sleep(warmup)
        if proc.poll() is not None:
            raise RuntimeError(f"coby run of {tree} exited with {proc.returncode}")
        for _ in range(120):  # past the governor's start-up grace (overload_warmup)
            try:
                if not (http(api).get("load") or {}).get("warming_up"):
                    break
            except OSError:
                pass
            time.sleep(1)
        t0, loads, hist0, cpu0 = time.monotonic(), [], _read(out)["hist"], thread_cpu(proc.pid)
        while time.monotonic() - t0 < seconds:
            time.sleep(5)
            loads.append(os.getloadavg()[0])
        t1, cpu1 = time.monotonic(), thread_cpu(proc.pid)
        load = http(api).get("load") or {}
        time.sleep(2.5)  # the watch writes its records every 2 s
        rec = _read(out)
    finally:
        proc.terminate()
        proc.wait(60)
        drop_db(db)
    steps = [s for s in rec["steps"] if t0 <= s[0] < t1]
    return {"limit": limit, "lag_p99": load.get("loop_lag_p99_s"), "cpu": load.get("cpu"), "steps": steps, "window": t1 - t0,
            "gc": [g for g in rec["gc"] if t0 <= g[0] < t1], "load": (min(loads), max(loads)),
            "hist": [b - a for a, b in zip(hist0, rec["hist"])], "threads": by_thread(cpu0, cpu1, rec["threads"])}


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of ``pid``, from ``/proc``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                fields = fh.read().rpartition(")")[2].split()
        except OSError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICK
    return out


def by_thread(cpu0: dict[int, float], cpu1: dict[int, float], names: dict[str, str]) -> dict[str, float]:
    """CPU seconds in the window per thread name (the loop is MainThread; unnamed: polars', the ccxt's)."""
    out: dict[str, float] = defaultdict(float)
    for tid, c in cpu1.items():
        name = names.get(str(tid), "other").split(" (")[0].rstrip("_0123456789")
        out[name] += c - cpu0.get(tid, 0.0)
    return dict(out)


def _read(path: str) -> dict:
    for _ in range(50):
        try:
            with open(path) as fh:
                return json.load(fh)
        except (OSError, ValueError):
            time.sleep(0.2)
    raise RuntimeError(f"no step records in {path}")


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(len(values) * q))] if values else 0.0


def summary(name: str, r: dict, top: int) -> str:
    walls = [s[1] for s in r["steps"]]
    per_min = 60 / r["window"]
    on_cpu = sum(s[2] for s in r["steps"]) / sum(walls) if walls else 0.0
    lines = [f"{name:<10} lag p99 {r['lag_p99'] * 1000 if r['lag_p99'] is not None else float('nan'):5.0f} ms  "
             f"cpu {r['cpu']} core  steps >= {r['limit'] * 1000:.0f} ms: {len(walls) * per_min:5.0f}/min, p50 {pct(walls, .5) * 1000:4.0f} "
             f"p99 {pct(walls, .99) * 1000:4.0f} max {max(walls, default=0) * 1000:4.0f} ms, on CPU {on_cpu:.0%}; "
             f"load {r['load'][0]:.1f}-{r['load'][1]:.1f}",
             "           gc >= 5 ms by generation, per minute (mean / max ms): " + ", ".join(
                 f"gen{g} {len(ds) * per_min:.0f} ({sum(ds) / len(ds) * 1000:.0f} / {max(ds) * 1000:.0f})"
                 for g in (0, 1, 2) for ds in [[d for _t, d, gen in r["gc"] if gen == g]] if ds),
             "           CPU s/s by thread: " + ", ".join(f"{k} {v / r['window']:.2f}" for k, v in
                                                        sorted(r["threads"].items(), key=lambda kv: -kv[1]) if v > 0),
             "           all steps by duration (<1, 1-2, 2-5, 5-10, 10-20, 20-50, 50-100, >=100 ms), per minute: "
             + " ".join(f"{n * per_min:.0f}" for n in r["hist"])]
    kinds: dict[str, list[float]] = defaultdict(list)
    places: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for _start, wall, _cpu, what, where in r["steps"]:
        kinds[what].append(wall)
        for k, n in where.items():
            places[what][k] += n
    for what, ws in sorted(kinds.items(), key=lambda kv: -sum(kv[1]))[:top]:
        spots = sorted(places[what].items(), key=lambda kv: -kv[1])[:3]
        total = sum(places[what].values()) or 1
        lines.append(f"           {len(ws) * per_min:5.0f}/min {sum(ws) * per_min * 1000 / 60:5.1f} ms/s "
                     f"max {max(ws) * 1000:4.0f} ms  {what}: " + ", ".join(f"{k} {n / total:.0%}" for k, n in spots))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, action="append",
                    help="a checkout of a commit to compare with (repeatable: named by its folder)")
    ap.add_argument("--symbols", default="10,16", help="symbol counts, comma-separated")
    ap.add_argument("--rate", type=float, default=10.0, help="book updates per second per market")
    ap.add_argument("--seconds", type=float, default=60.0, help="the window (the governor's p99 covers a minute)")
    ap.add_argument("--warmup", type=float, default=20.0)
    ap.add_argument("--repeat", type=int, default=2, help="rounds of this tree, base (alternating)")
    ap.add_argument("--limit", type=float, default=0.010, help="seconds: the steps kept")
    ap.add_argument("--top", type=int, default=6, help="kinds of step listed per run")
    args = ap.parse_args()
    trees = [("this", HERE)] + [(os.path.basename(os.path.abspath(b)), os.path.abspath(b)) for b in args.base]
    for n in (int(x) for x in args.symbols.split(",")):
        symbols = list(INSTRUMENTS)[:n]
        sim_port = free_port()
        sim = subprocess.Popen([sys.executable, "-m", "coby.cli", "simulate", "--port", str(sim_port), "--rate",
                                str(args.rate), "--symbols", ",".join(symbols)], env={**os.environ, "PYTHONPATH": HERE},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(3)
            p99: dict[str, list[float]] = defaultdict(list)
            for i in range(args.repeat):
                for name, tree in (trees if i % 2 == 0 else trees[::-1]):  # ABBA...
                    r = watch(tree, sim_port, symbols, args.warmup, args.seconds, args.limit)
                    print(f"10 venues x {n} symbols at {args.rate:g}/s, round {i + 1}, "
                          f"{time.strftime('%H:%M', time.gmtime())} UTC", flush=True)
                    print(summary(name, r, args.top), flush=True)
                    p99[name].append(r["lag_p99"] or 0.0)
            base = trees[1][0]
            mean = {name: sum(v) / len(v) for name, v in p99.items()}
            print(f"== {n} symbols: lag p99 mean " + ", ".join(
                f"{name} {m * 1000:.0f} ms ({m / mean[base] if mean[base] else float('nan'):.2f} x {base})"
                for name, m in mean.items()), flush=True)
        finally:
            sim.terminate()
            sim.wait(30)


if __name__ == "__main__":
    main()
