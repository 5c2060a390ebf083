"""One market, many venues: the fair value every venue of a symbol follows.

There is one :class:`FairValue` per symbol, shared by all simulated venues. It is a
random walk in log price on a fixed time grid (50 ms), with a weak pull back to its
start and rare jumps, drawn from a seeded generator: the same seed gives the same
path (relative to the first time it is read). Each venue sees it through a
:class:`VenueView`: its own small basis (a fraction of a basis point) and its own
lag (tens to hundreds of milliseconds), so venues disagree a little and the slow ones
catch up after a jump - the consolidated book is crossed rarely and briefly, by a few
basis points at most, as on real venues that arbitrage keeps together.

Venue timestamps also run behind the local clock (:data:`STAMP_LAG_MS`): a venue
stamps an event when it happens, coby receives it later. binance's REST book has
no timestamp at all (coby stamps it locally), so the WebSocket books that follow
it carry times *earlier* than the snapshot's.
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass

from coby.instruments import Spec

__all__ = ["FOLLOW_LAG_MS", "STAMP_LAG_MS", "FairValue", "VenueView"]

GRID_MS = 50
KEEP = 400  # grid points kept (20 s): enough for any venue's lag
JUMP_EVERY_S = 40.0  # mean seconds between jumps of the fair value
JUMP_SIZE = (1.0, 3.0)  # a jump's size, in units of the symbol's half-spread (at most 2 bp)

#: How far behind the fair value each venue's quotes are (ms): arbitrage reaches them late.
FOLLOW_LAG_MS: dict[str, int] = {
    "binance": 0, "okx": 20, "bybit": 30, "mexc": 60, "kucoin": 80, "htx": 90, "gate": 100,
    "coinbase": 120, "kraken": 150, "bitfinex": 200,
}
#: How far the venue's timestamps run behind the local clock (ms): latency plus clock offset.
STAMP_LAG_MS: dict[str, int] = {
    "binance": 250, "okx": 40, "bybit": 40, "mexc": 60, "kucoin": 50, "htx": 60, "gate": 80,
    "coinbase": 70, "kraken": 60, "bitfinex": 90,
}


class FairValue:
    """The latent price of one symbol, a deterministic function of time once first read."""

    __slots__ = ("spec", "_rng", "_t0", "_base", "_log", "_anchor", "_sigma", "_jump_p")

    def __init__(self, symbol: str, spec: Spec, seed: int = 1) -> None:
        self.spec = spec
        self._rng = random.Random(seed * 7_919 + zlib.crc32(f"fair:{symbol}".encode()))
        self._t0: int | None = None
        self._base = 0  # grid index of _log[0]
        self._anchor = math.log(spec.price)
        self._log: list[float] = [self._anchor]
        self._sigma = spec.vol_bp * 1e-4 * math.sqrt(GRID_MS / 1000)
        self._jump_p = GRID_MS / 1000 / JUMP_EVERY_S

    def at(self, ts_ms: int) -> float:
        """The fair value at ``ts_ms`` (the first call fixes the path's origin)."""
        if self._t0 is None:
            self._t0 = ts_ms
        i = (ts_ms - self._t0) // GRID_MS
        last = self._base + len(self._log) - 1
        if i > last:
            self._extend(i - last)
        i = max(i, self._base)
        return math.exp(self._log[i - self._base])

    def _extend(self, n: int) -> None:
        rng, log = self._rng, self._log
        x = log[-1]
        half = min(self.spec.half_spread_bp, 2.0) * 1e-4
        for _ in range(min(n, 10 * KEEP)):  # a long pause is not replayed step by step
            x += rng.gauss(0.0, self._sigma) + (self._anchor - x) * 0.0002
            if rng.random() < self._jump_p:
                x += rng.choice((-1.0, 1.0)) * rng.uniform(*JUMP_SIZE) * half
            log.append(x)
        skipped = n - min(n, 10 * KEEP)
        self._base += skipped
        if len(log) > KEEP:
            drop = len(log) - KEEP
            del log[:drop]
            self._base += drop


@dataclass(slots=True, frozen=True)
class VenueView:
    """A venue's reading of a fair value: ``fair(t - lag) * (1 + basis)``."""

    fair: FairValue
    lag_ms: int = 0
    basis: float = 0.0  # relative, e.g. 2e-5 = 0.2 bp

    @classmethod
    def of(cls, fair: FairValue, exchange: str, symbol: str) -> VenueView:
        """The view of ``exchange``: its lag, and a basis of up to a fifth of the half-spread."""
        u = (zlib.crc32(f"basis:{exchange}:{symbol}".encode()) % 2001 - 1000) / 1000
        return cls(fair, FOLLOW_LAG_MS.get(exchange, 50), u * fair.spec.half_spread_bp * 0.2e-4)

    def at(self, ts_ms: int) -> float:
        return self.fair.at(ts_ms - self.lag_ms) * (1.0 + self.basis)
