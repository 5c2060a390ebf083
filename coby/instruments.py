"""Real instruments: each symbol's price scale and liquidity, and its tick and lot on each venue.

One row per canonical symbol (:data:`SYMBOLS`): a typical price, the venue-independent
tick and lot (binance's, the reference), a typical level size, how fast its book and its
trades move, and its fair value's volatility. :func:`precision` gives the (tick, lot) a
venue quotes it with, following each venue's convention as ccxt's market data reports
them in ``precision.price`` / ``precision.amount`` (okx, kucoin and gate quote BTC in
0.1; coinbase, kraken and bitfinex take sizes to 1e-8; bitfinex prices have five
significant digits; ...). The simulator builds its markets from this table and the
connectors' preset markets carry the same precision, so a simulated venue and the ccxt
client that reads it agree on every instrument.

The figures are approximations of the venues' published market data (2024-2026), close
enough that prices down to 1e-8 ticks, sizes of hundreds of millions of units and markets
whose trades are minutes apart all occur; they are not a substitute for ``load_markets``
against a real venue (which the connectors do when not simulating).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["SYMBOLS", "Spec", "decimals", "precision", "spec"]


@dataclass(slots=True, frozen=True)
class Spec:
    """One symbol's scale and liquidity. Rates are per simulator ``rate`` (10 updates/s by default)."""

    price: float  # typical price (the simulator's starting fair value)
    tick: float  # the reference venue's price step (binance)
    lot: float  # the reference venue's size step
    size: float  # a typical level size near the top, in base units
    activity: float = 1.0  # book updates per second = simulator rate * activity
    trade_p: float = 0.4  # chance that a book update comes with a trade
    vol_bp: float = 0.35  # fair value volatility, basis points per sqrt(second)
    half_spread_bp: float = 0.6  # makers quote at least this far from the venue's fair value
    levels: int = 400  # book depth (levels a side), about

    @property
    def illiquid(self) -> bool:
        """Trades minutes apart (at the default rate of 10 updates/s)."""
        return self.trade_interval_s(10.0) >= 60.0

    def trade_interval_s(self, rate: float) -> float:
        """Mean seconds between trades at ``rate`` updates/s (per market)."""
        return 1.0 / (rate * self.activity * self.trade_p)


_MEME = dict(vol_bp=0.8, half_spread_bp=3.0, levels=300)
_THIN = dict(activity=0.1, trade_p=0.006, vol_bp=0.3, half_spread_bp=12.0, levels=80)

SYMBOLS: dict[str, Spec] = {
    "BTC-USDT": Spec(30_000.0, 0.01, 0.00001, 0.6, trade_p=0.45),
    "ETH-USDT": Spec(2_000.0, 0.01, 0.0001, 6.0, trade_p=0.45),
    "SOL-USDT": Spec(25.0, 0.01, 0.001, 80.0),
    "XRP-USDT": Spec(0.6, 0.0001, 0.1, 25_000.0),
    "DOGE-USDT": Spec(0.08, 0.00001, 1.0, 200_000.0),
    "ADA-USDT": Spec(0.35, 0.0001, 0.1, 40_000.0, activity=0.6),
    "LTC-USDT": Spec(70.0, 0.01, 0.001, 60.0, activity=0.5),
    "LINK-USDT": Spec(14.0, 0.01, 0.01, 500.0, activity=0.5),
    "AVAX-USDT": Spec(30.0, 0.01, 0.01, 200.0, activity=0.5),
    "DOT-USDT": Spec(5.0, 0.001, 0.01, 1_500.0, activity=0.5),
    "TRX-USDT": Spec(0.12, 0.0001, 0.1, 150_000.0, activity=0.4),
    "BCH-USDT": Spec(250.0, 0.1, 0.001, 20.0, activity=0.4, half_spread_bp=1.5),
    "ATOM-USDT": Spec(8.0, 0.001, 0.01, 1_000.0, activity=0.4),
    "UNI-USDT": Spec(6.0, 0.001, 0.01, 1_200.0, activity=0.3),
    "XLM-USDT": Spec(0.11, 0.0001, 0.1, 90_000.0, activity=0.3),
    "NEAR-USDT": Spec(3.0, 0.001, 0.1, 3_000.0, activity=0.4),
    "SHIB-USDT": Spec(0.00001, 1e-8, 1.0, 400_000_000.0, **_MEME),
    "PEPE-USDT": Spec(0.00001, 1e-8, 1.0, 600_000_000.0, **_MEME),
    "BONK-USDT": Spec(0.00003, 1e-8, 1.0, 150_000_000.0, **_MEME),
    "FLOKI-USDT": Spec(0.0003, 1e-8, 1.0, 20_000_000.0, **_MEME),
    # Thin books, trades minutes apart: one book update a second, a trade every ~3 minutes.
    "KSM-USDT": Spec(30.0, 0.01, 0.001, 15.0, **_THIN),
    "XTZ-USDT": Spec(0.9, 0.001, 0.1, 4_000.0, **_THIN),
}

# A symbol nobody listed: a plain mid-priced market.
DEFAULT_SPEC = Spec(100.0, 0.01, 0.01, 20.0, activity=0.5)

# Venues that quote BTC (and BCH) a decimal coarser than binance.
_COARSE_BTC = {"okx", "kucoin", "gate", "kraken"}
# Venues whose sizes go to 1e-8 for any asset priced above a dollar.
_FINE_LOT = {"coinbase", "kraken", "bitfinex", "okx", "kucoin"}


def decimals(step: float) -> int:
    """Decimal places of a step (``0.01`` -> 2, ``1e-8`` -> 8, ``1`` -> 0)."""
    text = f"{step:.12f}".rstrip("0")
    return len(text.split(".")[1]) if "." in text else 0


def spec(symbol: str) -> Spec:
    return SYMBOLS.get(symbol, DEFAULT_SPEC)


def precision(exchange: str, symbol: str) -> tuple[float, float]:
    """(tick, lot) of ``symbol`` on ``exchange``, as the venue quotes it."""
    s = spec(symbol)
    tick, lot = s.tick, s.lot
    if exchange == "bitfinex":  # five significant digits, sizes to 1e-8
        tick = 10.0 ** (math.floor(math.log10(s.price)) - 4)
    elif exchange in _COARSE_BTC and symbol in ("BTC-USDT", "BCH-USDT"):
        tick = s.tick * 10
    elif exchange == "htx" and s.price < 0.001:  # htx quotes meme coins to 1e-10
        tick = 1e-10
    if exchange in _FINE_LOT and s.price >= 1.0:
        lot = 1e-8
    elif exchange == "bybit" and s.price >= 1.0:
        lot = min(lot, 1e-6)
    tick_d, lot_d = decimals(tick), decimals(lot)
    return round(tick, tick_d), round(lot, lot_d)
