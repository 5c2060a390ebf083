"""Ownership leases: which collector serves a symbol, in Redis, with a TTL refreshed by a heartbeat.

A collector claims each symbol of its shard with ``SET coby:lease:{symbol} {collector_id} NX PX ttl``. The
claim that finds the key taken is refused: logged once (``lease_refused``, naming the owner) and listed in
the collector's status as ``refused`` - the refusing collector never connects that symbol, so there are
no double writes. Its heartbeat (a thread, owned, stopped on ``aclose``) refreshes every lease it holds every
``heartbeat`` seconds with a compare-and-set (a Lua script: PEXPIRE only while the value is still its id),
and in the same round tries again the symbols it wants but does not hold: one whose lease expired (its
owner died) is taken - that is the failover, for a standby (which wants its shard's or every symbol but
claims nothing at start) and for a collector that had refused the symbol. Nothing is ever taken from a
live owner, so ownership does not flap.

A refresh that finds the key expired and untaken (the heartbeat was late: a blocked event loop) takes it
back at once (``lease_renewed_late``) instead of dropping and reclaiming the symbol: no flapping.
A lease is lost when the refresh finds another id, or when the refresh has not succeeded for
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
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
import structlog

log = structlog.get_logger("coby.leases")

LEASE_PREFIX = "coby:lease:"
COLLECTOR_PREFIX = "coby:collector:"
COLLECTORS = "coby:collectors"

# KEYS: leases, ARGV[1] our id, ARGV[2] ttl ms; per key: 1 extended (ours), 2 taken back (it had expired and
# nobody took it: our heartbeat was late, e.g. a blocked event loop), 0 another's. All in one round trip.
_REFRESH = """
local out = {}
for i, key in ipairs(KEYS) do
  local v = redis.call('get', key)
  if v == ARGV[1] then out[i] = redis.call('pexpire', key, ARGV[2])
  elseif not v then redis.call('set', key, ARGV[1], 'PX', ARGV[2]) out[i] = 2
  else out[i] = 0 end
