"""Venue markets, loaded once and cached on disk: restarts do not hammer the venues, offline starts work.

Where a connector's markets come from, in order:

1. a venue pointed at the simulator or a proxy (``exchange_urls`` / ``simulate``):
   the built-in preset (no network call, the cache is not touched);
2. ``data_dir/markets/<venue>.json`` when it holds every needed symbol and is
   younger than ``markets_ttl``;
3. otherwise the cache (any age) or the preset *now*, and a real ``load_markets``
   in the background; when it succeeds the cache is rewritten and the next ccxt
   client the connector builds uses the real markets.

The preset is ``safe_market_structure`` over the ids of :mod:`coby.symbols`,
which is what the wire notes verified for all ten venues, with the tick and lot of
:mod:`coby.instruments` as its ``precision`` (the simulator quotes the same).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import ccxt
import ccxt.pro as ccxtpro
import orjson
import structlog

from coby.symbols import SymbolMap, VenueMarket
from coby.collector.venues import VENUES, override_base, preset_market

log = structlog.get_logger("coby.markets")

Loader = Callable[[str], Awaitable[dict[str, dict[str, Any]]]]


async def load_real_markets(exchange: str, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
    """The venue's markets from its REST API (one throwaway ccxt client)."""
    ex = getattr(ccxtpro, exchange)({"enableRateLimit": True})
    try:
        return dict(await asyncio.wait_for(ex.load_markets(), timeout))
    finally:
        await ex.close()


class MarketCatalog:
    """The markets of one venue for the connector: preset, cached or real."""

    def __init__(self, exchange: str, settings: Any, symbol_map: SymbolMap, *, loader: Loader | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.exchange = exchange
        self.venue = VENUES[exchange]
        self.symbol_map = symbol_map
        self.simulated = override_base(settings, exchange) is not None
        self.path = Path(settings.data_dir) / "markets" / f"{exchange}.json"
        self.ttl = settings.markets_ttl
        self._loader = loader or load_real_markets
        self._clock = clock
        self._cached: dict[str, dict[str, Any]] | None = None
        self._cached_at = 0.0
        self.source = "preset"
        if not self.simulated:
            self._read_cache()

    # ---------------------------------------------------------------- reading

    def market(self, canonical: str) -> VenueMarket:
        return self.symbol_map.market(self.exchange, canonical)

    def markets_for(self, canonicals: Iterable[str]) -> dict[str, dict[str, Any]]:
        """ccxt market dicts (unified symbol -> market) for the canonical symbols."""
        out: dict[str, dict[str, Any]] = {}
        for canonical in canonicals:
            m = self.market(canonical)
            cached = self._cached.get(m.symbol) if self._cached else None
            out[m.symbol] = cached if cached is not None else preset_market(self.venue, m)
        return out

    def needs_refresh(self, canonicals: Iterable[str]) -> bool:
        if self.simulated:
            return False
        if self._cached is None or self._clock() - self._cached_at > self.ttl:
            return True
        return any(self.market(c).symbol not in self._cached for c in canonicals)

    # ---------------------------------------------------------------- loading

    async def refresh(self) -> bool:
        """Load the real markets and rewrite the cache; False (logged) if the venue cannot be reached."""
        if self.simulated:
            return False
        try:
            markets = await self._loader(self.exchange)
        except Exception as exc:  # noqa: BLE001 - offline or refused: keep what we have
            log.warning("markets_load_failed", exchange=self.exchange, error=repr(exc)[:300], using=self.source)
            return False
        self._set(markets, self._clock())
        self.source = "venue"
        try:
            self._write_cache()
        except OSError as exc:
            log.warning("markets_cache_write_failed", exchange=self.exchange, path=str(self.path), error=repr(exc))
        log.info("markets_loaded", exchange=self.exchange, markets=len(markets))
        return True

    def _set(self, markets: dict[str, dict[str, Any]], at: float) -> None:
        slim = {}
        for sym, m in markets.items():
            if isinstance(m, dict) and m.get("spot"):
                slim[sym] = {k: v for k, v in m.items() if k != "info"}
        self._cached, self._cached_at = slim, at
        self.symbol_map.with_known(self.exchange, {s: m["id"] for s, m in slim.items() if m.get("id")})

    def _read_cache(self) -> None:
        try:
            doc = orjson.loads(self.path.read_bytes())
            self._set(doc["markets"], float(doc["saved_at"]))
            self.source = "cache"
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("markets_cache_unreadable", exchange=self.exchange, path=str(self.path), error=repr(exc))

    def _write_cache(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"exchange": self.exchange, "saved_at": self._cached_at, "ccxt": ccxt.__version__,
               "markets": self._cached}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(orjson.dumps(doc, default=str))
        os.replace(tmp, self.path)  # atomic: a crash never leaves half a cache
