"""The venues' real quirks, as the simulator sends them and coby receives them through unmodified ccxt.pro.

One simulator for the module (the venues with a quirk, a liquid and a ~0.0003-priced
symbol) and one :class:`~coby.exchanges.ExchangeConnector` per venue recording what
coby emits. Each test names the quirk and checks it on the wire (or in ccxt) and in
what coby made of it.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from coby.config import Settings
from coby.exchanges import ExchangeConnector
from coby.models import ConnectionState, OrderBookSnapshot, TradeEvent
from coby.simulator import Simulator
from coby.simulator.market import HISTORY
from coby.collector.venues import _coinbase_gap
from simulator_fixtures import ccxt_client, poll

VENUES = ("binance", "coinbase", "bitfinex", "bybit", "kucoin", "htx")
SYMBOLS = ("BTC-USDT", "FLOKI-USDT", "KSM-USDT")

amod = pytest.mark.asyncio(loop_scope="module")


def spy_messages(ex: Any, seen: Any) -> None:
    """Call ``seen(message)`` after ccxt handled each message of its (only) connection."""
    ws = next(iter(ex.clients.values()))
    handle = ws.on_message_callback

    def spy(c: Any, message: Any) -> None:
        handle(c, message)
        seen(message)

    ws.on_message_callback = spy


class Recorder(list):
    def __call__(self, item: Any) -> None:
        self.append(item)

    def of(self, cls: type, exchange: str, symbol: str = "BTC-USDT") -> list[Any]:
        return [i for i in self if isinstance(i, cls) and i.exchange == exchange and i.symbol == symbol]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory):
    """The simulator and one connector per venue, each watching books and trades of both symbols."""
    sim = Simulator(exchanges=VENUES, symbols=SYMBOLS, port=free_port(), rate=20.0, seed=5)
    await sim.start()
    rec = Recorder()
    s = Settings.load(env={}, exchange_urls={"*": sim.url}, data_dir=str(tmp_path_factory.mktemp("quirks")),
                      log_level="WARNING", book_emit_interval=0.0)
    conns = {v: ExchangeConnector(v, s, rec) for v in VENUES}
    for c in conns.values():
        await c.connect()
        for sym in SYMBOLS:
            await c.subscribe_orderbook(sym)
            await c.subscribe_trades(sym)
    try:
        yield sim, conns, rec
    finally:
        await asyncio.gather(*(c.disconnect() for c in conns.values()))
        await sim.aclose()


@amod
async def test_binance_rest_book_has_no_timestamp_and_websocket_books_are_stamped_earlier(live: Any) -> None:
    """binance's REST snapshot carries no time, so coby stamps it locally; the WebSocket books that follow
    carry binance's own time, which runs behind the local clock: the second book is stamped before the first."""
    sim, _, rec = live
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{sim.url}/binance/api/v3/depth", params={"symbol": "BTCUSDT", "limit": "5"}) as r:
            assert set(await r.json()) == {"lastUpdateId", "bids", "asks"}  # no E, no T: no time at all
    await poll(lambda: len(rec.of(OrderBookSnapshot, "binance")) >= 20, 15)
    books = rec.of(OrderBookSnapshot, "binance")
    assert all(b.timestamp <= b.received_at for b in books)  # the venue's clock is behind ours
    lags = [(b.received_at - b.timestamp).total_seconds() for b in books[1:]]
    assert min(lags) >= 0.2  # binance's stamps run 250 ms behind the local clock here
    assert books[1].timestamp < books[0].timestamp  # a "backwards" step right after the REST snapshot


@amod
@pytest.mark.parametrize("exchange", ["coinbase", "bitfinex"])
async def test_recent_trades_sent_on_subscribe_are_older_than_the_ohlcv_grace(live: Any, exchange: str) -> None:
    """coinbase (the last 50 trades) and bitfinex (the last 30) send trades made before the subscription:
    seconds old on a busy market, minutes on a quiet one. coby receives them, older than ``ohlcv_grace``."""
    sim, conns, rec = live
    grace = conns[exchange].settings.ohlcv_grace
    for symbol, oldest in (("BTC-USDT", grace), ("KSM-USDT", 600.0)):
        history = {str(t.trade_id) for t in sim.markets[exchange, symbol].history}
        await poll(lambda: any(t.trade_id in history for t in rec.of(TradeEvent, exchange, symbol)), 15)
        old = [t for t in rec.of(TradeEvent, exchange, symbol) if t.trade_id in history]
        ages = [(t.received_at - t.timestamp).total_seconds() for t in old]
        assert min(ages) > grace and max(ages) > oldest, (symbol, min(ages), max(ages))
    assert len(sim.markets[exchange, "KSM-USDT"].history) == HISTORY


