"""Replay over REST: create sessions and control them; their data flows over WebSocket.

    POST /api/v1/replay                     {"start", "end", "speed"?, "exchanges"?, "symbols"?, "channels"?}
    POST /api/v1/replay/{id}/start|pause|resume|stop
    POST /api/v1/replay/{id}/seek           {"timestamp": T}   (or ?timestamp=T)
    GET  /api/v1/replay/{id}                the session's status
    GET  /api/v1/replay                     every session's status
    GET  /api/v1/replay/{id}/ws             the live WebSocket protocol over the session's bus

Times are RFC 3339 / ISO 8601 (naive means UTC) or epoch milliseconds; ``speed`` is a finite
number >= 0 (1 real time, 0 as fast as the slowest reader); exchanges and symbols must be
configured ones; channels are kinds (``trades``, ``book``, ``consolidated``, ``heatmap``,
``metrics``, ``ohlcv``, ``status``, ``gap``, ``replay``) or full channel names. Parameters may
come as a JSON object body or as query parameters (not both for one name); an unknown one is
an error. Every answer is ``{"ok": true, "replay": {...status...}}`` or the API's error
``{"ok": false, "error", "status"}``: 400 bad parameter, 404 unknown session, 409 wrong
state (e.g. resume while running), 429 too many sessions.
"""

from __future__ import annotations

from typing import Any, Callable

import orjson
from aiohttp import web

from coby.api import replay_ws
from coby.api.params import ApiError, json_response, parse_time as api_time
from coby.models import ReplayState, utc_from_ms
from coby.api.openapi import OPENAPI_KEY, REF
from coby.replay import ReplayError, ReplayManager, check_speed

MANAGER_KEY: web.AppKey[ReplayManager] = web.AppKey("replay_manager", ReplayManager)
_CREATE = ("start", "end", "speed", "exchanges", "symbols", "channels")
_MAX_MS = 253402300799999  # 9999-12-31T23:59:59.999Z


