"""The HTTP server (aiohttp, on the daemon's loop): middleware, operations routes, and the API's assembly.

Here: the server, the middleware chain and the operations routes (``/health``,
``/ready``, ``/metrics``, ``/api/v1/openapi.json``). The REST routes are in
``coby.api.rest``, the WebSocket protocol in ``coby.api.ws``, the OpenAPI document in
``coby.api.openapi``.

Middleware, outermost first: the request's correlation id (``request_id``: the client's
``X-Request-ID`` when it sends a sane one, else a new one; bound to every log line the request
causes, WebSocket connections included, returned in the ``X-Request-ID`` header and in JSON error
bodies) and its one log line; request metrics; CORS (closed unless ``api_cors_origins``
lists the origin); the bearer token (``api_token``: required on every route but
/health); the error boundary, the one place an exception becomes
``{"ok": false, "error": "...", "status": N}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
import time
import uuid
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from coby.api import dashboard, rest as api, ws
from coby.api.params import ApiError, json_response
from coby.api.rest import CLIENT_COUNT_KEY, DAEMON_KEY, RATES_KEY, FeedRates
from coby.errors import StorageError
from coby.metrics import (
    EXCHANGE_CONNECTED, FEED_AGE, HTTP_REQUESTS, LOOP_LAG, REGISTRY, REPLAY_SESSIONS, REPLAY_SESSIONS_MAX,
)
from coby.api.openapi import OPENAPI_KEY, Document

__all__ = ["ApiServer", "DAEMON_KEY", "create_app", "error", "json_response"]

log = structlog.get_logger("coby.http")
MONITOR_KEY: web.AppKey[Any] = web.AppKey("monitor", object)


REQUEST_ID_HEADER = "X-Request-ID"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
REQUEST_ID_KEY: web.RequestKey[str] = web.RequestKey("request_id", str)
QUIET_PATHS = frozenset({"/health", "/ready", "/metrics"})  # scrapes and probes: logged at debug


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    """The API's error: ``{"ok": false, "error", "status"}``, plus the ``request_id`` that
    ``request_context`` bound for the request being answered (the one the log lines carry)."""
    body: dict[str, Any] = {"ok": False, "error": message, "status": status}
    request_id = structlog.contextvars.get_contextvars().get("request_id")
    if request_id is not None:
        body["request_id"] = request_id
    resp = json_response(body, status)
    if headers:
        resp.headers.update(headers)
    return resp


def new_request_id(given: str | None = None) -> str:
    """The client's id when it is sane (letters, digits, ``._:-``, at most 128), else a new one."""
    if given is not None and _SANE_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex[:16]


