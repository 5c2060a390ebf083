"""The base of every simulated venue: connections, subscriptions, fan-out, faults.

How to write a venue (``coby/simulator/venues/<name>.py``)
-----------------------------------------------------------
1. Subclass :class:`Venue`; set ``name`` (the URL prefix and exchange name, e.g.
   ``"htx"``; market ids follow the venue's rule in :mod:`coby.symbols`, override
   ``wire_id`` where the wire differs, as kraken's v2 does) and ``extra_faults`` (the
   protocol-specific faults you honour: ``"gap"`` if the protocol has sequence
   numbers, ``"bad_checksum"`` if it carries a checksum). Export it as a module
   level ``VENUE = MyVenue``; ``coby.simulator.venues.venue_class(name)`` finds it.
2. ``routes()`` returns aiohttp route defs with full paths built by
   ``self.path("...")`` (``self.path("ws")`` -> ``"/htx/ws"``). A WebSocket route's
   handler is ``self.websocket``; REST handlers are your own coroutines (answer
   with ``self.json_response(obj)``, and ``await self.wait_unstalled()`` first).
3. ``async on_text(conn, text)`` (and ``on_binary``) handle client frames:
   subscriptions, pings. To subscribe a connection: send the ack and the snapshot
   with ``conn.send(...)`` / ``conn.send_json(...)`` and call
   ``self.subscribe(conn, topic)`` in the same synchronous stretch (no ``await`` in
   between), so no delta can slip between the snapshot and the subscription. A
   topic is any hashable; make it a tuple holding the canonical symbol, e.g.
   ``("book", "BTC-USDT")``, so that faults armed without a symbol find it. ``on_open(conn)`` can send
   a welcome frame. Per-connection protocol state goes in ``conn.state`` (a dict).
4. ``on_update(symbol, update)`` is called for every market update (a
   :class:`~coby.simulator.market.MarketUpdate`: level changes with final sizes,
   trades, ``seq``). Send book frames only ``if update.has_book``; the book sequence
   of the frame is ``update.seq`` and the previous one is ``update.seq - 1`` (a
   ``gap`` fault removes one update's book part, so the next frame skips one).
   Fan out with ``self.broadcast(topic, frame)``; ``frame`` is ``str`` (text frame),
   ``bytes`` (binary frame, e.g. gzip or protobuf) or a callable ``conn -> frame |
   None`` for per-connection frames (channel ids, per-connection counters).
5. Faults: ``drop``, ``stall``, ``malformed``, ``crossed``, ``duplicate_trade`` and
   ``burst`` work for every venue without venue code (override
   ``malformed_frame`` / ``inject_crossed`` where the generic one does not fit).
   For ``gap`` nothing is needed either (the framework strips the book part of the
   next update, calling ``on_gap`` first; ``on_update`` still runs, so keep state
   such as windows moving). Depth-limited feeds (top-N channels) use ``self.window(symbol, N)``
   for the snapshot and ``self.advance_windows(symbol)`` in every ``on_update``
   (see :class:`~coby.simulator.market.BookWindow`); ``inject_crossed`` then needs
   an override (okx and kraken show how). For ``bad_checksum`` call ``self.faults.take("bad_checksum",
   symbol)`` when building a checksummed frame and corrupt the checksum if True. For ``drop_book`` /
   ``drop_trades`` name the first element of your book and trade topics in ``stream_channels``.
6. Optionally ``async run()``: a venue-wide background loop (server pings,
   heartbeats), owned and cancelled by the Simulator.

Delivery: each connection has a bounded queue drained by its own writer task; a
client that lets ``queue_size`` frames pile up is disconnected (TCP closed, no
close frame), so one slow client never blocks the others. While a ``stall`` is on, every frame (data,
acks, pongs) is discarded and REST handlers wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from datetime import datetime, timezone
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, ClassVar

import orjson
import structlog
from aiohttp import WSMsgType, web

from coby.simulator.history import RestLimit, kept
from coby.simulator.faults import GENERIC_FAULTS, FaultState, UnsupportedFault, fault_params
from coby.simulator.market import BookWindow, Level, Market, MarketUpdate, SimTrade, wall_clock_ms
from coby.symbols import canonical_to_unified, derive_market

log = structlog.get_logger(__name__)

Frame = str | bytes
FrameSource = Frame | Callable[["Connection"], Frame | None]

_CLOSE = object()  # writer sentinel: close the socket after what is queued
_ids = itertools.count(1)


def dumps(obj: Any) -> str:
    """Compact JSON text, as exchanges send it."""
    return orjson.dumps(obj).decode()


def rfc3339(ms: int) -> str:
    """Milliseconds -> ``2026-11-23T18:56:41.520000Z``."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def fmt_num(value: float, decimals: int) -> str:
    """A decimal string without trailing zeros (``30000.1``, ``0.5``, ``2``), as most venues send."""
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text or "0"