async def _params(request: web.Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The request's parameters from its JSON body and query string, unknown names refused."""
    params: dict[str, Any] = {}
    for key in request.query.keys():
        if key in params:
            raise ApiError(400, f"parameter {key} given more than once")
        params[key] = request.query[key]
    if request.can_read_body:
        raw = await request.read()
        if raw.strip():
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise ApiError(400, "the body is not valid JSON") from None
            if not isinstance(body, dict):
                raise ApiError(400, "the body must be a JSON object")
            for key, value in body.items():
                if key in params:
                    raise ApiError(400, f"parameter {key} given both in the query and in the body")
                params[key] = value
    unknown = [k for k in params if k not in allowed]
    if unknown:
        raise ApiError(400, f"unknown parameter {unknown[0][:40]!r}; allowed: {', '.join(allowed) or 'none'}")
    return params


def _time(name: str, value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        if not 0 <= value <= _MAX_MS:
            raise ApiError(400, f"invalid {name} {value}: out of range")
        return utc_from_ms(value)
    if isinstance(value, str):
        return api_time(name, value)
    raise ApiError(400, f"invalid {name}: use RFC 3339 (2024-05-01T12:00:00Z) or epoch milliseconds")


def _names(name: str, value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= 100 for v in value):
        raise ApiError(400, f"invalid {name}: a list of names or one comma-separated string")
    if len(value) > 100:
        raise ApiError(400, f"invalid {name}: at most 100 names")
    return value


def _speed(value: Any) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ApiError(400, f"invalid speed {value[:40]!r}: a finite number >= 0") from None
    if not isinstance(value, (int, float)):
        raise ApiError(400, "invalid speed: a finite number >= 0")
    try:
        return check_speed(value)
    except ReplayError as e:
        raise ApiError(400, f"invalid {e}") from None


def _manager(request: web.Request) -> ReplayManager:
    return request.app[MANAGER_KEY]


def _ok(manager: ReplayManager, session_id: str, status: int = 200) -> web.Response:
    return json_response({"ok": True, "replay": manager.session(session_id).describe()}, status)


async def _call(fn: Callable, *args: Any) -> Any:
    """Run a manager call; its refusals become API errors with their status."""
    try:
        result = fn(*args)
        if hasattr(result, "__await__"):
            result = await result
        return result
    except ReplayError as e:
        raise ApiError(getattr(e, "status", 400), str(e)) from None


async def create(request: web.Request) -> web.Response:
    """POST /api/v1/replay: a new session (created, not started)."""
    p = await _params(request, _CREATE)
    for required in ("start", "end"):
        if required not in p:
            raise ApiError(400, f"missing parameter {required}")
    manager = _manager(request)
    sid = await _call(manager.create_replay_session, _time("start", p["start"]), _time("end", p["end"]),
                      _speed(p.get("speed", 1.0)), _names("exchanges", p.get("exchanges")),
                      _names("symbols", p.get("symbols")), _names("channels", p.get("channels")))
    resp = _ok(manager, sid, 201)
    resp.headers["Location"] = f"/api/v1/replay/{sid}"
    return resp


def _control(action: str) -> Callable:
    async def handler(request: web.Request) -> web.Response:
        await _params(request, ())
        manager = _manager(request)
        sid = request.match_info["id"]
        await _call(getattr(manager, f"{action}_replay"), sid)
        return _ok(manager, sid)

    handler.__name__ = f"replay_{action}"
    handler.__doc__ = f"POST /api/v1/replay/{{id}}/{action}"
    return handler


async def seek(request: web.Request) -> web.Response:
    """POST /api/v1/replay/{id}/seek: continue from ``timestamp`` (within the session's range)."""
    p = await _params(request, ("timestamp",))
    if "timestamp" not in p:
        raise ApiError(400, "missing parameter timestamp")
    manager = _manager(request)
    sid = request.match_info["id"]
    await _call(manager.seek_replay, sid, _time("timestamp", p["timestamp"]))
    return _ok(manager, sid)


async def status(request: web.Request) -> web.Response:
    """GET /api/v1/replay/{id}."""
    await _params(request, ())
    manager = _manager(request)
    sid = request.match_info["id"]
    await _call(manager.get_replay_status, sid)
    return _ok(manager, sid)


async def listing(request: web.Request) -> web.Response:
    """GET /api/v1/replay: every session the manager holds."""
    await _params(request, ())
    manager = _manager(request)
    manager.reap()
    return json_response({"ok": True, "replays": [s.describe() for s in manager.sessions()]})


async def websocket(request: web.Request) -> web.StreamResponse:
    """GET /api/v1/replay/{id}/ws: the live WebSocket protocol over the session's bus."""
    session = await _call(_manager(request).session, request.match_info["id"])
    return await replay_ws.serve_replay(request, session)


def add_replay_routes(app: web.Application, manager: ReplayManager) -> None:
    """Register the replay routes on ``app`` (built by ``coby.http.create_app``) for ``manager``."""
    app[MANAGER_KEY] = manager
    replay_ws.install(app)
    r = app.router
    r.add_post("/api/v1/replay", create)
    r.add_get("/api/v1/replay", listing)
    r.add_get("/api/v1/replay/{id}", status)
    for action in ("start", "pause", "resume", "stop"):
        r.add_post(f"/api/v1/replay/{{id}}/{action}", _control(action))
    r.add_post("/api/v1/replay/{id}/seek", seek)
    r.add_get("/api/v1/replay/{id}/ws", websocket)
    if OPENAPI_KEY in app:
        app[OPENAPI_KEY].extend(*openapi_paths())


def openapi_paths() -> tuple[dict[str, Any], dict[str, Any]]:
    """The replay routes' part of the OpenAPI document (paths, schemas)."""
    t = {"anyOf": [{"type": "string", "format": "date-time"}, {"type": "integer", "minimum": 0, "maximum": _MAX_MS}],
         "description": "RFC 3339 / ISO 8601 (naive: UTC) or epoch milliseconds"}
    names = {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "string"}],
             "description": "a list, or names separated by commas"}
    err = {"content": {"application/json": {"schema": {"$ref": REF + "Error"}}}}
    errors = {"400": {"description": "invalid parameter", **err}, "401": {"description": "bearer token", **err},
              "404": {"description": "unknown session", **err}}
    one = {"200": {"description": "the session", "content": {"application/json": {
        "schema": {"$ref": REF + "ReplayAnswer"}}}}, **errors}
    sid = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}

    def control(action: str, what: str) -> dict[str, Any]:
        return {"post": {"operationId": f"replay_{action}", "summary": what, "parameters": [sid],
                         "responses": {**one, "409": {"description": "wrong state for this action", **err}}}}

    body = {"type": "object", "additionalProperties": False, "required": ["start", "end"],
            "properties": {"start": t, "end": t, "speed": {"type": "number", "minimum": 0,
                                                            "description": "1 real time, 0 as fast as read"},
                           "exchanges": names, "symbols": names, "channels": names}}
    paths = {
        "/api/v1/replay": {
            "post": {"operationId": "replay_create", "summary": "a new replay session (created, not started)",
                     "requestBody": {"content": {"application/json": {"schema": body}}},
                     "responses": {"201": one["200"], **errors,
                                   "429": {"description": "replay_max_sessions active sessions", **err}}},
            "get": {"operationId": "replay_list", "summary": "every session held",
                    "responses": {"200": {"description": "sessions", "content": {"application/json": {"schema": {
                        "type": "object", "properties": {"ok": {"type": "boolean"}, "replays": {
                            "type": "array", "items": {"$ref": REF + "ReplaySession"}}}}}}}}}},
        "/api/v1/replay/{id}": {"get": {"operationId": "replay_status", "summary": "a session's status",
                                        "parameters": [sid], "responses": one}},
        **{f"/api/v1/replay/{{id}}/{a}": control(a, w) for a, w in (
            ("start", "start a created session"), ("pause", "pause a running session"),
            ("resume", "resume a paused session"), ("stop", "stop a session"))},
        "/api/v1/replay/{id}/seek": {"post": {
            "operationId": "replay_seek", "summary": "continue from a time within the session's range",
            "parameters": [sid], "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "required": ["timestamp"], "properties": {"timestamp": t}}}}},
            "responses": {**one, "409": {"description": "wrong state", **err}}}},
        "/api/v1/replay/{id}/ws": {"get": {
            "operationId": "replay_websocket", "summary": "the session's data: the /ws protocol over its bus",
            "description": "As /ws, on the session's own channels; every envelope carries \"replay\": id, stored "
                           "connection events arrive on `gap`, the end on `replay`. See docs/replay.md.",
            "parameters": [sid], "responses": {"101": {"description": "switching to the WebSocket protocol"},
                                               **errors}}},
    }
    session = {"type": "object", "required": ["id", "state", "start", "end", "speed", "progress"], "properties": {
        "id": {"type": "string"}, "session_id": {"type": "string"},
        "state": {"type": "string", "enum": [s.value for s in ReplayState]},
        "start": {"type": "string", "format": "date-time"}, "end": {"type": "string", "format": "date-time"},
        "speed": {"type": "number"}, "position": {"type": ["string", "null"], "format": "date-time"},
        "events_emitted": {"type": "integer"}, "progress": {"type": "number"}, "error": {"type": ["string", "null"]},
        "subscribers": {"type": "integer"}, "created_at": {"type": "string", "format": "date-time"}}}
    schemas = {"ReplaySession": session,
               "ReplayAnswer": {"type": "object", "required": ["ok", "replay"],
                                "properties": {"ok": {"type": "boolean"}, "replay": {"$ref": REF + "ReplaySession"}}}}
    return paths, schemas
