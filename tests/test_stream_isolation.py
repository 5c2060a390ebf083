"""A venue's book and trade streams fail separately, and a venue's state comes from its streams.

Real htx and gate showed both bugs this file guards against (issue 14, bugs 3 and 4): each book
failure recycled the ccxt client the trades ran on too (19 of 56 trades lost on htx), and an open
circuit for the book stopped gate's trades; a venue whose book flowed but whose trades were quiet (an
illiquid market) was ``disconnected`` for the whole run, so ``/ready`` was 503. Everything here runs
unmodified ccxt.pro against the simulator, which can drop a venue's book connections alone
(``drop_book``) and make a market's trades quiet (``Market.trade_rate = 0``).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import ccxt

from coby.config import Settings
from coby.daemon import Daemon
from coby.exchanges import ExchangeConnector
from coby.models import ConnectionEvent, OrderBookSnapshot, TradeEvent
from coby.simulator import Simulator
from tests.conftest import free_port, make_settings

SYMBOL = "BTC-USDT"
SPLIT = ("htx", "gate")  # venues whose book and trades the real venue serves on separate connections


def connector_settings(tmp: Path, url: str, **kw: Any) -> Settings:
    base: dict[str, Any] = dict(exchange_urls={"*": url}, data_dir=str(tmp), log_level="WARNING", stale_after=1.5,
                                connect_timeout=4.0, trade_stale_after=8.0, backoff_initial=0.2, backoff_max=1.0)
    base.update(kw)
    return Settings.load(env={}, **base)


class Recorder:
    """Everything the connectors emitted."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def __call__(self, item: Any) -> None:
        self.items.append(item)

    def of(self, exchange: str, cls: type) -> list[Any]:
        return [i for i in self.items if isinstance(i, cls) and i.exchange == exchange]

    def trade_ids(self, exchange: str) -> list[int]:
        return [int(t.trade_id) for t in self.of(exchange, TradeEvent)]

    def events(self, exchange: str, event: str, kind: str | None = None) -> list[ConnectionEvent]:
        return [e for e in self.of(exchange, ConnectionEvent)
                if e.event == event and (kind is None or e.detail.startswith(kind))]


async def poll(cond: Any, timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        result = cond()
        if result is True or result == []:
            return
        assert loop.time() < end, f"{what} not met within {timeout}s: {result}"
        await asyncio.sleep(0.05)


async def test_simulator_drop_book_leaves_trade_only_connections_open() -> None:
    """drop_book closes the connections carrying a book subscription; a connection carrying only trades stays
    open and keeps delivering trades."""
    sim = Simulator(exchanges=SPLIT, symbols=(SYMBOL,), port=0, rate=30.0, seed=5)
    await sim.start()
    subs = {"htx": ('{"sub":"market.btcusdt.mbp.150","id":"1"}', '{"sub":"market.btcusdt.trade.detail","id":"2"}'),
            "gate": ('{"id":1,"time":1,"channel":"spot.obu","event":"subscribe","payload":["ob.BTC_USDT.50"]}',
                     '{"id":2,"time":1,"channel":"spot.trades","event":"subscribe","payload":["BTC_USDT"]}')}
    paths = {"htx": ("/htx/feed", "/htx/ws"), "gate": ("/gate/ws/v4/", "/gate/ws/v4/")}
    try:
        async with aiohttp.ClientSession() as session:
            for venue in SPLIT:
                book_ws = await session.ws_connect(sim.url + paths[venue][0])
                trade_ws = await session.ws_connect(sim.url + paths[venue][1])
                await book_ws.send_str(subs[venue][0])
                await trade_ws.send_str(subs[venue][1])
                await poll(lambda: len(sim.venues[venue].connections) == 2 and
                           all(c.topics for c in sim.venues[venue].connections), 5.0, "subscribed")
                await sim.inject(venue, "drop_book")
                while (await book_ws.receive(timeout=5.0)).type not in (aiohttp.WSMsgType.CLOSE,
                                                                        aiohttp.WSMsgType.CLOSED):
                    pass  # frames sent before the drop
                frames = 0
                while frames < 5:  # trades keep coming on the other connection
                    msg = await trade_ws.receive(timeout=5.0)
                    assert msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY), (venue, msg)
                    frames += 1
                await book_ws.close()
                await trade_ws.close()
    finally:
        await sim.aclose()


