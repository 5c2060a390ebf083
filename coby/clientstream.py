"""The client's WebSocket side: the events it yields and the subscription that reconnects.

A ``Subscription`` is an async iterator over the channels of one WebSocket endpoint of coby's
public API (``/ws`` live, ``/api/v1/replay/{id}/ws`` for a replay: the same protocol). It yields

- ``Event``: one envelope, its ``data`` rebuilt as coby's own model (``coby.models``) by
  ``coby.codec.from_dict``, chosen once per channel kind (``DECODERS``);
- ``Reconnected``: the connection was lost and is back, every channel resubscribed; each
  book-like channel starts again with the server's snapshot; queued channels (trades, ohlcv) resume
  (the subscribe names the last seq received: the server - this node or another behind the same load
  balancer - sends what was missed, in order, from the channel's Redis stream);
- ``Gap``: a queued channel (``trades``, ``ohlcv``) skipped sequence numbers (messages the server no
  longer had when the client resumed - ``reason`` "trimmed" - or lost without Redis), or its numbering
  restarted (the daemon restarted: ``missing`` is None). Book-like channels are full states, coalesced by design, so
  a jump there is not reported;
- ``ReplayFinished``: the replay session ended (the last item of a replay).

Reconnection: exponential backoff with jitter (``backoff_initial`` doubling up to
``backoff_max``), at most ``max_retries`` attempts in a row (None: forever). A refusal that
retrying cannot fix (401, 4xx, a subscription the server rejects) raises at once. What a
subscription does at its ends - which URL, what to do once subscribed, whether a close means
"finished" - is a ``Hooks`` object chosen once (live or replay, in ``coby.client``).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Sequence

import aiohttp
import orjson
import structlog

from coby.codec import from_dict
from coby.errors import ClientError
from coby.models import (ConnectionEvent, ConnectionStatus, ConsolidatedOrderBook, HeatmapData, ImbalanceMetrics,
                         OHLCVBar, OrderBookMetrics, OrderBookSnapshot, TradeEvent, ensure_utc)

if TYPE_CHECKING:
    from coby.client import CobyClient

log = structlog.get_logger("coby.client")
QUEUED_KINDS = frozenset({"trades", "ohlcv"})  # every message matters: a seq jump is lost data


@dataclass(slots=True, frozen=True)
class Event:
    """One message of a channel. ``data`` is the model (``OrderBookSnapshot``, ``TradeEvent``, ...);
    ``kind`` is ``snapshot`` (the stored state, sent first) or ``update``; ``replay`` the session id."""

    channel: str
    kind: str
    seq: int
    ts: datetime | None
    received: datetime | None
    data: Any
    replay: str | None = None


@dataclass(slots=True, frozen=True)
class Reconnected:
    """The connection was lost (``reason``) and restored after ``attempts`` tries and ``downtime`` s."""

    channels: tuple[str, ...]
    reason: str
    attempts: int
    downtime: float


@dataclass(slots=True, frozen=True)
class Gap:
    """``channel`` expected seq ``expected`` and got ``got``: messages in between were not received."""

    channel: str
    expected: int
    got: int
    reason: str  # "reconnect", "sequence" (a jump within one connection), "restart" (numbering restarted),
    # "trimmed" (a reconnect resumed, but the server no longer kept these messages)

    @property
    def missing(self) -> int | None:
        """How many messages were missed; None when the numbering restarted (a new daemon)."""
        return self.got - self.expected if self.got >= self.expected else None


@dataclass(slots=True, frozen=True)
class ReplayFinished:
    """A replay session ended: ``state`` finished, stopped or failed (``error`` says why)."""

    replay: str
    state: str
    events: int
    error: str | None = None


Item = Event | Reconnected | Gap | ReplayFinished


# --- decoding: the data class per channel kind, chosen once per channel ------------------------------
def _metrics(data: dict) -> dict:
    return {"metrics": {ex: from_dict(OrderBookMetrics, m) for ex, m in (data.get("metrics") or {}).items()},
            "imbalance": {k: from_dict(ImbalanceMetrics, m) for k, m in (data.get("imbalance") or {}).items()}}


def _status(data: dict) -> dict:
    out: dict[str, Any] = {"exchanges": {ex: from_dict(ConnectionStatus, s)
                                         for ex, s in (data.get("exchanges") or {}).items()}}
    if data.get("event"):
        out["event"] = from_dict(ConnectionEvent, data["event"])
    return out


def _as_is(data: Any) -> Any:
    return data


DECODERS: dict[str, Callable[[Any], Any]] = {
    "book": partial(from_dict, OrderBookSnapshot),
    "trades": partial(from_dict, TradeEvent),
    "consolidated": partial(from_dict, ConsolidatedOrderBook),
    "heatmap": partial(from_dict, HeatmapData),
    "ohlcv": partial(from_dict, OHLCVBar),
    "metrics": _metrics,
    "status": _status,
}


def decoder(channel: str) -> Callable[[Any], Any]:
    """The function that turns ``channel``'s JSON ``data`` into coby's model(s)."""
    return DECODERS.get(channel.split(":", 1)[0], _as_is)


def parse_time(value: str | None) -> datetime | None:
    return ensure_utc(datetime.fromisoformat(value)) if value else None


class Hooks:
    """What a subscription does at its ends. The live one: ``/ws``, nothing to do, always reconnect."""

    async def path(self) -> str:
        return "/ws"

    async def opened(self, first: bool) -> None:
        """Called once subscribed (replay: start the session on the first open)."""

    async def ended(self, code: int | None, reason: str) -> Item | None:
        """The connection closed: an item that ends the iteration, or None to reconnect."""
        return None

    async def refused(self, error: ClientError) -> Item | None:
        """A (re)connection was refused for good: an item that ends the iteration, or None to raise."""
        return None

    async def closing(self, finished: bool) -> None:
        """The subscription is being closed by its owner."""


class Subscription:
    """An async iterator of ``Item``s over ``channels``; reconnects (see the module docstring).

    Nothing reads ahead: the next message is read when the consumer asks for it, so a slow
    consumer meets the server's slow-client rules, not a growing buffer here.
    """

    def __init__(self, client: CobyClient, channels: Sequence[str], hooks: Hooks | None = None) -> None:
        if isinstance(channels, str) or not channels:
            raise ValueError("channels must be a non-empty list of channel names, e.g. ['trades:BTC-USDT']")
        self._client = client
        self.channels: tuple[str, ...] = tuple(channels)
        self._hooks = hooks or Hooks()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._pending: deque[Item] = deque()
        self._last: dict[str, tuple[int, datetime | None]] = {}  # channel -> (seq, received) delivered last
        self._fresh: set[str] = set()  # channels not heard from since the last reconnect
        self._decoders: dict[str, Callable[[Any], Any]] = {}
        self._opened = False
        self._done = False
        self._closed = False
        self._lost_reason = ""
        self._lost_at = 0.0
        self._error: str | None = None  # the server's last error message (slow consumer, ...)

    def __aiter__(self) -> Subscription:
        return self

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def __anext__(self) -> Item:
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._done or self._closed:
                raise StopAsyncIteration
            try:
                if self._ws is None:
                    await self._connect()
                    continue
                msg = await self._ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    self._on_text(msg.data)
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                                  aiohttp.WSMsgType.ERROR):
                    await self._on_close(msg)
            except ClientError:
                await self.aclose()  # the error ends the iteration, as it would a generator's
                raise

    async def aclose(self) -> None:
        """Close the connection (a replay not finished yet is stopped). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._client._forget(self)
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()
        await self._hooks.closing(self._done)

    # --- connection ---------------------------------------------------------------------------------
    async def _connect(self) -> None:
        """(Re)connect and resubscribe, backing off between attempts. The first connection fails fast."""
        c = self._client
        attempt = 0
        while True:
            attempt += 1
            try:
                ws = await c._open_ws(await self._hooks.path())
                try:
                    await self._subscribe(ws)
                except BaseException:
                    await ws.close()
                    raise
                break
            except ClientError as e:
                if e.retryable and self._opened and (c.max_retries is None or attempt <= c.max_retries):
                    delay = min(c.backoff_max, c.backoff_initial * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
                    log.warning("client_reconnect_failed", attempt=attempt, delay=round(delay, 2), error=str(e))
                    await asyncio.sleep(delay)
                    continue
                item = await self._hooks.refused(e) if self._opened else None
                if item is None:
                    raise
                self._pending.append(item)
                self._done = True
                return
        self._ws = ws
        first = not self._opened
        self._opened = True
        if not first:
            self._fresh = set(self.channels)
            self._pending.append(Reconnected(self.channels, self._lost_reason, attempt,
                                             round(time.monotonic() - self._lost_at, 3)))
            log.info("client_reconnected", attempts=attempt, reason=self._lost_reason)
        await self._hooks.opened(first)

    async def _subscribe(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Subscribe to every channel and wait for the server's answer (snapshots follow it)."""
        request: dict[str, Any] = {"op": "subscribe", "channels": list(self.channels), "id": "coby-client"}
        resume = {ch: last[0] for ch, last in self._last.items()
                  if ch in self.channels and ch.split(":", 1)[0] in QUEUED_KINDS}
        if resume:  # a reconnect: the server sends what was missed (or says what it no longer has)
            request["resume"] = resume
        try:
            async with asyncio.timeout(self._client.timeout):
                await ws.send_str(orjson.dumps(request).decode())
                while True:
                    msg = await ws.receive()
                    if msg.type is not aiohttp.WSMsgType.TEXT:
                        raise ClientError(f"connection closed while subscribing ({msg.extra or msg.type.name})",
                                          retryable=True)
                    reply = orjson.loads(msg.data)
                    if reply.get("type") == "subscribed":
                        self.channels = tuple(reply["channels"])  # the server's canonical names
                        return
                    if reply.get("type") == "error":
                        raise ClientError(f"subscribe refused: {reply.get('error')}", status=400)
        except TimeoutError:
            raise ClientError(f"no answer to subscribe within {self._client.timeout} s", retryable=True) from None
        except (aiohttp.ClientError, OSError) as e:
            raise ClientError(f"connection lost while subscribing: {e}", retryable=True) from e

    async def _on_close(self, msg: aiohttp.WSMessage) -> None:
        ws, self._ws = self._ws, None
        code = ws.close_code if ws is not None else None
        if ws is not None:
            await ws.close()
        if self._closed:
            return
        reason = self._error or (f"closed by the server ({code}{': ' + msg.extra if msg.extra else ''})"
                                 if msg.type is not aiohttp.WSMsgType.ERROR else f"connection error: {msg.data!r}")
        self._error = None
        item = await self._hooks.ended(code, reason)
        if item is not None:
            self._pending.append(item)
            self._done = True
            return
        log.warning("client_connection_lost", reason=reason)
        self._lost_reason, self._lost_at = reason, time.monotonic()

    # --- messages -----------------------------------------------------------------------------------
    def _on_text(self, text: str) -> None:
        env = orjson.loads(text)
        channel = env.get("channel")
        if channel is None:
            if env.get("type") == "error":  # e.g. "slow consumer: ...", followed by the close
                self._error = str(env.get("error"))
                log.warning("client_server_error", error=self._error)
            return
        if env.get("type") == "gap":  # after a resume: messages the server no longer has
            first, last = env.get("from"), env.get("to")
            if isinstance(first, int) and isinstance(last, int):
                self._pending.append(Gap(channel, first, last + 1, "trimmed"))
                prev = self._last.get(channel)
                self._last[channel] = (last, prev[1] if prev else None)
                self._fresh.discard(channel)
            return
        seq, received = env.get("seq"), parse_time(env.get("received"))
        if isinstance(seq, int) and not self._in_order(channel, seq, received):
            return
        decode = self._decoders.get(channel)
        if decode is None:
            decode = self._decoders[channel] = decoder(channel)
        self._pending.append(Event(channel, env.get("type", "update"), seq, parse_time(env.get("ts")), received,
                                   decode(env.get("data")), env.get("replay")))

    def _in_order(self, channel: str, seq: int, received: datetime | None) -> bool:
        """Track ``channel``'s seq: False for a message already delivered; a ``Gap`` queued before a jump.

        A seq at or below the last one is a message already delivered (a snapshot and an update of the
        same state) - unless it was received later: then the numbering restarted (a new daemon; its
        snapshot may even be the old daemon's last state, kept in Redis). After a reconnect the first
        message of each channel is delivered in any case (the re-read snapshot)."""
        last = self._last.get(channel)
        fresh = channel in self._fresh
        self._fresh.discard(channel)
        if last is not None:
            last_seq, last_received = last
            queued = channel.split(":", 1)[0] in QUEUED_KINDS
            if seq > last_seq + 1:
                if queued:
                    self._pending.append(Gap(channel, last_seq + 1, seq, "reconnect" if fresh else "sequence"))
            elif seq <= last_seq:
                if received is not None and last_received is not None and received > last_received:
                    if queued:
                        self._pending.append(Gap(channel, last_seq + 1, seq, "restart"))
                elif not fresh:
                    return False
        self._last[channel] = (seq, received)
        return True
