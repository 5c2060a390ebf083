"""A process' place in a cluster (roles collector and api; docs/scaling.md).

A collector wants the symbols of its shard (``shard`` K/N, :mod:`coby.sharding`; all configured symbols
without one) and holds a lease on each it serves (:mod:`coby.leases`): the leases it gets at start are
connected at once, a lease taken over later (failover) is connected then, a lease lost stops that
symbol's streams on every venue. An api node holds no lease; both read the cluster's status from Redis
(every collector's registration, and which symbols have no owner) for ``/api/v1/status``.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from coby.leases import Leases, cluster_status, default_collector_id
from coby.metrics import CLUSTER_UNCOVERED, LEASE_TAKEOVERS, LEASES_LOST, LEASES_OWNED, LEASES_REFUSED
from coby.models import ConnectionEvent, ConnectionEventKind, utcnow
from coby.sharding import parse_shard, shard_symbols

log = structlog.get_logger("coby.cluster")


class Cluster:
    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        s = daemon.settings
        self.settings = s
        self.id = s.collector_id or default_collector_id()
        self.shard = parse_shard(s.shard)
        self.wanted = shard_symbols(s.symbols, self.shard)
        self.leases: Leases | None = None
        self._redis: Any = None

    async def start(self) -> tuple[str, ...]:
        """Connect to Redis; a collector claims its symbols. Returns the symbols to connect now."""
        import redis.asyncio as aioredis
        s = self.settings
        self._redis = aioredis.from_url(s.cache_url, socket_connect_timeout=2, socket_timeout=2)
        if s.role != "collector":
            return ()
        self.leases = Leases(s.cache_url, self.id, self.wanted, ttl=s.lease_ttl, heartbeat=s.lease_heartbeat,
                             standby=s.standby, on_gain=self._gained, on_lose=self._lost, info=self.info)
        owned = await self.leases.start()
        if not owned and not s.standby:
            log.warning("collector_owns_nothing", collector=self.id, shard=s.shard, wanted=len(self.wanted),
                        refused=sorted(self.leases.refused))
        return tuple(sym for sym in self.wanted if sym in owned)

    async def aclose(self) -> None:
        if self.leases is not None:
            await self.leases.aclose()
        if self._redis is not None:
            redis, self._redis = self._redis, None
            try:
                await redis.aclose()
            except Exception:  # noqa: BLE001
                pass

    async def _gained(self, symbols: list[str]) -> None:
        """A takeover: the gap is recorded per venue (``disconnected``, naming the collector whose lease expired)
        before the symbol is connected here (``connected`` per stream follows, then the gap filler's outcome)."""
        pipeline = self.daemon.pipeline
        if pipeline is not None:
            await pipeline.publisher.resume()  # channels published here before continue from Redis' numbering
            now = utcnow()
            for symbol in symbols:
                before = self.leases.seen_owner.get(symbol) if self.leases is not None else None
                if before is None:  # nobody held it before (a fresh cluster, Redis back after a start without it)
                    continue
                for exchange in self.settings.exchanges:
                    await pipeline.on_event(ConnectionEvent(
                        exchange, symbol, now, ConnectionEventKind.DISCONNECTED.value,
                        f"owner {before} lost its lease (stopped or cut off); taken over by {self.id}"))
        await self.daemon.add_symbols(symbols)

    async def _lost(self, symbols: list[str], reason: str) -> None:
        await self.daemon.drop_symbols(symbols, reason)

    def info(self) -> dict:
        """This collector's registration fields (refreshed every heartbeat)."""
        d, s = self.daemon, self.settings
        venues = {}
        wall = time.time()
        for name, conn in d.connectors.items():
            st = conn.get_connection_status()
            last = st.last_message_at
            venues[name] = {"state": getattr(st.state, "value", str(st.state)), "messages": st.messages,
                            "reconnects": st.reconnects, "age_s": round(wall - last.timestamp(), 3) if last else None}
        ok, why = d.storage.ready()
        load = getattr(d, "load", None)
        if self.leases is not None:
            LEASES_OWNED.set(len(self.leases.owned))
            LEASES_REFUSED.set(len(self.leases.refused))
            LEASE_TAKEOVERS.set(self.leases.takeovers)
            LEASES_LOST.set(self.leases.lost)
        return {"role": s.role, "shard": s.shard, "exchanges": list(s.exchanges), "venues": venues,
                "api_port": d.api_port, "started_at": d.started_at,
                "health": {"storage": ok, "storage_error": why, "cache": d.cache.connected,
                           "overloaded": bool(load.overloaded) if load is not None else False},
                "lag": {"loop_lag_s": round(load.loop_lag, 4) if load is not None else None,
                        "pending_rows": d.storage.buffer.pending()}}

    async def status(self) -> dict:
        """The cluster section of /api/v1/status: this node, every collector, coverage."""
        me: dict[str, Any] = {"role": self.settings.role}
        if self.leases is not None:
            me.update({"id": self.id, "shard": self.settings.shard, "standby": self.settings.standby,
                       "symbols": sorted(self.leases.owned), "refused": dict(self.leases.refused),
                       "redis": self.leases.redis_ok})
        try:
            view = await cluster_status(self._redis, self.settings.symbols)
        except Exception as e:  # noqa: BLE001 - Redis unreachable: say so, keep the rest of the status
            return {"node": me, "error": f"redis unavailable: {e}"}
        CLUSTER_UNCOVERED.set(len(view["uncovered"]))
        return {"node": me, **view}
