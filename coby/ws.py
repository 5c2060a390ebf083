"""The WebSocket protocol at /ws: subscriptions, snapshots, per-client queues and the slow-client rules.

Client -> server (JSON text): ``{"op": "subscribe" | "unsubscribe", "channels": [...], "id": optional}``
and ``{"op": "ping"}``. Server -> client: the pipeline's envelopes, byte for byte
(``{"channel", "type": "update", "seq", "ts", "received", "data"}``), a ``"type": "snapshot"``
envelope first on every channel that has a stored state, and control messages
(``subscribed``, ``unsubscribed``, ``pong``, ``error``). A subscribe with ``"resume": {channel: seq}`` gets
what it missed first (``coby.ws_resume``). docs/api.md is the reference. Requests
are decoded and checked, channel names made canonical, in ``coby.ws_requests``.

Shape: a ``coby.hub.Hub`` fans one bus (the daemon's cache, or a replay session's own
bus) out to its clients. Each message is framed once; a client that keeps up (nothing
pending, socket buffer under 64 KiB) gets that frame written to its socket at once, with no
task switch. Otherwise the client keeps what it has not sent yet, and its sender task sends
it (through aiohttp, which waits for the socket):

- book-like channels (book, consolidated, heatmap, metrics, status) keep only the
  latest pending envelope per channel: a slow client skips states, never falls behind;
- queued channels (trades, ohlcv) append to one queue of at most ``ws_queue_size``;
  one more and the client gets ``{"type": "error", "error": "slow consumer: ..."}`` and
  close code 4008 - never a silent gap.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from typing import Any, Callable
from urllib.parse import urlsplit

import structlog
from aiohttp import WSMsgType, web

from coby import ws_resume
from coby.api import DAEMON_KEY, ApiError
from coby.codec import dumps
from coby.config import Settings
from coby.hub import CLOSE_GOING_AWAY, Feed, Hub, stored_state  # Hub: also coby.ws.Hub for replay
from coby.metrics import WS_CLIENTS, WS_DISCONNECTS, WS_MESSAGES, WS_REFUSED
from coby.models import utcnow
from coby.ws_requests import RequestError, parse_request

log = structlog.get_logger("coby.ws")

CLOSE_SLOW_CONSUMER = 4008  # fell more than ws_queue_size messages behind on a queued channel
MAX_MESSAGE = 64 * 1024
HIGH_WATER = 64 * 1024  # a client's unsent bytes above which messages wait in its queues, not the socket's


class Client:
    """One WebSocket connection: its subscriptions, what it has not been sent yet, and its failure."""

    __slots__ = ("ws", "transport", "hub", "settings", "remote", "feeds", "control", "queue", "latest", "held",
                 "wake", "failure", "tasks", "max_queue", "expect", "resuming")

    def __init__(self, ws: web.WebSocketResponse, hub: Hub, settings: Settings, remote: str,
                 transport: Any = None) -> None:
        self.ws = ws
        self.transport = transport
        self.hub = hub
        self.settings = settings
        self.remote = remote
        self.max_queue = settings.ws_queue_size
        self.feeds: dict[str, Feed] = {}
        self.control: deque[bytes] = deque()
        self.queue: deque[tuple[Feed, bytes]] = deque()
        self.latest: dict[Feed, bytes] = {}
        self.held: dict[Feed, list[bytes]] = {}  # channels waiting for their snapshot, or a resume's backlog
        self.expect: dict[Feed, int] = {}  # after a resume: the next seq of a channel (coby.ws_resume.expected)
        self.resuming: set[asyncio.Task] = set()
        self.wake = asyncio.Event()
        self.failure: tuple[str, str, int, bool] | None = None
        self.tasks: tuple[asyncio.Task, ...] = ()

    # --- from the pump (synchronous: never awaits) -------------------------------------------
    def _keeping_up(self) -> bool:
        """Nothing waits to be sent and the socket takes more: a message can be written now, in order."""
        t = self.transport
        return (not (self.control or self.queue or self.latest) and self.failure is None and t is not None
                and not self.ws.closed and not t.is_closing() and t.get_write_buffer_size() < HIGH_WATER)

    def _offer_now(self, feed: Feed, payload: bytes, frame: bytes | None) -> bool | None:
        """What both offers do first: hold a message while the channel's snapshot is read (False), or
        write its frame straight away when the client keeps up (True); None: the caller's policy applies."""
        if self.held and feed in self.held:
            self._hold(feed, payload)
            return False
        if frame is not None and self._keeping_up():
            self.transport.write(frame)
            return True
        return None

    def offer_latest(self, feed: Feed, payload: bytes, frame: bytes | None = None) -> bool:
        """A book-like message: written at once (``frame``: its ready-made WebSocket frame) if the client
        keeps up, else kept as the channel's latest pending state. True when written."""
        if (sent := self._offer_now(feed, payload, frame)) is not None:
            return sent
        if feed in self.latest:
            feed.coalesced.inc()
        self.latest[feed] = payload
        self.wake.set()
        return False

    def offer_queued(self, feed: Feed, payload: bytes, frame: bytes | None = None) -> bool:
        """A trade or bar: written at once if the client keeps up, else queued; past ws_queue_size the
        client fails as a slow consumer. True when written."""
        if (sent := self._offer_now(feed, payload, frame)) is not None:
            return sent
        self.queue.append((feed, payload))
        if len(self.queue) > self.max_queue:
            self.fail(f"slow consumer: {len(self.queue)} messages behind on {feed.channel} "
                      f"(ws_queue_size={self.max_queue})", "slow_consumer", CLOSE_SLOW_CONSUMER)
        self.wake.set()
        return False

    def offer_many(self, feed: Feed, payloads: list[bytes], frames: bytes) -> int:
        """Several messages of a queued channel (``frames``: theirs, ready-made): one write if the client
        keeps up, else ``offer_queued`` each. The number written."""
        if self.expect and feed in self.expect:
            payloads = ws_resume.expected(self, feed, payloads)
            for p in payloads:
                self.offer_queued(feed, p)
            return 0
        if not (self.held and feed in self.held) and self._keeping_up():
            self.transport.write(frames)
            return len(payloads)
        for p in payloads:
            self.offer_queued(feed, p)
        return 0

    def push(self, feed: Feed, payload: bytes) -> None:
        """Queue a message of ``feed`` past its hold (a resume's backlog, in order, before the held ones)."""
        self.queue.append((feed, payload))
        if len(self.queue) > self.max_queue:
            self.fail(f"slow consumer: {len(self.queue)} messages behind on {feed.channel} "
                      f"(ws_queue_size={self.max_queue})", "slow_consumer", CLOSE_SLOW_CONSUMER)
        self.wake.set()

    async def drained(self) -> None:
        """Return once the client's queue is at most half full (a resume's backlog goes in page by page)."""
        while len(self.queue) > self.max_queue // 2 and self.failure is None:
            await asyncio.sleep(0.02)

    def _hold(self, feed: Feed, payload: bytes) -> None:
        held = self.held[feed]
        held.append(payload)
        if len(held) > self.max_queue:
            self.fail(f"slow consumer: {len(held)} messages behind on {feed.channel}", "slow_consumer",
                      CLOSE_SLOW_CONSUMER)

    def fail(self, message: str, reason: str, code: int, notify: bool = True) -> None:
        """End this connection: stop reading, queue nothing more; ``serve`` then says why and closes with
        ``code``. The sender is not cancelled: it may be waiting in aiohttp's drain, whose waiter is shared
        with the goodbye's writes (cancelling one would cancel both); with its queues empty it stops."""
        if self.failure is None:
            self.failure = (message, reason, code, notify)
            for t in (*self.tasks, *self.resuming):
                t.cancel()
            self.close_subscriptions()
            self.control.clear()
            self.queue.clear()
            self.latest.clear()
            self.held.clear()
            self.wake.set()

    # --- requests -----------------------------------------------------------------------------
    def reply(self, msg: dict[str, Any]) -> None:
        self.control.append(dumps(msg))
        if len(self.control) > self.max_queue:
            self.fail(f"slow consumer: {len(self.control)} replies not taken", "slow_consumer", CLOSE_SLOW_CONSUMER)
        self.wake.set()

    async def handle(self, text: str) -> None:
        try:
            req = parse_request(self.settings, text)
        except RequestError as e:
            self.reply(e.reply)
            return
        if req.op == "ping":
            self.reply({"type": "pong", "id": req.id, "time": utcnow()})
            return
        try:
            if req.op == "subscribe":
                await self.subscribe(req.channels, req.id, req.resume)
            else:
                await self.unsubscribe(req.channels, req.id)
        except ApiError as e:
            self.reply(req.error(e.message))

    async def subscribe(self, names: list[str], rid: Any, resume: dict[str, int] | None = None) -> None:
        new = [n for n in names if n not in self.feeds]
        limit = self.settings.ws_max_subscriptions
        if len(self.feeds) + len(new) > limit:
            raise ApiError(400, f"too many subscriptions: {len(self.feeds) + len(new)} > "
                                f"ws_max_subscriptions={limit}")
        feeds = []
        for name in new:
            feed = self.hub.attach(self, name)
            self.feeds[name] = feed
            if feed.kind != "trades" or resume and name in resume:
                self.held[feed] = []
            feeds.append(feed)
        self.reply({"type": "subscribed", "channels": names, "id": rid})
        for feed in feeds:
            if feed not in self.held:
                continue
            if resume and feed.channel in resume and not feed.coalesce:  # what it missed, then live
                task = asyncio.get_running_loop().create_task(
                    ws_resume.catch_up(self, feed, resume[feed.channel]), name=f"coby-ws-resume:{feed.channel}")
                self.resuming.add(task)
                task.add_done_callback(self.resuming.discard)
                continue
            try:
                env = await stored_state(self.hub.bus, feed.channel)
            finally:
                held = self.held.pop(feed, [])
            if self.feeds.get(feed.channel) is not feed:
                continue
            snap_seq = None
            if isinstance(env, dict):
                snap_seq = env.get("seq")
                self.reply({**env, "channel": feed.channel, "type": "snapshot"})
            for payload in held:
                if isinstance(snap_seq, int) and ws_resume.payload_seq(payload) <= snap_seq:
                    continue  # already in the snapshot
                (self.offer_latest if feed.coalesce else self.offer_queued)(feed, payload)

    async def unsubscribe(self, names: list[str], rid: Any) -> None:
        for name in names:
            feed = self.feeds.pop(name, None)
            if feed is None:
                continue
            self.hub.detach(self, name)
            self.latest.pop(feed, None)
            self.held.pop(feed, None)
            self.expect.pop(feed, None)
            if any(f is feed for f, _ in self.queue):
                self.queue = deque((f, p) for f, p in self.queue if f is not feed)
        self.reply({"type": "unsubscribed", "channels": names, "id": rid})

    # --- the two loops --------------------------------------------------------------------------
    async def read_loop(self) -> None:
        async for msg in self.ws:
            if msg.type is WSMsgType.TEXT:
                await self.handle(msg.data)
            elif msg.type is WSMsgType.BINARY:
                self.reply({"type": "error", "error": "send JSON text frames, not binary"})
            else:  # ERROR: the connection broke
                return

    async def send_loop(self) -> None:
        send = self.ws.send_frame
        text = WSMsgType.TEXT
        control_sent = WS_MESSAGES.labels("control")
        while self.failure is None:
            await self.wake.wait()
            self.wake.clear()
            while self.control or self.queue or self.latest:
                while self.control:
                    await send(self.control.popleft(), text)
                    control_sent.inc()
                while self.queue:
                    feed, payload = self.queue.popleft()
                    await send(payload, text)
                    feed.sent.inc()
                while self.latest:
                    feed, payload = self.latest.popitem()
                    await send(payload, text)
                    feed.sent.inc()

    def close_subscriptions(self) -> None:
        for t in self.resuming:
            t.cancel()
        for name in list(self.feeds):
            self.hub.detach(self, name)
        self.feeds.clear()


