"""Time one aggregation tick: the polars engine beside plain-Python references, in the same run.

    .venv/bin/python bench/aggregate.py              # 20 books and 100 books, 1000 levels a side
    .venv/bin/python bench/aggregate.py --ticks 60 --levels 500 --threads 1

A tick here is what ``AggregationEngine.tick`` does for every symbol: per-venue and consolidated
$-buckets, the consolidated heatmap, top-of-book and +-0.1/0.5/1 % depth imbalances per venue and
consolidated, per-venue metrics, and the consolidated book (best 100 levels a side with each
venue's share). Books are 10 venues per symbol; 20 books = 2 symbols, 100 books = 10 symbols.

"all changed": every venue's book is a new snapshot at every tick (the worst case, and what a busy
market gives at a 100 ms tick). Each implementation gets freshly built snapshot objects before
each tick, outside the timed region, as the normaliser would hand them over; each previous batch
is freed after the clock stops, for every implementation alike. "unchanged": no book
changed since the last tick (the engine reuses per-venue results; the references recompute
everything either way).

References, both plain Python computing the same numbers (checked against the engine first):
* ``plain, per level``: a dict loop over every level (the figure in docs/limits.md's table);
* ``plain, per bucket``: the same but bucketing a sorted side with one ``bisect`` per bucket and
  a ``sum`` of the sizes - the fastest plain-Python shape we know for sorted books.
Iterations interleave the implementations so that they share the machine's state. Reported:
the minimum (closest to an idle machine), the median and the 90th percentile, of elapsed time
(``--clock wall``) or of this process's CPU time over all its threads (``--clock cpu``: steadier
when other work shares the machine; it counts polars' worker threads too).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import random
import statistics
import sys
import time
from array import array
from bisect import bisect_right
from datetime import datetime, timezone
from operator import itemgetter, neg

import polars as pl

from coby.buckets import AggregationEngine
from coby.aggregate.heatmap import intensities
from coby.models import ConsolidatedLevel, HeatmapPoint, Levels, OrderBookSnapshot, PriceLevel

VENUES = ("binance", "coinbase", "kraken", "bybit", "okx", "htx", "kucoin", "gate", "bitfinex", "mexc")
# symbol: (mid, tick, bucket size) - ~30 buckets a side for a 1000-level book (mean gap 3 ticks)
SYMBOLS = {
    "BTC-USDT": (60_000.0, 0.1, 10.0), "ETH-USDT": (3_000.0, 0.01, 1.0), "SOL-USDT": (150.0, 0.001, 0.1),
    "BNB-USDT": (550.0, 0.01, 1.0), "XRP-USDT": (0.6, 0.0001, 0.01), "DOGE-USDT": (0.15, 0.00001, 0.001),
    "ADA-USDT": (0.45, 0.0001, 0.01), "AVAX-USDT": (35.0, 0.001, 0.1), "LINK-USDT": (14.0, 0.001, 0.1),
    "LTC-USDT": (80.0, 0.01, 1.0),
}
BANDS = (0.001, 0.005, 0.01)
DEPTH = 100
NOW = datetime(2024, 3, 1, tzinfo=timezone.utc)
SCALE = 1_000_000_000


def make_book(symbol: str, venue: str, levels: int, rng: random.Random) -> OrderBookSnapshot:
    mid, tick, _ = SYMBOLS[symbol]
    decimals = max(0, -math.floor(math.log10(tick) + 1e-9))
    mid_ticks = round(mid / tick) + rng.randint(-3, 3)
    sides = []
    for sign in (-1, 1):
        t, out = rng.randint(1, 3), []
        for _ in range(levels):
            out.append(PriceLevel(round((mid_ticks + sign * t) * tick, decimals), round(rng.expovariate(1.0), 6)))
            t += rng.randint(1, 5)
        sides.append(tuple(out))
    return OrderBookSnapshot(symbol=symbol, exchange=venue, timestamp=NOW, bids=sides[0], asks=sides[1])


# --- plain-Python references ---------------------------------------------------------------------

def buckets_per_level(prices, sizes, side_bid: bool, units: int) -> dict[float, float]:
    out: dict[float, float] = {}
    for p, s in zip(prices, sizes):
        scaled = round(p * SCALE)
        index = scaled // units if side_bid else -((-scaled) // units)
        edge = index * units / SCALE
        out[edge] = out.get(edge, 0.0) + s
    return out


def buckets_per_bucket(prices, sizes, side_bid: bool, units: int) -> dict[float, float]:
    out: dict[float, float] = {}
    i, n = 0, len(prices)
    while i < n:
        scaled = round(prices[i] * SCALE)
        index = scaled // units if side_bid else -((-scaled) // units)
        edge = index * units / SCALE
        j = bisect_right(prices, -edge, i, n, key=neg) if side_bid else bisect_right(prices, edge, i, n)
        j = max(j, i + 1)
        out[edge] = out.get(edge, 0.0) + sum(sizes[i:j])
        i = j
    return out


def imbalance(b: float, a: float) -> float:
    return (b - a) / (b + a) if b + a > 0 else 0.0


def reference_tick(books: list[OrderBookSnapshot], bucketing, bucket_size: dict[str, float]) -> dict:
    """Everything the engine's tick computes, in plain Python (no caching between ticks)."""
    by_symbol: dict[str, list] = {}
    for b in books:  # the snapshot's columns as lists: the fastest input for plain Python
        bp, bs = b.bids.prices.tolist(), b.bids.sizes.tolist()
        ap, as_ = b.asks.prices.tolist(), b.asks.sizes.tolist()
        by_symbol.setdefault(b.symbol, []).append((b, bp, bs, ap, as_))
    result = {}
    for symbol, group in by_symbol.items():
        size = bucket_size[symbol]
        units = round(size * SCALE)
        venues, cons_b, cons_a, cnt_b, cnt_a = {}, {}, {}, {}, {}
        for b, bp, bs, ap, as_ in group:
            vb, va = bucketing(bp, bs, True, units), bucketing(ap, as_, False, units)
            tb, ta = sum(vb.values()), sum(va.values())
            mid = (bp[0] + ap[0]) / 2
            depth = {}
            for band in BANDS:
                nb = bisect_right(bp, -mid * (1 - band), key=neg)
                na = bisect_right(ap, mid * (1 + band))
                depth[band] = imbalance(sum(bs[:nb]), sum(as_[:na]))
            venues[b.exchange] = (vb, va, imbalance(bs[0], as_[0]), depth, (mid, ap[0] - bp[0], tb, ta))
            for d, cons, cnt in ((vb, cons_b, cnt_b), (va, cons_a, cnt_a)):
                for e, v in d.items():
                    cons[e] = cons.get(e, 0.0) + v
                    cnt[e] = cnt.get(e, 0) + 1
        sides = []
        for desc, pi, si in ((True, 1, 2), (False, 3, 4)):
            merged: dict[float, dict[str, float]] = {}
            for g in group:
                for p, s in zip(g[pi][:DEPTH], g[si][:DEPTH]):
                    d = merged.setdefault(p, {})
                    d[g[0].exchange] = d.get(g[0].exchange, 0.0) + s
            sides.append([ConsolidatedLevel(p, sum(merged[p].values()), merged[p])
                          for p in sorted(merged, reverse=desc)[:DEPTH]])
        bids, asks = sides
        cmid = (bids[0].price + asks[0].price) / 2
        cdepth = {}
        for band in BANDS:
            vb = sum(sum(g[2][:bisect_right(g[1], -cmid * (1 - band), key=neg)]) for g in group)
            va = sum(sum(g[4][:bisect_right(g[3], cmid * (1 + band))]) for g in group)
            cdepth[band] = imbalance(vb, va)
        cons_b = dict(sorted(cons_b.items(), reverse=True))
        cons_a = dict(sorted(cons_a.items()))
        vols = [*cons_b.values(), *cons_a.values()]
        heat = [HeatmapPoint(p, v, i, "bid" if k < len(cons_b) else "ask",
                             (cnt_b if k < len(cons_b) else cnt_a)[p])
                for k, (p, v, i) in enumerate(zip([*cons_b, *cons_a], vols, intensities(vols)))]
        result[symbol] = dict(venues=venues, cons=(cons_b, cons_a), bids=bids, asks=asks,
                              top=imbalance(bids[0].size, asks[0].size), depth=cdepth, heat=heat,
                              crossed=bids[0].price >= asks[0].price)
    return result


