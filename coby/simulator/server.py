"""The simulator server: markets that tick, venues that speak their protocols, debug routes.

One aiohttp application serves every venue under its own prefix (``/binance/...``,
``/okx/...``) plus the control routes:

=========================================  ==========================================
``GET  /_sim/health``                      ``{"ok": true, "exchanges": [...], ...}``
``GET  /_sim/book/{exchange}/{symbol}``    the true book, ``?depth=20`` (``0`` = all)
``POST /_sim/fault/{exchange}``            ``{"fault": "gap", "symbol": "BTC-USDT"}``
``POST /_sim/freeze`` / ``/_sim/unfreeze``  stop / resume market updates
``POST /_sim/rate``                        ``{"rate": 50}`` updates per second per market
=========================================  ==========================================

Errors come back as ``{"ok": false, "error": "...", "status": N}``.

Every market ticks in its own task owned by the :class:`Simulator`, ``rate`` times
a second scaled by its symbol's activity (thin markets tick less; see
:mod:`coby.instruments`); all venues of a symbol follow its one fair value
(:mod:`coby.simulator.fair`) and stamp their events behind the local clock. Each update
goes to its venue's ``publish``, which fans it out to the subscribed connections
through their bounded queues. ``aclose()`` cancels the tasks, closes every
WebSocket and stops the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import structlog
from aiohttp import web

from coby.instruments import spec
from coby.simulator.fair import STAMP_LAG_MS, FairValue
from coby.simulator.faults import ALL_FAULTS, UnsupportedFault
from coby.simulator.market import Level, Market, wall_clock_ms
from coby.simulator.venues import ALL_EXCHANGES, Venue, venue_class

log = structlog.get_logger(__name__)

DEFAULT_SYMBOLS: tuple[str, ...] = ("BTC-USDT", "ETH-USDT")


class Simulator:
    """A local server speaking each venue's public market-data protocol."""

    def __init__(
        self,
        exchanges: Iterable[str] = ALL_EXCHANGES,
        symbols: Iterable[str] = DEFAULT_SYMBOLS,
        host: str = "127.0.0.1",
        port: int = 8765,
        rate: float = 10.0,
        seed: int = 1,
        clock: Callable[[], int] = wall_clock_ms,
        stamp_lag: bool | Mapping[str, int] = True,
    ) -> None:
        self.exchanges = tuple(exchanges)
        self.symbols = tuple(symbols)
        self.host = host
        self.port = port
        self.rate = self._check_rate(rate)
        self.seed = seed
        # One fair value per symbol, shared by every venue (each follows it with its own lag and basis).
        self.fair: dict[str, FairValue] = {sym: FairValue(sym, spec(sym), seed) for sym in self.symbols}
        # How far each venue's timestamps run behind the local clock: STAMP_LAG_MS (True), none
        # (False), or those given (e.g. {"binance": 5000}: a venue clock seconds behind ours).
        lags = dict(STAMP_LAG_MS) if stamp_lag is True else {} if stamp_lag is False else dict(stamp_lag)
        self.markets: dict[tuple[str, str], Market] = {
            (ex, sym): Market(ex, sym, seed=seed, clock=clock, fair=self.fair[sym], stamp_lag_ms=lags.get(ex, 0))
            for ex in self.exchanges for sym in self.symbols
        }
        self.venues: dict[str, Venue] = {
            ex: venue_class(ex)({sym: self.markets[ex, sym] for sym in self.symbols}, clock=clock)
            for ex in self.exchanges
        }
        self._frozen = False
        self._unfrozen = asyncio.Event()
        self._unfrozen.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None
        self._started = False
        self._closed = False

    @staticmethod
    def _check_rate(rate: float) -> float:
        rate = float(rate)
        if not 0 < rate <= 10_000:
            raise ValueError(f"rate must be in (0, 10000] updates/s, got {rate}")
        return rate

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind the server (``port=0`` picks a free port, read back in ``.port``) and start ticking."""
        if self._started:
            raise RuntimeError("simulator already started")
        self._started = True
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        loop = asyncio.get_running_loop()
        for (ex, sym) in self.markets:
            self._tasks.append(loop.create_task(self._tick(ex, sym), name=f"sim-tick-{ex}-{sym}"))
        for ex, venue in self.venues.items():
            self._tasks.append(loop.create_task(venue.run(), name=f"sim-venue-{ex}"))
        log.info("sim_started", url=self.url, exchanges=self.exchanges, symbols=self.symbols, rate=self.rate)

    async def aclose(self) -> None:
        """Stop ticking, close every WebSocket, stop the server. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        await asyncio.gather(*(v.aclose() for v in self.venues.values()), return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        log.info("sim_stopped", url=self.url)

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --------------------------------------------------------------- control

    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> None:
        """No new market updates (keepalives, acks and snapshots are still answered)."""
        self._frozen = True
        self._unfrozen.clear()

    def unfreeze(self) -> None:
        self._frozen = False
        self._unfrozen.set()

    def set_rate(self, rate: float) -> None:
        self.rate = self._check_rate(rate)

    def market(self, exchange: str, symbol: str) -> Market:
        try:
            return self.markets[exchange, symbol]
        except KeyError:
            raise KeyError(f"no market {exchange}/{symbol}") from None

    def true_book(self, exchange: str, symbol: str, depth: int | None = 20) -> tuple[list[Level], list[Level]]:
        """The server's book, (bids best first, asks best first), ``depth`` levels each (None = all)."""
        return self.market(exchange, symbol).snapshot(depth)

    async def inject(self, exchange: str, fault: str, **params: Any) -> None:
        """Inject ``fault`` into ``exchange`` (see :mod:`coby.simulator.faults`)."""
        if exchange not in self.venues:
            raise UnsupportedFault(f"exchange {exchange!r} is not simulated here")
        if fault not in ALL_FAULTS:
            raise UnsupportedFault(f"unknown fault {fault!r}; known: {', '.join(sorted(ALL_FAULTS))}")
        if fault == "burst":
            await self._burst(exchange, int(params.get("count", 1000)), params.get("symbol"))
        else:
            await self.venues[exchange].inject(fault, params)

    # ---------------------------------------------------------------- ticking

    async def _tick(self, exchange: str, symbol: str) -> None:
        market, venue = self.markets[exchange, symbol], self.venues[exchange]
        activity = market.spec.activity  # a thin market updates less often than the rate
        loop = asyncio.get_running_loop()
        jitter = random.Random(f"{self.seed}:{exchange}:{symbol}")
        next_at = loop.time() + jitter.uniform(0, 1 / (self.rate * activity))  # stagger the markets
        while True:
            if self._frozen:
                await self._unfrozen.wait()
                next_at = loop.time()
            next_at += jitter.uniform(0.8, 1.2) / (self.rate * activity)
            delay = next_at - loop.time()
            if delay < -1.0:  # far behind (e.g. after a long burst): do not catch up in a rush
                next_at, delay = loop.time(), 0.0
            await asyncio.sleep(max(0.0, delay))
            if not self._frozen:
                venue.publish(symbol, market.step())

    async def _burst(self, exchange: str, count: int, symbol: str | None) -> None:
        venue = self.venues[exchange]
        if symbol is not None and symbol not in venue.markets:
            raise UnsupportedFault(f"{exchange} does not serve {symbol!r}")
        symbols = [symbol] if symbol else list(venue.markets)
        log.info("sim_fault", venue=exchange, fault="burst", count=count, symbol=symbol)
        high_water = venue.queue_size // 2
        loop = asyncio.get_running_loop()
        patience = 2.0  # seconds of waiting for slow clients, over the whole burst
        for i in range(count):
            for sym in symbols:
                venue.publish(sym, venue.markets[sym].step())
            # Pace to the clients, but a client that stops reading cannot hold the burst for
            # long: once the patience is spent its queue overflows and it is disconnected.
            while patience > 0 and venue.max_backlog() > high_water:
                started = loop.time()
                await asyncio.sleep(0.002)
                patience -= loop.time() - started
            if i % 32 == 31:
                await asyncio.sleep(0)

    # ------------------------------------------------------------------ http

    def app(self) -> web.Application:
        app = web.Application(middlewares=[_error_middleware])
        app.add_routes(
            [
                web.get("/_sim/health", self._health),
                web.get("/_sim/book/{exchange}/{symbol}", self._book),
                web.post("/_sim/fault/{exchange}", self._fault),
                web.post("/_sim/freeze", self._freeze),
                web.post("/_sim/unfreeze", self._unfreeze),
                web.post("/_sim/rate", self._rate),
            ]
        )
        for venue in self.venues.values():
            app.add_routes(venue.routes())
        return app

    async def _health(self, request: web.Request) -> web.Response:
        return Venue.json_response(
            {
                "ok": True,
                "exchanges": list(self.exchanges),
                "symbols": list(self.symbols),
                "frozen": self._frozen,
                "rate": self.rate,
                "connections": {ex: len(v.connections) for ex, v in self.venues.items()},
                "sent": {ex: v.sent for ex, v in self.venues.items()},
                "slow_consumers": {ex: v.slow_consumers for ex, v in self.venues.items()},
            }
        )

    async def _book(self, request: web.Request) -> web.Response:
        exchange, symbol = request.match_info["exchange"], request.match_info["symbol"]
        depth = int(request.query.get("depth", "20"))
        market = self.market(exchange, symbol)
        bids, asks = market.snapshot(depth if depth > 0 else None)
        return Venue.json_response(
            {"ok": True, "exchange": exchange, "symbol": symbol, "seq": market.seq, "bids": bids, "asks": asks}
        )

    async def _fault(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body, dict) or "fault" not in body:
            raise ValueError('body must be a JSON object with a "fault" key')
        params = dict(body)
        fault = str(params.pop("fault"))
        await self.inject(request.match_info["exchange"], fault, **params)
        return Venue.json_response({"ok": True, "exchange": request.match_info["exchange"], "fault": fault})

    async def _freeze(self, request: web.Request) -> web.Response:
        self.freeze()
        return Venue.json_response({"ok": True, "frozen": True})

    async def _unfreeze(self, request: web.Request) -> web.Response:
        self.unfreeze()
        return Venue.json_response({"ok": True, "frozen": False})

    async def _rate(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body, dict) or "rate" not in body:
            raise ValueError('body must be a JSON object with a "rate" key')
        self.set_rate(float(body["rate"]))
        return Venue.json_response({"ok": True, "rate": self.rate})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place exceptions become ``{"ok": false, "error": ..., "status": N}``."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return Venue.json_response({"ok": False, "error": exc.reason, "status": exc.status}, exc.status)
    except KeyError as exc:
        return Venue.json_response({"ok": False, "error": str(exc.args[0]), "status": 404}, 404)
    except (ValueError, TypeError) as exc:  # UnsupportedFault is a ValueError
        return Venue.json_response({"ok": False, "error": str(exc), "status": 400}, 400)


async def serve(
    port: int = 8765,
    host: str = "127.0.0.1",
    exchanges: Iterable[str] = ALL_EXCHANGES,
    symbols: Iterable[str] = DEFAULT_SYMBOLS,
    rate: float = 10.0,
    seed: int = 1,
) -> None:
    """Run a simulator until cancelled (``coby simulate``)."""
    sim = Simulator(exchanges=exchanges, symbols=symbols, host=host, port=port, rate=rate, seed=seed)
    await sim.start()
    try:
        await asyncio.Event().wait()
    finally:
        await sim.aclose()