def loads(text: str | bytes) -> Any:
    """Parse a client frame (``ValueError`` if it is not JSON: the connection ignores it)."""
    return orjson.loads(text)


class Connection:
    """One client WebSocket: a bounded outgoing queue and its subscriptions."""

    __slots__ = ("venue", "ws", "request", "id", "topics", "state", "_queue", "_closing")

    def __init__(self, venue: Venue, ws: web.WebSocketResponse, request: web.Request, queue_size: int) -> None:
        self.venue = venue
        self.ws = ws
        self.request = request
        self.id = next(_ids)
        self.topics: set[Hashable] = set()
        self.state: dict[str, Any] = {}
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize=queue_size)
        self._closing = False

    @property
    def backlog(self) -> int:
        return self._queue.qsize()

    def send(self, frame: Frame) -> None:
        """Queue one frame. Discarded during a stall; a full queue disconnects the client."""
        if self._closing or self.venue.faults.stalled:
            return
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            log.warning("sim_slow_consumer", venue=self.venue.name, conn=self.id, backlog=self.backlog)
            self.venue.slow_consumers += 1
            self.abort()

    def send_json(self, obj: Any) -> None:
        self.send(dumps(obj))

    def close_soon(self, code: int = 1000, message: str = "") -> None:
        """Close once the frames already queued are sent; nothing queued after this is sent."""
        if self._closing:
            return
        self._closing = True
        try:
            self._queue.put_nowait((_CLOSE, code, message))
        except asyncio.QueueFull:
            self.abort()

    def abort(self) -> None:
        """Drop the TCP connection now, without a close frame (what a slow consumer gets)."""
        self._closing = True
        while not self._queue.empty():
            self._queue.get_nowait()
        transport = self.request.transport
        if transport is not None:
            transport.close()

    async def close(self, code: int = 1000, message: str = "") -> None:
        """Close now with ``code``; queued frames are discarded."""
        self._closing = True
        if not self.ws.closed:
            await self.ws.close(code=code, message=message.encode())

    async def run_writer(self) -> None:
        """Drain the queue into the socket until closed (run by the connection's handler)."""
        try:
            while True:
                frame = await self._queue.get()
                if self.ws.closed:
                    return
                if isinstance(frame, str):
                    await self.ws.send_str(frame)
                    self.venue.sent += 1
                elif isinstance(frame, bytes):
                    await self.ws.send_bytes(frame)
                    self.venue.sent += 1
                else:
                    _, code, message = frame  # type: ignore[misc]
                    await self.ws.close(code=code, message=message.encode())
                    return
        except ConnectionResetError:
            return  # the client went away; the handler's read loop ends too


