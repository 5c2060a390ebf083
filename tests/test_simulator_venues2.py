"""The simulator's htx, kucoin, gate, bitfinex and mexc venues, checked with unmodified ccxt.pro.

One simulator per module (free port, these five venues); each test opens its own
ccxt client and closes it. Book equality is checked after ``freeze()``: ccxt's top
20 levels must equal the server's true book exactly. Fault tests assert what the
venue modules' docstrings say ccxt does.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import ccxt
import pytest
import pytest_asyncio

from coby.simulator import Simulator, UnsupportedFault
from coby.simulator.venues import bitfinex as bitfinex_venue
from coby.simulator.venues._ids import object_id
from simulator_fixtures import ccxt_client as client, book_levels, poll, unified

VENUES = ("htx", "kucoin", "gate", "bitfinex", "mexc")
SILENT_GAP = ("kucoin", "gate", "mexc")  # ccxt checks no sequence after the sync
FORGET_ON_RECONNECT = ("bitfinex", "mexc")  # ccxt keeps using the old book on a new connection
DEPTH = 20
amod = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(exchanges=VENUES, port=0, rate=30.0, seed=11)
    await simulator.start()
    yield simulator
    await simulator.aclose()


async def watch_book(ex: Any, symbol: str = "BTC/USDT", timeout: float = 10.0) -> Any:
    return await asyncio.wait_for(ex.watch_order_book(symbol), timeout)


def synced(sim: Simulator, ex: Any, exchange: str, symbol: str = "BTC-USDT", depth: int = DEPTH) -> bool:
    book = ex.orderbooks.get(unified(symbol))
    return book is not None and book_levels(book, depth) == sim.true_book(exchange, symbol, depth)


async def assert_book_synced(sim: Simulator, ex: Any, exchange: str, symbol: str = "BTC-USDT") -> None:
    """Freeze, let in-flight frames land, and compare ccxt's top 20 with the true book."""
    sim.freeze()
    try:
        with contextlib.suppress(AssertionError):
            await poll(lambda: synced(sim, ex, exchange, symbol), timeout=3.0, interval=0.02)
        assert book_levels(ex.orderbooks[unified(symbol)], DEPTH) == sim.true_book(exchange, symbol, DEPTH)
    finally:
        sim.unfreeze()


async def first_error(ex: Any, symbol: str = "BTC/USDT", attempts: int = 40) -> BaseException | None:
    """Watch until a watch raises (returned) or ``attempts`` updates passed (None)."""
    for _ in range(attempts):
        try:
            await watch_book(ex, symbol, 5)
        except ccxt.BaseError as exc:
            return exc
    return None


