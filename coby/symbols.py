"""Canonical symbols (``BTC-USDT``) and the one market each maps to on each venue.

coby names a pair ``BASE-QUOTE`` everywhere (events, storage, API). On a venue it
is one ccxt market, named by ccxt's unified symbol (``BTC/USDT``; ccxt already
unifies kraken's ``XBT`` and bitfinex's ``UST``) and by the venue's market id
(``BTCUSDT``, ``tBTCUST`` ...), which is what goes on the wire.

By default ``BASE-QUOTE`` maps to ``BASE/QUOTE`` on every venue. The
``symbol_map`` setting replaces that per venue and symbol, e.g. to use coinbase's
USD book for BTC-USDT::

    [symbol_map.coinbase]
    "BTC-USDT" = "BTC/USD"            # id derived: BTC-USD
    [symbol_map.kraken]
    "ETH-USDT" = "ETH/USD|XETHZUSD"   # explicit venue id after '|'

Market ids come from the venue's real market list when coby has one (cached on
disk, see :mod:`coby.collector.venues`); otherwise they are derived by the venue's id rule
below. See docs/symbols.md.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# Venue currency ids that differ from ccxt's unified codes (only those the id rules need).
_CURRENCY_IDS: dict[str, dict[str, str]] = {
    "kraken": {"BTC": "XBT", "DOGE": "XDG"},
    "bitfinex": {"USDT": "UST", "USDC": "UDC", "DASH": "DSH", "IOTA": "IOT"},
}


def _bitfinex_id(base: str, quote: str) -> str:
    return f"t{base}{quote}" if len(base) == 3 and len(quote) == 3 else f"t{base}:{quote}"


# How each venue spells a spot market id from its currency ids.
_ID_RULES = {
    "binance": lambda b, q: f"{b}{q}",
    "okx": lambda b, q: f"{b}-{q}",
    "bybit": lambda b, q: f"{b}{q}",
    "kraken": lambda b, q: f"{b}{q}",  # WS v2 subscribes by unified symbol; the id is informative
    "coinbase": lambda b, q: f"{b}-{q}",
    "htx": lambda b, q: f"{b}{q}".lower(),
    "kucoin": lambda b, q: f"{b}-{q}",
    "gate": lambda b, q: f"{b}_{q}",
    "bitfinex": _bitfinex_id,
    "mexc": lambda b, q: f"{b}{q}",
}

VENUES: tuple[str, ...] = tuple(_ID_RULES)


@dataclass(frozen=True, slots=True)
class VenueMarket:
    """One canonical symbol on one venue."""

    exchange: str
    canonical: str  # BTC-USDT
    symbol: str  # ccxt unified symbol: BTC/USDT
    id: str  # venue market id: BTCUSDT
    base: str
    quote: str
    base_id: str
    quote_id: str


def canonical_to_unified(canonical: str) -> str:
    """``BTC-USDT`` -> ``BTC/USDT``."""
    base, quote = split_canonical(canonical)
    return f"{base}/{quote}"


def split_canonical(canonical: str) -> tuple[str, str]:
    parts = canonical.split("-")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"bad canonical symbol {canonical!r}: use BASE-QUOTE, e.g. BTC-USDT")
    return parts[0], parts[1]


def derive_market(exchange: str, canonical: str, unified: str, market_id: str | None = None) -> VenueMarket:
    """The market for ``unified`` on ``exchange``, its id given or derived by the venue's rule."""
    if exchange not in _ID_RULES:
        raise ValueError(f"unknown exchange {exchange!r}")
    if unified.count("/") != 1 or ":" in unified:
        raise ValueError(f"{exchange}: {unified!r} is not a ccxt unified spot symbol (BASE/QUOTE)")
    base, quote = unified.split("/")
    ids = _CURRENCY_IDS.get(exchange, {})
    base_id, quote_id = ids.get(base, base), ids.get(quote, quote)
    mid = market_id or _ID_RULES[exchange](base_id, quote_id)
    return VenueMarket(exchange, canonical, unified, mid, base, quote, base_id, quote_id)


def parse_override(value: str) -> tuple[str, str | None]:
    """``"BTC/USD"`` -> (``BTC/USD``, None); ``"BTC/USD|XXBTZUSD"`` -> (``BTC/USD``, ``XXBTZUSD``)."""
    unified, sep, mid = value.partition("|")
    unified = unified.strip()
    if "-" in unified and "/" not in unified:  # accept canonical spelling too
        unified = unified.replace("-", "/")
    return unified, (mid.strip() or None) if sep else None


def check_symbol_map(value: Mapping[str, Mapping[str, str]]) -> str | None:
    """Validation for the ``symbol_map`` setting: an error message or None."""
    for exchange, table in value.items():
        if exchange not in _ID_RULES:
            return f"unknown exchange {exchange!r}; known: {', '.join(_ID_RULES)}"
        if not isinstance(table, Mapping):
            return f"{exchange}: expected a table of canonical symbol = ccxt symbol"
        for canonical, target in table.items():
            try:
                split_canonical(canonical)
                derive_market(exchange, canonical, *parse_override(str(target)))
            except ValueError as exc:
                return str(exc)
    return None


class SymbolMap:
    """Resolves canonical symbols to venue markets: overrides first, then ``BASE/QUOTE``.

    ``known`` optionally maps exchange -> {unified symbol: market id} from the venue's
    real market list; it beats the derived id.
    """

    def __init__(self, overrides: Mapping[str, Mapping[str, str]] | None = None,
                 known: Mapping[str, Mapping[str, str]] | None = None) -> None:
        msg = check_symbol_map(overrides or {})
        if msg:
            raise ValueError(msg)
        self._overrides = {ex: dict(t) for ex, t in (overrides or {}).items()}
        self._known = {ex: dict(t) for ex, t in (known or {}).items()}

    def with_known(self, exchange: str, ids: Mapping[str, str]) -> None:
        """Teach the map a venue's real market ids (unified symbol -> id)."""
        self._known[exchange] = dict(ids)

    def unified(self, exchange: str, canonical: str) -> str:
        target = self._overrides.get(exchange, {}).get(canonical)
        return parse_override(target)[0] if target else canonical_to_unified(canonical)

    def market(self, exchange: str, canonical: str) -> VenueMarket:
        target = self._overrides.get(exchange, {}).get(canonical)
        unified, explicit_id = parse_override(target) if target else (canonical_to_unified(canonical), None)
        mid = explicit_id or self._known.get(exchange, {}).get(unified)
        return derive_market(exchange, canonical, unified, mid)

    def table(self, exchanges: Iterable[str], symbols: Iterable[str]) -> list[VenueMarket]:
        """Every (exchange, symbol) resolved: for docs, logs and the status API."""
        return [self.market(ex, sym) for ex in exchanges for sym in symbols]
