"""CPU per book update through a connector and the pipeline, as the daemon wires them (issue 16).

    PYTHONPATH=. .venv/bin/python bench/bookpath.py                 # this checkout
    PYTHONPATH=/path/to/older/checkout .venv/bin/python bench/bookpath.py   # another commit, same conditions

A real ``ExchangeConnector`` on a fake ccxt client that keeps one ccxt ``OrderBook`` (1000 levels a side)
and changes one level per update in place, as a diff does; a real ``Pipeline`` (in-process cache, no
subscriber, a storage that only counts). Paced as at 10 updates/s per market on a fake clock: each update
is 0.1 s after the last, so every update passes ``book_emit_interval`` (50 ms) and ``book_publish_interval``
(100 ms); the tick runs every 5 updates (0.5 s; the aggregation engines' own work (live and recorder), the same in both
trees and shared by every book in the daemon, is left out) and a snapshot is stored every 10 (1 s). Reported: CPU
microseconds per update (``time.process_time``), median of ``--rounds`` rounds of ``--updates`` updates.
The network and ccxt's own parsing are not in it (they are the same in both trees).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from typing import Any

import coby
from ccxt.async_support.base.ws.order_book import OrderBook

from coby.cache import MemoryCache
from coby.config import Settings
from coby.exchanges import ExchangeConnector
from coby.pipeline import Pipeline


class Storage:
    """Counts what the pipeline stores."""

    def __init__(self) -> None:
        self.books = 0

    async def store_orderbook(self, book: Any) -> None:
        self.books += 1

    async def store_trade(self, t: Any) -> None: ...
    async def store_connection_event(self, e: Any) -> None: ...
    async def store_heatmap(self, h: Any) -> None: ...
    async def store_ohlcv(self, b: Any) -> None: ...


async def run(updates: int, rng: random.Random) -> float:
    now = [1000.0]
    clock = lambda: now[0]  # noqa: E731
    s = Settings.load(env={}, exchange_urls={"*": "http://127.0.0.1:9"}, data_dir=tempfile.mkdtemp(),
                      log_level="WARNING", stale_after=1e6, connect_timeout=1e6, trade_stale_after=1e6)
    storage = Storage()
    pipe = Pipeline(s, storage, MemoryCache(), run_timers=False, monotonic=clock)
    wall = time.time() * 1000
    bids = [[round(60000 - 0.3 * i, 1), round(rng.random() + 0.001, 6)] for i in range(1000)]
    asks = [[round(60001 + 0.3 * i, 1), round(rng.random() + 0.001, 6)] for i in range(1000)]
    book = OrderBook({"bids": bids, "asks": asks, "timestamp": int(wall)})
    done = asyncio.get_running_loop().create_future()
    state = {"n": 0, "t0": 0.0, "engine": 0.0}

    def timed(engine_tick: Any) -> Any:
        def tick(ts: Any) -> Any:  # the engines' own work is the same in both trees: left out
            t = time.process_time()
            try:
                return engine_tick(ts)
            finally:
                state["engine"] += time.process_time() - t
        return tick

    pipe.engine.tick, pipe.recorder.tick = timed(pipe.engine.tick), timed(pipe.recorder.tick)

    class Fake:
        orderbooks = {"BTC/USDT": book}

        def client(self, url: str) -> Any:
            return None

        async def watch_order_book(self, symbol: str, limit: int | None = None) -> Any:
            n = state["n"] = state["n"] + 1
            if n == 50:
                state["t0"], state["engine"] = time.process_time(), 0.0
            if n == updates + 50:
                done.set_result(time.process_time() - state["t0"] - state["engine"])
                await asyncio.Event().wait()
            now[0] += 0.1
            if n % 5 == 0:
                await pipe.tick(wall / 1000 + n * 0.1)
            book["bids"].store(book["bids"][n % 50][0], rng.random() + 0.001)
            book["nonce"], book["timestamp"] = n, int(time.time() * 1000)
            return book

        async def watch_trades(self, symbol: str) -> Any:
            await asyncio.Event().wait()

        async def close(self) -> None:
            pass

    conn = ExchangeConnector("kraken", s, clock=clock, client_factory=lambda *a: Fake())
    try:
        conn.add_data_callback(pipe.on_event, lazy_books=True)  # as the daemon wires it (this tree)
    except TypeError:
        conn.add_data_callback(pipe.on_event)  # an older tree: one callback, every state a snapshot
    await conn.subscribe_orderbook("BTC-USDT")
    cpu = await done
    await conn.disconnect()
    assert storage.books >= updates // 11, storage.books  # every 10 updates (11 where 10 x 0.1 s < 1.0)
    return cpu / updates * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--updates", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    rng = random.Random(1)
    rounds = [asyncio.run(run(args.updates, rng)) for _ in range(args.rounds)]
    print(f"coby from {os.path.dirname(coby.__file__)}, load {os.getloadavg()[0]:.1f}: "
          f"{statistics.median(rounds):.1f} us per book update (rounds: {', '.join(f'{r:.1f}' for r in rounds)})")


if __name__ == "__main__":
    main()
