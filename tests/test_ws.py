"""The WebSocket protocol at /ws on the real app: snapshots, sequence numbers, the slow-client rules, limits."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from coby.api import ws as wsmod
from coby.api.hub import Hub
from coby.cache import MemoryCache
from coby.http import create_app
from coby.metrics import REGISTRY
from coby.models import ConnectionState, ConnectionStatus, utcnow
from tests.api_fixtures import (
    EXCHANGES, SYMBOLS, Host, Publisher, bar, book, consolidated, open_test_cache, serving, trade, until,
)
from tests.conftest import make_settings


def host(tmp_path, pg, cache, **kw) -> Host:
    return Host(make_settings(tmp_path, exchanges=EXCHANGES, symbols=SYMBOLS, **kw), pg, cache, {})


async def recv(ws, timeout: float = 20.0) -> dict:
    msg = await ws.receive(timeout=timeout)
    assert msg.type is WSMsgType.TEXT, (msg.type, msg.data, msg.extra)
    return msg.json()


async def request(ws, op: str, *channels: str, **kw) -> dict:
    await ws.send_json({"op": op, "channels": list(channels), **kw})
    return await recv(ws)


def counter(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_snapshot_then_updates_with_increasing_seq(tmp_path, pg, cache):
    """The first message of a book-like channel is a snapshot (the stored envelope), then updates follow with
    seq increasing by one; every message carries channel, type, ts, received and seq; trades arrive in order."""
    pub = Publisher(cache)
    ts = utcnow()
    for i in range(3):
        await pub.publish("consolidated:BTC-USDT", consolidated("BTC-USDT", 100.0 + i), ts)
        await pub.publish("book:binance:BTC-USDT", book("binance", "BTC-USDT", 100.0 + i), ts)
    async with serving(host(tmp_path, pg, cache)) as client, client.ws_connect("/ws") as ws:
        ack = await request(ws, "subscribe", "consolidated:btc-usdt", "book:Binance:BTC-USDT", "trades:BTC-USDT",
                            id=7)
        assert ack == {"type": "subscribed", "channels": ["consolidated:BTC-USDT", "book:binance:BTC-USDT",
                                                          "trades:BTC-USDT"], "id": 7}
        snaps = [await recv(ws), await recv(ws)]
        assert [(m["channel"], m["type"], m["seq"]) for m in snaps] == [
            ("consolidated:BTC-USDT", "snapshot", 3), ("book:binance:BTC-USDT", "snapshot", 3)]
        assert snaps[0]["data"]["bids"][0]["price"] == 101.5 and snaps[0]["ts"] and snaps[0]["received"]

        for i in range(5):
            await pub.publish("trades:BTC-USDT", trade("BTC-USDT", "binance", i), ts)
            await pub.publish("consolidated:BTC-USDT", consolidated("BTC-USDT", 200.0 + i), ts)
            await pub.publish("book:binance:BTC-USDT", book("binance", "BTC-USDT", 200.0 + i), ts)
            await asyncio.sleep(0)
        got: dict[str, list[dict]] = {}
        while len(got.get("trades:BTC-USDT", [])) < 5 or got.get("consolidated:BTC-USDT", [{}])[-1].get("seq") != 8 \
                or got.get("book:binance:BTC-USDT", [{}])[-1].get("seq") != 8:
            m = await recv(ws)
            got.setdefault(m["channel"], []).append(m)
        assert [m["seq"] for m in got["trades:BTC-USDT"]] == [1, 2, 3, 4, 5]
        assert [m["data"]["trade_id"] for m in got["trades:BTC-USDT"]] == [f"t{i:06d}" for i in range(5)]
        for channel in ("consolidated:BTC-USDT", "book:binance:BTC-USDT"):
            seqs = [m["seq"] for m in got[channel]]
            assert seqs == sorted(set(seqs)) and seqs[0] > 3 and seqs[-1] == 8, (channel, seqs)
        for m in (m for ms in got.values() for m in ms):
            assert m["type"] == "update" and {"channel", "seq", "ts", "received", "data"} <= m.keys()


async def test_channels_without_state_ohlcv_and_status(tmp_path, pg, cache):
    """trades have no snapshot; ohlcv's snapshot is the current bar and its updates are all delivered; status
    has a snapshot too; a channel with nothing stored yet starts with its first update."""
    pub = Publisher(cache)
    t0 = utcnow().replace(second=0, microsecond=0)
    await pub.publish("ohlcv:BTC-USDT:1m", bar("BTC-USDT", t0, 0, closed=False), t0)
    status = {"exchanges": {"binance": ConnectionStatus("binance", ConnectionState.CONNECTED)}}  # as the pipeline
    await pub.publish("status", status, None)
    async with serving(host(tmp_path, pg, cache)) as client, client.ws_connect("/ws") as ws:
        await request(ws, "subscribe", "ohlcv:BTC-USDT:1m", "status", "heatmap:ETH-USDT")
        snaps = {m["channel"]: m for m in [await recv(ws), await recv(ws)]}
        assert snaps["ohlcv:BTC-USDT:1m"]["type"] == "snapshot" and snaps["ohlcv:BTC-USDT:1m"]["seq"] == 1
        assert snaps["status"]["data"]["exchanges"]["binance"]["state"] == "connected"
        assert snaps["status"]["ts"] is None
        await ws.send_json({"op": "ping"})  # requests are handled in order: the subscribe is complete
        assert (await recv(ws))["type"] == "pong"
        for closed in (False, False, True):
            await pub.publish("ohlcv:BTC-USDT:1m", bar("BTC-USDT", t0, 0, closed=closed), t0)
        await pub.publish("heatmap:ETH-USDT", {"symbol": "ETH-USDT"}, t0)
        got = [await recv(ws) for _ in range(4)]
        bars = [m for m in got if m["channel"] == "ohlcv:BTC-USDT:1m"]
        assert [m["seq"] for m in bars] == [2, 3, 4] and bars[-1]["data"]["closed"] is True
        assert [m["type"] for m in got if m["channel"] == "heatmap:ETH-USDT"] == ["update"]


async def test_unsubscribe_and_bad_requests(tmp_path, pg):
    """Unsubscribed channels stop; bad JSON, unknown ops, unknown or malformed channels and too many subscriptions
    get an error reply naming the problem, and the connection stays usable."""
    cache = await open_test_cache("memory")
    pub = Publisher(cache)
    try:
        async with serving(host(tmp_path, pg, cache, ws_max_subscriptions=3)) as client, \
                client.ws_connect("/ws") as ws:
            await request(ws, "subscribe", "trades:BTC-USDT")
            await pub.publish("trades:BTC-USDT", trade("BTC-USDT", "okx", 1))
            assert (await recv(ws))["seq"] == 1
            assert (await request(ws, "unsubscribe", "trades:BTC-USDT"))["type"] == "unsubscribed"
            await pub.publish("trades:BTC-USDT", trade("BTC-USDT", "okx", 2))
            await ws.send_json({"op": "ping", "id": "p1"})
            assert (await recv(ws))["type"] == "pong"  # nothing of the unsubscribed channel came before it

            await ws.send_str("{not json")
            assert (await recv(ws))["error"] == "invalid JSON"
            await ws.send_bytes(b"{}")
            assert "text" in (await recv(ws))["error"]
            cases = [
                ({"op": "dance"}, "unknown op"),
                ({"op": "subscribe", "channels": "trades:BTC-USDT"}, "non-empty list"),
                ({"op": "subscribe", "channels": ["trades:DOGE-USDT"]}, "unknown symbol"),
                ({"op": "subscribe", "channels": ["book:ftx:BTC-USDT"]}, "unknown exchange"),
                ({"op": "subscribe", "channels": ["ohlcv:BTC-USDT:7m"]}, "timeframe"),
                ({"op": "subscribe", "channels": ["candles:BTC-USDT"]}, "unknown channel"),
                ({"op": "subscribe", "channels": [42]}, "string"),
                ({"op": "subscribe", "channels": ["trades:BTC-USDT", "trades:ETH-USDT", "status", "metrics:ETH-USDT"]},
                 "ws_max_subscriptions"),
            ]
            for req, needle in cases:
                await ws.send_json(req)
                reply = await recv(ws)
                assert reply["type"] == "error" and needle in reply["error"], (req, reply)
            await request(ws, "subscribe", "trades:BTC-USDT", "trades:ETH-USDT")
            reply = await request(ws, "subscribe", "status", "metrics:ETH-USDT")
            assert "too many subscriptions" in reply["error"]
            await ws.send_json({"op": "ping"})
            assert (await recv(ws))["type"] == "pong"
    finally:
        await cache.aclose()


async def test_slow_client_on_book_channels_gets_the_latest_state(tmp_path, pg, cache):
    """A client that does not read while a book-like channel changes fast is not dropped: pending states
    coalesce to the newest, which it gets once it reads again."""
    pub = Publisher(cache)
    async with serving(host(tmp_path, pg, cache, ws_queue_size=10)) as client, client.ws_connect("/ws") as ws:
        await request(ws, "subscribe", "consolidated:BTC-USDT")
        await ws.send_json({"op": "ping"})  # the subscribe is complete (nothing stored yet: no snapshot)
        assert (await recv(ws))["type"] == "pong"
        for round_ in range(40):  # far more than ws_queue_size, in bursts the pump sees at once and apart
            for _ in range(50):
                await pub.publish("consolidated:BTC-USDT", consolidated("BTC-USDT", levels=100))
            await asyncio.sleep(0)
        last = pub.seq["consolidated:BTC-USDT"]
        seqs = []
        while not seqs or seqs[-1] != last:
            m = await recv(ws)
            assert m["type"] == "update", m
            seqs.append(m["seq"])
        assert seqs == sorted(seqs) and len(seqs) < last  # states were skipped, none reordered
        await ws.send_json({"op": "ping"})
        assert (await recv(ws))["type"] == "pong"  # still connected


async def test_slow_client_on_trades_is_told_and_disconnected(tmp_path, pg, cache):
    """A client more than ws_queue_size trades behind gets every trade it was sent without a gap, then an error
    saying why, then close code 4008; a fast client on the same channel misses nothing."""
    pub = Publisher(cache)
    app_host = host(tmp_path, pg, cache, ws_queue_size=50, ws_close_timeout=60)
    before = counter("coby_ws_disconnects_total", reason="slow_consumer")
    async with serving(app_host) as client, client.ws_connect("/ws") as slow, client.ws_connect("/ws") as fast:
        await request(slow, "subscribe", "trades:BTC-USDT")
        await request(fast, "subscribe", "trades:BTC-USDT")
        fast_seqs: list[int] = []

        async def read_fast() -> None:
            async for msg in fast:
                fast_seqs.append(msg.json()["seq"])

        reader = asyncio.create_task(read_fast())
        conns = client.app[wsmod.CONNECTIONS_KEY]
        # the slow client reads nothing: its socket and the server's buffers fill, then its queue
        while not any(c.failure for c in conns.clients):
            for i in range(20):
                await pub.publish("trades:BTC-USDT", trade("BTC-USDT", "binance", i, pad=4000))
            await asyncio.sleep(0.001)
            assert pub.seq["trades:BTC-USDT"] < 20_000, "the slow client was never disconnected"
        published = pub.seq["trades:BTC-USDT"]
        await until(lambda: len(fast_seqs) == published, "the fast client to receive every trade")
        assert fast_seqs == list(range(1, published + 1))

        got = []
        while True:
            msg = await slow.receive(timeout=30)
            if msg.type is not WSMsgType.TEXT:
                break
            got.append(msg.json())
        *trades, err = got
        assert [t["seq"] for t in trades] == list(range(1, len(trades) + 1))  # no silent gap
        assert err["type"] == "error" and err["error"].startswith("slow consumer: ")
        assert "trades:BTC-USDT" in err["error"] and err["code"] == 4008
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING) and slow.close_code == 4008
        await until(lambda: counter("coby_ws_disconnects_total", reason="slow_consumer") == before + 1,
                    "the disconnect to be counted")
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def test_connection_limits_and_origin(tmp_path, pg):
    """More than ws_max_connections_per_ip connections from one address are refused (429); a browser origin
    that is neither the API's own nor listed in api_cors_origins is refused (403)."""
    cache = await open_test_cache("memory")
    try:
        async with serving(host(tmp_path, pg, cache, ws_max_connections_per_ip=2)) as client:
            async with client.ws_connect("/ws"), client.ws_connect("/ws"):
                with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                    await client.ws_connect("/ws")
                assert e.value.status == 429
            await until(lambda: not client.app[wsmod.CONNECTIONS_KEY].by_address, "the connections to be released")
            async with client.ws_connect("/ws"):
                pass
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await client.ws_connect("/ws", headers={"Origin": "https://evil.example"})
            assert e.value.status == 403
            own = f"http://{client.host}:{client.port}"
            async with client.ws_connect("/ws", headers={"Origin": own}) as ws:
                await ws.send_json({"op": "ping"})
                assert (await recv(ws))["type"] == "pong"
            r = await client.get("/ws")
            assert r.status == 400 and (await r.json())["ok"] is False
    finally:
        await cache.aclose()


