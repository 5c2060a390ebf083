"""Bitfinex v2: ``/bitfinex/ws/2``, channels routed by ``chanId``, P0 book with crc32 checksums.

On connect the server sends ``{"event":"info","version":2,"serverId":"sim","platform":{"status":1}}``.
Subscribe and the mandatory ack (data frames carry only the ``chanId``)::

    {"event":"subscribe","channel":"book","symbol":"tBTCUST","prec":"P0","freq":"F0"}
    {"event":"subscribed","channel":"book","chanId":10007,"symbol":"tBTCUST","prec":"P0",
     "freq":"F0","len":"25","pair":"BTCUST"}

The book is the ``len`` window (25 by default; 1, 100 and 250 too): a snapshot of
``[price, count, amount]`` rows (amount > 0 bid, < 0 ask), then one level per
frame; ``count`` 0 deletes (amount 1 for a bid, -1 for an ask)::

    [10007,[[29999.9,1,2.5789],[30000.1,3,-1.2]]]
    [10007,[30000.2,4,-4.8412]]
    [10007,[29999.9,0,1]]

After its first book ccxt sends ``{"event":"conf","flags":131072}``; from then on each
market update that changed the window is followed by ``[chanId,"cs",<crc32>]``:
the signed crc32 of ``bid_price:bid_amount:ask_price:ask_amount:...`` over the top
25 of each side, numbers written without exponent or trailing zeros. Trades
(``[id, mts, amount, price]``, amount < 0 = taker sold; snapshot newest first)::

    [10008,[[5000891,1795460198471,-0.1986,29999.9]]]
    [10008,"te",[5000892,1795460198571,0.0531,30000.1]]
    [10008,"tu",[5000892,1795460198571,0.0531,30000.1]]

Heartbeats ``[chanId,"hb"]`` every 15 s per channel; ``{"event":"ping","cid":1}`` gets
``{"event":"pong","ts":..,"cid":1}``. A second ``subscribe`` to a channel the
connection already has is refused with ``{"event":"error","msg":"subscribe: dup","code":10301}``.

What ccxt does under each fault:

* ``bad_checksum`` (the next ``cs`` frame is wrong) and ``gap`` (one market
  update's level frames are lost; Bitfinex has no sequence numbers, the next
  checksum catches it): ccxt deletes its book and raises ``ChecksumError``. A
  new ``watch_order_book`` on the same connection is refused as ``dup`` (ccxt
  ignores error events) while the old channel keeps feeding a rebuilt, partial
  book, so the errors repeat. Recovery: ``await ex.close(); ex.orderbooks = {}``,
  then watch again.
* ``stall``: lost level frames, caught by the first checksum after the stall.
* ``malformed``: a truncated JSON array; ccxt's JSON parse raises in the receive
  loop, which dies (the watch hangs). Recovery: close, forget the book, watch again.
* ``crossed``: applied as sent (no checksum describes the crossed state), then
  removed; the next checksum matches again.
* ``duplicate_trade``: returned twice (same id).
* ``drop``: ``NetworkError``; the next watch reconnects and resubscribes, but ccxt
  still holds the old book and takes the new snapshot for an update of it: a
  ``TypeError`` kills the receive loop and the watch hangs. Recovery: forget the
  book (``ex.orderbooks = {}``) before watching again.
"""

from __future__ import annotations

import asyncio
import itertools
import zlib
from collections import deque
from collections.abc import Callable, Hashable, Mapping
from decimal import Decimal
from typing import Any

from aiohttp import web

from coby.simulator.history import in_time, int_param
from coby.simulator.market import Level, Market, SimTrade, wall_clock_ms
from coby.simulator.venues._windowed import WindowedVenue
from coby.simulator.venues.base import Connection, dumps, loads

CHECKSUM_FLAG = 131072
CHECKSUM_LEVELS = 25
TRADE_SNAPSHOT = 30