async def assert_hangs(ex: Any, within: float = 5.0) -> None:
    """The receive loop dies (within ``within`` s) and then no watch resolves any more."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    with contextlib.suppress(asyncio.TimeoutError):
        while True:  # frames already on the way may still resolve a watch
            await watch_book(ex, timeout=0.5)
            assert loop.time() < deadline, "ccxt's receive loop is still alive"
    with pytest.raises(asyncio.TimeoutError):
        await watch_book(ex, timeout=0.5)


async def reconnect_and_resync(sim: Simulator, ex: Any, exchange: str) -> None:
    """The recovery recipe: close and watch again; bitfinex and mexc must also forget their books
    (see test_drop_then_bitfinex_and_mexc_need_the_old_book_forgotten)."""
    await ex.close()
    if exchange in FORGET_ON_RECONNECT:
        ex.orderbooks = {}
    await watch_book(ex)
    await assert_book_synced(sim, ex, exchange)


def spy_messages(ex: Any, seen: Callable[[Any], None]) -> None:
    """Call ``seen(message)`` after ccxt handled each message of the book connection (ccxt unmodified)."""
    ws = next(c for c in ex.clients.values() if not c.url.endswith("/htx/ws"))  # htx: the /feed one
    handle = ws.on_message_callback

    def spy(c: Any, message: Any) -> None:
        handle(c, message)
        seen(message)

    ws.on_message_callback = spy


# ------------------------------------------------------------ ccxt, every venue


@amod
@pytest.mark.parametrize("exchange", VENUES)
async def test_ccxt_book_and_trades_equal_the_true_book(sim: Simulator, exchange: str) -> None:
    """Unmodified ccxt.pro gets books and trades for two symbols; frozen, its top 20 equal the true books."""
    async with client(sim, exchange, ["BTC-USDT", "ETH-USDT"]) as ex:
        for symbol in ("BTC/USDT", "ETH/USDT"):
            book = await watch_book(ex, symbol)
            assert book["bids"][0][0] < book["asks"][0][0]
            trades: list[Any] = []
            while not trades:  # bitfinex's trade snapshot can be empty
                trades = await asyncio.wait_for(ex.watch_trades(symbol), 10)
            assert trades[-1]["symbol"] == symbol and trades[-1]["side"] in ("buy", "sell")
            assert trades[-1]["price"] > 0 and trades[-1]["amount"] > 0
        for _ in range(5):  # let some deltas through before comparing
            await watch_book(ex)
        await assert_book_synced(sim, ex, exchange, "BTC-USDT")
        await assert_book_synced(sim, ex, exchange, "ETH-USDT")


@amod
async def test_kucoin_bullet_public_gives_the_ws_endpoint_and_ping_interval(sim: Simulator) -> None:
    """Without a pre-seeded URL ccxt POSTs bullet-public, connects where it says and pings at its interval."""
    async with client(sim, "kucoin") as ex:
        ex.options["urls"] = {}
        await watch_book(ex)
        (ws,) = ex.clients.values()
        assert ws.url.startswith(f"ws://127.0.0.1:{sim.port}/kucoin/endpoint?token=sim-")
        assert ws.keepAlive == 18_000
        await assert_book_synced(sim, ex, "kucoin")


@amod
async def test_bitfinex_checksum_frames_are_requested_and_match(sim: Simulator) -> None:
    """ccxt turns the checksum flag on; every `cs` frame then matches ccxt's own crc32 of its book."""
    async with client(sim, "bitfinex") as ex:
        checksums: list[int] = []
        await watch_book(ex)
        spy_messages(ex, lambda m: checksums.append(m[2]) if isinstance(m, list) and m[1:2] == ["cs"] else None)
        await poll(lambda: len(checksums) >= 5, timeout=5)
        (conn,) = sim.venues["bitfinex"].connections
        assert conn.state["flags"] & bitfinex_venue.CHECKSUM_FLAG
        assert await first_error(ex, attempts=10) is None
        await assert_book_synced(sim, ex, "bitfinex")


def test_bitfinex_checksum_formats_numbers_like_ccxt() -> None:
    """Numbers are written without exponent or trailing zeros; asks count negative; signed crc32."""
    assert [bitfinex_venue.number_to_string(x) for x in (30000.0, 0.00001, 29999.9, -1.5)] == [
        "30000", "0.00001", "29999.9", "-1.5"]
    expected = ccxt.Exchange.crc32("30000:0.5:30000.1:-0.00001", True)
    assert bitfinex_venue.book_checksum([(30000.0, 0.5)], [(30000.1, 0.00001)]) == expected


# --------------------------------------------------------------------- drop


async def drop_and_miss_updates(sim: Simulator, ex: Any, exchange: str) -> None:
    """Drop while a watch is pending (it raises NetworkError), then move the market while disconnected."""
    await watch_book(ex)
    sim.freeze()  # no delta may resolve the pending watch before the drop
    try:
        await asyncio.sleep(0.2)
        pending = asyncio.ensure_future(ex.watch_order_book("BTC/USDT"))
        await sim.inject(exchange, "drop")
        with pytest.raises(ccxt.NetworkError):
            await asyncio.wait_for(pending, 5)
    finally:
        sim.unfreeze()
    await sim.inject(exchange, "burst", count=10, symbol="BTC-USDT")  # nobody subscribed: lost


@amod
@pytest.mark.parametrize("exchange", ["htx", "kucoin", "gate"])
async def test_drop_fails_the_watch_and_a_new_watch_reconnects_and_resyncs(sim: Simulator, exchange: str) -> None:
    """`drop` closes the sockets: the pending watch raises NetworkError; the next one reconnects,
    resubscribes and resyncs (htx: new WS snapshot, kucoin: ack + REST, gate: new full snapshot)."""
    async with client(sim, exchange) as ex:
        await drop_and_miss_updates(sim, ex, exchange)
        await watch_book(ex)
        assert len(sim.venues[exchange].connections) == 1
        await assert_book_synced(sim, ex, exchange)


