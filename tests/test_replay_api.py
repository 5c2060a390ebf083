"""Replay over HTTP: REST control of sessions and the live WebSocket protocol over a session's bus,
on the real app (``coby.http.create_app``) with the replay routes added."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from coby.cache import MemoryCache
from coby.db import open_storage
from coby.http import create_app
from coby.replay import ReplayManager
from coby.api.replay_routes import add_replay_routes
from tests.conftest import make_settings
from tests.test_replay import T0, VENUES, book, ms, store, trade


class StandIn:
    """What the HTTP layer asks of the daemon."""

    def __init__(self, settings: Any, storage: Any) -> None:
        self.settings = settings
        self.storage = storage
        self.cache = MemoryCache()
        self.connectors: dict[str, Any] = {}
        self.started_at = time.time()
        self.replay: Any = None  # the routes are added by the test, below


@pytest.fixture
async def api(tmp_path):
    """An app with the replay routes over an SQLite database holding 3 venues' trades and okx books."""
    url = f"sqlite:///{tmp_path / 'api.sqlite3'}"
    settings = make_settings(tmp_path, db_url=url, exchanges=",".join(VENUES), symbols="BTC-USDT,ETH-USDT",
                             replay_max_sessions=3, ws_queue_size=5)
    storage = open_storage(settings, url)
    await storage.start()
    await store(storage, *(trade(VENUES[i % 3], ms(10 * i), i) for i in range(300)),
                *(book("okx", ms(250 * i), i) for i in range(12)))
    manager = ReplayManager(settings, storage)
    app = create_app(StandIn(settings, storage))
    add_replay_routes(app, manager)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client, manager
    await client.close()
    await manager.aclose()
    await storage.aclose()


async def call(client: TestClient, method: str, path: str, status: int = 200, **kw: Any) -> dict:
    resp = await client.request(method, path, **kw)
    body = await resp.json()
    assert resp.status == status, body
    assert body["ok"] is (status < 400)
    if status >= 400:
        assert body["status"] == status and body["error"]
    return body


async def test_a_session_is_created_and_controlled_over_rest(api):
    """POST creates (201, Location), GET reads, start/pause/resume/seek/stop move it along; each answer
    carries the status."""
    client, _ = api
    body = await call(client, "POST", "/api/v1/replay", 201,
                      json={"start": T0.isoformat(), "end": int((T0 + timedelta(seconds=3)).timestamp() * 1000),
                            "speed": 0.5, "exchanges": ["okx"], "channels": "trades,book"})
    r = body["replay"]
    sid = r["id"]
    assert r["state"] == "created" and r["speed"] == 0.5 and r["exchanges"] == ["okx"]
    assert r["channels"] == ["trades", "book"] and r["start"] == "2026-09-21T14:14:00Z"
    assert (await call(client, "GET", f"/api/v1/replay/{sid}"))["replay"]["state"] == "created"
    assert (await call(client, "POST", f"/api/v1/replay/{sid}/start"))["replay"]["state"] == "running"
    assert (await call(client, "POST", f"/api/v1/replay/{sid}/pause"))["replay"]["state"] == "paused"
    body = await call(client, "POST", f"/api/v1/replay/{sid}/seek", json={"timestamp": "2026-09-21T14:14:02Z"})
    assert body["replay"]["position"] == "2026-09-21T14:14:02Z" and body["replay"]["state"] == "paused"
    body = await call(client, "POST", f"/api/v1/replay/{sid}/seek?timestamp={int(T0.timestamp() * 1000) + 500}")
    assert body["replay"]["position"] == "2026-09-21T14:14:00.500000Z"
    assert (await call(client, "POST", f"/api/v1/replay/{sid}/resume"))["replay"]["state"] == "running"
    assert (await call(client, "POST", f"/api/v1/replay/{sid}/stop"))["replay"]["state"] == "stopped"
    listing = await call(client, "GET", "/api/v1/replay")
    assert [x["id"] for x in listing["replays"]] == [sid]