def check(engine_result, ref: dict) -> None:
    """The references compute the same numbers as the engine (else the timing compares nothing)."""
    def near(a, b):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    for symbol, r in ref.items():
        cons = engine_result.buckets[symbol]
        for got, want in ((cons.bid_buckets, r["cons"][0]), (cons.ask_buckets, r["cons"][1])):
            assert got.keys() == want.keys() and all(near(got[k], want[k]) for k in want), symbol
        book = engine_result.books[symbol]
        assert [lv.price for lv in book.bids] == [lv.price for lv in r["bids"]], symbol
        assert all(near(a.size, b.size) for a, b in zip(book.asks, r["asks"])) and book.crossed == r["crossed"]
        imb = engine_result.imbalances[symbol]
        assert near(imb.top_of_book, r["top"]) and all(near(imb.depth[b], r["depth"][b]) for b in BANDS)
        for venue, (vb, va, top, depth, _) in r["venues"].items():
            pb = engine_result.venue_buckets[(symbol, venue)]
            assert pb.bid_buckets.keys() == vb.keys() and all(near(pb.ask_buckets[k], va[k]) for k in va)
            vi = engine_result.venue_imbalances[(symbol, venue)]
            assert near(vi.top_of_book, top) and all(near(vi.depth[b], depth[b]) for b in BANDS)


# --- the run -------------------------------------------------------------------------------------