async def test_replay_bus_is_served_by_the_same_protocol(tmp_path, pg):
    """A replay session's own bus (a MemoryCache) is served through ws.serve with a Hub of its own: the same
    snapshot/update protocol, the envelopes' replay field passed through untouched."""
    live = await open_test_cache("memory")
    session_bus = MemoryCache()
    await session_bus.start()
    app_host = host(tmp_path, pg, live)
    app = create_app(app_host)
    hub = Hub(session_bus)

    async def replay_ws(request: web.Request) -> web.StreamResponse:
        return await wsmod.serve(request, hub, app_host.settings)

    app.router.add_get("/replay/ws", replay_ws)
    client = TestClient(TestServer(app))
    await client.start_server()
    pub = Publisher(session_bus)
    try:
        async with client.ws_connect("/replay/ws") as ws:
            env = pub.envelope("book:okx:ETH-USDT", book("okx", "ETH-USDT"), utcnow())
            await session_bus.set_book("okx", "ETH-USDT", {**env, "replay": "s1"})
            await request(ws, "subscribe", "book:okx:ETH-USDT")
            snap = await recv(ws)
            assert (snap["type"], snap["seq"], snap["replay"]) == ("snapshot", 1, "s1")
            upd = pub.envelope("book:okx:ETH-USDT", book("okx", "ETH-USDT", 101.0), utcnow())
            await session_bus.publish("book:okx:ETH-USDT", {**upd, "replay": "s1"})
            m = await recv(ws)
            assert (m["type"], m["seq"], m["replay"]) == ("update", 2, "s1")
            await Publisher(live).publish("book:okx:ETH-USDT", book("okx", "ETH-USDT"))  # the live bus: not here
            await hub.aclose("replay session finished")  # the session ends: its clients are told, 1001
            msg = await ws.receive(timeout=20)
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED) and ws.close_code == 1001
    finally:
        await client.close()
        await session_bus.aclose()
        await live.aclose()


async def test_shutdown_closes_clients_with_going_away(tmp_path, pg):
    """Stopping the server closes every WebSocket client with code 1001 and leaves no client counted."""
    cache = await open_test_cache("memory")
    client = TestClient(TestServer(create_app(host(tmp_path, pg, cache))))
    await client.start_server()
    try:
        ws = await client.ws_connect("/ws")
        await request(ws, "subscribe", "trades:BTC-USDT", "consolidated:BTC-USDT")
        receiving = asyncio.create_task(ws.receive(timeout=20))  # a client reads while the server stops
        await client.server.close()
        msg = await receiving
        assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED) and ws.close_code == 1001
        assert len(client.app[wsmod.CONNECTIONS_KEY]) == 0
        assert client.app[wsmod.HUB_KEY].channels == 0
    finally:
        await client.close()
        await cache.aclose()
