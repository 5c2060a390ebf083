"""What a WebSocket client may ask (``coby.ws``): its requests decoded and checked, channel names in canonical form.

A request is a JSON text ``{"op": "subscribe" | "unsubscribe", "channels": [...], "id": optional}``
or ``{"op": "ping"}``; a subscribe may carry ``"resume": {channel: last seq seen}`` (a client that
reconnects: it is sent what it missed, ``coby.ws_resume``). ``parse_request`` turns one into a ``Request`` or refuses it with the
error message the client is sent; what a subscription then does is ``coby.ws``'s business.
docs/api.md is the reference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from coby.api import ApiError, TIMEFRAMES, valid_exchange, valid_symbol, valid_timeframe
from coby.config import Settings


def parse_channel(settings: Settings, name: Any) -> str:
    """A channel name checked against the configured venues, symbols and timeframes, in canonical form."""
    if not isinstance(name, str) or len(name) > 200:
        raise ApiError(400, "a channel is a string such as trades:BTC-USDT")
    kind, *parts = name.split(":")
    try:
        if kind == "book" and len(parts) == 2:
            return f"book:{valid_exchange(settings, parts[0])}:{valid_symbol(settings, parts[1])}"
        if kind in ("consolidated", "heatmap", "metrics", "trades") and len(parts) == 1:
            return f"{kind}:{valid_symbol(settings, parts[0])}"
        if kind == "ohlcv" and len(parts) == 2:
            return f"ohlcv:{valid_symbol(settings, parts[0])}:{valid_timeframe(parts[1])}"
        if kind in ("status", "gap", "replay") and not parts:  # gap, replay: carried by replay sessions
            return kind
    except ApiError as e:
        raise ApiError(400, f"channel {name[:60]!r}: {e.message}") from None
    raise ApiError(400, f"unknown channel {name[:60]!r}; use book:EXCHANGE:SYMBOL, consolidated:SYMBOL, "
                        f"heatmap:SYMBOL, metrics:SYMBOL, trades:SYMBOL, ohlcv:SYMBOL:TIMEFRAME "
                        f"({'|'.join(TIMEFRAMES)}), status, or on a replay gap and replay")


def parse_resume(settings: Settings, resume: Any, channels: list[str]) -> dict[str, int]:
    """A subscribe's ``resume``: ``{channel: last seq seen}`` over channels of the same request, canonical."""
    if resume is None:
        return {}
    if not isinstance(resume, dict):
        raise ApiError(400, "resume must be an object {channel: the last seq received}")
    out = {}
    for name, seq in resume.items():
        channel = parse_channel(settings, name)
        if channel not in channels:
            raise ApiError(400, f"resume names {name[:60]!r}, which is not among the channels subscribed")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ApiError(400, f"resume of {name[:60]!r}: the last seq received, an integer >= 0")
        out[channel] = seq
    return out


@dataclass(slots=True, frozen=True)
class Request:
    """A valid request: ``op`` (subscribe, unsubscribe or ping), ``id`` as the client gave it (None unless an
    int or a string of at most 100 characters), ``channels`` canonical and without repeats (empty for ping)."""

    op: str
    id: int | str | None
    channels: list[str]
    resume: dict[str, int] = field(default_factory=dict)  # subscribe: channel -> the last seq the client saw

    def error(self, message: str) -> dict[str, Any]:
        """The error reply to this request."""
        return {"type": "error", "error": message, "op": self.op, "id": self.id}


class RequestError(ApiError):
    """A request refused; ``reply`` is what the client is sent (with the request's op and id once it had them)."""

    def __init__(self, message: str, **echo: Any) -> None:
        super().__init__(400, message)
        self.reply = {"type": "error", "error": message, **echo}


def parse_request(settings: Settings, text: str) -> Request:
    """One client message as a ``Request``; raises ``RequestError`` with the reply that refuses it."""
    try:
        req = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise RequestError("invalid JSON") from None
    if not isinstance(req, dict):
        raise RequestError("expected a JSON object such as {\"op\": \"subscribe\", ...}")
    rid = req.get("id")
    if not (rid is None or isinstance(rid, int) and not isinstance(rid, bool) or
            isinstance(rid, str) and len(rid) <= 100):
        rid = None
    op = req.get("op")
    try:
        if op in ("subscribe", "unsubscribe"):
            channels = req.get("channels")
            if not isinstance(channels, list) or not channels:
                raise ApiError(400, "channels must be a non-empty list of channel names")
            if len(channels) > settings.ws_max_subscriptions:
                raise ApiError(400, f"too many channels in one request (ws_max_subscriptions="
                                    f"{settings.ws_max_subscriptions})")
            names = list(dict.fromkeys(parse_channel(settings, c) for c in channels))
            return Request(op, rid, names, parse_resume(settings, req.get("resume"), names) if op == "subscribe" else {})
        if op == "ping":
            return Request(op, rid, [])
        raise ApiError(400, f"unknown op {str(op)[:40]!r}; use subscribe, unsubscribe or ping")
    except ApiError as e:
        raise RequestError(e.message, op=op if isinstance(op, str) else None, id=rid) from None
