"""The simulator's value types: a book level, a trade, one market update, an instrument as a venue quotes it.

Kept apart from :mod:`coby.simulator.market` (which re-exports them) so the market module holds only
the book's mechanics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from coby.instruments import Spec, decimals, precision
from coby.instruments import spec as instrument_spec

__all__ = ["Instrument", "Level", "MarketUpdate", "SimTrade", "wall_clock_ms"]

Level = tuple[float, float]


def wall_clock_ms() -> int:
    """Milliseconds since the epoch, from the system clock."""
    return time.time_ns() // 1_000_000


@dataclass(slots=True, frozen=True)
class SimTrade:
    """One trade. ``side`` is the taker's: 'buy' lifted the best ask, 'sell' hit the best bid."""

    trade_id: int
    price: float
    size: float
    side: str
    ts_ms: int


@dataclass(slots=True, frozen=True)
class MarketUpdate:
    """What one step changed. Sizes are final sizes; 0.0 deletes the level."""

    bids: list[Level]
    asks: list[Level]
    trades: list[SimTrade]
    seq: int
    ts_ms: int

    @property
    def has_book(self) -> bool:
        return bool(self.bids or self.asks)


@dataclass(slots=True, frozen=True)
class Instrument:
    """A symbol as one venue quotes it: the symbol's :class:`~coby.instruments.Spec`, the venue's tick and lot."""

    spec: Spec
    tick: float
    lot: float

    @classmethod
    def of(cls, exchange: str, symbol: str) -> Instrument:
        tick, lot = precision(exchange, symbol)
        return cls(instrument_spec(symbol), tick, lot)

    @property
    def base_price(self) -> float:
        return self.spec.price

    @property
    def typical_size(self) -> float:
        return self.spec.size

    @property
    def price_decimals(self) -> int:
        return decimals(self.tick)

    @property
    def size_decimals(self) -> int:
        return decimals(self.lot)
