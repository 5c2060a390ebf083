"""Test helpers: unmodified ccxt.pro clients pointed at the simulator.

This is the override recipe of ``/work/shared/docs/exchange-wire-notes.md`` section 2
as a test helper (the production table lives in ``coby/exchanges.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncio
import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import ccxt
import ccxt.pro as ccxtpro

# ccxt's market ids (what ccxt looks markets up by). These equal the simulator's wire
# ids except kraken, whose v2 protocol uses the unified symbol on the wire.
CCXT_MARKET_IDS: dict[str, dict[str, str]] = {
    "binance": {"BTC-USDT": "BTCUSDT", "ETH-USDT": "ETHUSDT"},
    "okx": {"BTC-USDT": "BTC-USDT", "ETH-USDT": "ETH-USDT"},
    "bybit": {"BTC-USDT": "BTCUSDT", "ETH-USDT": "ETHUSDT"},
    "kraken": {"BTC-USDT": "XBTUSDT", "ETH-USDT": "ETHUSDT"},
    "coinbase": {"BTC-USDT": "BTC-USDT", "ETH-USDT": "ETH-USDT"},
    "htx": {"BTC-USDT": "btcusdt", "ETH-USDT": "ethusdt"},
    "kucoin": {"BTC-USDT": "BTC-USDT", "ETH-USDT": "ETH-USDT"},
    "gate": {"BTC-USDT": "BTC_USDT", "ETH-USDT": "ETH_USDT"},
    "bitfinex": {"BTC-USDT": "tBTCUST", "ETH-USDT": "tETHUST"},
    "mexc": {"BTC-USDT": "BTCUSDT", "ETH-USDT": "ETHUSDT"},
}

#: Levels ccxt keeps by default: kraken v2 subscribes with Kraken's default depth 10.
DEFAULT_BOOK_DEPTH: dict[str, int] = {"kraken": 10}


def unified(symbol: str) -> str:
    """'BTC-USDT' -> 'BTC/USDT' (unified symbols pass through)."""
    return symbol.replace("-", "/")


def preset_market(exchange: str, symbol: str) -> dict[str, Any]:
    """A structurally complete spot market dict, as ``set_markets`` needs it."""
    sym = unified(symbol)
    base, quote = sym.split("/")
    market_id = CCXT_MARKET_IDS[exchange][symbol.replace("/", "-")]
    extra = {"lowercaseId": market_id.lower()} if exchange == "binance" else {}
    return ccxt.Exchange().safe_market_structure(
        {
            "id": market_id,
            "symbol": sym,
            "base": base,
            "quote": quote,
            "baseId": base,
            "quoteId": quote,
            "type": "spot",
            "spot": True,
            "active": True,
            **extra,
        }
    )


def point_urls(ex: Any, exchange: str, host: str) -> None:
    """Rewrite the URLs ccxt uses for public market data to the simulator at ``host``."""
    u = ex.urls
    if exchange == "binance":
        u["api"]["ws"]["spot"] = f"ws://{host}/binance/stream/ws"
        u["api"]["public"] = f"http://{host}/binance/api/v3"
    elif exchange == "okx":
        u["api"]["ws"] = f"ws://{host}/okx/ws/v5"
    elif exchange == "bybit":
        u["api"]["ws"]["public"]["spot"] = f"ws://{host}/bybit/v5/public/spot"
    elif exchange == "kraken":
        u["api"]["ws"]["publicV2"] = f"ws://{host}/kraken/v2"
    elif exchange == "coinbase":
        u["api"]["ws"] = f"ws://{host}/coinbase/ws"
    elif exchange == "htx":
        spot = u["api"]["ws"][ex.options["api"]]["spot"]
        spot["public"] = f"ws://{host}/htx/ws"
        spot["feed"] = f"ws://{host}/htx/feed"
    elif exchange == "kucoin":
        u["api"]["public"] = f"http://{host}/kucoin"
    elif exchange == "gate":
        u["api"]["spot"] = f"ws://{host}/gate/ws/v4/"
    elif exchange == "bitfinex":
        u["api"]["ws"]["public"] = f"ws://{host}/bitfinex/ws/2"
    elif exchange == "mexc":
        u["api"]["ws"]["spot"] = f"ws://{host}/mexc/ws"
        u["api"]["spot"]["public"] = f"http://{host}/mexc"
    else:
        raise ValueError(f"unknown exchange {exchange!r}")


def make_ccxt_client(
    exchange: str,
    sim_url: str,
    symbol: str | Iterable[str] = "BTC-USDT",
    *,
    options: dict[str, Any] | None = None,
) -> Any:
    """An unmodified ``ccxt.pro.<exchange>`` with preset markets, talking to the simulator.

    Call it inside the running event loop (it calls ``ex.open()``); ``await ex.close()``
    when done.
    """
    symbols = [symbol] if isinstance(symbol, str) else list(symbol)
    host = urlsplit(sim_url).netloc
    config: dict[str, Any] = {"markets": {unified(s): preset_market(exchange, s) for s in symbols}}
    if options:
        config["options"] = options
    ex = getattr(ccxtpro, exchange)(config)
    ex.open()
    point_urls(ex, exchange, host)
    if exchange == "kucoin":  # skip the bullet-public REST call
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(f"ws://{host}/kucoin/endpoint?token=x&privateChannel=false&connectId=public")
        ex.options["urls"] = {"public": fut}
    return ex


async def poll(check: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, interval: float = 0.05) -> None:
    """Call ``check()`` (sync or async) until it is true; AssertionError after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


def book_levels(book: Any, depth: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """ccxt's order book as (bids, asks) lists of (price, size), ``depth`` levels each."""
    return (
        [(float(p), float(s)) for p, s, *_ in book["bids"][:depth]],
        [(float(p), float(s)) for p, s, *_ in book["asks"][:depth]],
    )


@contextlib.asynccontextmanager
async def ccxt_client(sim: Any, exchange: str, symbols: Any = "BTC-USDT", **kw: Any) -> AsyncIterator[Any]:
    """An unmodified ccxt.pro client on ``sim`` (a Simulator), closed on exit."""
    ex = make_ccxt_client(exchange, sim.url, symbols, **kw)
    try:
        yield ex
    finally:
        await ex.close()
