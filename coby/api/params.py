"""Request validation for the REST API and the WebSocket requests, in one place: names against the configured
exchanges, symbols and timeframes, numbers against their bounds, time ranges against ``api_max_range_days``, an
unknown query parameter as an error rather than a silent typo, and keyset cursors. Every failure is an
``ApiError`` (status + one line), which the error boundary in ``coby.http`` renders as ``{"ok": false, ...}``.
"""

from __future__ import annotations

import base64
import math
import re
from datetime import datetime, timedelta
from typing import Any, Iterable

import orjson
from aiohttp import web

from coby.aggregate.ohlcv import TIMEFRAMES as OHLCV_TIMEFRAMES
from coby.codec import dumps
from coby.config import EXCHANGE_ALIASES, Settings
from coby.models import UTC, ensure_utc, utc_from_ms, utcnow

#: OHLCV timeframes the API accepts (the candles the aggregation engine builds).
TIMEFRAMES: tuple[str, ...] = tuple(OHLCV_TIMEFRAMES)  # what the OHLCV builder makes (1s ... 1d)
MAX_DEPTH = 1000
DEFAULT_PAGE = 100
MAX_MS = 253402300799999  # 9999-12-31T23:59:59.999Z


class ApiError(Exception):
    """A request the API refuses: ``status`` (4xx, or 503) and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(data), status=status, content_type="application/json")


# --- validation -----------------------------------------------------------------------------
def _show(raw: str) -> str:
    return repr(raw[:40] + ("..." if len(raw) > 40 else ""))


def check_query(request: web.Request, allowed: Iterable[str]) -> None:
    """Refuse unknown or repeated query parameters (a typo must not fall back to a default)."""
    allowed = set(allowed)
    seen: set[str] = set()
    for key in request.query.keys():
        if key not in allowed:
            names = ", ".join(sorted(allowed)) or "none"
            raise ApiError(400, f"unknown parameter {_show(key)}; allowed: {names}")
        if key in seen:
            raise ApiError(400, f"parameter {key} given more than once")
        seen.add(key)


def valid_symbol(settings: Settings, raw: str) -> str:
    sym = raw.strip().upper().replace("/", "-").replace("_", "-")
    if sym not in settings.symbols:
        raise ApiError(404, f"unknown symbol {_show(raw)}; known: {', '.join(settings.symbols)}")
    return sym


def valid_exchange(settings: Settings, raw: str) -> str:
    ex = raw.strip().lower()
    ex = EXCHANGE_ALIASES.get(ex, ex)
    if ex not in settings.exchanges:
        raise ApiError(404, f"unknown exchange {_show(raw)}; known: {', '.join(settings.exchanges)}")
    return ex


def valid_timeframe(raw: str) -> str:
    if raw not in TIMEFRAMES:
        raise ApiError(400, f"invalid timeframe {_show(raw)}; use one of {', '.join(TIMEFRAMES)}")
    return raw


def int_param(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,9}", raw.strip()):
        raise ApiError(400, f"invalid {name} {_show(raw)}: expected an integer from {lo} to {hi}")
    value = int(raw)
    if not lo <= value <= hi:
        raise ApiError(400, f"invalid {name}={value}: must be from {lo} to {hi}")
    return value


def float_param(request: web.Request, name: str, lo: float, hi: float) -> float | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not lo <= value <= hi:  # NaN and infinities fail here too
        raise ApiError(400, f"invalid {name} {_show(raw)}: expected a number from {lo:g} to {hi:g}")
    return value


_RFC3339 = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]+))?"
                      r"([Zz]|[+-][0-9]{2}:[0-9]{2})")


def parse_time(name: str, raw: str) -> datetime:
    """An RFC 3339 date-time with its offset (``2024-05-01T12:00:00Z``) or integer epoch milliseconds.

    Exactly what the OpenAPI document declares: a leap second reads as the minute's last
    microsecond; instants outside Python's years 1-9999 are clamped to them.
    """
    text = raw.strip()
    if re.fullmatch(r"[0-9]{1,15}", text):
        ms = int(text)
        if ms > MAX_MS:
            raise ApiError(400, f"invalid {name} {_show(raw)}: out of range")
        return utc_from_ms(ms)
    # a '+' offset arrives as a space when the client did not percent-encode it
    m = _RFC3339.fullmatch(re.sub(r" ([0-9]{2}:[0-9]{2})$", r"+\1", text))
    try:
        if m is None:
            raise ValueError
        year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
        micro = int((m[7] or "")[:6].ljust(6, "0"))
        if second == 60:
            second, micro = 59, 999_999
        tz = m[8]
        offset = 0 if tz in "Zz" else (int(tz[1:3]) * 60 + int(tz[4:6])) * (1 if tz[0] == "+" else -1)
        if abs(offset) >= 24 * 60:
            raise ValueError
        if year == 0:
            return datetime.min.replace(tzinfo=UTC)
        local = datetime(year, month, day, hour, minute, second, micro)
    except ValueError:
        raise ApiError(400, f"invalid {name} {_show(raw)}: use RFC 3339 (2024-05-01T12:00:00Z) or epoch "
                            "milliseconds") from None
    try:
        return (local - timedelta(minutes=offset)).replace(tzinfo=UTC)
    except OverflowError:
        return (datetime.min if offset > 0 else datetime.max).replace(tzinfo=UTC)


def time_range(request: web.Request, settings: Settings) -> tuple[datetime, datetime]:
    """[start, end): end defaults to now, start to end - api_max_range_days; longer ranges are refused."""
    q = request.query
    max_range = timedelta(days=settings.api_max_range_days)
    end = parse_time("end", q["end"]) if "end" in q else utcnow()
    if "start" in q:
        start = parse_time("start", q["start"])
    else:
        try:
            start = end - max_range
        except OverflowError:
            start = datetime.min.replace(tzinfo=UTC)
    if start >= end:
        raise ApiError(400, "start must be before end")
    if end - start > max_range:
        raise ApiError(400, f"time range too long: {(end - start).total_seconds() / 86400:.3g} days > "
                            f"api_max_range_days={settings.api_max_range_days:g}; page through shorter ranges")
    return start, end


def order_param(request: web.Request) -> bool:
    """``order=asc`` (default, oldest first) or ``desc``; True for newest first."""
    raw = request.query.get("order", "asc")
    if raw not in ("asc", "desc"):
        raise ApiError(400, f"invalid order {_show(raw)}: use asc or desc")
    return raw == "desc"


def encode_cursor(key: tuple) -> str:
    items = [v.isoformat() if isinstance(v, datetime) else v for v in key]
    return base64.urlsafe_b64encode(orjson.dumps(items)).decode().rstrip("=")


def decode_cursor(request: web.Request, arity: int) -> tuple | None:
    """The keyset position of a ``cursor=`` from an earlier page: (timestamp, *text key columns)."""
    raw = request.query.get("cursor")
    if raw is None:
        return None
    try:
        if len(raw) > 1000:
            raise ValueError
        items = orjson.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
        if not (isinstance(items, list) and len(items) == arity and all(isinstance(i, str) for i in items)):
            raise ValueError
        return (ensure_utc(datetime.fromisoformat(items[0])), *items[1:])
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise ApiError(400, "invalid cursor: pass back the 'next' value of the previous page unchanged") from None
