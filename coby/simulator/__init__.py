"""A local exchange simulator: each venue's real public wire protocol over a believable market.

Unmodified ccxt.pro connects to it (URLs overridden, markets preset) and runs its
real parsing and book-sync code. ``market`` is the market model (one per venue and
symbol, quoting around the symbol's one fair value of ``fair``; instruments from
:mod:`coby.instruments`), ``venues/`` the protocols (one module per exchange, with
the venues' quirks on by default), ``faults`` the injectable failures and
``server`` the aiohttp application that ties them together.
"""

from coby.simulator.faults import ALL_FAULTS, UnsupportedFault
from coby.simulator.market import Market, MarketUpdate, SimTrade
from coby.simulator.server import DEFAULT_SYMBOLS, Simulator, serve
from coby.simulator.venues import ALL_EXCHANGES

__all__ = [
    "ALL_EXCHANGES",
    "ALL_FAULTS",
    "DEFAULT_SYMBOLS",
    "Market",
    "MarketUpdate",
    "SimTrade",
    "Simulator",
    "UnsupportedFault",
    "serve",
]