@amod
@pytest.mark.parametrize("exchange", FORGET_ON_RECONNECT)
async def test_drop_then_bitfinex_and_mexc_need_the_old_book_forgotten(sim: Simulator, exchange: str) -> None:
    """After a reconnect ccxt keeps its old book. bitfinex takes the new snapshot for an update of it
    and its receive loop dies (the watch hangs); mexc resets a stray book named after the ack's
    interval ('100ms') instead, skips the REST resync and applies new deltas to the stale book.
    Forgetting the books (``ex.orderbooks = {}``) before watching again recovers both."""
    async with client(sim, exchange) as ex:
        await drop_and_miss_updates(sim, ex, exchange)
        if exchange == "bitfinex":
            with pytest.raises(asyncio.TimeoutError):
                await watch_book(ex, timeout=1.0)
        else:
            book = await watch_book(ex)
            assert book["nonce"] > 0  # no error, no resync: the misses are still in the book
            sim.freeze()
            try:
                await asyncio.sleep(0.2)
                assert not synced(sim, ex, exchange, depth=100)
            finally:
                sim.unfreeze()
        await reconnect_and_resync(sim, ex, exchange)


# ---------------------------------------------------------------------- gap


@amod
async def test_htx_gap_raises_inside_the_receive_loop_and_close_recovers(sim: Simulator) -> None:
    """htx: a skipped seqNum raises ChecksumError inside handle_message, which kills the receive loop:
    the watch hangs. close + watch resubscribes, takes a new snapshot and is exact again."""
    async with client(sim, "htx") as ex:
        await watch_book(ex)
        await sim.inject("htx", "gap", symbol="BTC-USDT")
        await assert_hangs(ex)
        await reconnect_and_resync(sim, ex, "htx")


@amod
@pytest.mark.parametrize("exchange", SILENT_GAP)
async def test_gap_goes_unnoticed_and_the_book_diverges(sim: Simulator, exchange: str) -> None:
    """kucoin, gate, mexc: a lost update raises nothing, later ones apply, the book is silently wrong."""
    depth = {"gate": 50}.get(exchange, 100)
    async with client(sim, exchange) as ex:
        await watch_book(ex)
        await assert_book_synced(sim, ex, exchange)
        sim.freeze()
        try:
            for _ in range(5):  # a lost update may touch no level of the window: retry
                await sim.inject(exchange, "gap", symbol="BTC-USDT")
                await sim.inject(exchange, "burst", count=3, symbol="BTC-USDT")
                seq = sim.markets[exchange, "BTC-USDT"].seq
                await poll(lambda: ex.orderbooks["BTC/USDT"]["nonce"] == seq, timeout=3)
                if not synced(sim, ex, exchange, depth=depth):
                    break
            assert not synced(sim, ex, exchange, depth=depth)
        finally:
            sim.unfreeze()
        await watch_book(ex)  # still no error


@amod
@pytest.mark.parametrize("fault", ["gap", "bad_checksum"])
async def test_bitfinex_checksum_error_repeats_until_close(sim: Simulator, fault: str) -> None:
    """bitfinex: a lost level frame or a wrong `cs` raises ChecksumError; watching again on the same
    connection is refused as `dup` and keeps failing; close + forget the book recovers."""
    async with client(sim, "bitfinex") as ex:
        await watch_book(ex)
        await poll(lambda: any(c.state.get("flags") for c in sim.venues["bitfinex"].connections), timeout=5)
        await sim.inject("bitfinex", fault, symbol="BTC-USDT")
        assert isinstance(await first_error(ex), ccxt.ChecksumError)
        assert isinstance(await first_error(ex), ccxt.ChecksumError)
        await reconnect_and_resync(sim, ex, "bitfinex")


# ------------------------------------------------------------- other faults


@amod
@pytest.mark.parametrize("exchange", VENUES)
async def test_crossed_delta_is_seen_then_removed(sim: Simulator, exchange: str) -> None:
    """`crossed` puts a bid above the best ask in ccxt's book for one message, then the book is exact again."""
    async with client(sim, exchange) as ex:
        await watch_book(ex)
        await asyncio.sleep(0.3)  # bitfinex: the checksum flag is on
        crossed_seen: list[bool] = []

        def seen(message: Any) -> None:
            book = ex.orderbooks.get("BTC/USDT")
            if book is not None and len(book["bids"]) and len(book["asks"]):
                crossed_seen.append(book["bids"][0][0] >= book["asks"][0][0])

        spy_messages(ex, seen)
        sim.freeze()
        try:
            await asyncio.sleep(0.2)  # frames already on the way land first
            crossed_seen.clear()
            await sim.inject(exchange, "crossed", symbol="BTC-USDT")
            await poll(lambda: True in crossed_seen and crossed_seen[-1] is False, timeout=3)
        finally:
            sim.unfreeze()
        assert crossed_seen.count(True) == 1  # crossed for exactly one message, then exact again
        assert await first_error(ex, attempts=10) is None
        await assert_book_synced(sim, ex, exchange)


