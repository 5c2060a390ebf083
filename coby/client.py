"""A Python client of coby's public API: live data and replay through one interface.

    async with CobyClient("http://127.0.0.1:8080", token=None) as coby:
        async for item in coby.stream(["consolidated:BTC-USDT", "trades:BTC-USDT"]):       # live
            ...
        async for item in coby.replay(start, end, ["consolidated:BTC-USDT", "trades:BTC-USDT"], speed=0):
            ...                                                                              # the same items
        book = await coby.consolidated_book("BTC-USDT", depth=20)                           # REST helpers

Both iterators yield ``coby.client_stream`` items: ``Event`` (its ``data`` is the model class the
daemon itself uses: ``OrderBookSnapshot``, ``TradeEvent``, ``ConsolidatedOrderBook``, ...),
``Reconnected``, ``Gap`` and, last in a replay, ``ReplayFinished``. A replay differs from live
data only in ``Event.replay`` (the session id) and in that it ends. docs/client.md is the guide.

Only the public API is used (REST under /api/v1, the /ws protocol); of coby itself only the
shared data model (``coby.models``, ``coby.codec``) and ``coby.errors``. Errors: ``AuthError``
(401), ``ClientError`` for every other refusal (the server's ``error`` text) or an unreachable server.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any, Sequence

import aiohttp
import orjson

from coby.client_stream import (Event, Gap, Hooks, Item, Reconnected, ReplayFinished, Subscription, decoder)
from coby.codec import from_dict
from coby.errors import AuthError, ClientError
from coby.models import (ConsolidatedOrderBook, HeatmapData, OHLCVBar, OrderBookSnapshot, TradeEvent,
                         ensure_utc)

__all__ = ["AuthError", "ClientError", "CobyClient", "Event", "Gap", "Item", "Reconnected", "ReplayFinished",
           "Subscription"]

_FINAL = frozenset({"finished", "stopped", "failed"})
_NETWORK_ERRORS = (aiohttp.ClientError, OSError, asyncio.TimeoutError)


def _param(value: Any) -> Any:
    """A time or name as the API takes it: datetimes as RFC 3339 UTC, lists comma-separated."""
    if isinstance(value, datetime):
        return ensure_utc(value).isoformat().replace("+00:00", "Z")
    if isinstance(value, (list, tuple)):
        return ",".join(value)
    return value


def _refusal(status: int, message: str, what: str) -> ClientError:
    if status == 401:
        return AuthError(f"coby refused the bearer token on {what} (401): {message}; "
                         f"pass the daemon's api_token as CobyClient(url, token=...)", status)
    return ClientError(f"{message} ({status} on {what})", status)


class CobyClient:
    """coby's API at ``url`` (``http://host:port``), with bearer ``token`` when the daemon has one.

    ``timeout`` bounds each REST request, each connection attempt and the subscribe handshake.
    Reconnection: ``backoff_initial`` doubling to ``backoff_max`` seconds (with jitter), at most
    ``max_retries`` attempts in a row (None: forever). ``heartbeat``: seconds between the client's
    pings, so a silently dead connection is noticed. ``page_size``: rows per history request.
    """

    def __init__(self, url: str = "http://127.0.0.1:8080", token: str | None = None, *, timeout: float = 10.0,
                 backoff_initial: float = 0.5, backoff_max: float = 30.0, max_retries: int | None = None,
                 heartbeat: float = 15.0, page_size: int = 1000) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_retries = max_retries
        self.heartbeat = heartbeat
        self.page_size = page_size
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session: aiohttp.ClientSession | None = None
        self._subscriptions: set[Subscription] = set()
        self._closed = False

    async def __aenter__(self) -> CobyClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every open stream (stopping unfinished replays) and the HTTP session. Safe to call twice."""
        if self._closed:
            return
        for sub in list(self._subscriptions):
            await sub.aclose()
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # --- streams ------------------------------------------------------------------------------------
    def stream(self, channels: Sequence[str]) -> Subscription:
        """Live data of ``channels`` (``book:EXCHANGE:SYMBOL``, ``consolidated:SYMBOL``, ``trades:SYMBOL``,
        ``ohlcv:SYMBOL:TF``, ``heatmap:SYMBOL``, ``metrics:SYMBOL``, ``status``) until closed."""
        return self._track(Subscription(self, channels))

    def replay(self, start: datetime | int | str, end: datetime | int | str, channels: Sequence[str] | None = None, *,
               speed: float = 1.0, exchanges: Sequence[str] | None = None,
               symbols: Sequence[str] | None = None) -> Subscription:
        """The stored range [start, end) replayed through the daemon's pipeline, as ``stream`` would have
        delivered it live, ending with ``ReplayFinished``. ``speed`` 1 is real time, 0 as fast as this
        iterator is read. ``channels`` None: the stored events (trades and every venue's book) of
        ``symbols`` on ``exchanges`` (None: all configured). Times: datetime, epoch ms or RFC 3339."""
        request: dict[str, Any] = {"start": _param(start), "end": _param(end), "speed": speed}
        if exchanges:
            request["exchanges"] = list(exchanges)
        if symbols:
            request["symbols"] = list(symbols)
        hooks = _ReplayHooks(self, request)
        if channels is None:
            return self._track(_DefaultChannels(self, hooks, exchanges, symbols))
        # the session publishes only these kinds (not names: its filter matches names exactly, the
        # WebSocket canonicalises them - book:Binance:btc-usdt would otherwise never be published)
        request["channels"] = sorted({str(c).split(":", 1)[0] for c in channels})
        return self._track(Subscription(self, channels, hooks))

    def _track(self, sub: Subscription) -> Subscription:
        if self._closed:
            raise ClientError("the client is closed", retryable=False)
        self._subscriptions.add(sub)
        return sub

    def _forget(self, sub: Subscription) -> None:
        self._subscriptions.discard(sub)

    # --- REST helpers: latest state -----------------------------------------------------------------
    async def latest_book(self, exchange: str, symbol: str, depth: int | None = None) -> OrderBookSnapshot:
        """The latest book of one venue (``depth`` levels a side)."""
        return await self._latest(f"/api/v1/orderbook/{exchange}/{symbol}", depth=depth)

    async def consolidated_book(self, symbol: str, depth: int | None = None) -> ConsolidatedOrderBook:
        """The latest consolidated (cross-venue) book."""
        return await self._latest(f"/api/v1/consolidated/{symbol}", depth=depth)

    async def heatmap(self, symbol: str) -> HeatmapData:
        return await self._latest(f"/api/v1/heatmap/{symbol}")

    async def metrics(self, symbol: str) -> dict[str, dict]:
        """``{"metrics": {exchange: OrderBookMetrics}, "imbalance": {exchange | "consolidated": ImbalanceMetrics}}``."""
        return await self._latest(f"/api/v1/metrics/{symbol}")

    async def status(self) -> dict[str, Any]:
        """The daemon's status (``GET /api/v1/status``) as JSON."""
        return await self._request("GET", "/api/v1/status")

    async def symbols(self) -> dict[str, Any]:
        """The configured ``symbols``, ``exchanges`` and ``timeframes``."""
        return await self._request("GET", "/api/v1/symbols")

    async def _latest(self, path: str, **params: Any) -> Any:
        env = await self._request("GET", path, params)
        return decoder(env["channel"])(env["data"])

    # --- REST helpers: history ----------------------------------------------------------------------
    async def trades(self, symbol: str, start: datetime | int | str | None = None,
                     end: datetime | int | str | None = None, *, exchange: str | None = None,
                     limit: int | None = None, order: str = "asc") -> list[TradeEvent]:
        """Stored trades in [start, end) (the API's defaults: end now, the longest range allowed), every page
        followed up to ``limit`` rows (None: all). ``order="desc"``: newest first."""
        return await self._pages(f"/api/v1/trades/{symbol}", "trades", TradeEvent, limit,
                                 {"start": start, "end": end, "exchange": exchange,
                                  "order": None if order == "asc" else order})

    async def ohlcv(self, symbol: str, timeframe: str = "1m", start: datetime | int | str | None = None,
                    end: datetime | int | str | None = None, *, exchange: str | None = None,
                    limit: int | None = None) -> list[OHLCVBar]:
        """Stored candles (``exchange`` None: the consolidated ones), every page followed up to ``limit``."""
        return await self._pages(f"/api/v1/ohlcv/{symbol}", "bars", OHLCVBar, limit,
                                 {"timeframe": timeframe, "start": start, "end": end, "exchange": exchange})

    async def heatmap_history(self, symbol: str, start: datetime | int | str | None = None,
                              end: datetime | int | str | None = None, *, bucket_size: float | None = None,
                              step: float | None = None) -> dict[str, Any]:
        """The consolidated book in buckets of ``bucket_size`` (default: the configured width), one column per
        ``step`` seconds of [start, end) (default: the last 10 minutes), recomputed from stored snapshots.
        The answer's JSON: ``columns`` of ``{"timestamp", "bids", "asks", "best_bid", "best_ask"}``, each
        side a list of ``[price, size, venues]`` (docs/api.md)."""
        return await self._request("GET", f"/api/v1/heatmap/{symbol}/history",
                                   {"start": start, "end": end, "bucket_size": bucket_size, "step": step})

    async def _pages(self, path: str, key: str, cls: type, limit: int | None, params: dict[str, Any]) -> list:
        rows: list = []
        while True:
            want = self.page_size if limit is None else min(self.page_size, limit - len(rows))
            page = await self._request("GET", path, {**params, "limit": want})
            rows.extend(from_dict(cls, r) for r in page[key])
            if not page.get("next") or (limit is not None and len(rows) >= limit):
                return rows
            params = {**params, "start": page["start"], "end": page["end"], "cursor": page["next"]}  # pinned range

    # --- transport ----------------------------------------------------------------------------------
    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ClientError("the client is closed", retryable=False)
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout),
                json_serialize=lambda obj: orjson.dumps(obj).decode())
        return self._session

    async def _request(self, method: str, path: str, params: dict[str, Any] | None = None,
                       body: Any = None) -> Any:
        url = self.url + path
        query = {k: str(_param(v)) for k, v in (params or {}).items() if v is not None}
        try:
            async with self._http().request(method, url, params=query, json=body, headers=self._headers,
                                            timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                status, raw = resp.status, await resp.read()
        except _NETWORK_ERRORS as e:
            raise ClientError(f"cannot reach coby at {url}: {e or type(e).__name__}") from e
        try:
            data = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            data = {"error": raw[:200].decode(errors="replace")}
        if status >= 400:
            message = data.get("error") if isinstance(data, dict) else None
            raise _refusal(status, message or f"HTTP {status}", f"{method} {path}")
        return data

    async def _open_ws(self, path: str) -> aiohttp.ClientWebSocketResponse:
        url = self.url + path
        try:
            return await self._http().ws_connect(url, headers=self._headers, heartbeat=self.heartbeat,
                                                 timeout=aiohttp.ClientWSTimeout(ws_close=self.timeout))
        except aiohttp.WSServerHandshakeError as e:
            raise _refusal(e.status, await self._why_refused(url, e.status), f"GET {path}") from None
        except _NETWORK_ERRORS as e:
            raise ClientError(f"cannot reach coby at {url}: {e or type(e).__name__}") from e

    async def _why_refused(self, url: str, status: int) -> str:
        """The server's reason for refusing an upgrade. aiohttp drops the body of a refused handshake, so
        ask again without one: every refusal that comes before the upgrade (token, origin, connection
        limit, unknown replay, ended replay) answers the same JSON error to a plain request."""
        try:
            async with self._http().get(url, headers={**self._headers, "Upgrade": "websocket"},
                                        timeout=aiohttp.ClientTimeout(total=self.timeout)) as resp:
                data = orjson.loads(await resp.read())
                if resp.status == status and isinstance(data, dict) and data.get("error"):
                    return str(data["error"])
        except (*_NETWORK_ERRORS, orjson.JSONDecodeError):
            pass  # the status alone then
        return f"HTTP {status}"


class _ReplayHooks(Hooks):
    """A replay's ends: create the session on first use, start it once subscribed, end on its end."""

    def __init__(self, client: CobyClient, request: dict[str, Any]) -> None:
        self.client = client
        self.request = request
        self.id: str | None = None

    async def path(self) -> str:
        if self.id is None:
            answer = await self.client._request("POST", "/api/v1/replay", body=self.request)
            self.id = answer["replay"]["id"]
        return f"/api/v1/replay/{self.id}/ws"

    async def opened(self, first: bool) -> None:
        if first:  # subscribed before the first event: nothing is missed
            await self.client._request("POST", f"/api/v1/replay/{self.id}/start")

    async def ended(self, code: int | None, reason: str) -> Item | None:
        try:
            st = (await self.client._request("GET", f"/api/v1/replay/{self.id}"))["replay"]
        except ClientError as e:
            if e.retryable:
                return None  # the server is away: reconnect (a restarted one will say the session is gone)
            raise self._gone(e) from e
        if st["state"] in _FINAL:
            return ReplayFinished(self.id or "", st["state"], st["events_emitted"], st.get("error"))
        return None

    async def refused(self, error: ClientError) -> Item | None:
        if error.status == 409:  # it ended while we were away
            return await self.ended(None, str(error))
        if error.status == 404:
            raise self._gone(error) from error
        return None

    def _gone(self, error: ClientError) -> ClientError:
        return ClientError(f"replay session {self.id} no longer exists on the server, unfinished (the daemon "
                           f"stopped or restarted?): {error}", error.status)

    async def closing(self, finished: bool) -> None:
        if self.id is not None and not finished:
            with contextlib.suppress(ClientError):
                await self.client._request("POST", f"/api/v1/replay/{self.id}/stop")


class _DefaultChannels(Subscription):
    """A replay without explicit channels: trades and every venue's book of the replayed symbols, resolved
    from ``GET /api/v1/symbols`` on the first read."""

    def __init__(self, client: CobyClient, hooks: _ReplayHooks, exchanges: Sequence[str] | None,
                 symbols: Sequence[str] | None) -> None:
        super().__init__(client, ("pending",), hooks)
        self._filters = (exchanges, symbols)

    async def _connect(self) -> None:
        if self._filters is not None:
            exchanges, symbols = self._filters
            if not (exchanges and symbols):
                conf = await self._client.symbols()
                exchanges, symbols = exchanges or conf["exchanges"], symbols or conf["symbols"]
            self.channels = tuple([f"trades:{s}" for s in symbols] +
                                  [f"book:{e}:{s}" for s in symbols for e in exchanges])
            self._hooks.request["channels"] = ["book", "trades"]  # type: ignore[attr-defined]
            self._filters = None
        await super()._connect()