async def test_book_failures_never_cost_a_trade(tmp_path: Path) -> None:
    """htx and gate: eight book failures, each recovered (dropped book connections and sequence gaps, which
    ccxt (htx) or coby's sequence check (gate) catches). Every trade the venue sent from the first one received
    to the end arrives (0 lost), and no trade stream reports a gap."""
    sim = Simulator(exchanges=SPLIT, symbols=(SYMBOL,), port=0, rate=25.0, seed=11)
    await sim.start()
    rec = Recorder()
    s = connector_settings(tmp_path, sim.url, circuit_failures=3, circuit_cooldown=2.0)
    conns = {v: ExchangeConnector(v, s, rec) for v in SPLIT}
    try:
        for c in conns.values():
            await c.subscribe_orderbook(SYMBOL)
            await c.subscribe_trades(SYMBOL)
        await poll(lambda: [v for v in SPLIT if len(rec.of(v, OrderBookSnapshot)) < 3 or len(rec.trade_ids(v)) < 3],
                   30.0, "books and trades")
        first = {v: rec.trade_ids(v)[0] for v in SPLIT}
        for i in range(8):
            await asyncio.gather(*(sim.inject(v, "drop_book" if i % 2 == 0 else "gap", symbol=SYMBOL)
                                   for v in SPLIT))
            await poll(lambda: [v for v in SPLIT if len(rec.events(v, "resynced", "book")) <= i],
                       20.0, f"book failure {i + 1} recovered")
        sim.freeze()
        last = {v: sim.market(v, SYMBOL).last_trade.trade_id for v in SPLIT}  # type: ignore[union-attr]
        await poll(lambda: [v for v in SPLIT if max(rec.trade_ids(v)) < last[v]], 10.0, "the last trade")
        for v in SPLIT:
            sent = set(range(first[v], last[v] + 1))
            got = set(rec.trade_ids(v))
            print(f"{v}: {len(sent)} trades sent, {len(sent & got)} received, "
                  f"{len(rec.events(v, 'disconnected', 'book'))} book failures")
            assert sent <= got, f"{v}: {len(sent - got)} of {len(sent)} trades lost"
            trade_gaps = [e for e in rec.of(v, ConnectionEvent) if e.detail.startswith("trades")
                          and e.event in ("disconnected", "stale", "circuit_open")]
            assert not trade_gaps, (v, trade_gaps)
    finally:
        await asyncio.gather(*(c.disconnect() for c in conns.values()))
        await sim.aclose()


async def test_trade_failures_never_touch_the_book(tmp_path: Path) -> None:
    """The other way round: htx and gate, trade connections dropped three times; the trades resync each time
    and the book stream never reports a gap."""
    sim = Simulator(exchanges=SPLIT, symbols=(SYMBOL,), port=0, rate=25.0, seed=13)
    await sim.start()
    rec = Recorder()
    conns = {v: ExchangeConnector(v, connector_settings(tmp_path, sim.url), rec) for v in SPLIT}
    try:
        for c in conns.values():
            await c.subscribe_orderbook(SYMBOL)
            await c.subscribe_trades(SYMBOL)
        await poll(lambda: [v for v in SPLIT if len(rec.of(v, OrderBookSnapshot)) < 3 or len(rec.trade_ids(v)) < 3],
                   30.0, "books and trades")
        for i in range(3):
            await asyncio.gather(*(sim.inject(v, "drop_trades") for v in SPLIT))
            await poll(lambda: [v for v in SPLIT if len(rec.events(v, "resynced", "trades")) <= i],
                       20.0, f"trade failure {i + 1} recovered")
        for v in SPLIT:
            book_events = [e.event for e in rec.of(v, ConnectionEvent) if e.detail.startswith("book")]
            assert book_events == ["connected"], (v, book_events)
    finally:
        await asyncio.gather(*(c.disconnect() for c in conns.values()))
        await sim.aclose()


