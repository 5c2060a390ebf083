"""Roles, sharding and ownership leases (coby.sharding, coby.leases, config), on the real Redis.

The leases run with short TTLs (0.6 s, heartbeat 0.15 s); every wait is bounded generously.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid

import pytest
import redis.asyncio as aioredis

from coby.config import Settings
from coby.errors import ConfigError
from coby.leases import Leases, cluster_status, lease_key
from coby.sharding import owner, parse_shard, shard_symbols

REDIS = os.environ.get("COBY_TEST_REDIS", "redis://127.0.0.1:6379/13")
SYMBOLS = [f"S{i}-USDT" for i in range(200)]


def test_shards_partition_the_symbols_and_move_little():
    parts = [set(shard_symbols(SYMBOLS, (k, 3))) for k in range(3)]
    assert set().union(*parts) == set(SYMBOLS) and sum(map(len, parts)) == len(SYMBOLS)
    assert all(40 <= len(p) <= 95 for p in parts), [len(p) for p in parts]  # roughly even
    moved = sum(1 for s in SYMBOLS if owner(s, 3) != owner(s, 4))
    assert 0.15 * len(SYMBOLS) <= moved <= 0.35 * len(SYMBOLS), moved  # ~1/4 move from 3 to 4 shards
    # every moved symbol moved to the new shard: no reshuffle among the old ones
    assert all(owner(s, 4) == 3 for s in SYMBOLS if owner(s, 3) != owner(s, 4))
    # adding a symbol moves nothing else
    more = SYMBOLS + ["NEW-USDT"]
    assert [owner(s, 3) for s in SYMBOLS] == [owner(s, 3) for s in more[:-1]]


def test_parse_shard():
    assert parse_shard("0/3") == (0, 3) and parse_shard(None) is None
    for bad in ("3/3", "x/2", "1", "-1/2", "0/0"):
        with pytest.raises(ValueError):
            parse_shard(bad)


def test_distributed_roles_need_postgres_and_redis(tmp_path):
    base = dict(data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="needs PostgreSQL"):
        Settings.load(env={}, role="collector", redis_url=REDIS, **base)
    with pytest.raises(ConfigError, match="needs Redis"):
        Settings.load(env={}, role="api", db_url="postgresql://x@127.0.0.1/db", **base)
    with pytest.raises(ConfigError, match="only a collector"):
        Settings.load(env={}, role="api", shard="0/2", db_url="postgresql://x@h/db", redis_url=REDIS, **base)
    with pytest.raises(ConfigError, match="shard"):
        Settings.load(env={}, role="collector", shard="2/2", db_url="postgresql://x@h/db", redis_url=REDIS, **base)
    ok = Settings.load(env={}, role="collector", shard="1/2", standby=True, db_url="postgresql://x@h/db",
                       redis_url=REDIS, **base)
    assert (ok.role, ok.shard, ok.standby) == ("collector", "1/2", True)


def test_cli_exits_2_with_one_line_for_sqlite_in_a_distributed_role(tmp_path):
    r = subprocess.run([sys.executable, "-c", "from coby.cli import main; main()", "run", "--role", "collector", "--data-dir", str(tmp_path),
                        "--redis", REDIS], capture_output=True, text=True, timeout=60, env={**os.environ})
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "role=collector" in lines[0] and "SQLite" in lines[0], r.stderr


@pytest.fixture
async def rds():
    r = aioredis.from_url(REDIS)
    yield r
    await r.aclose()


def _syms(n: int) -> list[str]:
    tag = uuid.uuid4().hex[:6].upper()
    return [f"L{tag}{i}-USDT" for i in range(n)]


class Log:
    def __init__(self) -> None:
        self.gained: list[str] = []
        self.lost: list[str] = []

    async def gain(self, symbols):
        self.gained += symbols

    async def lose(self, symbols, reason):
        self.lost += symbols


async def _until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_second_claim_is_refused_and_standby_takes_over_when_the_owner_dies(rds):
    syms = _syms(4)
    la, lb, ls = Log(), Log(), Log()
    a = Leases(REDIS, "a", syms, ttl=0.6, heartbeat=0.15, on_gain=la.gain, on_lose=la.lose)
    b = Leases(REDIS, "b", syms[:2], ttl=0.6, heartbeat=0.15, on_gain=lb.gain, on_lose=lb.lose)
    s = Leases(REDIS, "s", syms, ttl=0.6, heartbeat=0.15, standby=True, on_gain=ls.gain, on_lose=ls.lose)
    try:
        assert await a.start() == syms
        assert await b.start() == []
        assert b.refused == {syms[0]: "a", syms[1]: "a"}
        assert await s.start() == []
        await asyncio.sleep(1.5)  # several TTLs: the owner keeps them, nobody flaps
        assert sorted(a.owned) == sorted(syms) and not la.lost and not lb.gained and not ls.gained
        view = await cluster_status(rds, syms)
        assert view["uncovered"] == [] and set(view["owners"].values()) == {"a"}
        assert {c["id"] for c in view["collectors"]} >= {"a", "b", "s"}
        assert sorted(view["refused"]) == sorted(syms[:2])
        # the owner dies (no release, no heartbeat): its leases expire, b and the standby take them
        await a.stop_heartbeat()
        a.owned = {}
        t0 = time.monotonic()
        await _until(lambda: len(lb.gained) + len(ls.gained) == 4, 5, "taken over")
        took = time.monotonic() - t0
        assert sorted(lb.gained + ls.gained) == sorted(syms) and not set(lb.gained) & set(ls.gained)
        assert took < 0.6 + 0.15 + 1.0, took  # TTL + heartbeat (+ slack for a loaded machine)
        owners = await rds.mget([lease_key(x) for x in syms])
        assert all(o in (b"b", b"s") for o in owners)
    finally:
        for x in (a, b, s):
            await x.aclose()
    assert await rds.mget([lease_key(x) for x in syms]) == [None] * 4  # released on a clean stop


async def test_lease_taken_by_another_is_lost_and_unrefreshed_one_is_fenced(rds):
    syms = _syms(2)
    la = Log()
    a = Leases(REDIS, "a", syms, ttl=0.6, heartbeat=0.15, on_gain=la.gain, on_lose=la.lose)
    try:
        await a.start()
        await rds.set(lease_key(syms[0]), "intruder")  # e.g. a partition during which another took it
        await _until(lambda: la.lost == [syms[0]], 3, "lost")
        assert syms[0] not in a.owned and syms[1] in a.owned
        # Redis unreachable for a while: the lease is dropped locally before it could expire in Redis
        a._refresh, real = _Broken(), a._refresh
        t0 = time.monotonic()
        await _until(lambda: syms[1] in la.lost, 3, "fenced")
        assert time.monotonic() - t0 < 0.6 + 0.3
        a._refresh = real
    finally:
        await a.aclose()
    assert await rds.get(lease_key(syms[0])) == b"intruder"  # not ours: never deleted
    await rds.delete(lease_key(syms[0]))


class _Broken:
    def __call__(self, *a, **k):
        raise ConnectionError("redis unreachable")


async def test_collector_stops_a_symbol_whose_lease_another_took_and_takes_it_back_when_free(pg_url, tmp_path, rds):
    """An in-process collector (simulator, binance, 2 symbols, TTL 1 s): another id written into one symbol's
    lease (a partition during which someone else took it) stops that symbol's streams - a 'disconnected' event
    saying so, no more of its trades stored - while the other symbol flows on; once the key is free again the
    collector claims it back and the symbol flows again."""
    from coby.daemon import Daemon
    from tests.conftest import make_settings
    keys = [k async for k in rds.scan_iter("coby:*", count=1000)]
    if keys:
        await rds.delete(*keys)
    settings = make_settings(tmp_path, db_url=pg_url, redis_url=REDIS, role="collector", collector_id="solo",
                             simulate=True, simulator_port=0, api_port=0, exchanges=("binance",),
                             symbols=("BTC-USDT", "ETH-USDT"), lease_ttl=1.0, lease_heartbeat=0.25, backfill=())
    d = Daemon(settings)
    await d.start()
    try:
        d.simulator.set_rate(20.0)
        conn = d.connectors["binance"]
        await _until(lambda: conn.latest_book("BTC-USDT") is not None and conn.latest_book("ETH-USDT") is not None,
                     30, "both books")
        assert sorted(d.symbols) == ["BTC-USDT", "ETH-USDT"]
        await rds.set(lease_key("BTC-USDT"), "intruder", px=4000)
        await _until(lambda: "BTC-USDT" not in d.symbols, 3, "BTC-USDT dropped")
        assert ("book", "BTC-USDT") not in conn._streams and ("book", "ETH-USDT") in conn._streams
        await d.storage.flush()
        stored = len(await d.storage.get_trades("BTC-USDT", exchange="binance", limit=100_000))
        await asyncio.sleep(1.5)
        await d.storage.flush()
        assert len(await d.storage.get_trades("BTC-USDT", exchange="binance", limit=100_000)) == stored
        events = [e for e in await d.storage.get_connection_events(exchange="binance")
                  if e.symbol == "BTC-USDT" and e.event == "disconnected"]
        assert any("lease lost" in e.detail for e in events), events
        status = await d.cluster.status()
        assert status["owners"]["BTC-USDT"] == "intruder" and status["node"]["symbols"] == ["ETH-USDT"]
        await rds.delete(lease_key("BTC-USDT"))
        await _until(lambda: "BTC-USDT" in d.symbols, 3, "BTC-USDT claimed back")
        t0 = time.monotonic()
        await _until(lambda: (conn.latest_book("BTC-USDT") or 0) and conn._streams[("book", "BTC-USDT")].live,
                     30, "BTC-USDT flowing again")
        print(f"claimed back; flowing again after {time.monotonic() - t0:.1f} s")
    finally:
        await d.stop()
    assert await rds.get(lease_key("ETH-USDT")) is None  # released on stop


async def test_redis_down_at_start_then_up_the_collector_claims_its_symbols(rds):
    """Redis unreachable when a collector starts: it starts owning nothing (no exception); once Redis answers,
    its heartbeat claims its symbols."""
    from tests.netproxy import TcpProxy
    syms = _syms(2)
    proxy = await TcpProxy("127.0.0.1", 6379).start()
    proxy.cut()
    la = Log()
    a = Leases(REDIS.replace("127.0.0.1:6379", f"127.0.0.1:{proxy.port}"), "a", syms, ttl=0.6, heartbeat=0.15,
               on_gain=la.gain, on_lose=la.lose)
    try:
        assert await a.start() == []
        await asyncio.sleep(0.5)
        assert a.owned == {} and not la.gained
        proxy.restore()
        await _until(lambda: sorted(la.gained) == sorted(syms), 5, "claimed once Redis answers")
        assert await rds.mget([lease_key(x) for x in syms]) == [b"a", b"a"]
    finally:
        await a.aclose()
        await proxy.aclose()


async def test_an_api_node_exports_the_uncovered_symbols_at_each_scrape(pg_url, tmp_path, rds):
    """Role api with no collector running: every configured symbol is uncovered - in the status' cluster
    section and in /metrics' coby_cluster_uncovered_symbols (what CobySymbolsUncovered alerts on), read from
    Redis at the scrape; a lease appearing covers its symbol at the next scrape."""
    import aiohttp

    from coby.daemon import Daemon
    from tests.conftest import make_settings
    keys = [k async for k in rds.scan_iter("coby:*", count=1000)]
    if keys:
        await rds.delete(*keys)
    settings = make_settings(tmp_path, db_url=pg_url, redis_url=REDIS, role="api", api_port=0,
                             exchanges=("binance",), symbols=("BTC-USDT", "ETH-USDT", "SOL-USDT"))
    d = Daemon(settings)
    await d.start()

    async def uncovered(http: aiohttp.ClientSession) -> float:
        async with http.get(f"http://127.0.0.1:{d.api_port}/metrics") as r:
            text = await r.text()
        line = next(ln for ln in text.splitlines() if ln.startswith("coby_cluster_uncovered_symbols "))
        return float(line.split()[1])

    try:
        async with aiohttp.ClientSession() as http:
            assert await uncovered(http) == 3.0
            async with http.get(f"http://127.0.0.1:{d.api_port}/api/v1/status") as r:
                cluster = (await r.json())["cluster"]
            assert cluster["uncovered"] == ["BTC-USDT", "ETH-USDT", "SOL-USDT"] and cluster["collectors"] == []
            await rds.set(lease_key("ETH-USDT"), "someone", px=10_000)
            assert await uncovered(http) == 2.0
    finally:
        await d.stop()
