"""Trade ids that are not numbers, as some venues send them.

Most venues number their trades (binance, okx, coinbase, kraken, gate, bitfinex;
htx with 24-digit ids, see ``htx.py``); bybit's spot trades carry a UUID and
kucoin's a 24-hex-digit object id. Neither is a number nor sorts in trade order, so
a consumer can neither parse them as integers nor use "greater than the last id" to
drop repeats. Both are derived from the market's trade number, so a repeated trade
(``duplicate_trade``) repeats its id and the stream stays deterministic.
"""

from __future__ import annotations

import hashlib
import uuid


def _digest(*parts: object) -> bytes:
    return hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=16).digest()


def uuid_id(symbol: str, trade_id: int) -> str:
    """A version-4 style UUID, e.g. ``'0f2a61d3-5b8e-4c7a-9e61-3c1c3a0d3f52'`` (bybit)."""
    return str(uuid.UUID(bytes=_digest("bybit", symbol, trade_id), version=4))


def object_id(symbol: str, trade_id: int, ts_ms: int) -> str:
    """A 24-hex-digit id: 8 of seconds, then 16 that do not sort (kucoin), e.g. ``'6571e0c2a3f09d1b2c4e5f60'``."""
    return f"{ts_ms // 1000:08x}{_digest('kucoin', symbol, trade_id)[:8].hex()}"
