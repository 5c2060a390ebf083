"""The daemon: builds every part from settings, owns every long-lived task, shuts down in order.

Start: storage (migrations, flusher, the retention job) -> cache -> [simulator] -> pipeline -> HTTP -> [cluster]
-> connectors (each watched by the gap filler, :mod:`coby.collector.backfill`). The role (``role``) decides which parts:
``all`` every one; ``collector`` no public API (only /health, /ready, /metrics), its symbols from its leases
(:mod:`coby.cluster`, :mod:`coby.leases`); ``api`` no simulator, pipeline, retention or connectors - live state
from Redis, history from the database.
Stop (SIGINT/SIGTERM, or ``stop()``): connectors first (no new intake), the gap filler's fetches, then the
pipeline's timers, HTTP, the write buffer (flushed; what cannot be written in time is
spilled to disk and loaded at the next start), the cache, the simulator. The whole stop
is bounded by ``shutdown_timeout``; anything still running after it is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
from typing import Any

import structlog

from coby.cache import MemoryCache, open_cache
from coby.config import Settings
from coby.eventloop import running as running_loop
from coby.db import Storage, open_storage

log = structlog.get_logger("coby.daemon")


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.storage: Storage = open_storage(settings)
        # an api node publishes nothing itself: its subscribers read the collectors' channels from Redis
        self.cache: MemoryCache = open_cache(settings.cache_url, remote=settings.role == "api",
                                             **_bus_options(settings))
        self.started_at = time.time()
        self.simulator: Any = None
        self.connectors: dict[str, Any] = {}
        self.pipeline: Any = None
        self.http: Any = None
        self.replay: Any = None
        self.retention: Any = None
        self.backfill: Any = None
        self.cluster: Any = None  # roles collector and api (coby.cluster)
        # the symbols this process connects: all configured ones (role all), its leases (collector), none (api)
        self.symbols: tuple[str, ...] = tuple(settings.symbols) if settings.role == "all" else ()
        from coby.collector.load import LoadGovernor
        self.load = LoadGovernor(settings, self._slow_down)  # fed every second by the HTTP monitor
        self._tasks: list[asyncio.Task] = []
        self._stopping = asyncio.Event()
        self._stopped = False

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the parts of this process' role (``role``: all, collector or api; docs/scaling.md)."""
        s = self.settings
        log.info("daemon_starting", role=s.role, storage=self.storage.kind, cache=self.cache.kind,
                 exchanges=list(s.exchanges), symbols=list(s.symbols), shard=s.shard, standby=s.standby,
                 simulate=s.simulate, event_loop=running_loop())
        from coby.db.tables import TABLES
        from coby.metrics import preset
        preset(s.exchanges, TABLES)  # every venue's and table's series exist from the start, at 0
        await self.storage.start()
        if self.collects:
            from coby.db.retention import Retention
            self.retention = Retention(self.storage)  # old rows deleted off the hot path (SQLite, plain PostgreSQL)
            self.retention.start()
        await self.cache.start()
        if self.collects:
            if s.simulate:
                await self._start_simulator()
            await self._start_pipeline()
        await self._start_http()
        if self.collects:
            await self._start_connectors()  # built and started, no symbol yet: the costly part before any lease
        if s.role != "all":
            await self._start_cluster()
        await self.add_symbols(self.symbols)
        log.info("daemon_started", role=s.role, storage_mode=self.storage.mode,
                 api=f"http://{s.api_host}:{self.api_port}", symbols=list(self.symbols))

    @property
    def collects(self) -> bool:
        """Whether this process connects venues and writes (roles all and collector)."""
        return self.settings.role != "api"

    @property
    def serves(self) -> bool:
        """Whether this process serves the public API (roles all and api)."""
        return self.settings.role != "collector"

    @property
    def api_port(self) -> int:
        return getattr(self.http, "port", self.settings.api_port) if self.http else self.settings.api_port

    async def _start_simulator(self) -> None:
        from coby.simulator.server import Simulator
        self.simulator = Simulator(exchanges=self.settings.exchanges, symbols=self.settings.symbols,
                                   port=self.settings.simulator_port)
        await self.simulator.start()
        # port 0 picks a free port: the connectors must be pointed at the one it got
        self.settings = dataclasses.replace(self.settings, simulator_port=self.simulator.port)
        log.info("simulator_started", url=self.simulator.url)

    async def _start_pipeline(self) -> None:
        from coby.pipeline import Pipeline
        self.pipeline = Pipeline(self.settings, self.storage, self.cache)
        await self.pipeline.start()
        self._tasks.append(asyncio.get_running_loop().create_task(self._publish_status(), name="coby-status"))

    async def _publish_status(self) -> None:
        """The venues' status, every second, on the ``status`` channel (and as the latest status)."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await self.pipeline.publish_status(
                    {name: conn.get_connection_status() for name, conn in self.connectors.items()})
            except Exception:  # noqa: BLE001 - logged; the next second tries again
                log.exception("status_publish_failed")

    async def _start_http(self) -> None:
        from coby.http import ApiServer
        self.http = ApiServer(self, public=self.serves)
        if self.serves:
            from coby.replay import ReplayManager
            from coby.api.replay_routes import add_replay_routes
            if self.replay is None:
                self.replay = ReplayManager(self.settings, self.storage)
            add_replay_routes(self.http.app, self.replay)  # /api/v1/replay...: sessions over this daemon's storage
        await self.http.start()

    async def _start_cluster(self) -> None:
        """Roles collector and api: the cluster's view (coby.cluster); a collector also claims its symbols."""
        from coby.cluster import Cluster
        self.cluster = Cluster(self)
        self.symbols = await self.cluster.start()

    async def _start_connectors(self) -> None:
        from coby.collector.backfill import Backfill
        from coby.exchanges import ExchangeConnector
        if self.pipeline is not None:
            self.backfill = Backfill(self.settings, self.storage, self.pipeline, load=self.load)
        for exchange in self.settings.exchanges:
            conn = ExchangeConnector(exchange, self.settings)
            if self.pipeline is not None:  # books normalised when the pipeline needs them (coby.pendingbook)
                conn.add_data_callback(self.pipeline.on_event, lazy_books=True)
            self.connectors[exchange] = conn
            if self.backfill is not None:
                self.backfill.attach(conn)  # fills the gaps of its trade streams from the venue's history
            await conn.connect()

    async def add_symbols(self, symbols: list[str] | tuple[str, ...]) -> None:
        """Connect ``symbols`` on every venue (at start, and when a collector takes a symbol over)."""
        if self._stopped:
            return
        for conn in self.connectors.values():
            for symbol in symbols:
                await conn.subscribe_orderbook(symbol)
                await conn.subscribe_trades(symbol)
        self.symbols = tuple(dict.fromkeys((*self.symbols, *symbols)))

    async def drop_symbols(self, symbols: list[str], reason: str) -> None:
        """Stop ``symbols`` on every venue (a collector that lost their leases)."""
        await asyncio.gather(*(conn.unsubscribe(sym, reason) for conn in self.connectors.values() for sym in symbols))
        self.symbols = tuple(s for s in self.symbols if s not in symbols)

    def _slow_down(self, slowdown: Any) -> None:
        """A new degradation level (coby.collector.load): the pipeline's and the connectors' intervals."""
        if self.pipeline is not None:
            self.pipeline.slow_down(slowdown.publish, slowdown.aggregate)
        for conn in self.connectors.values():
            conn.emit_interval = self.settings.book_emit_interval * slowdown.emit

    def request_stop(self) -> None:
        self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        """Stop in order, each step bounded; idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        budget = self.settings.shutdown_timeout
        deadline = time.monotonic() + budget
        log.info("daemon_stopping")

        async def step(name: str, coro: Any) -> None:
            remaining = max(0.5, deadline - time.monotonic())
            try:
                await asyncio.wait_for(coro, remaining)
            except asyncio.TimeoutError:
                log.error("shutdown_step_timeout", step=name)
            except Exception as e:  # noqa: BLE001 - keep stopping the rest
                log.error("shutdown_step_failed", step=name, error=repr(e))

        await asyncio.gather(*(step(f"connector:{n}", c.disconnect()) for n, c in self.connectors.items()))
        if self.cluster is not None:
            await step("cluster", self.cluster.aclose())  # leases released: a standby takes over at once
        if self.backfill is not None:
            await step("backfill", self.backfill.aclose())
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.replay is not None:
            await step("replay", self.replay.aclose())
        if self.pipeline is not None:
            await step("pipeline", self.pipeline.aclose())
        if self.http is not None:
            await step("http", self.http.aclose())
        if self.retention is not None:
            await step("retention", self.retention.aclose())
        await step("storage", self.storage.aclose())
        await step("cache", self.cache.aclose())
        if self.simulator is not None:
            await step("simulator", self.simulator.aclose())
        log.info("daemon_stopped", pending_rows=self.storage.buffer.pending())


def _bus_options(settings: Settings) -> dict[str, Any]:
    """The Redis cache's stream lengths (``open_cache``'s options; none for the in-process cache)."""
    if not settings.cache_url:
        return {}
    return {"stream_length": settings.bus_stream_length, "book_stream_length": settings.bus_book_stream_length}


async def run(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM; return the process exit code."""
    daemon = Daemon(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, daemon.request_stop)
    try:
        await daemon.start()
        await daemon.wait_stopped()
    finally:
        await daemon.stop()
    return 0
