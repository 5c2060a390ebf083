"""The simulator's REST trade history of htx, kucoin, mexc and bybit, read with unmodified ccxt through the
client the gap filler builds (coby.collector.venues.build_client): the routes ccxt calls, the page sizes, the depth kept,
the ids (or none) each venue gives, and the venue's answer over its rate limit."""

from __future__ import annotations

import asyncio

import pytest

from coby.collector.markets import MarketCatalog
from coby.collector.normalize import DataProcessor, trade_ms
from coby.simulator.server import Simulator
from coby.symbols import SymbolMap
from coby.collector.ccxterrors import translate_ccxt_error
from coby.errors import RateLimited
from coby.collector.venues import build_client
from tests.conftest import make_settings

SYMBOL = "BTC-USDT"
VENUES = ("htx", "kucoin", "mexc", "bybit")


async def _client(sim: Simulator, exchange: str, tmp_path):
    settings = make_settings(tmp_path, exchanges=VENUES, symbols=(SYMBOL,), simulate=True,
                             simulator_port=sim.port)
    catalog = MarketCatalog(exchange, settings, SymbolMap(settings.symbol_map))
    return build_client(exchange, catalog.markets_for([SYMBOL]), sim.url.rstrip("/"))


async def _made(sim: Simulator, exchange: str, n: int) -> list:
    market = sim.market(exchange, SYMBOL)
    for _ in range(200):
        if len(market.trades) >= n:
            break
        await asyncio.sleep(0.1)
    return list(market.trades)


async def test_latest_only_histories_serve_their_real_page_and_depth(tmp_path):
    """htx: the latest 2000 (``size``), ids = the WebSocket's ``tradeId`` (coby keys both alike); kucoin: the last
    100, no id; bybit spot: the latest 60 however many are asked for. None pages further back."""
    async with Simulator(exchanges=VENUES, symbols=(SYMBOL,), port=0, rate=40.0) as sim:
        await _made(sim, "htx", 150)
        sim.freeze()  # the record stands still while it is compared
        processor = DataProcessor()
        for exchange, limit, served in (("htx", 2000, None), ("kucoin", 1000, 100), ("bybit", 1000, 60)):
            client = await _client(sim, exchange, tmp_path)
            try:
                page = await client.fetch_trades("BTC/USDT", None, limit)
            finally:
                await client.close()
            made = list(sim.market(exchange, SYMBOL).trades)
            if served is not None:
                assert len(page) == served, exchange
            # kucoin stamps in ns, which ccxt parses through a float (1 ms early for about 1 trade in 8): read the
            # time as coby does (normalize.trade_ms)
            ts = [trade_ms(r, exchange) for r in page]
            assert ts == sorted(ts) and ts[-1] == made[-1].ts_ms, exchange
            if exchange == "htx":  # the REST id is the WebSocket's tradeId, and coby reads both the same way
                ids = [t.trade_id for t in processor.process_trades(page, "htx", SYMBOL)]
                assert sorted(ids, key=int) == [str(t.trade_id) for t in made][-2000:]
            if exchange == "kucoin":
                assert all(r["id"] is None for r in page)


async def test_mexc_agg_trades_page_by_time_without_ids_and_429(tmp_path):
    """mexc's aggTrades: ``since`` needs ``until`` (ccxt asks for both), oldest first within the window, at most
    1000; no trade id (ccxt makes one from the content). Over the rate limit: HTTP 429, RateLimited to coby."""
    async with Simulator(exchanges=("mexc",), symbols=(SYMBOL,), port=0, rate=40.0) as sim:
        made = await _made(sim, "mexc", 120)
        sim.freeze()
        client = await _client(sim, "mexc", tmp_path)
        try:
            lo, hi = made[10].ts_ms, made[100].ts_ms
            page = await client.fetch_trades("BTC/USDT", lo, 1000, {"until": hi})
            # (ccxt orders one millisecond's trades by its content id: the venue's order within it is lost)
            assert sorted((r["timestamp"], r["price"], r["amount"]) for r in page) == \
                sorted((t.ts_ms, t.price, t.size) for t in made if lo <= t.ts_ms <= hi)
            assert all("-" in r["id"] for r in page)  # ccxt's content id: time-side-amount-price-taker
            assert len(await client.fetch_trades("BTC/USDT", lo, 5, {"until": hi})) == 5
            limit = sim.venues["mexc"].rest_limit
            limit.set(0.01, 1)
            limit.take()
            with pytest.raises(Exception) as info:
                await client.fetch_trades("BTC/USDT", lo, 10, {"until": hi})
            assert isinstance(translate_ccxt_error("mexc", info.value), RateLimited)
        finally:
            await client.close()


@pytest.mark.parametrize("exchange", ["htx", "kucoin", "bybit"])
async def test_latest_only_histories_answer_429_like_the_venue(tmp_path, exchange):
    async with Simulator(exchanges=(exchange,), symbols=(SYMBOL,), port=0, rate=40.0) as sim:
        await _made(sim, exchange, 10)
        client = await _client(sim, exchange, tmp_path)
        try:
            limit = sim.venues[exchange].rest_limit
            limit.set(0.01, 1)
            limit.take()
            with pytest.raises(Exception) as info:
                await client.fetch_trades("BTC/USDT", None, 10)
            assert isinstance(translate_ccxt_error(exchange, info.value), RateLimited), info.value
            assert limit.refused == 1
        finally:
            await client.close()