TRADE_KEYS: dict[str, Callable[[dict[str, Any]], Any]] = {
    # htx's own `id` is 23 digits: ccxt parses it into a float, so key on the narrow tradeId
    "htx": lambda t: t["info"]["tradeId"],
    "kucoin": lambda t: t["id"],  # a 24-hex-digit object id, not a number
    "gate": lambda t: int(t["id"]),
    "bitfinex": lambda t: int(t["id"]),
    # aggregated deals carry no id
    "mexc": lambda t: (t["timestamp"], t["price"], t["amount"]),
}


@amod
@pytest.mark.parametrize("exchange", VENUES)
async def test_duplicate_trade_is_passed_through_twice(sim: Simulator, exchange: str) -> None:
    """The resent trade shows up twice in watch_trades with the same key."""
    key = TRADE_KEYS[exchange]
    async with client(sim, exchange) as ex:
        trades: list[Any] = []
        while not trades:
            trades = await asyncio.wait_for(ex.watch_trades("BTC/USDT"), 10)
        sim.freeze()
        try:
            await asyncio.sleep(0.2)
            last = sim.markets[exchange, "BTC-USDT"].last_trade
            assert last is not None
            want = (last.ts_ms, last.price, last.size) if exchange == "mexc" else last.trade_id
            if exchange == "kucoin":
                want = object_id("BTC-USDT", last.trade_id, last.ts_ms)
            await poll(lambda: any(key(t) == want for t in ex.trades["BTC/USDT"]), 3)
            await sim.inject(exchange, "duplicate_trade", symbol="BTC-USDT")
            await poll(lambda: sum(key(t) == want for t in ex.trades["BTC/USDT"]) == 2, 3)
        finally:
            sim.unfreeze()


@amod
@pytest.mark.parametrize("exchange", VENUES)
async def test_burst_is_absorbed_and_the_book_stays_exact(sim: Simulator, exchange: str) -> None:
    """A burst of 2000 updates is delivered in order: no sequence or checksum error, book exact afterwards."""
    async with client(sim, exchange) as ex:
        await watch_book(ex)
        await asyncio.sleep(0.3)  # bitfinex: the checksum flag is on
        seq = sim.markets[exchange, "BTC-USDT"].seq
        await sim.inject(exchange, "burst", count=2000, symbol="BTC-USDT")
        assert sim.markets[exchange, "BTC-USDT"].seq >= seq + 2000
        await watch_book(ex)
        await assert_book_synced(sim, ex, exchange)
        assert await first_error(ex, attempts=3) is None


@amod
@pytest.mark.parametrize("exchange", ["htx", "bitfinex"])
async def test_stall_then_the_lost_updates_are_caught(sim: Simulator, exchange: str) -> None:
    """`stall` silences the venue; afterwards htx's seqNum check kills the receive loop and bitfinex's
    checksum raises ChecksumError. Both recover by close + watch."""
    async with client(sim, exchange) as ex:
        await watch_book(ex)
        await asyncio.sleep(0.3)  # bitfinex: the checksum flag is on
        await sim.inject(exchange, "stall", seconds=1.0)
        await asyncio.sleep(0.2)  # frames already on the way land first
        with pytest.raises(asyncio.TimeoutError):
            await watch_book(ex, timeout=0.5)
        if exchange == "htx":
            await asyncio.sleep(0.4)
            await assert_hangs(ex)
        else:
            assert isinstance(await first_error(ex), ccxt.ChecksumError)
        await reconnect_and_resync(sim, ex, exchange)


@amod
@pytest.mark.parametrize("exchange", VENUES)
async def test_malformed_frame_kills_ccxt_receive_loop_until_reconnect(sim: Simulator, exchange: str) -> None:
    """An unparsable frame (truncated JSON; htx inside gzip, mexc a broken protobuf) raises in ccxt's
    receive loop, which dies: watches hang. close + watch recovers."""
    async with client(sim, exchange) as ex:
        await watch_book(ex)
        await sim.inject(exchange, "malformed")
        await assert_hangs(ex)
        await reconnect_and_resync(sim, ex, exchange)


