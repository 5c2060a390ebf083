"""A small strategy loop on coby's client: the same code on live data and on a replay.

The strategy watches the consolidated (cross-venue) book of one symbol. When the volume in the
top ``levels`` levels leans to one side by more than ``threshold`` - imbalance
(bid - ask) / (bid + ask) - it takes a paper position of one unit that way (buy at the best
ask, sell at the best bid); trades mark the position to market. (A crossed book - one venue's bid
above another's ask, as the simulator's venues always are - is traded like any other here; a real
strategy would treat it as the arbitrage it is.) It never sees where its data comes from: ``run``
takes any iterator of the client's items.

    # live, for 30 seconds
    python examples/orchestrator.py --url http://127.0.0.1:8080 --symbol BTC-USDT --seconds 30
    # the same strategy over a stored hour, as fast as it reads
    python examples/orchestrator.py --symbol BTC-USDT --replay 2026-09-21T14:00:00Z 2026-09-21T15:00:00Z --speed 0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from dataclasses import dataclass, field
from typing import AsyncIterator

from coby.client import CobyClient, Event, Gap, Item, Reconnected, ReplayFinished
from coby.errors import ClientError
from coby.models import ConsolidatedOrderBook, TradeEvent


@dataclass
class ImbalanceStrategy:
    """Paper-trades one unit on consolidated-book imbalance; marks to market on trades."""

    threshold: float = 0.2
    levels: int = 10
    position: int = 0  # -1, 0 or 1 units
    cash: float = 0.0
    last_price: float | None = None
    books: int = 0
    trades: int = 0
    signals: list[tuple[str, str, float]] = field(default_factory=list)  # (time, side, price)
    notes: list[str] = field(default_factory=list)

    def on_book(self, book: ConsolidatedOrderBook) -> None:
        self.books += 1
        if book.best_bid is None or book.best_ask is None:
            return
        bid = sum(lv.size for lv in book.bids[:self.levels])
        ask = sum(lv.size for lv in book.asks[:self.levels])
        if bid + ask <= 0:
            return
        imbalance = (bid - ask) / (bid + ask)
        if imbalance > self.threshold and self.position <= 0:
            self._trade("buy", book.best_ask, book)
        elif imbalance < -self.threshold and self.position >= 0:
            self._trade("sell", book.best_bid, book)

    def _trade(self, side: str, price: float, book: ConsolidatedOrderBook) -> None:
        step = 1 if side == "buy" else -1
        self.cash -= step * price
        self.position += step
        self.signals.append((book.timestamp.isoformat(), side, price))

    def on_trade(self, trade: TradeEvent) -> None:
        self.trades += 1
        self.last_price = trade.price

    @property
    def pnl(self) -> float:
        return self.cash + self.position * (self.last_price or 0.0)


async def run(source: AsyncIterator[Item], strategy: ImbalanceStrategy, *, max_events: int | None = None) -> None:
    """Feed ``strategy`` from ``source`` - ``client.stream(...)`` or ``client.replay(...)``, unchanged."""
    events = 0
    async for item in source:
        if isinstance(item, Event):
            if isinstance(item.data, ConsolidatedOrderBook):
                strategy.on_book(item.data)
            elif isinstance(item.data, TradeEvent):
                strategy.on_trade(item.data)
            events += 1
            if max_events is not None and events >= max_events:
                return
        elif isinstance(item, Reconnected):
            strategy.notes.append(f"reconnected after {item.downtime:.1f} s ({item.reason})")
        elif isinstance(item, Gap):
            strategy.notes.append(f"gap on {item.channel}: {item.missing if item.missing is not None else '?'} missed")
        elif isinstance(item, ReplayFinished):
            strategy.notes.append(f"replay {item.replay} {item.state} after {item.events} events")


async def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8080")
    p.add_argument("--token", default=None)
    p.add_argument("--symbol", default="BTC-USDT")
    p.add_argument("--threshold", type=float, default=0.2)
    p.add_argument("--seconds", type=float, default=30.0, help="live: how long to run")
    p.add_argument("--replay", nargs=2, metavar=("START", "END"), help="replay this stored range instead")
    p.add_argument("--speed", type=float, default=0.0, help="replay speed (0: as fast as the strategy reads)")
    args = p.parse_args(argv)
    channels = [f"consolidated:{args.symbol}", f"trades:{args.symbol}"]
    strategy = ImbalanceStrategy(threshold=args.threshold)
    try:
        async with CobyClient(args.url, token=args.token) as coby:
            if args.replay:
                await run(coby.replay(*args.replay, channels, speed=args.speed, symbols=[args.symbol]), strategy)
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(args.seconds):
                        await run(coby.stream(channels), strategy)
    except ClientError as e:
        print(f"orchestrator: {e}", file=sys.stderr)
        return 1
    for note in strategy.notes:
        print(note)
    print(f"books={strategy.books} trades={strategy.trades} signals={len(strategy.signals)} "
          f"position={strategy.position} pnl={strategy.pnl:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
