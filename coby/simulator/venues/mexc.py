"""MEXC spot v3: JSON control frames, **protobuf** data frames, REST depth snapshot.

ccxt subscribes to the aggregated protobuf channels (interval ``10ms`` or ``100ms``)::

    {"method":"SUBSCRIPTION","params":["spot@public.aggre.depth.v3.api.pb@100ms@BTCUSDT"]}
    {"id":0,"code":0,"msg":"spot@public.aggre.depth.v3.api.pb@100ms@BTCUSDT"}

Data frames are binary ``PushDataV3ApiWrapper`` messages (encoded with the gencode
ccxt ships, see :mod:`coby.simulator.venues._mexc_pb`). A book frame per market
update carries the changes of the 100-level window, ``fromVersion`` =
``toVersion`` = the update's sequence (quantity "0" deletes); as ccxt decodes it::

    {"channel":"spot@public.aggre.depth.v3.api.pb@100ms@BTCUSDT","symbol":"BTCUSDT",
     "sendTime":"1795460198530","publicAggreDepths":{"asks":[{"price":"30000.1","quantity":"0"}],
     "bids":[{"price":"29999.9","quantity":"1.8683"}],"eventType":"spot@public.aggre.depth.v3.api.pb@100ms",
     "fromVersion":"1004475","toVersion":"1004475"}}

After 25 cached frames ccxt fetches ``GET /mexc/api/v3/depth?symbol=BTCUSDT`` (the
same window; ``limit`` trims it)::

    {"lastUpdateId":1004475,"bids":[["29999.9","1.8683"]],"asks":[["30000.1","0.6128"]],"timestamp":1795460198531}

Trades (no trade id on this channel: ccxt's trade ``id`` is None)::

    {"channel":"spot@public.aggre.deals.v3.api.pb@100ms@BTCUSDT","symbol":"BTCUSDT","sendTime":"1795460198471",
     "publicAggreDeals":{"deals":[{"price":"29999.9","quantity":"0.1986","tradeType":2,"time":"1795460198471"}],
     "eventType":"spot@public.aggre.deals.v3.api.pb@100ms"}}

REST trade history (ccxt's ``fetch_trades`` calls ``aggTrades``):
``GET /mexc/api/v3/aggTrades?symbol=BTCUSDT&startTime=&endTime=&limit=`` - ``startTime`` and ``endTime``
together (else HTTP 400 ``{"code":-1128}``): the trades of [startTime, endTime], oldest first, at most
``limit`` (default 500, at most 1000); neither: the latest ``limit``. No trade id, as on the real venue
(ccxt makes one from time, side, amount and price)::

    [{"a":null,"f":null,"l":null,"p":"29999.9","q":"0.1986","T":1795460198471,"m":true,"M":true}]

Over the rate limit: HTTP 429 ``{"code":429,...}`` (ccxt: ``RateLimitExceeded``).

Keepalive: ccxt sends ``{"method":"ping"}`` every 8 s and needs ``{"id":0,"code":0,"msg":"PONG"}``
within 16 s, or it raises ``RequestTimeout``. ccxt needs ``protobuf`` 5.29.x to decode
(without it ``NotSupported`` is raised in the receive loop and the watch hangs).

What ccxt does under each fault (all run in ``tests/test_simulator_venues2.py``
unless marked "read"):

* ``gap``: nothing visible. After the sync ccxt only drops frames with
  ``fromVersion`` below its nonce; the lost levels stay wrong until a resync.
* ``stall``: lost frames, as ``gap``; pongs are discarded too, so ccxt raises
  ``RequestTimeout`` after 16 s of stall (read, not run: the test would be slow).
* ``drop``: ``NetworkError``; the next watch reconnects and resubscribes but does
  **not** resync: ccxt takes the ack's ``msg.split('@')[2]`` (``'100ms'``) for the
  market id and resets a stray ``orderbooks['100ms']``, so new deltas land on the
  stale book and the levels missed while disconnected stay wrong. Recovery:
  forget the book (``ex.orderbooks = {}``) before watching again, which makes ccxt
  cache 25 deltas and fetch the REST snapshot.
* ``malformed``: a binary frame that is not protobuf; ``ParseFromString`` raises
  in the receive loop, which dies (the watch hangs). Recovery: close, forget the
  book, watch again.
* ``crossed``: applied as sent, then removed by the next frame.
* ``duplicate_trade``: returned twice (both with id None: dedup on time, price, size).
* ``bad_checksum``: not offered, the protocol has none.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from coby.simulator.history import in_time, int_param
from coby.simulator.market import Level, SimTrade
from coby.simulator.venues._mexc_pb import MALFORMED, encode_deals, encode_depth
from coby.simulator.venues._windowed import WindowedVenue
from coby.simulator.venues.base import Connection, fmt_num, loads

DEPTH = 100  # the delta window, as deep as the default REST snapshot
DEPTH_CHANNEL = "spot@public.aggre.depth.v3.api.pb"
DEALS_CHANNEL = "spot@public.aggre.deals.v3.api.pb"
INTERVALS = ("10ms", "100ms")


class MexcVenue(WindowedVenue):
    name = "mexc"
    extra_faults = frozenset({"gap"})
    book_depths = frozenset({DEPTH})

    def routes(self) -> list[web.RouteDef]:
        return [web.get(self.path("ws"), self.websocket), web.get(self.path("api/v3/depth"), self.depth),
                web.get(self.path("api/v3/aggTrades"), self.agg_trades)]

    def _levels(self, symbol: str, levels: list[Level]) -> list[tuple[str, str]]:
        m = self.markets[symbol]
        return [(fmt_num(p, m.price_decimals), fmt_num(s, m.size_decimals)) for p, s in levels]

    # ------------------------------------------------------------------ rest

    async def depth(self, request: web.Request) -> web.Response:
        await self.wait_unstalled()
        symbol = self.symbol_of(request.query.get("symbol", ""))
        if symbol is None:
            return self.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        limit = int(request.query.get("limit", str(DEPTH)))
        if not 1 <= limit <= 5000:
            return self.json_response({"code": 700002, "msg": "limit must be in [1, 5000]"}, status=400)
        bids, asks = self.window(symbol, DEPTH).snapshot()
        return self.json_response(
            {
                "lastUpdateId": self.markets[symbol].seq,
                "bids": self._levels(symbol, bids[:limit]),
                "asks": self._levels(symbol, asks[:limit]),
                "timestamp": self.clock(),
            }
        )

    async def agg_trades(self, request: web.Request) -> web.Response:
        """``GET /api/v3/aggTrades?symbol=&startTime=&endTime=&limit=``: see the module docstring."""
        if not await self.rest_admit():
            return self.json_response({"code": 429, "msg": "Too Many Requests"}, 429)
        q = request.query
        symbol = self.symbol_of(q.get("symbol", ""))
        if symbol is None:
            return self.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        limit = int_param(q.get("limit"), 500, 1, 1000)
        start, end = int_param(q.get("startTime"), None, 0, 1 << 62), int_param(q.get("endTime"), None, 0, 1 << 62)
        if (start is None) != (end is None):
            return self.json_response({"code": -1128, "msg": "Combination of optional parameters invalid."}, 400)
        trades = self.history(symbol)
        page = in_time(trades, start, end)[:limit] if start is not None else list(trades[-limit:])
        m = self.markets[symbol]
        return self.json_response([
            {"a": None, "f": None, "l": None, "p": fmt_num(t.price, m.price_decimals),
             "q": fmt_num(t.size, m.size_decimals), "T": t.ts_ms, "m": t.side == "sell", "M": True} for t in page])

    # ------------------------------------------------------------- websocket

    def _parse(self, param: str) -> tuple[str, str, str] | None:
        """``spot@public.aggre.depth.v3.api.pb@100ms@BTCUSDT`` -> (channel, interval, symbol)."""
        parts = param.rsplit("@", 2)
        if len(parts) != 3 or parts[0] not in (DEPTH_CHANNEL, DEALS_CHANNEL) or parts[1] not in INTERVALS:
            return None
        symbol = self.symbol_of(parts[2])
        return None if symbol is None else (parts[0], parts[1], symbol)

    async def on_text(self, conn: Connection, text: str) -> None:
        msg: dict[str, Any] = loads(text)
        method = str(msg.get("method", "")).upper()
        if method == "PING":
            conn.send_json({"id": 0, "code": 0, "msg": "PONG"})
            return
        params = [str(p) for p in msg.get("params") or []]
        if method not in ("SUBSCRIPTION", "UNSUBSCRIPTION") or not params:
            conn.send_json({"id": 0, "code": 0, "msg": f"Not Subscribed successfully! {params}. Reason: bad request"})
            return
        topics = [self._parse(p) for p in params]
        bad = [p for p, t in zip(params, topics) if t is None]
        if bad:
            conn.send_json({"id": 0, "code": 0, "msg": f"Not Subscribed successfully! {bad}.  Reason: Blocked! "})
            return
        conn.send_json({"id": 0, "code": 0, "msg": ",".join(params)})
        for topic in topics:
            if topic is None:
                continue
            if method == "UNSUBSCRIPTION":
                self.unsubscribe(conn, topic)
                continue
            if topic[0] == DEPTH_CHANNEL:
                self.window(topic[2], DEPTH)
            self.subscribe(conn, topic)

    def malformed_frame(self, conn: Connection) -> bytes:
        return MALFORMED

    # ---------------------------------------------------------------- market

    def send_book(self, symbol: str, depth: int, bids: list[Level], asks: list[Level], seq: int, ts_ms: int,
                  *, settled: bool = True) -> None:
        mid = self.market_ids[symbol]
        for interval in INTERVALS:
            topic = (DEPTH_CHANNEL, interval, symbol)
            if self.subscribers(topic):
                frame = encode_depth(f"{DEPTH_CHANNEL}@{interval}", mid, self._levels(symbol, bids),
                                     self._levels(symbol, asks), seq, ts_ms)
                self.broadcast(topic, frame)

    def send_trades(self, symbol: str, trades: list[SimTrade], ts_ms: int) -> None:
        m, mid = self.markets[symbol], self.market_ids[symbol]
        deals = [(fmt_num(t.price, m.price_decimals), fmt_num(t.size, m.size_decimals), t.side, t.ts_ms) for t in trades]
        for interval in INTERVALS:
            topic = (DEALS_CHANNEL, interval, symbol)
            if self.subscribers(topic):
                self.broadcast(topic, encode_deals(f"{DEALS_CHANNEL}@{interval}", mid, deals, ts_ms))


VENUE = MexcVenue