async def test_quiet_trades_venue_is_connected_and_ready(tmp_path: Path) -> None:
    """A daemon on markets whose books flow but whose trades never come (illiquid): each venue is 'connected'
    and /ready is 200 from the first books on, through several trade_stale_after periods, and the book is
    never interrupted by the quiet trades."""
    sim = Simulator(exchanges=("binance", "gate"), symbols=(SYMBOL,), port=0, rate=10.0, seed=3)
    for market in sim.markets.values():
        market.trade_rate = 0.0
    await sim.start()
    settings = make_settings(tmp_path, exchanges=["binance", "gate"], symbols=[SYMBOL], api_port=free_port(),
                             exchange_urls={"*": sim.url}, trade_stale_after=1.0, connect_timeout=1.0,
                             stale_after=5.0)
    daemon = Daemon(settings)
    await daemon.start()
    rec = Recorder()
    for conn in daemon.connectors.values():
        conn.add_data_callback(rec)
    url = f"http://127.0.0.1:{daemon.api_port}"
    try:
        async with aiohttp.ClientSession() as session:
            async def check() -> list[Any]:
                async with session.get(url + "/ready") as r:
                    ready = (r.status, await r.json())
                async with session.get(url + "/api/v1/status") as r:
                    states = {v: s["state"] for v, s in (await r.json())["exchanges"].items()}
                return [] if ready[0] == 200 and set(states.values()) == {"connected"} else [ready, states]

            loop = asyncio.get_running_loop()
            end = loop.time() + 30.0
            while bad := await check():
                assert loop.time() < end, f"never ready: {bad}"
                await asyncio.sleep(0.2)
            end = loop.time() + 4.0  # four times trade_stale_after, every sample ready and connected
            while loop.time() < end:
                assert not (bad := await check()), bad
                await asyncio.sleep(0.2)
        assert not rec.of("binance", TradeEvent) and not rec.of("gate", TradeEvent)
        book_gaps = [e for e in rec.items if isinstance(e, ConnectionEvent) and e.detail.startswith("book")
                     and e.event in ("disconnected", "stale")]
        assert not book_gaps, book_gaps
    finally:
        await daemon.stop()
        await sim.aclose()


class FakeTime:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class BrokenBookExchange:
    """A ccxt.pro stand-in whose book watch always fails and whose trade watch returns a new trade each call."""

    built: list[BrokenBookExchange] = []
    next_id = 1

    def __init__(self, *args: Any) -> None:
        self.closed = False
        self.clients: dict[str, Any] = {}
        BrokenBookExchange.built.append(self)

    def client(self, url: str) -> Any:
        return None

    def handle_message(self, client: Any, message: Any) -> None:
        pass

    async def watch_order_book(self, symbol: str, limit: int | None = None) -> dict[str, Any]:
        await asyncio.sleep(0)
        raise ccxt.NetworkError("book service down")

    async def watch_trades(self, symbol: str) -> list[dict[str, Any]]:
        await asyncio.sleep(0)
        trade_id, BrokenBookExchange.next_id = BrokenBookExchange.next_id, BrokenBookExchange.next_id + 1
        return [{"id": str(trade_id), "timestamp": int(time.time() * 1000), "symbol": "BTC/USDT", "side": "buy",
                 "price": 100.0, "amount": 1.0, "info": {}}]

    async def close(self) -> None:
        self.closed = True


async def test_circuit_breaker_counts_per_stream_kind(tmp_path: Path) -> None:
    """A book that always fails opens the book's circuit (its client recycled each time) while the trades of the
    same symbol keep flowing on a client that is never closed, never gated and never counted as failing."""
    t, rec = FakeTime(), Recorder()
    BrokenBookExchange.built.clear()
    s = connector_settings(tmp_path, "http://127.0.0.1:9", circuit_failures=3, circuit_cooldown=30.0,
                           stale_after=1e6, connect_timeout=1e6, trade_stale_after=0.0)
    conn = ExchangeConnector("gate", s, rec, clock=t.clock, sleep=t.sleep, client_factory=BrokenBookExchange)
    await conn.subscribe_orderbook(SYMBOL)
    await conn.subscribe_trades(SYMBOL)
    await poll(lambda: bool(rec.events("gate", "circuit_open")), 10.0, "the book's circuit open")
    received, trade_feed = len(rec.of("gate", TradeEvent)), conn._streams[("trades", SYMBOL)].feed
    trade_client = trade_feed.client
    await poll(lambda: len(rec.of("gate", TradeEvent)) > received + 100, 10.0, "trades while the circuit is open")
    status = conn.get_connection_status()
    kept = trade_feed.client is trade_client and not trade_client.closed
    trade_events = [e.event for e in rec.of("gate", ConnectionEvent) if e.detail.startswith("trades")]
    await conn.disconnect()
    assert trade_events == ["connected"]
    # The fake clock jumps a whole cooldown whenever the book's feed waits it out, so the breaker cycles
    # open -> half_open (its probe in flight) -> open; either is "not closed", which is the point here.
    assert status.circuits["book"] in ("open", "half_open"), status.circuits
    assert status.circuits["trades"] == "closed" and status.state.value == "connected"
    assert kept and len(BrokenBookExchange.built) > 3  # one trade client served every trade; book clients recycled