class Connections:
    """The open WebSocket connections of an app, counted per client address (``ws_max_connections_per_ip``)."""

    def __init__(self) -> None:
        self.by_address: Counter[str] = Counter()
        self.clients: set[Client] = set()

    def __len__(self) -> int:
        return len(self.clients)


CONNECTIONS_KEY: web.AppKey[Connections] = web.AppKey("ws_connections", Connections)
HUB_KEY: web.AppKey[Hub] = web.AppKey("ws_hub", Hub)


def origin_allowed(settings: Settings, request: web.Request, origin: str) -> bool:
    """A browser origin may use the API: listed in api_cors_origins ('*': any), or the API's own origin."""
    allowed = settings.api_cors_origins
    return "*" in allowed or origin in allowed or urlsplit(origin).netloc == request.host


async def serve(request: web.Request, hub: Hub, settings: Settings) -> web.StreamResponse:
    """Run the protocol for one client whose channels come from ``hub``.

    The route for the daemon's live data is ``websocket`` below; a replay session serves
    its own hub through this same function, so replayed envelopes follow the same rules.
    """
    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(settings, request, origin):
        WS_REFUSED.labels("origin").inc()
        raise ApiError(403, f"origin {origin[:80]!r} is not allowed (api_cors_origins)")
    conns = request.app[CONNECTIONS_KEY]
    remote = request.remote or "unknown"
    if conns.by_address[remote] >= settings.ws_max_connections_per_ip:
        WS_REFUSED.labels("connections_per_ip").inc()
        raise ApiError(429, f"too many WebSocket connections from {remote} "
                            f"(ws_max_connections_per_ip={settings.ws_max_connections_per_ip})")
    ws = web.WebSocketResponse(heartbeat=settings.ws_heartbeat, compress=False, max_msg_size=MAX_MESSAGE,
                               timeout=settings.ws_close_timeout)
    if not ws.can_prepare(request).ok:
        raise ApiError(400, "expected a WebSocket upgrade request")
    conns.by_address[remote] += 1  # reserved before the await: concurrent upgrades see it
    try:
        await ws.prepare(request)
    except BaseException:
        _release(conns, remote)
        raise
    client = Client(ws, hub, settings, remote, request.transport)
    conns.clients.add(client)
    hub.clients.add(client)
    WS_CLIENTS.inc()
    log.info("ws_connected", remote=remote)  # the request's request_id is bound: it names this connection
    reason = "closed"
    reader = asyncio.create_task(client.read_loop(), name="coby-ws-read")
    sender = asyncio.create_task(client.send_loop(), name="coby-ws-send")
    client.tasks = (reader,)  # what fail() cancels
    try:
        if hub.closed:
            client.fail("channel source closed", "shutdown", CLOSE_GOING_AWAY, notify=False)
        await asyncio.wait((reader, sender), return_when=asyncio.FIRST_COMPLETED)
        if sender.done() and not sender.cancelled() and sender.exception() is not None and client.failure is None:
            reason = "error"
        reason = await _goodbye(ws, client, request, settings) or reason
    finally:
        for t in (reader, sender):
            t.cancel()
        await asyncio.gather(reader, sender, return_exceptions=True)
        client.close_subscriptions()
        _release(conns, remote)
        conns.clients.discard(client)
        hub.clients.discard(client)
        WS_CLIENTS.dec()
        WS_DISCONNECTS.labels(reason).inc()
        log.info("ws_disconnected", remote=remote, reason=reason)
    return ws


