"""Redis as the bus between processes (issue 19 B): Streams carry every channel from the collector that owns it
to every API node, with the collector's seqs; readers survive Redis loss, resume, and see gaps explicitly.

Real Redis (the test db, ``COBY_TEST_REDIS``), real processes where it matters (a publisher process killed
with SIGKILL), counted: every message sent arrives once, in seq order, or a gap message says which did not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from coby.cache import RedisCache, open_cache
from coby.metrics import BUS_GAPS, BUS_RECONNECTS, CACHE_ERRORS
from coby.publisher import Publisher
from tests.api_fixtures import EXCHANGES, SYMBOLS, Host, remote_api_node, serving, trade
from tests.conftest import REDIS_URL, make_settings
from tests.netproxy import TcpProxy

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
async def redis():
    r = aioredis.from_url(REDIS_URL)
    await r.flushdb()
    yield r
    await r.flushdb()
    await r.aclose()


async def drain(sub, want: int, timeout: float = 20.0, channel: str | None = None) -> list[tuple[str, dict]]:
    """Messages of ``sub`` until ``want`` arrived (of ``channel``: with a seq of ``want``) or nothing came for
    ``timeout`` s."""
    out: list[tuple[str, dict]] = []
    last: dict[str, int] = {}
    while (last.get(channel, 0) < want) if channel else len(out) < want:
        try:
            ch, payload = await asyncio.wait_for(sub.get(), timeout)
        except asyncio.TimeoutError:
            break
        out.append((ch, orjson.loads(payload)))
        last[ch] = out[-1][1].get("seq", 0)
    return out


async def start_publisher(count: int, rate: float, *channels: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "tests.bus_publisher", REDIS_URL, str(count),
                                                str(rate), *channels, env=env, cwd=str(ROOT),
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    while (line := await asyncio.wait_for(proc.stdout.readline(), 60)).strip() != b"ready":  # log lines first
        assert line, "the publisher process ended before it was ready"
    return proc


def seqs(msgs: list[tuple[str, dict]], channel: str) -> list[int]:
    return [m["seq"] for ch, m in msgs if ch == channel and m.get("type") == "update"]


async def test_two_processes_every_message_once_in_order(redis):
    """A publisher process and a reader (an API node's bus): every trade arrives once, in seq order; the
    book-like channel ends on the publisher's last state, which is also the latest state read from Redis."""
    reader = open_cache(REDIS_URL, remote=True)
    await reader.start()
    n = 3000
    try:
        sub = reader.subscribe("trades:AAA-USDT", "trades:BBB-USDT", "book:sim:AAA-USDT", maxsize=100_000)
        await asyncio.sleep(0.5)  # the reader has started on the channels (from their streams' newest entry)
        proc = await start_publisher(n, 3000, "trades:AAA-USDT", "trades:BBB-USDT")
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        msgs = await drain(sub, n, timeout=5, channel="trades:BBB-USDT")
        msgs += await drain(sub, 10**9, timeout=1)  # and whatever else came
        for ch in ("trades:AAA-USDT", "trades:BBB-USDT"):
            assert seqs(msgs, ch) == list(range(1, n + 1)), ch  # once each, in order, none missing
        books = seqs(msgs, "book:sim:AAA-USDT")
        assert books == sorted(set(books)) and books[-1] == n  # coalesced: in order, ending on the last state
        latest = await reader.get_book("sim", "AAA-USDT")
        assert latest["seq"] == n and latest["data"] == {"i": n}
        assert await redis.xlen("coby:s:book:sim:AAA-USDT") <= 4  # book-like: only the newest states kept
    finally:
        await reader.aclose()


async def test_reader_survives_redis_cut_and_reads_what_it_missed(redis):
    """The reader's Redis cut for 3 s while the publisher goes on: logged, counted, reconnected; what was
    published meanwhile arrives from the stream - once, in order, no gap."""
    proxy = await TcpProxy("127.0.0.1", 6379).start()
    url = REDIS_URL.replace("127.0.0.1:6379", f"127.0.0.1:{proxy.port}")
    reader = open_cache(url, remote=True)
    writer = RedisCache(REDIS_URL, interval=0.01)
    await reader.start()
    await writer.start()
    pub = Publisher(writer)
    reconnects = BUS_RECONNECTS._value.get()
    read_errors = CACHE_ERRORS.labels("read")._value.get()
    try:
        sub = reader.subscribe("trades:AAA-USDT", maxsize=100_000)
        await asyncio.sleep(0.3)
        sent = 0

        async def publish(count: int, pause: float) -> None:
            nonlocal sent
            for _ in range(count):
                sent += 1
                await pub.publish("trades:AAA-USDT", {"i": sent})
                await asyncio.sleep(pause)

        await publish(200, 0.001)
        proxy.cut()
        await publish(1000, 0.003)  # ~3 s without Redis on the reader's side
        proxy.restore()
        await publish(200, 0.001)
        msgs = await drain(sub, sent, timeout=10)
        assert seqs(msgs, "trades:AAA-USDT") == list(range(1, sent + 1))
        assert BUS_RECONNECTS._value.get() == reconnects + 1
        assert CACHE_ERRORS.labels("read")._value.get() > read_errors
    finally:
        await reader.aclose()
        await writer.aclose()
        await proxy.aclose()


async def test_reader_cut_beyond_the_streams_retention_gets_an_explicit_gap(redis):
    """More published during the cut than the stream keeps: the reader delivers a gap message naming the
    trimmed seqs, then the rest; delivered + gap == published, no message twice."""
    proxy = await TcpProxy("127.0.0.1", 6379).start()
    url = REDIS_URL.replace("127.0.0.1:6379", f"127.0.0.1:{proxy.port}")
    reader = open_cache(url, remote=True)
    writer = RedisCache(REDIS_URL, interval=0.01, stream_length=100)
    await reader.start()
    await writer.start()
    pub = Publisher(writer)
    gaps = BUS_GAPS._value.get()
    try:
        sub = reader.subscribe("trades:AAA-USDT", maxsize=100_000)
        await asyncio.sleep(0.3)
        for i in range(50):
            await pub.publish("trades:AAA-USDT", {"i": i})
        await asyncio.sleep(0.5)
        proxy.cut()
        for i in range(3000):
            await pub.publish("trades:AAA-USDT", {"i": i})
            if i % 100 == 0:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        proxy.restore()
        got = []
        while True:
            try:
                ch, payload = await asyncio.wait_for(sub.get(), 5)
            except asyncio.TimeoutError:
                break
            got.append(orjson.loads(payload))
            if got[-1].get("seq") == 3050:
                break
        gap = [m for m in got if m["type"] == "gap"]
        updates = [m["seq"] for m in got if m["type"] == "update"]
        assert len(gap) == 1 and gap[0]["from"] == 51 and gap[0]["channel"] == "trades:AAA-USDT"
        assert updates == list(range(1, 51)) + list(range(gap[0]["to"] + 1, 3051))
        assert 3050 - gap[0]["to"] >= 100  # what the stream kept (MAXLEN ~100: at least 100)
        assert BUS_GAPS._value.get() == gaps + 1
    finally:
        await reader.aclose()
        await writer.aclose()
        await proxy.aclose()


async def test_failover_continues_the_channels_seq_and_fences_the_old_owner(redis):
    """A publisher process killed (SIGKILL) mid-stream; another process's Publisher takes the channel over
    and numbers on from the last seq in Redis: a reader sees 1..N with no gap and no repeat. The old owner,
    were it still alive (a zombie), cannot write into the new numbering: Redis refuses its seqs (counted)."""
    reader = open_cache(REDIS_URL, remote=True)
    await reader.start()
    zombie = RedisCache(REDIS_URL, interval=0.01)
    await zombie.start()
    zpub = Publisher(zombie)
    try:
        sub = reader.subscribe("trades:AAA-USDT", maxsize=100_000)
        await asyncio.sleep(0.3)
        for i in range(10):  # the zombie owned the channel once: its numbering stops at 10
            await zpub.publish("trades:AAA-USDT", {"i": i})
        await asyncio.sleep(0.2)
        proc = await start_publisher(0, 500, "trades:AAA-USDT")  # seeded from Redis: goes on at 11
        await asyncio.sleep(1.5)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await asyncio.sleep(0.2)
        killed_at = int((await redis.xrevrange("coby:s:trades:AAA-USDT", count=1))[0][0].split(b"-")[1])
        assert killed_at > 100
        standby = RedisCache(REDIS_URL, interval=0.01)
        await standby.start()
        spub = Publisher(standby)
        await spub.resume(["trades:AAA-USDT"])  # what a takeover calls (also the default for a new channel)
        try:
            first = await spub.publish("trades:AAA-USDT", {"i": "standby"})
            assert first["seq"] == killed_at + 1
            conflicts = CACHE_ERRORS.labels("seq_conflict")._value.get()
            env = await zpub.publish("trades:AAA-USDT", {"i": "zombie"})  # seq 11: held by the stream already
            assert env["seq"] == 11
            for i in range(99):
                await spub.publish("trades:AAA-USDT", {"i": i})
            await asyncio.sleep(0.3)
            assert CACHE_ERRORS.labels("seq_conflict")._value.get() == conflicts + 1
            total = killed_at + 100
            msgs = await drain(sub, total, timeout=10)
            assert seqs(msgs, "trades:AAA-USDT") == list(range(1, total + 1))
            assert all(m["data"] != {"i": "zombie"} for _, m in msgs)
            again = await zpub.publish("trades:AAA-USDT", {"i": "zombie2"})  # told of the conflict: reseeded
            assert again["seq"] == total + 1
        finally:
            await standby.aclose()
    finally:
        await reader.aclose()
        await zombie.aclose()


async def test_streams_stay_bounded_under_a_burst(redis):
    """50,000 trades in a burst: the stream keeps about bus_stream_length of them, a book-like channel its
    last few states; Redis memory for them stays flat."""
    writer = RedisCache(REDIS_URL, interval=0.01, stream_length=1000, book_stream_length=4)
    await writer.start()
    pub = Publisher(writer)
    try:
        for i in range(50_000):
            await pub.publish("trades:AAA-USDT", {"i": i, "pad": "x" * 100})
            if i % 10 == 0:
                await pub.publish("book:sim:AAA-USDT", {"i": i}, book=("sim", "AAA-USDT"))
            if i % 5000 == 0:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        length = await redis.xlen("coby:s:trades:AAA-USDT")
        assert 1000 <= length <= 1200
        assert 1 <= await redis.xlen("coby:s:book:sim:AAA-USDT") <= 4  # coalesced per flush, then trimmed
        assert await redis.memory_usage("coby:s:trades:AAA-USDT") < 1_000_000
        assert await writer.last_seq("trades:AAA-USDT") == 50_000
    finally:
        await writer.aclose()


# --- WebSocket resume across API nodes ----------------------------------------------------------------------
async def recv_json(ws, timeout: float = 20.0) -> dict:
    msg = await asyncio.wait_for(ws.receive(), timeout)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    return orjson.loads(msg.data)



@pytest.mark.parametrize("trimmed", [False, True])
async def test_ws_client_resumes_on_a_second_api_node(tmp_path, pg, redis, trimmed):
    """A WebSocket client reads trades from API node A, disconnects, and reconnects to node B with its last
    seq: it gets what it missed (from the stream) and then the live trades, in order with no gap and no
    repeat - or, when more was missed than the stream keeps, one explicit gap message first. Its book-like
    channel starts again with the latest state (snapshot)."""
    writer = RedisCache(REDIS_URL, interval=0.01, stream_length=200 if trimmed else 5000)
    await writer.start()
    pub = Publisher(writer)
    cache_a, host_a = await remote_api_node(tmp_path, pg, "a")
    cache_b, host_b = await remote_api_node(tmp_path, pg, "b")
    trades, cons = "trades:BTC-USDT", "consolidated:BTC-USDT"
    try:
        async with serving(host_a) as a, serving(host_b) as b:
            await pub.publish(cons, {"state": 1}, latest=("consolidated", "BTC-USDT"))
            await asyncio.sleep(0.2)  # flushed to Redis
            ws = await a.ws_connect("/ws")
            await ws.send_json({"op": "subscribe", "channels": [trades, cons]})
            assert (await recv_json(ws))["type"] == "subscribed"
            assert (await recv_json(ws))["type"] == "snapshot"
            await asyncio.sleep(0.3)
            for i in range(100):
                await pub.publish(trades, {"i": i})
            seen = []
            while len(seen) < 60:  # the client goes away part way
                m = await recv_json(ws)
                if m["channel"] == trades:
                    seen.append(m["seq"])
            await ws.close()
            assert seen == list(range(1, 61))
            for i in range(100, 1000):  # published while the client is away
                await pub.publish(trades, {"i": i})
            await pub.publish(cons, {"state": 2}, latest=("consolidated", "BTC-USDT"))
            await asyncio.sleep(0.3)
            ws = await b.ws_connect("/ws")
            await ws.send_json({"op": "subscribe", "channels": [trades, cons], "resume": {trades: seen[-1]}})
            assert (await recv_json(ws))["type"] == "subscribed"

            async def live() -> None:
                await asyncio.sleep(0.2)
                for i in range(1000, 1200):
                    await pub.publish(trades, {"i": i})
                    await asyncio.sleep(0.001)

            task = asyncio.create_task(live())
            got, snapshot = [], None
            while not got or got[-1].get("seq") != 1200:
                m = await recv_json(ws)
                if m["channel"] == cons:
                    snapshot = snapshot or m
                else:
                    got.append(m)
            await task
            await ws.close()
        assert snapshot["type"] == "snapshot" and snapshot["data"] == {"state": 2}
        updates = [m["seq"] for m in got if m["type"] == "update"]
        gaps = [m for m in got if m["type"] == "gap"]
        if not trimmed:
            assert gaps == [] and updates == list(range(61, 1201))
        else:
            assert len(gaps) == 1 and got[0] is gaps[0] and gaps[0]["from"] == 61
            assert updates == list(range(gaps[0]["to"] + 1, 1201)) and gaps[0]["to"] > 61
    finally:
        for c in (cache_a, cache_b, writer):
            await c.aclose()


async def test_resume_without_history_says_gap_on_the_first_live_message(tmp_path, pg):
    """The in-process cache keeps no history: a resume whose next live message is beyond the client's last
    seq gets a gap message before it, then the stream as usual."""
    from coby.cache import MemoryCache
    cache = MemoryCache()
    await cache.start()
    settings = make_settings(tmp_path, exchanges=EXCHANGES, symbols=SYMBOLS)
    pub = Publisher(cache)
    trades = "trades:BTC-USDT"
    for i in range(10):
        await pub.publish(trades, {"i": i})
    async with serving(Host(settings, pg, cache)) as api:
        ws = await api.ws_connect("/ws")
        await ws.send_json({"op": "subscribe", "channels": [trades], "resume": {trades: 4}})
        assert (await recv_json(ws))["type"] == "subscribed"
        await asyncio.sleep(0.3)
        for i in range(3):
            await pub.publish(trades, {"i": i})
        got = [await recv_json(ws) for _ in range(4)]
        await ws.close()
    assert got[0] == {"channel": trades, "type": "gap", "from": 5, "to": 10}
    assert [m["seq"] for m in got[1:]] == [11, 12, 13]


async def test_resume_requests_are_checked(tmp_path, pg):
    """resume names channels of the same request, with an integer seq >= 0; anything else is refused."""
    from coby.cache import MemoryCache
    settings = make_settings(tmp_path, exchanges=EXCHANGES, symbols=SYMBOLS)
    async with serving(Host(settings, pg, MemoryCache())) as api:
        ws = await api.ws_connect("/ws")
        for bad in ({"trades:ETH-USDT": 1}, {"trades:BTC-USDT": -1}, {"trades:BTC-USDT": "7"}, [1]):
            await ws.send_json({"op": "subscribe", "channels": ["trades:BTC-USDT"], "resume": bad, "id": 9})
            reply = await recv_json(ws)
            assert reply["type"] == "error" and "resume" in reply["error"] and reply["id"] == 9
        await ws.close()


async def test_status_from_several_collectors_is_numbered_once_by_redis(redis):
    """``status`` is published by every collector: Redis numbers its entries, and a reader gets 1..N in
    order whatever each publisher's own count was."""
    reader = open_cache(REDIS_URL, remote=True)
    writers = [RedisCache(REDIS_URL, interval=0.01) for _ in range(2)]
    for c in (reader, *writers):
        await c.start()
    try:
        sub = reader.subscribe("status", maxsize=1000)
        await asyncio.sleep(0.3)
        pubs = [Publisher(w) for w in writers]
        for i in range(20):
            await pubs[i % 2].publish("status", {"from": i % 2}, latest=("status", "*"))
            await asyncio.sleep(0.03)  # book-like: coalesced per flush, so one per flush here
        msgs = await drain(sub, 20, timeout=3)
        got = seqs(msgs, "status")
        assert got == sorted(set(got)) and got[-1] == 20  # the stream's numbering: increasing, ends at 20
        assert await redis.xlen("coby:s:status") <= 4
    finally:
        for c in (reader, *writers):
            await c.aclose()


async def test_resume_above_the_streams_numbering_is_no_resume(tmp_path, pg, redis):
    """A client resumes with a seq the channel never reached (Redis lost its data, numbering restarted): it
    gets the live stream as it comes, not nothing."""
    writer = RedisCache(REDIS_URL, interval=0.01)
    await writer.start()
    pub = Publisher(writer)
    cache, host = await remote_api_node(tmp_path, pg, "a")
    trades = "trades:BTC-USDT"
    try:
        async with serving(host) as api:
            await pub.publish(trades, {"i": 0})
            await asyncio.sleep(0.2)
            ws = await api.ws_connect("/ws")
            await ws.send_json({"op": "subscribe", "channels": [trades], "resume": {trades: 5000}})
            assert (await recv_json(ws))["type"] == "subscribed"
            await asyncio.sleep(0.5)
            for i in range(3):
                await pub.publish(trades, {"i": i})
            got = [await recv_json(ws) for _ in range(3)]
            await ws.close()
        assert [m["seq"] for m in got] == [2, 3, 4]
    finally:
        await cache.aclose()
        await writer.aclose()


async def test_coby_run_channels_reach_another_process_with_the_same_seqs(tmp_path, redis):
    """A real ``coby run`` (role all, the simulator, Redis): another process reading its channels from Redis
    gets every trade once, in seq order from 1, and the same messages under the same seqs as a WebSocket
    client of the daemon itself (its in-process path)."""
    from tests.conftest import free_port
    port = free_port()
    env = {**os.environ, "COBY_EXCHANGES": "binance,okx", "COBY_SYMBOLS": "BTC-USDT", "COBY_SIMULATE": "1",
           "COBY_SIMULATOR_PORT": "0", "COBY_REDIS_URL": REDIS_URL, "COBY_DB_URL": f"sqlite:///{tmp_path / 'c.db'}",
           "COBY_DATA_DIR": str(tmp_path / "d"), "COBY_LOG_LEVEL": "WARNING", "API_PORT": str(port),
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    reader = open_cache(REDIS_URL, remote=True)
    await reader.start()
    trades, cons = "trades:BTC-USDT", "consolidated:BTC-USDT"
    sub = reader.subscribe(trades, cons, maxsize=100_000)
    await asyncio.sleep(0.3)  # started on the (empty) streams: from seq 1
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "coby.cli", "run", env=env, cwd=str(ROOT),
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    local: dict[int, dict] = {}
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(120):
                try:
                    ws = await s.ws_connect(f"http://127.0.0.1:{port}/ws")
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.25)
            await ws.send_json({"op": "subscribe", "channels": [trades]})
            assert (await recv_json(ws))["type"] == "subscribed"
            loop = asyncio.get_running_loop()
            end = loop.time() + 8
            while loop.time() < end:
                with contextlib.suppress(asyncio.TimeoutError):
                    m = await recv_json(ws, timeout=1)
                    local[m["seq"]] = m
            await ws.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    try:
        remote = await drain(sub, 10**9, timeout=2)
    finally:
        await reader.aclose()
    got = [m for ch, m in remote if ch == trades]
    assert len(got) > 20 and [m["seq"] for m in got] == list(range(1, len(got) + 1))  # once each, in order
    assert local
    both = [m for m in got if m["seq"] in local]
    assert len(both) == len(local)  # every message the daemon's own client got reached the other process
    assert all(local[m["seq"]] == m for m in both)  # the same message under the same seq
    books = seqs(remote, cons)
    assert books and books == sorted(set(books))


async def test_collector_started_while_redis_is_down_joins_the_streams_numbering(redis):
    """A publisher that starts while Redis is unreachable numbers from 1; when Redis is back the seqs the
    stream already holds are refused (counted, not written twice) and the numbering goes on above the
    stream's top: a reader sees one unbroken sequence."""
    old = RedisCache(REDIS_URL, interval=0.01)
    await old.start()
    opub = Publisher(old)
    for i in range(30):
        await opub.publish("trades:AAA-USDT", {"i": i})
    await old.aclose()
    reader = open_cache(REDIS_URL, remote=True)
    await reader.start()
    proxy = await TcpProxy("127.0.0.1", 6379).start()
    proxy.cut()
    url = REDIS_URL.replace("127.0.0.1:6379", f"127.0.0.1:{proxy.port}")
    new = RedisCache(url, interval=0.01)
    await new.start()
    assert not new.connected
    pub = Publisher(new)
    conflicts = CACHE_ERRORS.labels("seq_conflict")._value.get()
    try:
        sub = reader.subscribe("trades:AAA-USDT", maxsize=1000)
        await asyncio.sleep(0.3)
        for i in range(10):
            assert (await pub.publish("trades:AAA-USDT", {"i": i}))["seq"] == i + 1  # what it knows
        proxy.restore()
        for _ in range(200):
            if new.connected and CACHE_ERRORS.labels("seq_conflict")._value.get() > conflicts:
                break
            await asyncio.sleep(0.05)
        assert CACHE_ERRORS.labels("seq_conflict")._value.get() == conflicts + 10
        after = [await pub.publish("trades:AAA-USDT", {"i": i}) for i in range(5)]
        assert [e["seq"] for e in after] == [31, 32, 33, 34, 35]
        msgs = await drain(sub, 35, timeout=5, channel="trades:AAA-USDT")
        assert seqs(msgs, "trades:AAA-USDT") == [31, 32, 33, 34, 35]  # started at the top (30): no gap, no repeat
    finally:
        await new.aclose()
        await reader.aclose()
        await proxy.aclose()


async def test_reader_follows_a_stream_wiped_and_numbered_again(redis):
    """Redis wiped under a running API node and the collector restarted (numbering from 1 again): the reader
    notices the stream now ends below where it was, and reads it from its start."""
    reader = open_cache(REDIS_URL, remote=True)
    await reader.start()
    first = RedisCache(REDIS_URL, interval=0.01)
    await first.start()
    try:
        sub = reader.subscribe("trades:AAA-USDT", maxsize=1000)
        await asyncio.sleep(0.3)
        pub = Publisher(first)
        for i in range(30):
            await pub.publish("trades:AAA-USDT", {"i": i})
        assert seqs(await drain(sub, 30, timeout=5, channel="trades:AAA-USDT"), "trades:AAA-USDT")[-1] == 30
        await first.aclose()
        await redis.delete("coby:s:trades:AAA-USDT")
        first = RedisCache(REDIS_URL, interval=0.01)
        await first.start()
        pub = Publisher(first)
        for i in range(5):
            await pub.publish("trades:AAA-USDT", {"i": i})
        assert seqs(await drain(sub, 5, timeout=5, channel="trades:AAA-USDT"), "trades:AAA-USDT") == [1, 2, 3, 4, 5]
    finally:
        await first.aclose()
        await reader.aclose()


@pytest.mark.parametrize("trimmed", [False, True])
async def test_python_client_behind_a_balancer_resumes_on_the_other_node(tmp_path, pg, redis, trimmed):
    """coby's Python client behind a TCP balancer: node A's connection is cut and the balancer now sends it
    to node B; the client resubscribes with its last seqs by itself and goes on with no gap and no repeat -
    or, when the stream no longer holds what it missed, yields one Gap ("trimmed") and goes on."""
    from coby.client import CobyClient
    from coby.client_stream import Event, Gap, Reconnected
    writer = RedisCache(REDIS_URL, interval=0.01, stream_length=100 if trimmed else 5000)
    await writer.start()
    pub = Publisher(writer)
    cache_a, host_a = await remote_api_node(tmp_path, pg, "a")
    cache_b, host_b = await remote_api_node(tmp_path, pg, "b")
    trades = "trades:BTC-USDT"
    try:
        async with asyncio.timeout(60), serving(host_a) as a, serving(host_b) as b:
            balancer = await TcpProxy("127.0.0.1", a.server.port).start()
            client = CobyClient(f"http://127.0.0.1:{balancer.port}", timeout=5.0, backoff_initial=0.1,
                                backoff_max=0.3)
            items: list = []
            try:
                sub = client.stream([trades])
                it = sub.__aiter__()

                async def take(until) -> None:
                    while not until():
                        items.append(await it.__anext__())

                reader = asyncio.create_task(take(lambda: False))
                await asyncio.sleep(1.0)  # subscribed on A
                for i in range(50):
                    await pub.publish(trades, trade("BTC-USDT", "binance", i))
                while sum(isinstance(x, Event) for x in items) < 50:
                    await asyncio.sleep(0.05)
                balancer.cut()
                balancer.target = ("127.0.0.1", b.server.port)
                for i in range(50, 450):  # while the client is away
                    await pub.publish(trades, trade("BTC-USDT", "binance", i))
                await asyncio.sleep(0.3)
                balancer.restore()
                while not any(isinstance(x, Reconnected) for x in items):
                    await asyncio.sleep(0.05)
                for i in range(450, 500):
                    await pub.publish(trades, trade("BTC-USDT", "binance", i))
                while not items or not isinstance(items[-1], Event) or items[-1].seq != 500:
                    await asyncio.sleep(0.05)
                reader.cancel()
                await sub.aclose()
            finally:
                await client.aclose()
                await balancer.aclose()
        got = [x.seq for x in items if isinstance(x, Event)]
        gaps = [x for x in items if isinstance(x, Gap)]
        if not trimmed:
            assert got == list(range(1, 501)) and gaps == []
        else:
            assert len(gaps) == 1 and gaps[0].reason == "trimmed" and gaps[0].expected == 51
            assert got == list(range(1, 51)) + list(range(gaps[0].got, 501))
            assert gaps[0].missing == gaps[0].got - 51 > 0
    finally:
        for c in (cache_a, cache_b, writer):
            await c.aclose()