def number_to_string(x: float) -> str:
    """A number as Bitfinex's checksum writes it: no exponent, no trailing zeros."""
    text = format(Decimal(str(x)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def book_checksum(bids: list[Level], asks: list[Level]) -> int:
    """Signed crc32 over the top 25 levels, bid and ask interleaved; ask amounts negative."""
    parts: list[str] = []
    for i in range(CHECKSUM_LEVELS):
        if i < len(bids):
            parts += (number_to_string(bids[i][0]), number_to_string(bids[i][1]))
        if i < len(asks):
            parts += (number_to_string(asks[i][0]), number_to_string(-asks[i][1]))
    crc = zlib.crc32(":".join(parts).encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc


class BitfinexVenue(WindowedVenue):
    name = "bitfinex"
    extra_faults = frozenset({"gap", "bad_checksum"})
    book_depths = frozenset({1, 25, 100, 250})
    heartbeat_interval: float = 15.0  # seconds between [chanId,"hb"] frames

    def __init__(self, markets: Mapping[str, Market], clock: Callable[[], int] = wall_clock_ms) -> None:
        super().__init__(markets, clock)
        self._next_chan = itertools.count(10_001)
        self._chan_ids: dict[Hashable, int] = {}  # topic -> chanId, shared by every connection
        # what the market traded before the simulator started: the first subscriber gets minutes-old trades
        self._recent: dict[str, deque[SimTrade]] = {
            s: deque(m.history, maxlen=TRADE_SNAPSHOT) for s, m in self.markets.items()
        }

    def routes(self) -> list[web.RouteDef]:
        return [web.get(self.path("ws/2"), self.websocket),
                web.get(self.path("v2/trades/{symbol}/hist"), self.rest_trades)]

    async def rest_trades(self, request: web.Request) -> web.Response:
        """``GET /v2/trades/{symbol}/hist?start=&end=&limit=&sort=`` (ms; limit 120, at most 10000; ``sort=1``
        oldest first from ``start``, else newest first): ``[[ID, MTS, AMOUNT, PRICE]]``; HTTP 429 over the limit."""
        if not await self.rest_admit():
            return self.json_response(["error", 11010, "ratelimit: error"], 429)
        q = request.query
        symbol = self.symbol_of(request.match_info["symbol"])
        if symbol is None:
            return self.json_response(["error", 10020, "symbol: invalid"], 500)
        limit = int_param(q.get("limit"), 120, 1, 10_000)
        trades = in_time(self.history(symbol), int_param(q.get("start"), None, 0, 1 << 62),
                         int_param(q.get("end"), None, 0, 1 << 62))
        page = trades[:limit] if q.get("sort") == "1" else list(reversed(trades[-limit:]))
        return self.json_response([_trade_row(t) for t in page])

    def chan_id(self, topic: Hashable) -> int:
        if topic not in self._chan_ids:
            self._chan_ids[topic] = next(self._next_chan)
        return self._chan_ids[topic]

    def _count(self, symbol: str, size: float) -> int:
        """A plausible order count for a level (at least 1)."""
        return 1 + round(size / self.markets[symbol].lot) % 7

    def _row(self, symbol: str, price: float, size: float, bid: bool) -> list[float]:
        if size == 0.0:
            return [price, 0, 1 if bid else -1]
        return [price, self._count(symbol, size), size if bid else -size]

    # ------------------------------------------------------------- websocket

    async def on_open(self, conn: Connection) -> None:
        conn.send_json({"event": "info", "version": 2, "serverId": "sim", "platform": {"status": 1}})

    def _error(self, conn: Connection, msg: dict[str, Any], text: str, code: int) -> None:
        conn.send_json({"event": "error", "msg": text, "code": code, **{k: msg[k] for k in ("channel", "symbol") if k in msg}})

    async def on_text(self, conn: Connection, text: str) -> None:
        msg: dict[str, Any] = loads(text)
        event = msg.get("event")
        chans: dict[int, Hashable] = conn.state.setdefault("chans", {})
        if event == "ping":
            conn.send_json({"event": "pong", "ts": self.clock(), "cid": msg.get("cid")})
        elif event == "conf":
            conn.state["flags"] = int(msg.get("flags", 0))
            conn.send_json({"event": "conf", "status": "OK", "flags": conn.state["flags"]})
        elif event == "unsubscribe":
            topic = chans.pop(int(msg.get("chanId", -1)), None)
            if topic is None:
                self._error(conn, msg, "unsubscribe: invalid", 10400)
                return
            self.unsubscribe(conn, topic)
            conn.send_json({"event": "unsubscribed", "status": "OK", "chanId": int(msg["chanId"])})
        elif event == "subscribe":
            self._subscribe(conn, msg, chans)
        else:
            self._error(conn, msg, "unknown event", 10000)

    def _subscribe(self, conn: Connection, msg: dict[str, Any], chans: dict[int, Hashable]) -> None:
        channel, market_id = msg.get("channel"), str(msg.get("symbol", ""))
        symbol = self.symbol_of(market_id)
        if symbol is None or channel not in ("book", "trades"):
            self._error(conn, msg, "symbol: invalid" if symbol is None else "channel: unknown", 10300)
            return
        depth = int(msg.get("len", 25))
        if channel == "book" and (msg.get("prec", "P0") != "P0" or depth not in self.book_depths):
            self._error(conn, msg, "subscribe: invalid", 10300)
            return
        topic: Hashable = ("book", symbol, depth) if channel == "book" else ("trades", symbol)
        cid = self.chan_id(topic)
        if cid in chans:
            self._error(conn, msg, "subscribe: dup", 10301)
            return
        ack = {"event": "subscribed", "channel": channel, "chanId": cid, "symbol": market_id, "pair": market_id[1:]}
        if channel == "book":
            ack.update(prec="P0", freq=msg.get("freq", "F0"), len=str(depth))
            bids, asks = self.window(symbol, depth).snapshot()
            rows = [self._row(symbol, p, s, True) for p, s in bids] + [self._row(symbol, p, s, False) for p, s in asks]
        else:
            rows = [_trade_row(t) for t in reversed(self._recent[symbol])]
        conn.send_json(ack)
        conn.send(dumps([cid, rows]))
        chans[cid] = topic
        self.subscribe(conn, topic)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            for topic, cid in self._chan_ids.items():
                self.broadcast(topic, dumps([cid, "hb"]))

    def malformed_frame(self, conn: Connection) -> str:
        return "[10007,[30000.1,2,"

    # ---------------------------------------------------------------- market

    def send_book(self, symbol: str, depth: int, bids: list[Level], asks: list[Level], seq: int, ts_ms: int,
                  *, settled: bool = True) -> None:
        topic = ("book", symbol, depth)
        subs = self.subscribers(topic)
        if not subs or not (bids or asks):
            return
        cid = self.chan_id(topic)
        # Deletions first: a client that trims to ``len`` between two frames must never hold
        # more than ``len`` levels, or it trims a level that stays in the window.
        rows = [(p, s, True) for p, s in bids] + [(p, s, False) for p, s in asks]
        rows.sort(key=lambda row: row[1] != 0.0)
        for p, s, bid in rows:
            self.broadcast(topic, dumps([cid, self._row(symbol, p, s, bid)]))
        if not settled or not any(c.state.get("flags", 0) & CHECKSUM_FLAG for c in subs):
            return
        checksum = book_checksum(*self.window(symbol, depth).snapshot())
        if self.faults.take("bad_checksum", symbol):
            checksum = checksum + 1 if checksum < (1 << 31) - 1 else checksum - 1
        frame = dumps([cid, "cs", checksum])
        self.broadcast(topic, lambda conn: frame if conn.state.get("flags", 0) & CHECKSUM_FLAG else None)

    def send_trades(self, symbol: str, trades: list[SimTrade], ts_ms: int) -> None:
        self._recent[symbol].extend(trades)
        topic = ("trades", symbol)
        if not self.subscribers(topic):
            return
        cid = self.chan_id(topic)
        for t in trades:
            row = _trade_row(t)
            self.broadcast(topic, dumps([cid, "te", row]))
            self.broadcast(topic, dumps([cid, "tu", row]))


def _trade_row(t: SimTrade) -> list[float]:
    return [t.trade_id, t.ts_ms, t.size if t.side == "buy" else -t.size, t.price]


VENUE = BitfinexVenue