def _release(conns: Connections, remote: str) -> None:
    conns.by_address[remote] -= 1
    if conns.by_address[remote] <= 0:
        del conns.by_address[remote]


async def _goodbye(ws: web.WebSocketResponse, client: Client, request: web.Request, settings: Settings) -> str | None:
    """Close the connection: a failed client is first told why (behind what it was already sent) and gets
    the failure's close code. Whoever does not take it within ws_close_timeout is cut off."""
    code, message, reason, notify = 1000, "", None, False
    if client.failure is not None:
        message, reason, code, notify = client.failure
        if reason != "shutdown":
            log.warning("ws_client_dropped", remote=client.remote, reason=reason, error=message)

    async def bye() -> None:
        if notify:
            await ws.send_frame(dumps({"type": "error", "error": message, "code": code}), WSMsgType.TEXT)
        await ws.close(code=code, message=message[:120].encode())

    try:
        await asyncio.wait_for(bye(), settings.ws_close_timeout)
    except (asyncio.TimeoutError, ConnectionError, RuntimeError):
        if request.transport is not None:
            request.transport.abort()
    return reason


async def websocket(request: web.Request) -> web.StreamResponse:
    """GET /ws: the live channels of the daemon's bus."""
    allowed = {"token"}
    for key in request.query:
        if key not in allowed:
            raise ApiError(400, f"unknown parameter {key[:40]!r}; allowed: token")
    return await serve(request, request.app[HUB_KEY], request.app[DAEMON_KEY].settings)


def add_routes(app: web.Application, hub: Hub) -> Callable[[], int]:
    """Register /ws on ``app`` for ``hub``; returns a function counting the open connections."""
    conns = Connections()
    app[CONNECTIONS_KEY] = conns
    app[HUB_KEY] = hub
    app.router.add_get("/ws", websocket)

    async def close_all(app: web.Application) -> None:
        await hub.aclose()
        for client in tuple(conns.clients):  # clients of replay hubs served by this app
            client.fail("server shutting down", "shutdown", CLOSE_GOING_AWAY, notify=False)

    app.on_shutdown.append(close_all)
    return lambda: len(conns)