@amod
async def test_unsupported_faults_are_rejected(sim: Simulator) -> None:
    """Only bitfinex carries a checksum: bad_checksum is refused elsewhere."""
    for exchange in ("htx", "kucoin", "gate", "mexc"):
        with pytest.raises(UnsupportedFault):
            await sim.inject(exchange, "bad_checksum")


# ----------------------------------------------------------- raw wire checks


@amod
async def test_htx_frames_are_gzip_with_wide_trade_ids_and_pings_are_answered_by_ccxt() -> None:
    """Every htx frame is gzip JSON; trade `id` is 23 digits (`tradeId` the narrow one); the server's
    `{"ping": ts}` is answered by ccxt with `{"pong": ts}`. (A simulator of its own: fast pings.)"""
    sim = Simulator(exchanges=["htx"], port=0, rate=30.0, seed=3)
    sim.venues["htx"].ping_interval = 0.2  # type: ignore[attr-defined]
    try:
        await sim.start()
        async with aiohttp.ClientSession() as session, session.ws_connect(f"{sim.url}/htx/ws") as ws:
            await ws.send_str('{"sub":"market.btcusdt.trade.detail","id":"1"}')
            frames: list[dict[str, Any]] = []
            while not any("ch" in f for f in frames) or not any("ping" in f for f in frames):
                msg = await asyncio.wait_for(ws.receive(), 5)
                assert msg.type == aiohttp.WSMsgType.BINARY
                frames.append(json.loads(gzip.decompress(msg.data)))
        ack = next(f for f in frames if "subbed" in f)
        assert ack == {"id": "1", "status": "ok", "subbed": "market.btcusdt.trade.detail", "ts": ack["ts"]}
        trade = next(f for f in frames if "ch" in f)["tick"]["data"][0]
        assert len(str(trade["id"])) == 23 and str(trade["id"]).startswith(str(trade["tradeId"]))
        async with client(sim, "htx") as ex:
            await watch_book(ex)
            await poll(lambda: all("last_pong" in c.state for c in sim.venues["htx"].connections), timeout=3)
    finally:
        await sim.aclose()


@amod
async def test_control_frames_are_answered(sim: Simulator) -> None:
    """Keepalives and refusals on the raw wire: kucoin welcome/pong, gate spot.pong, mexc PONG,
    bitfinex info/pong/dup, and an error for an unknown symbol."""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{sim.url}/kucoin/endpoint?token=t&connectId=c1") as ws:
            assert await ws.receive_json() == {"id": "c1", "type": "welcome"}
            await ws.send_json({"id": "9", "type": "ping"})
            assert (await ws.receive_json())["type"] == "pong"
            await ws.send_json({"id": "10", "type": "subscribe", "topic": "/market/level2:NOPE-USDT", "response": True})
            assert (await ws.receive_json())["type"] == "error"
        async with session.ws_connect(f"{sim.url}/gate/ws/v4/") as ws:
            await ws.send_json({"time": 1, "channel": "spot.ping"})
            assert (await ws.receive_json())["channel"] == "spot.pong"
            await ws.send_json({"id": 2, "time": 1, "channel": "spot.obu", "event": "subscribe", "payload": ["ob.NOPE.50"]})
            assert "error" in await ws.receive_json()
        async with session.ws_connect(f"{sim.url}/mexc/ws") as ws:
            await ws.send_json({"method": "ping"})
            assert await ws.receive_json() == {"id": 0, "code": 0, "msg": "PONG"}
        async with session.ws_connect(f"{sim.url}/bitfinex/ws/2") as ws:
            assert (await ws.receive_json())["event"] == "info"
            await ws.send_json({"event": "ping", "cid": 5})
            assert (await ws.receive_json())["cid"] == 5
            sub = {"event": "subscribe", "channel": "trades", "symbol": "tBTCUST"}
            await ws.send_json(sub)
            assert (await ws.receive_json())["event"] == "subscribed"
            await ws.send_json(sub)
            frame = await ws.receive_json()
            while not isinstance(frame, dict):  # the trade snapshot and updates
                frame = await ws.receive_json()
            assert frame == {"event": "error", "msg": "subscribe: dup", "code": 10301, "channel": "trades",
                             "symbol": "tBTCUST"}