class Venue:
    """One simulated exchange. See the module docstring for how to write one."""

    name: ClassVar[str] = ""
    extra_faults: ClassVar[frozenset[str]] = frozenset()
    #: ``drop_book`` / ``drop_trades``: the first element of the venue's book and trade topics.
    stream_channels: ClassVar[dict[str, frozenset[str]]] = {}
    queue_size: ClassVar[int] = 20_000
    #: trades the venue's REST history keeps (None: every trade the market recorded), see ``history``
    history_depth: ClassVar[int | None] = None
    #: the REST routes' rate limit: (requests a second, burst), see :class:`~coby.simulator.history.RestLimit`
    rest_rate: ClassVar[tuple[float, int]] = (20.0, 20)

    def __init__(self, markets: Mapping[str, Market], clock: Callable[[], int] = wall_clock_ms) -> None:
        self.markets: dict[str, Market] = dict(markets)
        self.market_ids: dict[str, str] = {s: self.wire_id(s) for s in self.markets}
        self.clock = clock
        self.faults = FaultState()
        self.connections: set[Connection] = set()
        self._subs: dict[Hashable, set[Connection]] = {}
        self._windows: dict[tuple[str, int], BookWindow] = {}
        self.symbol_by_id: dict[str, str] = {self.market_ids[s]: s for s in self.markets}
        self.history_depth = type(self).history_depth
        self.rest_limit = RestLimit(*self.rest_rate)
        self.sent = 0  # frames written to clients' sockets (benchmarks count messages by it)
        self.slow_consumers = 0  # clients disconnected for a full queue

    # --------------------------------------------------------------- routing

    @property
    def supported_faults(self) -> frozenset[str]:
        return GENERIC_FAULTS | self.extra_faults

    def path(self, suffix: str) -> str:
        return f"/{self.name}/{suffix.lstrip('/')}"

    def routes(self) -> list[web.RouteDef]:
        raise NotImplementedError

    @classmethod
    def wire_id(cls, symbol: str) -> str:
        """The venue's market id of a canonical symbol, by the venue's id rule (:mod:`coby.symbols`)."""
        return derive_market(cls.name, symbol, canonical_to_unified(symbol)).id

    def market_id(self, symbol: str) -> str:
        return self.market_ids[symbol]

    def symbol_of(self, market_id: str) -> str | None:
        """Canonical symbol of a venue id this simulator serves, else None."""
        return self.symbol_by_id.get(market_id)

    @staticmethod
    def json_response(obj: Any, status: int = 200) -> web.Response:
        return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")

    def history(self, symbol: str) -> Sequence[SimTrade]:
        """The trades the venue's REST history still serves for ``symbol``, oldest first."""
        return kept(self.markets[symbol].trades, self.history_depth)

    async def rest_admit(self) -> bool:
        """Wait out a stall; False if the REST rate limit refuses the request (answer "too many requests")."""
        await self.wait_unstalled()
        return self.rest_limit.take()

    async def wait_unstalled(self) -> None:
        while self.faults.stalled:
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------ websockets

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        """The aiohttp handler of every WebSocket route: runs one connection to its end."""
        ws = web.WebSocketResponse(compress=False, autoping=True, timeout=2.0, max_msg_size=4 * 1024 * 1024)
        await ws.prepare(request)
        conn = Connection(self, ws, request, self.queue_size)
        self.connections.add(conn)
        writer = asyncio.create_task(conn.run_writer(), name=f"sim-{self.name}-writer-{conn.id}")
        try:
            await self.on_open(conn)
            async for msg in ws:
                try:
                    if msg.type == WSMsgType.TEXT:
                        await self.on_text(conn, msg.data)
                    elif msg.type == WSMsgType.BINARY:
                        await self.on_binary(conn, msg.data)
                except (ValueError, KeyError, TypeError, IndexError) as exc:
                    # A client frame we cannot read: answer nothing, as most venues do.
                    log.warning("sim_bad_client_frame", venue=self.name, conn=conn.id, error=repr(exc))
        finally:
            self._forget(conn)
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            if not ws.closed:
                await ws.close()
        return ws

    async def on_open(self, conn: Connection) -> None:
        """Called once a connection is open (e.g. send a welcome/status frame)."""

    async def on_text(self, conn: Connection, text: str) -> None:
        raise NotImplementedError

    async def on_binary(self, conn: Connection, data: bytes) -> None:
        """Binary client frames are ignored unless a venue needs them."""

    def subscribe(self, conn: Connection, topic: Hashable) -> None:
        conn.topics.add(topic)
        self._subs.setdefault(topic, set()).add(conn)

    def unsubscribe(self, conn: Connection, topic: Hashable) -> None:
        conn.topics.discard(topic)
        subs = self._subs.get(topic)
        if subs is not None:
            subs.discard(conn)

    def subscribers(self, topic: Hashable) -> set[Connection]:
        return self._subs.get(topic, set())

    def watched(self, symbol: str) -> bool:
        """Whether any connection subscribes to a topic naming ``symbol`` (faults armed without a
        symbol wait for a watched one). Topics that are not tuples count as watching everything."""
        for topic, subs in self._subs.items():
            if subs and (not isinstance(topic, tuple) or symbol in topic):
                return True
        return False

    def _forget(self, conn: Connection) -> None:
        for topic in conn.topics:
            self._subs.get(topic, set()).discard(conn)
        conn.topics.clear()
        self.connections.discard(conn)

    def broadcast(self, topic: Hashable, frame: FrameSource) -> None:
        """Send ``frame`` to every connection subscribed to ``topic``."""
        subs = self._subs.get(topic)
        if not subs:
            return
        if callable(frame):
            for conn in tuple(subs):
                one = frame(conn)
                if one is not None:
                    conn.send(one)
        else:
            for conn in tuple(subs):
                conn.send(frame)

    def max_backlog(self) -> int:
        return max((c.backlog for c in self.connections), default=0)

    # ---------------------------------------------------------------- market

    def publish(self, symbol: str, update: MarketUpdate) -> None:
        """Called by the Simulator for every update: applies one-shot faults, then on_update."""
        if (
            update.has_book
            and "gap" in self.extra_faults
            and self.watched(symbol)
            and self.faults.take("gap", symbol)
        ):
            log.info("sim_fault_gap", venue=self.name, symbol=symbol, skipped_seq=update.seq)
            self.on_gap(symbol, update)
            update = MarketUpdate(bids=[], asks=[], trades=update.trades, seq=update.seq, ts_ms=update.ts_ms)
        self.on_update(symbol, update)

    def on_gap(self, symbol: str, update: MarketUpdate) -> None:
        """The book part of ``update`` is being lost (``gap`` fault); ``on_update`` then gets the
        update without it. Override to advance per-connection counters as if it had been sent."""

    def on_update(self, symbol: str, update: MarketUpdate) -> None:
        raise NotImplementedError

    def window(self, symbol: str, depth: int) -> BookWindow:
        """The ``depth``-level window of ``symbol`` (created on first use, then kept current).

        For depth-limited feeds: the snapshot for a new subscriber is
        ``window(...).snapshot()``, and ``on_update`` sends what ``advance_windows``
        returns for that depth instead of the raw update.
        """
        key = (symbol, depth)
        win = self._windows.get(key)
        if win is None:
            win = self._windows[key] = BookWindow(self.markets[symbol], depth)
        return win

    def advance_windows(self, symbol: str) -> dict[int, tuple[list[Level], list[Level]]]:
        """Advance every window of ``symbol``; call it once per update, also for updates not sent
        (a ``gap``-stripped update must still move the window: the client just misses it)."""
        return {depth: win.advance() for (sym, depth), win in self._windows.items() if sym == symbol}

    async def run(self) -> None:
        """Optional venue-wide background loop (server pings, heartbeats). Default: none."""

    # ---------------------------------------------------------------- faults

    async def inject(self, fault: str, params: Mapping[str, Any]) -> None:
        """Apply ``fault`` now (or arm it for the next matching message). ``burst`` is the Simulator's."""
        if fault not in self.supported_faults:
            raise UnsupportedFault(f"{self.name} does not support fault {fault!r}")
        symbol, rest = fault_params(dict(params))
        if symbol is not None and symbol not in self.markets:
            raise UnsupportedFault(f"{self.name} does not serve {symbol!r}")
        log.info("sim_fault", venue=self.name, fault=fault, symbol=symbol, **rest)
        if fault == "drop":
            await self.drop()
        elif fault in ("drop_book", "drop_trades"):
            await self.drop(self.stream_channels[fault.removeprefix("drop_")])
        elif fault == "stall":
            self.faults.stall(float(rest.get("seconds", 10.0)))
        elif fault == "malformed":
            for conn in tuple(self.connections):
                conn.send(self.malformed_frame(conn))
        elif fault == "crossed":
            for sym in [symbol] if symbol else list(self.markets):
                self.inject_crossed(sym)
        elif fault == "duplicate_trade":
            for sym in [symbol] if symbol else list(self.markets):
                trade = self.markets[sym].last_trade
                if trade is not None:
                    self.on_update(sym, self.markets[sym].trade_only([trade]))
        else:
            self.faults.arm(fault, symbol)

    async def drop(self, channels: frozenset[str] | None = None) -> None:
        """Close every connection of the venue now (close code 1001); with ``channels``, only those
        subscribed to a topic whose first element is one of them."""
        conns = tuple(c for c in self.connections if channels is None
                      or any(isinstance(t, tuple) and t and t[0] in channels for t in c.topics))
        if conns:
            await asyncio.wait_for(
                asyncio.gather(*(c.close(1001, "simulated drop") for c in conns), return_exceptions=True), 10.0
            )

    def malformed_frame(self, conn: Connection) -> Frame:
        """A frame the protocol cannot parse. Default: truncated JSON."""
        return '{"e":"depthUpdate","E":17'

    def inject_crossed(self, symbol: str) -> None:
        """Send a bid above the best ask (not in the true book), then delete it."""
        market = self.markets[symbol]
        price, size = market.crossing_level()
        self.on_update(symbol, market.unapplied(bids=[(price, size)]))
        self.on_update(symbol, market.unapplied(bids=[(price, 0.0)]))

    async def aclose(self) -> None:
        """Close every connection (idempotent)."""
        self.faults.clear()
        await self.drop()