end
return out
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
    fields for the registration (called on the event loop every heartbeat).

    The heartbeat runs on a thread of its own with a blocking Redis client: a lease must not expire because
    the event loop is busy for a few seconds (building ccxt clients for a takeover costs that on a loaded
    machine), only because the process is gone, cut off from Redis, or its event loop has not answered for
    ``3 * ttl`` (then the leases are let go). ``on_gain`` / ``on_lose`` run on the event loop. The thread
    replaces ``owned`` / ``refused`` as whole dicts, so the loop always reads a consistent copy."""

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
        self.seen_owner: dict[str, str] = {}  # symbol -> its owner when last seen taken (the one a takeover replaces)
        self.takeovers = 0
        self.lost = 0
        self.redis_ok = False
        self.loop_seen = clock()  # the event loop's last sign of life (the stamp task)
        self._info_snapshot: dict = {}
        self._claim_failing = False
        self._redis: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._stamp_task: asyncio.Task | None = None
        self._refresh: Any = None
        self._release: Any = None

    @property
    def ttl_ms(self) -> int:
        return max(1, round(self.ttl * 1000))

    async def start(self) -> list[str]:
        """Connect, claim the wanted symbols (none for a standby), register, start the heartbeat. Returns
        the symbols now owned (the caller starts their connectors; ``on_gain`` is for later gains)."""
        import redis
        self._loop = asyncio.get_running_loop()
        self._redis = redis.Redis.from_url(self.redis_url, socket_connect_timeout=2, socket_timeout=2)
        self._refresh = self._redis.register_script(_REFRESH)
        self._release = self._redis.register_script(_RELEASE)
        self._stamp()
        gained: list[str] = []
        if not self.standby:
            try:
                gained = await asyncio.to_thread(self._claim, self.wanted)
            except Exception as e:  # noqa: BLE001 - Redis down at start: the heartbeat claims once it answers
                log.warning("leases_unavailable", collector=self.id, error=repr(e),
                            detail="owning nothing until Redis answers")
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self._register)
        self._stamp_task = self._loop.create_task(self._stamps(), name="coby-lease-stamp")
        self._thread = threading.Thread(target=self._run, name="coby-lease-heartbeat", daemon=True)
        self._thread.start()
        log.info("leases_started", collector=self.id, standby=self.standby, owned=gained,
                 refused=sorted(self.refused), wanted=len(self.wanted))
        return gained

    async def aclose(self) -> None:
        """Stop the heartbeat, release every lease still ours, deregister. Idempotent, bounded."""
        await self.stop_heartbeat()
        if self._redis is None:
            return
        try:
            await asyncio.wait_for(asyncio.to_thread(self._release_all), 5)
            log.info("leases_released", collector=self.id, symbols=sorted(self.owned))
        except Exception as e:  # noqa: BLE001 - they expire by themselves within the TTL
            log.warning("leases_release_failed", collector=self.id, error=repr(e))
        self.owned = {}
        redis, self._redis = self._redis, None
        with contextlib.suppress(Exception):
            redis.close()

    async def stop_heartbeat(self) -> None:
        """Stop refreshing (the leases then expire within the TTL unless released)."""
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
            self._thread = None
        if self._stamp_task is not None:
            self._stamp_task.cancel()
            await asyncio.gather(self._stamp_task, return_exceptions=True)
            self._stamp_task = None

    def _release_all(self) -> None:
        for symbol in list(self.owned):
            self._release(keys=[lease_key(symbol)], args=[self.id])
        self._redis.delete(COLLECTOR_PREFIX + self.id)
        self._redis.zrem(COLLECTORS, self.id)

    # --- the event loop's side ----------------------------------------------------------------------
    def _stamp(self) -> None:
        self.loop_seen = self._clock()
        if self._info is not None:
            try:
                self._info_snapshot = self._info()
            except Exception:  # noqa: BLE001 - the registration goes on with the last one
                log.exception("collector_info_failed")

    async def _stamps(self) -> None:
        while True:
            self._stamp()
            await asyncio.sleep(self.heartbeat)

    def _call(self, callback: Callable[..., Awaitable[Any]] | None, *args: Any) -> None:
        """Run ``callback(*args)`` on the event loop (from the heartbeat thread), in order, not waited for."""
        if callback is None or self._loop is None or self._loop.is_closed():
            return
        fut = asyncio.run_coroutine_threadsafe(callback(*args), self._loop)
        fut.add_done_callback(_log_failure)

    # --- the heartbeat thread -----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                self.beat()
            except Exception:  # noqa: BLE001 - the next beat tries again
                log.exception("lease_heartbeat_failed", collector=self.id)

    def beat(self) -> None:
        """One round: refresh what is ours, fence what could not be refreshed in time, claim what expired,
        register."""
        lost: list[str] = []
        owned = dict(self.owned)
        loop_silent = self._clock() - self.loop_seen
        if loop_silent > 3 * self.ttl:  # a wedged process must not hold its symbols: let them expire
            log.error("event_loop_unresponsive", collector=self.id, seconds=round(loop_silent, 1),
                      detail="leases not refreshed")
        else:
            try:
                symbols = list(owned)
                started = self._clock()
                results = self._refresh(keys=[lease_key(x) for x in symbols], args=[self.id, self.ttl_ms]) \
                    if symbols else []
                for symbol, kept in zip(symbols, results):
                    if kept:
                        if kept == 2:
                            log.warning("lease_renewed_late", collector=self.id, symbol=symbol,
                                        seconds=round(started - owned[symbol], 2))
                        owned[symbol] = started
                    else:
                        owner = self._redis.get(lease_key(symbol))
                        lost.append(symbol)
                        log.warning("lease_lost", collector=self.id, symbol=symbol,
                                    owner=owner.decode() if owner else None)
                self.redis_ok = True
            except Exception as e:  # noqa: BLE001 - Redis unreachable: fence below
                if self.redis_ok:
                    log.warning("lease_refresh_failed", collector=self.id, error=repr(e))
                self.redis_ok = False
        now = self._clock()
        for symbol, at in owned.items():
            if symbol not in lost and now - at >= self.ttl - self.heartbeat:
                lost.append(symbol)
                log.warning("lease_expired_unrefreshed", collector=self.id, symbol=symbol,
                            seconds=round(now - at, 2))
        for symbol in lost:
            owned.pop(symbol, None)
        self.owned = owned
        if lost:
            self.lost += len(lost)
            self._call(self._on_lose, lost, "lease lost")
        if self.redis_ok and loop_silent <= 3 * self.ttl:
            try:
                gained = self._claim([s for s in self.wanted if s not in self.owned and s not in lost])
                self._register()
            except Exception as e:  # noqa: BLE001 - the next beat tries again (logged once per outage)
                if not self._claim_failing:
                    log.warning("lease_claim_failed", collector=self.id, error=repr(e))
                self._claim_failing, self.redis_ok = True, False
                return
            self._claim_failing = False
            if gained:
                self.takeovers += len(gained)
                log.warning("lease_taken_over", collector=self.id, symbols=gained)
                self._call(self._on_gain, gained)

    def _claim(self, symbols: Iterable[str]) -> list[str]:
        symbols = list(symbols)
        if not symbols:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for symbol in symbols:
            pipe.set(lease_key(symbol), self.id, nx=True, px=self.ttl_ms)
        started = self._clock()
        results = pipe.execute()
        owned, refused = dict(self.owned), dict(self.refused)
        gained, taken = [], []
        for symbol, ok in zip(symbols, results):
            if ok:
                owned[symbol] = started
                refused.pop(symbol, None)
                gained.append(symbol)
            else:
                taken.append(symbol)
        if taken:
            owners = self._redis.mget([lease_key(s) for s in taken])
            for symbol, owner in zip(taken, owners):
                name = owner.decode() if owner else None
                if name == self.id:  # ours from before (a restart with the same id within the TTL)
                    owned[symbol] = started
                    refused.pop(symbol, None)
                    gained.append(symbol)
                    continue
                if name is not None:
                    self.seen_owner[symbol] = name
                if name is not None and refused.get(symbol) != name and not self.standby:
                    log.warning("lease_refused", collector=self.id, symbol=symbol, owner=name,
                                detail="another collector owns this symbol; not connecting it")
                if name is not None and not self.standby:
                    refused[symbol] = name
        self.owned, self.refused = owned, refused
        return gained

    def _register(self) -> None:
        info = {"id": self.id, "host": socket.gethostname(), "pid": os.getpid(), "standby": self.standby,
                "symbols": sorted(self.owned), "refused": dict(sorted(self.refused.items())),
                "wanted": list(self.wanted), "takeovers": self.takeovers, "leases_lost": self.lost,
                "updated_at": time.time(), **self._info_snapshot}
        expiry = int((time.time() + self.ttl) * 1000)
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(COLLECTOR_PREFIX + self.id, orjson.dumps(info, default=str), px=self.ttl_ms)
        pipe.zadd(COLLECTORS, {self.id: expiry})
        pipe.execute()


def _log_failure(fut: Any) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        log.error("lease_callback_failed", error=repr(fut.exception()))


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
