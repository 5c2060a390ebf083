"""The simulated venues, one module each, found by name.

Each module ``coby/simulator/venues/<name>.py`` defines a :class:`~.base.Venue`
subclass and exports it as ``VENUE``. Modules are imported on demand, so a
simulator for a few venues never imports the others.
"""

from __future__ import annotations

import importlib

from coby.simulator.venues.base import Connection, Venue

ALL_EXCHANGES: tuple[str, ...] = (
    "binance", "okx", "bybit", "kraken", "coinbase", "htx", "kucoin", "gate", "bitfinex", "mexc",
)


def venue_class(name: str) -> type[Venue]:
    """The Venue subclass of exchange ``name`` (``ValueError`` if there is none)."""
    if name not in ALL_EXCHANGES:
        raise ValueError(f"unknown exchange {name!r}; known: {', '.join(ALL_EXCHANGES)}")
    module = importlib.import_module(f"coby.simulator.venues.{name}")
    cls = getattr(module, "VENUE", None)
    if not (isinstance(cls, type) and issubclass(cls, Venue)):
        raise ValueError(f"coby.simulator.venues.{name} does not export VENUE")
    return cls


__all__ = ["ALL_EXCHANGES", "Connection", "Venue", "venue_class"]
