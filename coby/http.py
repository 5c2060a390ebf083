"""The HTTP server (aiohttp, on the daemon's loop): operations routes and the API.

This module holds the server, the error boundary and the operations routes
(``/health``, ``/ready``, ``/metrics``, ``/api/v1/status``). Every error leaves as
``{"ok": false, "error": "...", "status": N}``.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from coby.codec import dumps
from coby.metrics import REGISTRY

log = structlog.get_logger("coby.http")
DAEMON_KEY: web.AppKey[Any] = web.AppKey("daemon", object)


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(data), status=status, content_type="application/json")


def error(status: int, message: str) -> web.Response:
    return json_response({"ok": False, "error": message, "status": status}, status)


@web.middleware
async def error_boundary(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error(e.status, e.reason or "error")
    except Exception as e:  # noqa: BLE001 - the one place exceptions become responses
        log.exception("http_unhandled", path=request.path)
        return error(500, f"internal error: {type(e).__name__}")


async def health(request: web.Request) -> web.Response:
    return json_response({"ok": True})


async def ready(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON_KEY]
    storage_ok = await daemon.storage.ping()
    live = [n for n, c in daemon.connectors.items() if _state(c) == "connected"]
    ok = storage_ok and (bool(live) or not daemon.connectors)
    return json_response({"ok": ok, "storage": storage_ok, "live_exchanges": live}, 200 if ok else 503)


def _state(conn: Any) -> str:
    status = conn.get_connection_status()
    return getattr(status.state, "value", str(status.state))


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def status(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON_KEY]
    venues = {name: conn.get_connection_status() for name, conn in daemon.connectors.items()}
    return json_response({
        "ok": True,
        "uptime_s": round(time.time() - daemon.started_at, 1),
        "storage": {"kind": daemon.storage.kind, "mode": daemon.storage.mode,
                    "healthy": daemon.storage.buffer.healthy, "pending_rows": daemon.storage.buffer.pending()},
        "cache": {"kind": daemon.cache.kind, "connected": daemon.cache.connected},
        "exchanges": venues,
    })


def create_app(daemon: Any) -> web.Application:
    app = web.Application(middlewares=[error_boundary])
    app[DAEMON_KEY] = daemon
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/status", status)
    return app


class ApiServer:
    """Runs ``create_app`` on ``api_host:api_port`` (port 0: any free port, read back in ``.port``)."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.app = create_app(daemon)
        self._runner: web.AppRunner | None = None
        self.port: int = daemon.settings.api_port

    async def start(self) -> None:
        s = self.daemon.settings
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=2.0)
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
