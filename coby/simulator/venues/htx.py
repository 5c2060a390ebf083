"""HTX (Huobi) spot: gzip JSON frames, ``/htx/feed`` for the book, ``/htx/ws`` for trades.

Every server frame is a **gzip-compressed binary frame** (ccxt: ``options.ws.gunzip``).
Both endpoints serve both channels; ccxt uses ``/feed`` for ``mbp`` and ``/ws``
for trades. Subscribe and ack (the ack is mandatory: it makes ccxt request the
snapshot on the same connection)::

    {"sub":"market.btcusdt.mbp.150","id":"1"}
    {"id":"1","status":"ok","subbed":"market.btcusdt.mbp.150","ts":1795460198430}

Snapshot request and reply (the current window of ``mbp.<depth>``, depth 5, 20,
150 or 400)::

    {"req":"market.btcusdt.mbp.150","id":"3"}
    {"id":"3","rep":"market.btcusdt.mbp.150","status":"ok","ts":1795460198431,
     "data":{"seqNum":1004474,"bids":[[29999.9,1.1311]],"asks":[[30000.1,0.6128]]}}

Deltas, one per market update, ``prevSeqNum`` = previous ``seqNum`` (size 0 deletes)::

    {"ch":"market.btcusdt.mbp.150","ts":1795460198530,
     "tick":{"seqNum":1004475,"prevSeqNum":1004474,"bids":[],"asks":[[30003.0,0.4249]]}}

Trades. ``id`` is 23 digits wide as on the real venue; ccxt parses it into a float
and uses it as the trade id, so distinct trades can share one ccxt ``id``: key
trades on ``info["tradeId"]``::

    {"ch":"market.btcusdt.trade.detail","ts":1795460198471,"tick":{"id":5000891,
     "ts":1795460198471,"data":[{"id":50008911795460198471,"ts":1795460198471,
     "tradeId":5000891,"amount":0.1986,"price":29999.9,"direction":"sell"}]}}

REST trade history (what ccxt's ``fetch_trades`` calls): ``GET /htx/market/history/trade?symbol=btcusdt&size=N``
- the latest ``size`` (1..2000, default 1) trade ticks, newest first, no paging; each tick groups the trades of
one millisecond. A trade carries ``trade-id``, the same unique id the WebSocket sends as ``tradeId`` (ccxt
takes ``trade-id`` as the trade's ``id``), and the wide ``id``::

    {"status":"ok","ch":"market.btcusdt.trade.detail","ts":1795460198500,"data":[{"id":5000891,
     "ts":1795460198471,"data":[{"id":50008911795460198471,"trade-id":5000891,"ts":1795460198471,
     "amount":0.1986,"price":29999.9,"direction":"sell"}]}]}

Over the rate limit: HTTP 429 (ccxt: ``RateLimitExceeded``). Depth: the last 2000 trades.

Keepalive: the server sends ``{"ping":<ms>}`` every 5 s and ccxt answers
``{"pong":<ms>}`` (unanswered pings are not enforced here).

What ccxt does under each fault:

* ``gap``: the next delta has ``prevSeqNum`` > the book's nonce, and ccxt raises
  ``ChecksumError`` from inside ``handle_message``: it escapes the receive loop,
  which dies, so the watch hangs. Recovery: ``await ex.close()``, then watch again.
* ``stall``: deltas are lost, so the same as ``gap`` once the stall ends.
* ``malformed``: a gzip frame whose JSON is truncated; ccxt's JSON parse raises in
  the receive loop, which dies (the watch hangs until the client is closed).
* ``crossed``: applied as sent, then removed by the next delta.
* ``duplicate_trade``: the trade is returned twice (same ``tradeId``).
* ``drop``: the watch raises ``NetworkError``; the next watch reconnects and
  resubscribes (new ack, new snapshot).
* ``drop_book`` / ``drop_trades``: the connections carrying ``mbp`` (ccxt: ``/feed``) or
  ``trade.detail`` (ccxt: ``/ws``) close; the other kind's connection keeps delivering.
* ``bad_checksum``: not offered, the ``mbp`` feed carries no checksum.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

from aiohttp import web

from coby.simulator.history import int_param
from coby.simulator.market import Level, SimTrade
from coby.simulator.venues._windowed import WindowedVenue
from coby.simulator.venues.base import Connection, loads



def gz(obj: Any) -> bytes:
    """One HTX frame: compact JSON, gzip-compressed.

    The stdlib encoder, not orjson: trade ``id`` values are wider than 64 bits.
    """
    return gzip.compress(json.dumps(obj, separators=(",", ":")).encode(), compresslevel=1, mtime=0)


def wide_trade_id(trade_id: int, ts_ms: int) -> int:
    """A 23-digit HTX trade ``id`` (the narrow one is ``tradeId``)."""
    return trade_id * 10**15 + ts_ms % 10**15


class HtxVenue(WindowedVenue):
    name = "htx"
    extra_faults = frozenset({"gap", "drop_book", "drop_trades"})
    stream_channels = {"book": frozenset({"mbp"}), "trades": frozenset({"trade"})}
    book_depths = frozenset({5, 20, 150, 400})
    ping_interval: float = 5.0  # seconds between server pings
    history_depth = 2000  # /market/history/trade: the latest 2000, nothing older

    def routes(self) -> list[web.RouteDef]:
        return [web.get(self.path("ws"), self.websocket), web.get(self.path("feed"), self.websocket),
                web.get(self.path("market/history/trade"), self.history_trade)]

    async def history_trade(self, request: web.Request) -> web.Response:
        """``GET /market/history/trade?symbol=&size=``: the latest ``size`` ticks (a millisecond's trades each),
        newest first; HTTP 429 over the rate limit."""
        if not await self.rest_admit():
            return web.Response(status=429, text="Too Many Requests")
        symbol = self.symbol_of(request.query.get("symbol", ""))
        if symbol is None:
            return self.json_response({"status": "error", "err-code": "invalid-parameter",
                                       "err-msg": "invalid symbol", "data": None})
        size = int_param(request.query.get("size"), 1, 1, 2000)
        ticks: list[dict[str, Any]] = []
        for t in reversed(self.history(symbol)):
            if not ticks or ticks[-1]["ts"] != t.ts_ms:
                if len(ticks) == size:
                    break
                ticks.append({"id": t.trade_id, "ts": t.ts_ms, "data": []})
            ticks[-1]["data"].append({"id": wide_trade_id(t.trade_id, t.ts_ms), "trade-id": t.trade_id,
                                      "ts": t.ts_ms, "amount": t.size, "price": t.price, "direction": t.side})
        body = json.dumps({"status": "ok", "ch": f"market.{self.market_ids[symbol]}.trade.detail",
                           "ts": self.clock(), "data": ticks}, separators=(",", ":"))  # wide ids: not orjson
        return web.Response(text=body, content_type="application/json")

    # ---------------------------------------------------------------- topics

    def _parse_topic(self, topic: str) -> tuple[str, str, int] | None:
        """``market.btcusdt.mbp.150`` -> ("mbp", "BTC-USDT", 150); ``...trade.detail`` -> ("trade", sym, 0)."""
        parts = topic.split(".")
        if len(parts) != 4 or parts[0] != "market":
            return None
        symbol = self.symbol_of(parts[1])
        if symbol is None:
            return None
        if parts[2] == "mbp" and parts[3].isdigit() and int(parts[3]) in self.book_depths:
            return ("mbp", symbol, int(parts[3]))
        if parts[2:] == ["trade", "detail"]:
            return ("trade", symbol, 0)
        return None

    def _error(self, conn: Connection, req_id: Any, message: str) -> None:
        conn.send(gz({"status": "error", "ts": self.clock(), "id": req_id, "err-code": "bad-request",
                      "err-msg": message}))

    # ------------------------------------------------------------- websocket

    async def on_text(self, conn: Connection, text: str) -> None:
        msg: dict[str, Any] = loads(text)
        if "pong" in msg:
            conn.state["last_pong"] = msg["pong"]
            return
        req_id = msg.get("id")
        for op in ("sub", "unsub", "req"):
            if op in msg:
                break
        else:
            self._error(conn, req_id, f"unknown request {text[:80]}")
            return
        name = str(msg[op])
        parsed = self._parse_topic(name)
        if parsed is None:
            self._error(conn, req_id, f"invalid topic {name}")
            return
        kind, symbol, depth = parsed
        if op == "sub":
            if kind == "mbp":
                self.window(symbol, depth)  # the channel exists from now on
            conn.send(gz({"id": req_id, "status": "ok", "subbed": name, "ts": self.clock()}))
            self.subscribe(conn, parsed)
        elif op == "unsub":
            conn.send(gz({"id": req_id, "status": "ok", "unsubbed": name, "ts": self.clock()}))
            self.unsubscribe(conn, parsed)
        elif kind == "mbp":
            bids, asks = self.window(symbol, depth).snapshot()
            data = {"seqNum": self.markets[symbol].seq, "bids": _levels(bids), "asks": _levels(asks)}
            conn.send(gz({"id": req_id, "rep": name, "status": "ok", "ts": self.clock(), "data": data}))
        else:
            self._error(conn, req_id, f"req is not supported for {name}")

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.ping_interval)
            frame = gz({"ping": self.clock()})
            for conn in tuple(self.connections):
                conn.send(frame)

    def malformed_frame(self, conn: Connection) -> bytes:
        return gzip.compress(b'{"ch":"market.btcusdt.mbp.150","ts":17', mtime=0)

    # ---------------------------------------------------------------- market

    def send_book(self, symbol: str, depth: int, bids: list[Level], asks: list[Level], seq: int, ts_ms: int,
                  *, settled: bool = True) -> None:
        ch = f"market.{self.market_ids[symbol]}.mbp.{depth}"
        tick = {"seqNum": seq, "prevSeqNum": seq - 1, "bids": _levels(bids), "asks": _levels(asks)}
        self.broadcast(("mbp", symbol, depth), gz({"ch": ch, "ts": ts_ms, "tick": tick}))

    def send_trades(self, symbol: str, trades: list[SimTrade], ts_ms: int) -> None:
        data = [
            {"id": wide_trade_id(t.trade_id, t.ts_ms), "ts": t.ts_ms, "tradeId": t.trade_id, "amount": t.size,
             "price": t.price, "direction": t.side}
            for t in trades
        ]
        ch = f"market.{self.market_ids[symbol]}.trade.detail"
        tick = {"id": trades[-1].trade_id, "ts": ts_ms, "data": data}
        self.broadcast(("trade", symbol, 0), gz({"ch": ch, "ts": ts_ms, "tick": tick}))


def _levels(levels: list[Level]) -> list[list[float]]:
    return [[p, s] for p, s in levels]


VENUE = HtxVenue