@amod
async def test_coinbase_sequence_numbers_run_across_all_channels_of_a_connection(live: Any) -> None:
    """coinbase numbers every message of a connection with one sequence_num, whatever its channel: book and
    trade frames interleave on one counter with no gaps, and coby's gap check sees no loss in them."""
    sim, conns, _ = live
    seen: list[tuple[str, int]] = []
    async with ccxt_client(sim, "coinbase") as ex:
        await asyncio.wait_for(ex.watch_order_book("BTC/USDT"), 10)
        spy_messages(ex, lambda m: seen.append((m.get("channel"), m.get("sequence_num"))))
        trades = asyncio.ensure_future(ex.watch_trades("BTC/USDT"))
        try:
            await poll(lambda: {"l2_data", "market_trades"} <= {c for c, _ in seen} and len(seen) > 40, 15)
        finally:
            trades.cancel()
    nums = [n for _, n in seen]
    assert nums == list(range(nums[0], nums[0] + len(nums)))  # one counter, +1 per frame, every channel
    state: dict[Any, Any] = {}
    assert [_coinbase_gap(state, ex, {"sequence_num": n}) for n in nums] == [None] * len(nums)
    assert conns["coinbase"].get_connection_status().reconnects == 0  # coby's connector never resynced


@amod
@pytest.mark.parametrize(("exchange", "numeric"), [("bybit", False), ("kucoin", False), ("htx", True)])
async def test_trade_ids_that_are_not_small_ordered_numbers_reach_coby_distinct(
        live: Any, exchange: str, numeric: bool) -> None:
    """bybit sends UUIDs, kucoin 24-hex-digit object ids (neither a number nor in trade order), htx
    24-digit numbers: coby stores each trade once under a distinct id, none dropped as a duplicate."""
    sim, conns, rec = live
    await poll(lambda: len(rec.of(TradeEvent, exchange)) >= 30, 20)
    trades = rec.of(TradeEvent, exchange)
    ids = [t.trade_id for t in trades]
    assert len(set(ids)) == len(ids)
    assert all(i.isdigit() for i in ids) == numeric
    if not numeric:
        assert ids != sorted(ids)  # arrival order is not id order
    if exchange == "htx":
        assert all(int(i) < 10**15 for i in ids)  # coby keys htx on the narrow tradeId, not the 24-digit id
    assert conns[exchange].get_connection_status().rejects.get("duplicate_trade", 0) == 0


@amod
async def test_a_0_0003_priced_symbol_has_1e_8_ticks_on_the_wire_and_in_coby(live: Any) -> None:
    """FLOKI-USDT (~0.0003) is quoted in 1e-8 steps (htx 1e-10) and arrives in coby with those exact prices."""
    sim, _, rec = live
    for exchange, tick in (("binance", 1e-8), ("htx", 1e-10), ("coinbase", 1e-8)):
        await poll(lambda: rec.of(OrderBookSnapshot, exchange, "FLOKI-USDT"), 15)
        book = rec.of(OrderBookSnapshot, exchange, "FLOKI-USDT")[-1]
        prices = list(book.bids.prices[:20]) + list(book.asks.prices[:20])
        assert all(0.0002 < p < 0.0004 for p in prices)
        assert all(abs(p / tick - round(p / tick)) < 1e-6 for p in prices), exchange
        assert sim.markets[exchange, "FLOKI-USDT"].tick == tick


@amod
async def test_a_venue_whose_illiquid_market_has_not_traded_yet_is_connected(live: Any) -> None:
    """KSM-USDT trades minutes apart; binance sends no trades on subscribe. Its book flows, so binance is
    connected although the KSM trade stream has been quiet since the start."""
    sim, conns, rec = live
    await poll(lambda: rec.of(OrderBookSnapshot, "binance", "KSM-USDT"), 15)
    await asyncio.sleep(3.0)
    if rec.of(TradeEvent, "binance", "KSM-USDT"):
        pytest.skip("KSM-USDT happened to trade on binance during the test")
    assert conns["binance"].get_connection_status().state is ConnectionState.CONNECTED
