"""KuCoin classic spot: bullet-public REST, then ``/market/level2`` deltas over a REST snapshot.

ccxt first asks for a token and an endpoint (``POST /kucoin/api/v1/bullet-public``)::

    {"code":"200000","data":{"token":"sim-1","instanceServers":[{"endpoint":
     "ws://127.0.0.1:8765/kucoin/endpoint","encrypt":true,"protocol":"websocket",
     "pingInterval":18000,"pingTimeout":10000}]}}

and connects to ``endpoint?token=..&connectId=..``. The server greets with
``{"id":"<connectId>","type":"welcome"}``; ccxt pings ``{"id":"7","type":"ping"}`` and
gets ``{"id":"7","type":"pong","timestamp":<us>}``. Subscribe and ack (the ack
resets ccxt's book and its delta cache)::

    {"id":"1","type":"subscribe","topic":"/market/level2:BTC-USDT","response":true}
    {"id":"1","type":"ack"}

Deltas of the 100-level window, one per market update (``sequenceStart`` =
``sequenceEnd`` = the update's sequence; size "0" deletes)::

    {"type":"message","topic":"/market/level2:BTC-USDT","subject":"trade.l2update",
     "data":{"changes":{"asks":[["30003.4","0","1004494"]],"bids":[["29999","3.8756","1004494"]]},
     "sequenceEnd":1004494,"sequenceStart":1004494,"symbol":"BTC-USDT","time":1795460198530}}

After 5 cached deltas ccxt fetches the snapshot, the same window
(``GET /kucoin/api/v1/market/orderbook/level2_100?symbol=BTC-USDT``, also ``_20``)::

    {"code":"200000","data":{"time":1795460198531,"sequence":"1004494",
     "bids":[["29999.9","1.1311"]],"asks":[["30000.1","0.6128"]]}}

Trades (``time`` in nanoseconds)::

    {"type":"message","topic":"/market/match:BTC-USDT","subject":"trade.l3match",
     "data":{"makerOrderId":"m5000891","price":"29999.9","sequence":"1004495","side":"sell",
     "size":"0.1859","symbol":"BTC-USDT","takerOrderId":"t5000891","time":"1795460198471000000",
     "tradeId":"6571e0c2a3f09d1b2c4e5f60","type":"match"}}

Trade ids are 24-hex-digit object ids: not numbers, not in trade order.

REST trade history (ccxt's ``fetch_trades``): ``GET /kucoin/api/v1/market/histories?symbol=BTC-USDT`` - the
last 100 trades, oldest first, no paging and no trade id (``sequence`` only; ccxt's trade ``id`` is None)::

    {"code":"200000","data":[{"sequence":"5000891","price":"29999.9","size":"0.1859","side":"sell",
     "time":1795460198471000000}]}

Over the rate limit: HTTP 429 ``{"code":"429000",...}`` (ccxt: ``RateLimitExceeded``).

What ccxt does under each fault:

* ``gap``: nothing visible. After the sync ccxt only drops stale deltas
  (``sequenceEnd <= nonce``); the lost levels stay wrong until a resubscription.
* ``stall``: the same as ``gap`` for the lost deltas; ccxt's own ping (every
  ``pingInterval``) goes unanswered, so after 2 intervals (36 s) ``RequestTimeout``
  (read in ccxt, not run).
* ``malformed``: truncated JSON; ccxt's JSON parse raises in the receive loop,
  which dies (the watch hangs until the client is closed).
* ``crossed``: applied as sent, then removed by the next delta.
* ``duplicate_trade``: returned twice (same ``tradeId``).
* ``drop``: ``NetworkError``; the next watch reconnects (ccxt keeps the endpoint
  from the first bullet call), resubscribes and syncs again through REST (the ack
  resets ccxt's book).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from coby.simulator.market import Level, SimTrade
from coby.simulator.venues._ids import object_id
from coby.simulator.venues._windowed import WindowedVenue
from coby.simulator.venues.base import Connection, dumps, fmt_num, loads

DEPTH = 100  # the delta window: as deep as the level2_100 snapshot
PING_INTERVAL_MS = 18_000
OK = "200000"


class KucoinVenue(WindowedVenue):
    name = "kucoin"
    extra_faults = frozenset({"gap"})
    book_depths = frozenset({DEPTH})
    history_depth = 100  # /market/histories: the last 100 trades

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(self.path("api/v1/market/histories"), self.histories),
            web.post(self.path("api/v1/bullet-public"), self.bullet_public),
            web.get(self.path(r"api/v1/market/orderbook/level2_{limit:\d+}"), self.level2),
            web.get(self.path("endpoint"), self.websocket),
        ]

    # ------------------------------------------------------------------ rest

    async def bullet_public(self, request: web.Request) -> web.Response:
        await self.wait_unstalled()
        server = {
            "endpoint": f"ws://{request.host}{self.path('endpoint')}",
            "encrypt": True,
            "protocol": "websocket",
            "pingInterval": PING_INTERVAL_MS,
            "pingTimeout": 10_000,
        }
        return self.json_response({"code": OK, "data": {"token": f"sim-{self.clock()}", "instanceServers": [server]}})

    async def histories(self, request: web.Request) -> web.Response:
        """``GET /api/v1/market/histories?symbol=``: the last 100 trades, oldest first (no id, no paging)."""
        if not await self.rest_admit():
            return self.json_response({"code": "429000", "msg": "Too many requests. System-level rate limit "
                                       "exceeded."}, 429)
        symbol = self.symbol_of(request.query.get("symbol", ""))
        if symbol is None:
            return self.json_response({"code": "400100", "msg": "symbol not exists"})
        m = self.markets[symbol]
        return self.json_response({"code": OK, "data": [
            {"sequence": str(t.trade_id), "price": fmt_num(t.price, m.price_decimals),
             "size": fmt_num(t.size, m.size_decimals), "side": t.side, "time": t.ts_ms * 1_000_000}
            for t in self.history(symbol)]})

    async def level2(self, request: web.Request) -> web.Response:
        await self.wait_unstalled()
        limit = int(request.match_info["limit"])
        symbol = self.symbol_of(request.query.get("symbol", ""))
        if limit not in (20, 100):
            return self.json_response({"code": "400100", "msg": "level2 depth must be 20 or 100"})
        if symbol is None:
            return self.json_response({"code": "400100", "msg": "symbol not exists"})
        bids, asks = self.window(symbol, DEPTH).snapshot()
        data = {
            "time": self.clock(),
            "sequence": str(self.markets[symbol].seq),
            "bids": self._levels(symbol, bids[:limit]),
            "asks": self._levels(symbol, asks[:limit]),
        }
        return self.json_response({"code": OK, "data": data})

    def _levels(self, symbol: str, levels: list[Level], seq: int | None = None) -> list[list[str]]:
        m = self.markets[symbol]
        pd, sd = m.price_decimals, m.size_decimals
        if seq is None:
            return [[fmt_num(p, pd), fmt_num(s, sd)] for p, s in levels]
        return [[fmt_num(p, pd), fmt_num(s, sd), str(seq)] for p, s in levels]

    # ------------------------------------------------------------- websocket

    async def on_open(self, conn: Connection) -> None:
        connect_id = conn.request.query.get("connectId") or f"sim{conn.id}"
        conn.send_json({"id": connect_id, "type": "welcome"})

    async def on_text(self, conn: Connection, text: str) -> None:
        msg: dict[str, Any] = loads(text)
        kind, req_id = msg.get("type"), str(msg.get("id", ""))
        if kind == "ping":
            conn.send_json({"id": req_id, "type": "pong", "timestamp": self.clock() * 1000})
            return
        if kind not in ("subscribe", "unsubscribe"):
            conn.send_json({"id": req_id, "type": "error", "code": 415, "data": "type is not supported"})
            return
        channel, _, ids = str(msg.get("topic", "")).partition(":")
        symbols = [s for i in ids.split(",") if (s := self.symbol_of(i)) is not None]
        if channel not in ("/market/level2", "/market/match") or len(symbols) != len(ids.split(",")):
            conn.send_json({"id": req_id, "type": "error", "code": 404, "data": f"topic {msg.get('topic')} is not found"})
            return
        if msg.get("response", True):
            conn.send_json({"id": req_id, "type": "ack"})
        for symbol in symbols:
            topic = (channel, symbol)
            if kind == "unsubscribe":
                self.unsubscribe(conn, topic)
                continue
            if channel == "/market/level2":
                self.window(symbol, DEPTH)
            self.subscribe(conn, topic)

    # ---------------------------------------------------------------- market

    def send_book(self, symbol: str, depth: int, bids: list[Level], asks: list[Level], seq: int, ts_ms: int,
                  *, settled: bool = True) -> None:
        mid = self.market_ids[symbol]
        data = {
            "changes": {"asks": self._levels(symbol, asks, seq), "bids": self._levels(symbol, bids, seq)},
            "sequenceEnd": seq,
            "sequenceStart": seq,
            "symbol": mid,
            "time": ts_ms,
        }
        frame = {"type": "message", "topic": f"/market/level2:{mid}", "subject": "trade.l2update", "data": data}
        self.broadcast(("/market/level2", symbol), dumps(frame))

    def send_trades(self, symbol: str, trades: list[SimTrade], ts_ms: int) -> None:
        m, mid = self.markets[symbol], self.market_ids[symbol]
        for t in trades:
            data = {
                "makerOrderId": f"m{t.trade_id}",
                "price": fmt_num(t.price, m.price_decimals),
                "sequence": str(m.seq),
                "side": t.side,
                "size": fmt_num(t.size, m.size_decimals),
                "symbol": mid,
                "takerOrderId": f"t{t.trade_id}",
                "time": str(t.ts_ms * 1_000_000),
                "tradeId": object_id(symbol, t.trade_id, t.ts_ms),
                "type": "match",
            }
            frame = {"type": "message", "topic": f"/market/match:{mid}", "subject": "trade.l3match", "data": data}
            self.broadcast(("/market/match", symbol), dumps(frame))


VENUE = KucoinVenue