# --- middleware -------------------------------------------------------------------------------
@web.middleware
async def request_context(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bind ``request_id`` for everything this request (or WebSocket connection) logs; one log line per
    request with its outcome. The header is set as the response is prepared (``_echo_request_id``), so a
    WebSocket's upgrade response and a streamed one carry it too."""
    request_id = new_request_id(request.headers.get(REQUEST_ID_HEADER))
    request[REQUEST_ID_KEY] = request_id
    started = time.perf_counter()
    ids = {"request_id": request_id}
    if request.path.startswith("/api/v1/replay/") and "id" in request.match_info:
        ids["replay_id"] = request.match_info["id"]  # a replay session's control, status or WebSocket
    with structlog.contextvars.bound_contextvars(**ids):
        status = 500
        try:
            resp = await handler(request)
            status = resp.status
            return resp
        finally:
            quiet = request.path in QUIET_PATHS or request.path.startswith("/static/")
            (log.debug if quiet and status < 400 else log.info)(
                "http_request", method=request.method, path=request.path[:200], status=status,
                remote=request.remote, ms=round((time.perf_counter() - started) * 1000, 1))


async def _echo_request_id(request: web.Request, response: web.StreamResponse) -> None:
    request_id = request.get(REQUEST_ID_KEY)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id


@web.middleware
async def count_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    resp = await handler(request)
    info = request.match_info
    route = info.route.resource.canonical if info.route.resource is not None else "unmatched"
    HTTP_REQUESTS.labels(route, str(resp.status)).inc()
    return resp


@web.middleware
async def cors(request: web.Request, handler: Any) -> web.StreamResponse:
    """Closed by default: only origins in api_cors_origins get CORS headers (and pass a preflight)."""
    origin = request.headers.get("Origin")
    allowed = request.app[DAEMON_KEY].settings.api_cors_origins
    ok = origin is not None and ("*" in allowed or origin in allowed)
    if request.method == "OPTIONS" and origin is not None and "Access-Control-Request-Method" in request.headers:
        if not ok:
            return error(403, "origin not allowed (api_cors_origins)")
        return web.Response(status=204, headers={
            "Access-Control-Allow-Origin": origin, "Vary": "Origin",
            "Access-Control-Allow-Methods": "GET, POST, OPTIONS",  # POST: replay control
            "Access-Control-Allow-Headers": "Authorization, Content-Type, X-Request-ID",
            "Access-Control-Max-Age": "600"})
    resp = await handler(request)
    if ok and not resp.prepared:
        resp.headers["Access-Control-Allow-Origin"] = origin  # type: ignore[assignment]
        resp.headers["Access-Control-Expose-Headers"] = REQUEST_ID_HEADER
        resp.headers["Vary"] = "Origin"
    return resp


OPEN_PATHS = frozenset({"/health", "/"})


@web.middleware
async def bearer_token(request: web.Request, handler: Any) -> web.StreamResponse:
    """When api_token is set, every route but /health and the dashboard's files needs
    ``Authorization: Bearer TOKEN``.

    A WebSocket upgrade may carry it as ``?token=`` instead (browsers cannot set headers on one).
    The dashboard's own files hold no data; the page sends the token (from its ``?token=``) with
    every API call and WebSocket it makes.
    """
    token = request.app[DAEMON_KEY].settings.api_token
    path = request.path
    if token and path not in OPEN_PATHS and not path.startswith("/static/"):
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer":
            given = ""
        if not given and request.headers.get("Upgrade", "").lower() == "websocket":
            given = request.query.get("token", "")
        if not hmac.compare_digest(given.strip().encode(), token.encode()):
            return error(401, "missing or wrong bearer token" if given else "bearer token required",
                         {"WWW-Authenticate": 'Bearer realm="coby"'})
    return await handler(request)


@web.middleware
async def error_boundary(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as e:
        return error(e.status, e.message)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        if e.status == 404:
            return error(404, f"no route {request.method} {request.path[:100]}")
        if e.status == 405:  # keep Allow (RFC 9110)
            return error(405, f"method {request.method} not allowed on {request.path[:100]}",
                         {"Allow": e.headers.get("Allow", "GET, HEAD")})
        return error(e.status, e.reason or "error")
    except StorageError as e:
        log.warning("http_storage_error", path=request.path, error=str(e))
        return error(503, "storage unavailable")
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception as e:  # noqa: BLE001 - the one place exceptions become responses
        log.exception("http_unhandled", path=request.path)
        return error(500, f"internal error: {type(e).__name__}")


# --- operations routes ------------------------------------------------------------------------
async def health(request: web.Request) -> web.Response:
    return json_response({"ok": True})


async def ready(request: web.Request) -> web.Response:
    """Ready: storage can write (database up, journal writable and not too far behind) and at least one
    venue is connected (a process without connectors, serving from storage and Redis only, needs
    storage alone; an API node also Redis; a collector holding no symbol, a standby, needs no venue),
    and the daemon is not overloaded (coby.collector.load). The body says why not."""
    daemon = request.app[DAEMON_KEY]
    storage_ok, why = daemon.storage.ready()
    live = [n for n, c in daemon.connectors.items() if _state(c) == "connected"]
    # a process without connectors (an api node), or a collector holding no symbol (a standby), needs storage alone
    ok = storage_ok and (bool(live) or not daemon.connectors or not getattr(daemon, "symbols", True))
    load = getattr(daemon, "load", None)
    if load is not None and load.overloaded:
        ok = False
    body = {"ok": ok, "storage": storage_ok, "live_exchanges": live}
    if getattr(daemon.settings, "role", "all") == "api":  # an API node's live data is all in Redis
        body["cache"] = daemon.cache.connected
        body["ok"] = ok = ok and daemon.cache.connected
    if load is not None:
        body["overloaded"] = load.overloaded
        if load.overloaded:
            body["overload"] = load.reasons or [f"recovering (level {load.level})"]
    if why is not None:
        body["storage_error"] = why
    return json_response(body, 200 if ok else 503)


def _state(conn: Any) -> str:
    status = conn.get_connection_status()
    return getattr(status.state, "value", str(status.state))


async def metrics(request: web.Request) -> web.Response:
    cluster = getattr(request.app[DAEMON_KEY], "cluster", None)
    if cluster is not None:  # roles collector and api: the cluster's coverage read now (coby_cluster_uncovered_symbols)
        try:
            await cluster.status()
        except Exception:  # noqa: BLE001 - a Redis hiccup must not fail the scrape; the status route says why
            log.warning("cluster_status_failed", exc_info=True)
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_document(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI_KEY].render(), content_type="application/json")


# --- the monitor: event-loop lag, feed rates and ages -------------------------------------------
class Monitor:
    """An owned task: every ``interval`` it measures how late its sleep woke (event-loop lag); every
    second it samples the connectors' message counters (status messages/s), their feed ages and
    states, and the number of active replay sessions."""

    def __init__(self, daemon: Any, rates: FeedRates, interval: float = 0.1) -> None:
        self.daemon = daemon
        self.rates = rates
        self.interval = interval
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.run(), name="coby-http-monitor")

    async def aclose(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        lags: list[float] = []
        window = loop.time()
        while True:
            before = loop.time()
            await asyncio.sleep(self.interval)
            now = loop.time()
            lags.append(max(0.0, now - before - self.interval))
            if now - window >= 1.0:
                LOOP_LAG.set(max(lags))
                window = now
                self.sample(lags)
                lags = []

    def sample(self, lags: list[float] | None = None) -> None:
        counts, wall = {}, time.time()
        for name, conn in self.daemon.connectors.items():
            try:
                st = conn.get_connection_status()
            except Exception:  # noqa: BLE001 - a connector's trouble must not stop the monitor
                log.exception("status_sample_failed", exchange=name)
                continue
            counts[name] = st.messages
            EXCHANGE_CONNECTED.labels(name).set(1 if getattr(st.state, "value", st.state) == "connected" else 0)
            if st.last_message_at is not None:
                FEED_AGE.labels(name).set(max(0.0, wall - st.last_message_at.timestamp()))
        self.rates.sample(time.monotonic(), counts)
        load = getattr(self.daemon, "load", None)
        if load is not None:
            self._observe(load, lags or [], counts)
        replay = getattr(self.daemon, "replay", None)
        if replay is not None:
            REPLAY_SESSIONS.set(replay.active_count())
            REPLAY_SESSIONS_MAX.set(replay.settings.replay_max_sessions)


    def _observe(self, load: Any, lags: list[float], counts: dict[str, int]) -> None:
        """Hand the governor (coby.collector.load) this second's sample; its decision must not stop the monitor."""
        try:
            load.sample(time.monotonic(), lags, counts, getattr(self.daemon, "pipeline", None),
                        getattr(self.daemon, "storage", None))
        except Exception:  # noqa: BLE001
            log.exception("load_observe_failed")


# --- assembly -------------------------------------------------------------------------------------
def create_app(daemon: Any, public: bool = True) -> web.Application:
    """The whole HTTP surface for ``daemon`` (anything with .settings, .storage, .cache, .connectors,
    .started_at): ops routes, REST, /ws on the daemon's cache, the OpenAPI document. ``public=False``
    (a collector): the ops routes alone - /health, /ready, /metrics."""
    app = web.Application(middlewares=[request_context, count_requests, cors, bearer_token, error_boundary],
                          client_max_size=64 * 1024)
    app.on_response_prepare.append(_echo_request_id)
    app[DAEMON_KEY] = daemon
    rates = FeedRates()
    app[RATES_KEY] = rates
    app[OPENAPI_KEY] = Document(daemon.settings)  # other modules may extend it (coby.api.openapi.Document)
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    if public:
        app.router.add_get("/api/v1/openapi.json", openapi_document)
        api.add_routes(app)
        app[CLIENT_COUNT_KEY] = ws.add_routes(app, ws.Hub(daemon.cache))
        dashboard.add_routes(app)  # GET / and /static/...: the web dashboard (coby/api/web/)
    monitor = Monitor(daemon, rates)
    app[MONITOR_KEY] = monitor

    async def start_monitor(app: web.Application) -> None:
        monitor.start()

    async def stop_monitor(app: web.Application) -> None:
        await monitor.aclose()

    app.on_startup.append(start_monitor)
    app.on_cleanup.append(stop_monitor)
    return app


class _RequestHandler(web.RequestHandler):
    """aiohttp's protocol handler, with coby's error shape for the requests aiohttp refuses before any
    route or middleware sees them (a request line or header over the line limit, a malformed request):
    ``{"ok": false, "error", "status", "request_id"}``, logged as a client error - not as an
    exception with a traceback, which aiohttp does by default. Server errors keep aiohttp's way."""

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        request_id = new_request_id()
        detail = (message or str(exc) or "bad request").strip().splitlines()[0]
        detail = detail.split(": bytearray(", 1)[0][:200]  # aiohttp quotes the offending bytes: not worth echoing
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            log.info("http_bad_request", status=status, remote=request.remote, error=detail)
            resp = error(status, f"bad request: {detail}", {REQUEST_ID_HEADER: request_id})
        resp.force_close()
        return resp


class _Server(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


class _AppRunner(web.AppRunner):
    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # the same server, handing out _RequestHandler
        return server


class ApiServer:
    """Runs ``create_app`` on ``api_host:api_port`` (port 0: any free port, read back in ``.port``)."""

    def __init__(self, daemon: Any, public: bool = True) -> None:
        self.daemon = daemon
        self.app = create_app(daemon, public)
        self._runner: web.AppRunner | None = None
        self.port: int = daemon.settings.api_port

    async def start(self) -> None:
        s = self.daemon.settings
        self._runner = _AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, s.api_host, s.api_port)
        await site.start()
        server = site._server  # the bound socket tells the real port when api_port is 0
        if server is not None and server.sockets:  # type: ignore[union-attr]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def aclose(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
