"""How a setting is declared and checked (``coby.config`` declares them all): the ``setting`` field helper, the
value checks (each returns an error message or None) and the venue names they check against. Imports nothing of
coby's settings; ``coby.config`` re-exports ``EXCHANGES`` and ``EXCHANGE_ALIASES``.
"""

from __future__ import annotations

import math
from dataclasses import field
from typing import Any, Callable

EXCHANGES: tuple[str, ...] = (
    "binance", "coinbase", "kraken", "bybit", "okx", "htx", "kucoin", "gate", "bitfinex", "mexc",
)
# The design document names two venues by their old ccxt ids.
EXCHANGE_ALIASES = {"huobi": "htx", "gateio": "gate"}


def setting(default: Any, help: str, env: tuple[str, ...] = (), check: Callable[[Any], str | None] | None = None,
            secret: bool = False) -> Any:
    """Declare one setting. ``check`` returns an error message or None."""
    meta = {"help": help, "env": env, "check": check, "secret": secret}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return field(default=default, metadata=meta)


def check_positive(v: Any) -> str | None:
    return None if v > 0 and (not isinstance(v, float) or math.isfinite(v)) else "must be > 0"


def check_non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def check_port(v: int) -> str | None:
    return None if 0 <= v <= 65535 else "must be a port number 0-65535"


def check_log_level(v: str) -> str | None:
    return None if v.upper() in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"} else \
        "must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"


def check_exchanges(v: tuple[str, ...]) -> str | None:
    unknown = [e for e in v if e not in EXCHANGES]
    if unknown:
        return f"unknown exchange(s) {', '.join(unknown)}; known: {', '.join(EXCHANGES)}"
    return None if v else "must name at least one exchange"


def check_backfill(v: tuple[str, ...]) -> str | None:
    unknown = [e for e in v if e != "*" and e not in EXCHANGES]
    return f"unknown exchange(s) {', '.join(unknown)}; known: *, {', '.join(EXCHANGES)}" if unknown else None


def check_symbols(v: tuple[str, ...]) -> str | None:
    bad = [s for s in v if s.count("-") != 1 or not all(p.isalnum() and p.isupper() for p in s.split("-"))]
    if bad:
        return f"bad symbol(s) {', '.join(bad)}: use canonical BASE-QUOTE names such as BTC-USDT"
    return None if v else "must name at least one symbol"


def check_bucket_sizes(v: dict[str, float]) -> str | None:
    for k, size in v.items():
        if not isinstance(size, (int, float)) or isinstance(size, bool) or not size > 0 or not math.isfinite(size):
            return f"bucket size for {k!r} must be a positive number"
    return None


def check_db_url(v: str | None) -> str | None:
    if v is None or v.startswith(("postgresql://", "postgres://", "sqlite:///")):
        return None
    return "must start with postgresql://, postgres:// or sqlite:///"


def check_redis_url(v: str | None) -> str | None:
    if v is None or v.startswith(("redis://", "rediss://", "unix://")):
        return None
    return "must start with redis://, rediss:// or unix://"


def check_exchange_urls(v: dict[str, str]) -> str | None:
    for k, url in v.items():
        if k != "*" and k not in EXCHANGES:
            return f"unknown exchange {k!r}; use a venue name or '*'"
        if not str(url).startswith(("http://", "https://")):
            return f"URL for {k!r} must start with http:// or https://"
    return None


def check_symbol_map(v: dict[str, dict[str, str]]) -> str | None:
    from coby.symbols import check_symbol_map  # coby.symbols imports nothing of coby's settings

    return check_symbol_map(v)


def check_origins(v: tuple[str, ...]) -> str | None:
    bad = [o for o in v if o != "*" and (not o.startswith(("http://", "https://")) or o.endswith("/"))]
    return f"bad origin(s) {', '.join(bad)}: use scheme://host[:port] or *" if bad else None


def check_shard(v: str | None) -> str | None:
    from coby.sharding import parse_shard  # imports nothing of coby's settings
    try:
        parse_shard(v)
    except ValueError as e:
        return str(e)
    return None


def check_choice(*allowed: str) -> Callable[[str], str | None]:
    return lambda v: None if v in allowed else f"must be one of {', '.join(allowed)}"