def run_case(nsymbols: int, levels: int, ticks: int, bucket_scale: float = 1.0, clock=time.perf_counter,
             seed: int = 7) -> dict[str, list[float]]:
    rng = random.Random(seed)
    symbols = list(SYMBOLS)[:nsymbols]
    bucket_size = {s: round(SYMBOLS[s][2] * bucket_scale, 9) for s in symbols}
    variants = [[make_book(s, v, levels, rng) for s in symbols for v in VENUES] for _ in range(3)]
    engine = AggregationEngine(bucket_size=bucket_size, consolidated_depth=DEPTH, depth_bands=BANDS,
                               stale_after=3600.0, clock=lambda: NOW)

    def engine_tick(books):
        for b in books:
            engine.update_book(b)
        return engine.tick(NOW)

    for books in variants:  # warm up, and check that all three compute the same numbers
        result = engine_tick(books)
        check(result, reference_tick(books, buckets_per_level, bucket_size))
        check(result, reference_tick(books, buckets_per_bucket, bucket_size))
    times: dict[str, list[float]] = {"polars engine": [], "plain, per level": [], "plain, per bucket": [],
                                     "polars engine, unchanged": []}
    held: dict[str, list[OrderBookSnapshot]] = {}
    for i in range(ticks):
        template = variants[i % len(variants)]
        for name in times:
            books = fresh(template)  # new objects, as the normaliser hands them over (not timed)
            fn = {"polars engine": lambda: engine_tick(books),
                  "plain, per level": lambda: reference_tick(books, buckets_per_level, bucket_size),
                  "plain, per bucket": lambda: reference_tick(books, buckets_per_bucket, bucket_size),
                  "polars engine, unchanged": lambda: engine.tick(NOW)}[name]
            gc.collect()
            start = clock()
            fn()
            times[name].append((clock() - start) * 1000.0)
            # The batch of the previous tick is let go here, after the clock stopped, for every
            # implementation alike: freeing the books the normaliser made is not a tick's work
            # (the engine holds the latest book of each venue, so without this its tick would pay
            # for freeing the previous ones while the references' books die untimed).
            held[name] = books
    return times


def fresh(books: list[OrderBookSnapshot]) -> list[OrderBookSnapshot]:
    """Copies made of new objects: a tick sees snapshots as the normaliser has just built them
    (``Levels`` columns made from ccxt's ``[[price, size], ...]`` lists), not ones last touched
    several ticks (and megabytes of other books) ago."""
    out = []
    for b in books:
        sides = []
        for levels in (b.bids, b.asks):
            raw = [[p, s] for p, s in zip(levels.prices, levels.sizes)]  # ccxt's form
            sides.append(Levels(array("d", map(itemgetter(0), raw)), array("d", map(itemgetter(1), raw))))
        out.append(OrderBookSnapshot(symbol=b.symbol, exchange=b.exchange, timestamp=b.timestamp,
                                     bids=sides[0], asks=sides[1]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ticks", type=int, default=40, help="timed ticks per case (default 40)")
    parser.add_argument("--levels", type=int, default=1000, help="levels per side of each book (default 1000)")
    parser.add_argument("--threads", type=int, default=None, help="POLARS_MAX_THREADS for this run (re-executes)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: elapsed time; cpu: the process's CPU time, all threads (steadier when busy)")
    parser.add_argument("--bucket-scale", type=float, default=1.0,
                        help="multiply every bucket width (default 1: ~30 buckets a side; 0.1: ~300)")
    args = parser.parse_args()
    if args.threads is not None and os.environ.get("POLARS_MAX_THREADS") != str(args.threads):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "POLARS_MAX_THREADS": str(args.threads)})
    print(f"python {platform.python_version()}, polars {pl.__version__} ({pl.thread_pool_size()} threads), "
          f"{os.cpu_count()} CPUs, {platform.machine()}; load average {os.getloadavg()[0]:.2f}")
    print(f"{args.levels} levels a side per book, bucket widths x{args.bucket_scale:g}, {args.ticks} ticks per case, "
          f"ms per tick ({args.clock} clock)\n")
    header = f"{'books':>6}  {'implementation':<26}{'min':>8}{'median':>9}{'p90':>9}{'median vs engine':>18}"
    print(header)
    print("-" * len(header))
    for nsymbols in (2, 10):
        clock = time.perf_counter if args.clock == "wall" else time.process_time
        times = run_case(nsymbols, args.levels, args.ticks, args.bucket_scale, clock)
        base = statistics.median(times["polars engine"])
        for name, samples in times.items():
            med = statistics.median(samples)
            p90 = sorted(samples)[int(0.9 * (len(samples) - 1))]
            ratio = "" if name.startswith("polars") else f"{med / base:.2f}x"
            print(f"{nsymbols * len(VENUES):>6}  {name:<26}{min(samples):8.2f}{med:9.2f}{p90:9.2f}{ratio:>18}")
        sys.stdout.flush()
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
