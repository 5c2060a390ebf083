"""How often, and by how much, the consolidated book of a running daemon is crossed.

    .venv/bin/python bench/crossed.py [--url http://127.0.0.1:8080] [--symbols BTC-USDT,FLOKI-USDT]
                                      [--duration 600] [--token T]

Subscribes to ``consolidated:<symbol>`` over the daemon's WebSocket API (``/ws``) for ``--duration``
seconds and counts, per symbol, the aggregation ticks seen, those where the best bid is above the best
ask (crossed: one venue's bid above another venue's ask), those where they are equal (locked), the size
of each crossing in basis points of the best ask (median, max), the venue pairs that crossed and the
longest run of consecutive crossed ticks. Symbols default to every symbol the daemon watches.

Made for ``coby run --simulate``: the simulator's venues follow one fair value per symbol, so the
consolidated book should be crossed in at most ~5 % of ticks, by a few basis points at most::

    coby run --simulate --db sqlite:////tmp/coby-crossed.db --port 18080 --simulator-port 18765 \\
        --symbols BTC-USDT,ETH-USDT,SOL-USDT,DOGE-USDT,FLOKI-USDT,KSM-USDT &
    .venv/bin/python bench/crossed.py --url http://127.0.0.1:18080 --duration 600
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import aiohttp


@dataclass
class Tally:
    ticks: int = 0
    crossed: int = 0
    locked: int = 0
    bps: list[float] = field(default_factory=list)
    pairs: Counter[str] = field(default_factory=Counter)
    run: int = 0
    longest_run: int = 0

    def add(self, data: dict[str, Any]) -> None:
        bid, ask = data.get("best_bid"), data.get("best_ask")
        if bid is None or ask is None:
            return
        self.ticks += 1
        if bid > ask:
            self.crossed += 1
            self.bps.append((bid - ask) / ask * 1e4)
            self.pairs[f"{data.get('best_bid_exchange')}>{data.get('best_ask_exchange')}"] += 1
            self.run += 1
            self.longest_run = max(self.longest_run, self.run)
        else:
            self.run = 0
            self.locked += bid == ask

    def line(self, symbol: str) -> str:
        if not self.ticks:
            return f"{symbol:<11} no ticks"
        pct = 100 * self.crossed / self.ticks
        size = f"median {statistics.median(self.bps):.2f} bp, max {max(self.bps):.2f} bp" if self.bps else "-"
        pairs = ", ".join(f"{p} {n}" for p, n in self.pairs.most_common(3)) or "-"
        return (f"{symbol:<11} ticks {self.ticks:>5}  crossed {self.crossed:>4} ({pct:5.2f} %)  "
                f"locked {self.locked:>4} ({100 * self.locked / self.ticks:5.2f} %)  {size}  "
                f"longest run {self.longest_run} ticks  top pairs: {pairs}")


async def measure(url: str, symbols: list[str] | None, duration: float, token: str | None) -> dict[str, Tally]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(headers=headers) as http:
        if not symbols:
            async with http.get(f"{url}/api/v1/symbols") as r:
                body = await r.json()
                symbols = [s if isinstance(s, str) else s["symbol"] for s in body.get("symbols", body)]
        tallies: dict[str, Tally] = defaultdict(Tally)
        async with http.ws_connect(f"{url}/ws", heartbeat=20) as ws:
            await ws.send_json({"op": "subscribe", "channels": [f"consolidated:{s}" for s in symbols], "id": 1})
            end = time.monotonic() + duration
            while (left := end - time.monotonic()) > 0:
                try:
                    msg = await ws.receive_json(timeout=left)
                except asyncio.TimeoutError:
                    break
                channel = msg.get("channel", "")
                if channel.startswith("consolidated:") and msg.get("type") == "update":
                    tallies[channel.split(":", 1)[1]].add(msg["data"])
        return {s: tallies[s] for s in symbols}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--symbols", default="", help="comma separated (default: every symbol the daemon watches)")
    ap.add_argument("--duration", type=float, default=600.0)
    ap.add_argument("--token", default=None)
    args = ap.parse_args()
    symbols = [s for s in args.symbols.split(",") if s] or None
    started = time.time()
    tallies = asyncio.run(measure(args.url.rstrip("/"), symbols, args.duration, args.token))
    print(f"consolidated book over {time.time() - started:.0f} s ({args.url})")
    for symbol, tally in tallies.items():
        print(tally.line(symbol))
    total = sum(t.ticks for t in tallies.values())
    crossed = sum(t.crossed for t in tallies.values())
    if total:
        print(f"all         ticks {total:>5}  crossed {crossed:>4} ({100 * crossed / total:5.2f} %)")


if __name__ == "__main__":
    main()
