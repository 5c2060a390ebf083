"""Binance spot: raw streams over ``/binance/stream/ws/<n>``, REST depth snapshot.

ccxt.pro opens one connection per stream index (book and trades get different
ones) and subscribes with::

    {"method":"SUBSCRIBE","params":["btcusdt@depth@100ms"],"id":1}

The ack ``{"result":null,"id":1}`` is mandatory: it makes ccxt create the book and
fetch ``GET /binance/api/v3/depth?symbol=BTCUSDT&limit=1000``::

    {"lastUpdateId":4933433,"bids":[["29985.10000000","0.12370000"]],"asks":[["29985.50000000","0.12360000"]]}

Deltas carry one market update each, ``U == u == seq`` (quantity ``"0"`` deletes)::

    {"e":"depthUpdate","E":1795460196948,"s":"BTCUSDT","U":4933434,"u":4933434,
     "b":[["29997.50000000","0.91710000"]],"a":[["30004.60000000","0.00000000"]]}

Trades (``m`` true = the buyer was the maker, i.e. the taker sold)::

    {"e":"trade","E":1795460196948,"s":"BTCUSDT","t":5000861,"p":"30000.10000000",
     "q":"0.43470000","T":1795460196948,"m":false,"M":true}

``@aggTrade`` streams get ``{"e":"aggTrade",...,"a":id,"f":id,"l":id}`` frames.
Keepalive is ws-level ping/pong (aiohttp answers). Faults: ``gap`` -> ccxt raises
``ChecksumError`` and recovers on the next ``watch_order_book`` (new snapshot);
``malformed`` (truncated JSON) -> ccxt's JSON parse raises inside the receive loop,
which dies: the watch hangs until the client is closed.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from coby.simulator.history import in_time, int_param
from coby.simulator.market import Level, MarketUpdate
from coby.simulator.venues.base import Connection, Venue, dumps, loads


def _levels(levels: list[Level]) -> list[list[str]]:
    return [[f"{p:.8f}", f"{s:.8f}"] for p, s in levels]


class BinanceVenue(Venue):
    name = "binance"
    extra_faults = frozenset({"gap"})

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(self.path("stream/ws/{index}"), self.websocket),
            web.get(self.path("stream/ws"), self.websocket),
            web.get(self.path("ws"), self.websocket),
            web.get(self.path("api/v3/depth"), self.depth),
            web.get(self.path("api/v3/aggTrades"), self.agg_trades),
        ]

    # ------------------------------------------------------------------ rest

    async def depth(self, request: web.Request) -> web.Response:
        await self.wait_unstalled()
        symbol = self.symbol_of(request.query.get("symbol", ""))
        if symbol is None:
            return self.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        limit = int(request.query.get("limit", "100"))
        if not 1 <= limit <= 5000:
            return self.json_response({"code": -1100, "msg": "Illegal characters found in parameter 'limit'"}, 400)
        market = self.markets[symbol]
        bids, asks = market.snapshot(limit)
        return self.json_response({"lastUpdateId": market.seq, "bids": _levels(bids), "asks": _levels(asks)})

    async def agg_trades(self, request: web.Request) -> web.Response:
        """``GET /api/v3/aggTrades?symbol=&fromId=&startTime=&endTime=&limit=`` (limit 500, at most 1000):
        oldest first, from ``fromId`` (inclusive), or within [startTime, endTime] (at most an hour
        apart), else the latest ``limit``; HTTP 429 ``{"code":-1003,...}`` over the rate limit."""
        if not await self.rest_admit():
            return self.json_response({"code": -1003, "msg": "Too many requests; current limit is exceeded."}, 429)
        q = request.query
        symbol = self.symbol_of(q.get("symbol", ""))
        if symbol is None:
            return self.json_response({"code": -1121, "msg": "Invalid symbol."}, status=400)
        limit = int_param(q.get("limit"), 500, 1, 1000)
        start, end = int_param(q.get("startTime"), None, 0, 1 << 62), int_param(q.get("endTime"), None, 0, 1 << 62)
        if start is not None and end is not None and end - start > 3_600_000:
            return self.json_response({"code": -1127, "msg": "More than 1 hours between startTime and endTime."}, 400)
        trades = self.history(symbol)
        from_id = int_param(q.get("fromId"), None, 0, 1 << 62)
        if from_id is not None:
            page = [t for t in trades if t.trade_id >= from_id][:limit]
        elif start is not None or end is not None:
            page = in_time(trades, start, end)[:limit]
        else:
            page = list(trades[-limit:])
        return self.json_response([
            {"a": t.trade_id, "p": f"{t.price:.8f}", "q": f"{t.size:.8f}", "f": t.trade_id, "l": t.trade_id,
             "T": t.ts_ms, "m": t.side == "sell", "M": True} for t in page])

    # ------------------------------------------------------------ websocket

    def _topic(self, stream: str) -> tuple[str, str] | None:
        """``btcusdt@depth@100ms`` -> ("depth", "BTC-USDT"); None if not served."""
        parts = stream.split("@")
        if len(parts) < 2:
            return None
        symbol = self.symbol_of(parts[0].upper())
        kind = parts[1]
        if symbol is None or kind not in ("depth", "trade", "aggTrade"):
            return None
        return (kind, symbol)

    async def on_text(self, conn: Connection, text: str) -> None:
        msg: dict[str, Any] = loads(text)
        method, req_id = msg.get("method"), msg.get("id")
        streams = msg.get("params") or []
        if method not in ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS"):
            conn.send_json({"error": {"code": 1, "msg": f"Unknown method {method!r}"}, "id": req_id})
            return
        if method == "LIST_SUBSCRIPTIONS":
            conn.send_json({"result": sorted(conn.state.get("streams", set())), "id": req_id})
            return
        topics = [self._topic(s) for s in streams]
        if not streams or any(t is None for t in topics):
            conn.send_json({"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": req_id})
            return
        names: set[str] = conn.state.setdefault("streams", set())
        conn.send_json({"result": None, "id": req_id})
        for stream, topic in zip(streams, topics):
            if method == "SUBSCRIBE":
                names.add(stream)
                self.subscribe(conn, topic)
            else:
                names.discard(stream)
                self.unsubscribe(conn, topic)

    # --------------------------------------------------------------- market

    def on_update(self, symbol: str, update: MarketUpdate) -> None:
        mid = self.market_ids[symbol]
        if update.has_book:
            self.broadcast(
                ("depth", symbol),
                dumps(
                    {
                        "e": "depthUpdate",
                        "E": update.ts_ms,
                        "s": mid,
                        "U": update.seq,
                        "u": update.seq,
                        "b": _levels(update.bids),
                        "a": _levels(update.asks),
                    }
                ),
            )
        for t in update.trades:
            common = {"E": update.ts_ms, "s": mid, "p": f"{t.price:.8f}", "q": f"{t.size:.8f}", "T": t.ts_ms}
            maker_buy = t.side == "sell"
            self.broadcast(("trade", symbol), dumps({"e": "trade", **common, "t": t.trade_id, "m": maker_buy, "M": True}))
            self.broadcast(
                ("aggTrade", symbol),
                dumps(
                    {"e": "aggTrade", **common, "a": t.trade_id, "f": t.trade_id, "l": t.trade_id, "m": maker_buy, "M": True}
                ),
            )


VENUE = BinanceVenue
