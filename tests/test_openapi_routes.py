"""The OpenAPI document lists every route the app serves; requests aiohttp refuses get coby's JSON error shape."""

from __future__ import annotations

import asyncio
import json
import logging

import structlog

from coby.http import ApiServer, create_app
from coby.api.openapi import OPENAPI_KEY
from coby.replay import ReplayManager
from coby.api.replay_routes import add_replay_routes
from tests.api_fixtures import Host
from tests.conftest import free_port, make_settings

METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}  # HEAD is added by aiohttp for every GET; OPTIONS by CORS


def _app(tmp_path):
    settings = make_settings(tmp_path)
    host = Host(settings, storage=None, cache=None)
    app = create_app(host)
    add_replay_routes(app, ReplayManager(settings, None))  # as the daemon does
    return app, host


def test_every_served_route_is_in_the_document_and_nothing_else(tmp_path):
    """Each (method, path) aiohttp routes - REST, /health, /ready, /metrics, /ws, the dashboard's files, the
    replay routes - has an operation in the document, and every operation is a route served."""
    app, _ = _app(tmp_path)
    served = set()
    for route in app.router.routes():
        if route.method in METHODS:
            info = route.resource.get_info()
            path = info.get("path") or info["formatter"]
            served.add((route.method.lower(), path.replace("{path:.+}", "{path}")))
    doc = json.loads(app[OPENAPI_KEY].render())
    documented = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert served - documented == set(), "routes missing from openapi.json"
    assert documented - served == set(), "documented operations that are not served"
    for path in ("/ws", "/health", "/ready", "/metrics", "/api/v1/replay", "/api/v1/replay/{id}/ws"):
        assert path in doc["paths"]
    assert "subscribe" in doc["paths"]["/ws"]["get"]["description"]


async def test_a_request_over_the_line_limit_gets_the_json_error_and_a_client_error_log_line(tmp_path, caplog):
    """A request line over aiohttp's limit (8190 bytes) is answered 400 with {"ok": false, "error", "status",
    "request_id"} and the X-Request-ID header, and logged once at info as http_bad_request - not by aiohttp
    at error level with a traceback."""
    settings = make_settings(tmp_path, api_port=free_port())
    server = ApiServer(Host(settings, storage=None, cache=None))
    await server.start()
    try:
        capture = structlog.testing.capture_logs([structlog.contextvars.merge_contextvars])
        with capture as logs, caplog.at_level(logging.DEBUG, logger="aiohttp"):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(b"GET /api/v1/" + b"x" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n")
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), 10)
            writer.close()
    finally:
        await server.aclose()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") or head.startswith(b"HTTP/1.0 400")
    error = json.loads(body)
    assert error["ok"] is False and error["status"] == 400 and error["error"].startswith("bad request")
    assert f"X-Request-ID: {error['request_id']}".encode() in head
    assert [(e["event"], e["log_level"], e["request_id"]) for e in logs] == \
        [("http_bad_request", "info", error["request_id"])]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
