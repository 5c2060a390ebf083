"""Ownership leases: which collector serves a symbol, in Redis, with a TTL refreshed by a heartbeat.

A collector claims each symbol of its shard with ``SET coby:lease:{symbol} {collector_id} NX PX ttl``. The
claim that finds the key taken is refused: logged once (``lease_refused``, naming the owner) and listed in
the collector's status as ``refused`` - the refusing collector never connects that symbol, so there are
no double writes. Its heartbeat task (owned, cancelled on ``aclose``) refreshes every lease it holds every
``heartbeat`` seconds with a compare-and-set (a Lua script: PEXPIRE only while the value is still its id),
and in the same round tries again the symbols it wants but does not hold: one whose lease expired (its
owner died) is taken - that is the failover, for a standby (which wants its shard's or every symbol but
claims nothing at start) and for a collector that had refused the symbol. Nothing is ever taken from a
live owner, so ownership does not flap.

A lease is lost when the refresh finds another id (or no key), or when the refresh has not succeeded for
``ttl - heartbeat`` seconds on the local monotonic clock (Redis unreachable: the key may expire while we
cannot tell, so the collector stops the symbol first - it fences itself before anyone else may claim).
``on_lose`` stops the symbol's connectors; ``on_gain`` starts them. A clean stop deletes its leases (again
compare-and-set), so a standby takes over at its next heartbeat instead of after the TTL.

The same heartbeat registers the collector: ``coby:collector:{id}`` (JSON: id, host, pid, shard, symbols,
venues, health, lag; TTL ``ttl``) and its id in the sorted set ``coby:collectors`` (score: expiry, ms).
:func:`cluster_status` reads them back for any process: every live collector and the coverage.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
import structlog

log = structlog.get_logger("coby.leases")

LEASE_PREFIX = "coby:lease:"
COLLECTOR_PREFIX = "coby:collector:"
COLLECTORS = "coby:collectors"

# KEYS[1] lease, ARGV[1] our id, ARGV[2] ttl ms: extend only while it is ours.
_REFRESH = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS[1] lease, ARGV[1] our id: delete only while it is ours.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def lease_key(symbol: str) -> str:
    return LEASE_PREFIX + symbol


def default_collector_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Leases:
    """One collector's leases and registration. ``wanted``: the symbols it may own (its shard, or all).
    ``standby``: claim nothing at start, only what expires later. ``info()``: the collector's status
    fields for the registration (called every heartbeat)."""

    def __init__(self, redis_url: str, collector_id: str, wanted: Iterable[str], *, ttl: float, heartbeat: float,
                 standby: bool = False, on_gain: Callable[[list[str]], Awaitable[Any]] | None = None,
                 on_lose: Callable[[list[str], str], Awaitable[Any]] | None = None,
                 info: Callable[[], dict] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.redis_url = redis_url
        self.id = collector_id
        self.wanted = tuple(wanted)
        self.ttl, self.heartbeat, self.standby = ttl, heartbeat, standby
        self._on_gain, self._on_lose, self._info = on_gain, on_lose, info
        self._clock = clock
        self.owned: dict[str, float] = {}  # symbol -> monotonic time of the last successful claim/refresh
        self.refused: dict[str, str] = {}  # symbol -> the owner that holds it
        self.takeovers = 0
        self.lost = 0
        self.redis_ok = False
        self._redis: Any = None
        self._task: asyncio.Task | None = None
        self._refresh: Any = None
        self._release: Any = None

    @property
    def ttl_ms(self) -> int:
        return max(1, round(self.ttl * 1000))

    async def start(self) -> list[str]:
        """Connect, claim the wanted symbols (none for a standby), register, start the heartbeat. Returns
        the symbols now owned (the caller starts their connectors; ``on_gain`` is for later gains)."""
        import redis.asyncio as aioredis
        self._redis = aioredis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=2)
        self._refresh = self._redis.register_script(_REFRESH)
        self._release = self._redis.register_script(_RELEASE)
        gained: list[str] = []
        if not self.standby:
            gained = await self._claim(self.wanted)
        with contextlib.suppress(Exception):
            await self._register()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="coby-lease-heartbeat")
        log.info("leases_started", collector=self.id, standby=self.standby, owned=gained,
                 refused=sorted(self.refused), wanted=len(self.wanted))
        return gained

    async def aclose(self) -> None:
        """Stop the heartbeat, release every lease still ours, deregister. Idempotent, bounded."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._redis is None:
            return
        try:
            async with asyncio.timeout(3):
                for symbol in list(self.owned):
                    await self._release(keys=[lease_key(symbol)], args=[self.id])
                await self._redis.delete(COLLECTOR_PREFIX + self.id)
                await self._redis.zrem(COLLECTORS, self.id)
            log.info("leases_released", collector=self.id, symbols=sorted(self.owned))
        except Exception as e:  # noqa: BLE001 - they expire by themselves within the TTL
            log.warning("leases_release_failed", collector=self.id, error=repr(e))
        self.owned.clear()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._redis.aclose(), 2)
        self._redis = None

    # --- the heartbeat --------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            try:
                await self.beat()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the next beat tries again
                log.exception("lease_heartbeat_failed", collector=self.id)

    async def beat(self) -> None:
        """One round: refresh what is ours, fence what could not be refreshed in time, claim what expired,
        register."""
        lost: list[str] = []
        try:
            for symbol in list(self.owned):
                started = self._clock()
                if await self._refresh(keys=[lease_key(symbol)], args=[self.id, self.ttl_ms]):
                    self.owned[symbol] = started
                else:
                    owner = await self._redis.get(lease_key(symbol))
                    lost.append(symbol)
                    log.warning("lease_lost", collector=self.id, symbol=symbol,
                                owner=owner.decode() if owner else None)
            self.redis_ok = True
        except Exception as e:  # noqa: BLE001 - Redis unreachable: fence below
            if self.redis_ok:
                log.warning("lease_refresh_failed", collector=self.id, error=repr(e))
            self.redis_ok = False
        now = self._clock()
        for symbol, at in list(self.owned.items()):
            if symbol not in lost and now - at >= self.ttl - self.heartbeat:
                lost.append(symbol)
                log.warning("lease_expired_unrefreshed", collector=self.id, symbol=symbol,
                            seconds=round(now - at, 2))
        if lost:
            for symbol in lost:
                self.owned.pop(symbol, None)
            self.lost += len(lost)
            if self._on_lose is not None:
                await self._on_lose(lost, "lease lost")
        if self.redis_ok:
            gained = await self._claim([s for s in self.wanted if s not in self.owned and s not in lost])
            if gained:
                self.takeovers += len(gained)
                log.warning("lease_taken_over", collector=self.id, symbols=gained)
                if self._on_gain is not None:
                    await self._on_gain(gained)
            await self._register()

    async def _claim(self, symbols: Iterable[str]) -> list[str]:
        symbols = list(symbols)
        if not symbols:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for symbol in symbols:
                pipe.set(lease_key(symbol), self.id, nx=True, px=self.ttl_ms)
            started = self._clock()
            results = await pipe.execute()
        gained, taken = [], []
        for symbol, ok in zip(symbols, results):
            if ok:
                self.owned[symbol] = started
                self.refused.pop(symbol, None)
                gained.append(symbol)
            else:
                taken.append(symbol)
        if taken:
            owners = await self._redis.mget([lease_key(s) for s in taken])
            for symbol, owner in zip(taken, owners):
                name = owner.decode() if owner else None
                if name == self.id:  # ours from before (a restart with the same id within the TTL)
                    self.owned[symbol] = started
                    self.refused.pop(symbol, None)
                    gained.append(symbol)
                    continue
                if name is not None and self.refused.get(symbol) != name and not self.standby:
                    log.warning("lease_refused", collector=self.id, symbol=symbol, owner=name,
                                detail="another collector owns this symbol; not connecting it")
                if name is not None and not self.standby:
                    self.refused[symbol] = name
        return gained

    async def _register(self) -> None:
        info = {"id": self.id, "host": socket.gethostname(), "pid": os.getpid(), "standby": self.standby,
                "symbols": sorted(self.owned), "refused": dict(sorted(self.refused.items())),
                "wanted": list(self.wanted), "takeovers": self.takeovers, "leases_lost": self.lost,
                "updated_at": time.time()}
        if self._info is not None:
            info.update(self._info())
        expiry = int((time.time() + self.ttl) * 1000)
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(COLLECTOR_PREFIX + self.id, orjson.dumps(info, default=str), px=self.ttl_ms)
            pipe.zadd(COLLECTORS, {self.id: expiry})
            await pipe.execute()


async def cluster_status(redis: Any, symbols: Iterable[str]) -> dict:
    """Every live collector (its registration) and the coverage of ``symbols``: owner per symbol, uncovered.
    ``redis``: a redis.asyncio client."""
    symbols = list(symbols)
    now_ms = int(time.time() * 1000)
    await redis.zremrangebyscore(COLLECTORS, "-inf", now_ms - 60_000)  # forget long-gone ids
    ids = [i.decode() for i in await redis.zrangebyscore(COLLECTORS, now_ms, "+inf")]
    raw = await redis.mget([COLLECTOR_PREFIX + i for i in ids]) if ids else []
    collectors = [orjson.loads(r) for r in raw if r is not None]
    owners = await redis.mget([lease_key(s) for s in symbols]) if symbols else []
    coverage = {s: (o.decode() if o else None) for s, o in zip(symbols, owners)}
    refused = sorted({s for c in collectors for s in c.get("refused", {})})
    return {"collectors": sorted(collectors, key=lambda c: c["id"]), "owners": coverage,
            "uncovered": [s for s, o in coverage.items() if o is None], "refused": refused,
            "covered": sum(1 for o in coverage.values() if o is not None), "symbols": len(symbols)}
