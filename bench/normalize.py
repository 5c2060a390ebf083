"""Time the normaliser on one book update: ccxt's book -> a checked ``OrderBookSnapshot``.

    .venv/bin/python bench/normalize.py                              # this checkout
    PYTHONPATH=/path/to/other/checkout .venv/bin/python bench/normalize.py   # another commit, same run conditions

A ccxt ``OrderBook`` of 1000 levels a side (binance's shape) is updated in place - one level's
size changes per update, as a diff does - and ``DataProcessor.process_orderbook`` converts and
validates its top ``depth`` levels (100: ``book_depth``'s default; 1000: the whole book). Reported:
the median of each of ``--rounds`` rounds of ``--updates`` updates, microseconds per book.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import time

import coby
from ccxt.async_support.base.ws.order_book import OrderBook

from coby.collector.normalize import DataProcessor


def run(depth: int, updates: int, rng: random.Random) -> float:
    now_ms = int(time.time() * 1000)
    bids = [[round(60000 - 0.1 * 3 * i, 1), round(rng.random() + 0.001, 6)] for i in range(1000)]
    asks = [[round(60001 + 0.1 * 3 * i, 1), round(rng.random() + 0.001, 6)] for i in range(1000)]
    book = OrderBook({"bids": bids, "asks": asks, "timestamp": now_ms})
    processor = DataProcessor()
    samples = []
    for i in range(updates):
        book["bids"].store(book["bids"][i % 50][0], rng.random() + 0.001)
        book["timestamp"] = int(time.time() * 1000)
        start = time.perf_counter()
        snap = processor.process_orderbook(book, "binance", "BTC-USDT", depth)
        samples.append(time.perf_counter() - start)
        assert snap is not None
    return statistics.median(samples) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"coby from {os.path.dirname(coby.__file__)}; python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.2f}")
    rng = random.Random(1)
    for depth in (100, 1000):
        rounds = [run(depth, args.updates, rng) for _ in range(args.rounds)]
        print(f"depth {depth:>4}: " + ", ".join(f"{r:.1f}" for r in rounds) + " us per book update")


if __name__ == "__main__":
    main()