@pytest.mark.parametrize("body, needle", [
    ({"end": "2026-09-21T15:00:00Z"}, "start"),
    ({"start": "noon", "end": "2026-09-21T15:00:00Z"}, "start"),
    ({"start": "2026-09-21T15:00:00Z", "end": "2026-09-21T14:00:00Z"}, "before"),
    ({"start": "2026-09-01T00:00:00Z", "end": "2026-12-01T00:00:00Z"}, "replay_max_range_days"),
    ({"start": 1790000040000, "end": 1790000100000, "speed": -2}, "speed"),
    ({"start": 1790000040000, "end": 1790000100000, "speed": "Infinity"}, "speed"),
    ({"start": 1790000040000, "end": 1790000100000, "speed": True}, "speed"),
    ({"start": 1790000040000, "end": 1790000100000, "exchanges": ["ftx"]}, "ftx"),
    ({"start": 1790000040000, "end": 1790000100000, "symbols": "BTC-USDT,DOGE-USDT"}, "DOGE"),
    ({"start": 1790000040000, "end": 1790000100000, "channels": ["trades", "candles"]}, "candles"),
    ({"start": 1790000040000, "end": 1790000100000, "sped": 2}, "sped"),
    ({"start": -5, "end": 1790000100000}, "start"),
])
async def test_bad_parameters_are_refused_with_400(api, body, needle):
    """Every parameter is validated; the error names it."""
    client, _ = api
    err = await call(client, "POST", "/api/v1/replay", 400, json=body)
    assert needle in err["error"]


async def test_unknown_sessions_wrong_states_and_limits_have_their_own_status(api):
    """404 for an unknown session, 409 for a request its state does not allow, 429 past the session
    limit, 400 for a body that is not a JSON object."""
    client, _ = api
    await call(client, "GET", "/api/v1/replay/nope", 404)
    await call(client, "POST", "/api/v1/replay/nope/start", 404)
    await call(client, "POST", "/api/v1/replay", 400, data=b"{not json")
    await call(client, "POST", "/api/v1/replay", 400, data=b"[1, 2]")
    body = {"start": T0.isoformat(), "end": (T0 + timedelta(seconds=3)).isoformat()}
    sid = (await call(client, "POST", "/api/v1/replay", 201, json=body))["replay"]["id"]
    await call(client, "POST", f"/api/v1/replay/{sid}/resume", 409)
    await call(client, "POST", f"/api/v1/replay/{sid}/pause", 409)
    await call(client, "POST", f"/api/v1/replay/{sid}/seek", 400)
    await call(client, "POST", f"/api/v1/replay/{sid}/seek", 400, json={"timestamp": "2026-09-21T15:00:00Z"})
    await call(client, "POST", f"/api/v1/replay/{sid}/start?now=1", 400)
    for _ in range(2):
        await call(client, "POST", "/api/v1/replay", 201, json=body)
    await call(client, "POST", "/api/v1/replay", 429, json=body)
    await call(client, "POST", f"/api/v1/replay/{sid}/stop")
    await call(client, "POST", f"/api/v1/replay/{sid}/stop", 409)
    await call(client, "GET", f"/api/v1/replay/{sid}/ws", 409)


async def _messages(ws: aiohttp.ClientWebSocketResponse, slow: bool = False) -> list[dict]:
    out = []
    async for msg in ws:
        if msg.type != aiohttp.WSMsgType.TEXT:
            break
        out.append(orjson.loads(msg.data))
        if slow and len(out) % 25 == 0:
            await asyncio.sleep(0.005)
    return out


async def test_websocket_replay_speaks_the_live_protocol_and_waits_for_a_slow_client(api):
    """Over /api/v1/replay/{id}/ws a client subscribes with the live protocol and channel names, gets
    every replayed envelope marked with the session id - 300 trades through a 5-message client queue
    at speed 0, none dropped, no slow-consumer close - and the socket closes (1001) when it ends."""
    client, manager = api
    body = {"start": T0.isoformat(), "end": (T0 + timedelta(seconds=3)).isoformat(), "speed": 0}
    sid = (await call(client, "POST", "/api/v1/replay", 201, json=body))["replay"]["id"]
    async with client.ws_connect(f"/api/v1/replay/{sid}/ws") as ws:
        await ws.send_json({"op": "subscribe", "channels": ["trades:BTC-USDT", "book:okx:BTC-USDT"], "id": 1})
        ack = await ws.receive_json()
        assert ack["type"] == "subscribed" and ack["id"] == 1
        await call(client, "POST", f"/api/v1/replay/{sid}/start")
        got = await asyncio.wait_for(_messages(ws, slow=True), 60)
        assert ws.close_code == 1001
    trades = [m for m in got if m["channel"] == "trades:BTC-USDT"]
    books = [m for m in got if m["channel"] == "book:okx:BTC-USDT"]
    assert len(trades) == 300 and len(books) == 12
    assert [m["seq"] for m in trades] == list(range(1, 301))
    assert all(m["replay"] == sid and m["type"] == "update" for m in trades + books)
    assert not [m for m in got if m.get("type") == "error"]
    assert manager.get_replay_status(sid).state.value == "finished"
