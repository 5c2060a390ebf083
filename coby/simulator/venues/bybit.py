"""Bybit v5 spot public: ``/bybit/v5/public/spot``, topics ``orderbook.{1,50,200,1000}`` and ``publicTrade``.

ccxt decides spot vs contract from ``'spot' in url``. Subscribe / ack::

    {"op":"subscribe","req_id":"1","args":["orderbook.50.BTCUSDT"]}
    {"success":true,"ret_msg":"subscribe","conn_id":"0000002a","req_id":"1","op":"subscribe"}

A book topic starts with a snapshot of the top N levels, then deltas of that
N-level window (a level pushed out of the window is deleted with size ``"0"``, the
one that enters is sent); ``u`` is the update id and ``seq`` the cross sequence::

    {"topic":"orderbook.50.BTCUSDT","type":"snapshot","ts":1795460196948,"data":{"s":"BTCUSDT",
      "b":[["29999.9","4.3253"]],"a":[["30000.1","2.831"]],"u":1004373,"seq":1004373},"cts":1795460196947}
    {"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1795460197048,"data":{"s":"BTCUSDT",
      "b":[],"a":[["30000.1","0"]],"u":1004374,"seq":1004374},"cts":1795460197047}

``orderbook.1`` sends a snapshot every time. Trades::

    {"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1795460197048,"data":[{"T":1795460197048,
      "s":"BTCUSDT","S":"Sell","v":"0.3796","p":"29999.9","L":"MinusTick","i":"8f0e62a4-1c3b-4d55-9a77-0b6f3e2d1c90","BT":false}]}

Trade ids are UUIDs (not numbers, not in trade order), as bybit spot sends them.

Keepalive: ``{"req_id":"7","op":"ping"}`` -> ``{"success":true,"ret_msg":"pong",
"conn_id":"..","req_id":"7","op":"ping"}``. Faults: ``gap`` -> one delta is lost;
ccxt ignores ``u``/``seq``, so its book silently diverges until it reconnects;
``malformed`` -> truncated JSON, which kills ccxt's receive loop (the watch hangs).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from coby.simulator.history import int_param
from coby.simulator.market import Level, MarketUpdate
from coby.simulator.venues._ids import uuid_id
from coby.simulator.venues.base import Connection, Venue, dumps, fmt_num, loads

BOOK_DEPTHS = (1, 50, 200, 1000)


class BybitVenue(Venue):
    name = "bybit"
    extra_faults = frozenset({"gap"})
    history_depth = 60  # spot recent-trade serves the latest 60 and nothing older (linear: 1000)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._last_trade: dict[str, tuple[float, str]] = {}  # symbol -> (price, tick direction)

    def routes(self) -> list[web.RouteDef]:
        return [web.get(self.path("v5/public/spot"), self.websocket),
                web.get(self.path("v5/market/recent-trade"), self.recent_trades)]

    # ------------------------------------------------------------------ rest

    async def recent_trades(self, request: web.Request) -> web.Response:
        """``GET /v5/market/recent-trade?category=spot&symbol=&limit=``: the latest ``limit`` trades (spot: 1..60,
        default 60; bybit's other categories allow 1000), newest first, no paging; over the rate limit
        ``retCode`` 10006 (HTTP 200), as bybit does."""
        now = self.clock()
        if not await self.rest_admit():
            return self.json_response({"retCode": 10006, "retMsg": "Too many visits!", "result": {},
                                       "retExtInfo": {}, "time": now})
        q = request.query
        symbol = self.symbol_of(q.get("symbol", ""))
        if symbol is None:
            return self.json_response({"retCode": 10001, "retMsg": "Not supported symbols", "result": {},
                                       "retExtInfo": {}, "time": now})
        limit = int_param(q.get("limit"), 60, 1, 60)
        m = self.markets[symbol]
        page = list(reversed(self.history(symbol)[-limit:]))
        return self.json_response({"retCode": 0, "retMsg": "OK", "result": {"category": "spot", "list": [
            {"execId": uuid_id(symbol, t.trade_id), "symbol": self.market_ids[symbol],
             "price": fmt_num(t.price, m.price_decimals), "size": fmt_num(t.size, m.size_decimals),
             "side": "Buy" if t.side == "buy" else "Sell", "time": str(t.ts_ms), "isBlockTrade": False}
            for t in page]}, "retExtInfo": {}, "time": now})

    # --------------------------------------------------------------- frames

    def _levels(self, symbol: str, levels: list[Level]) -> list[list[str]]:
        m = self.markets[symbol]
        return [[fmt_num(p, m.price_decimals), fmt_num(s, m.size_decimals)] for p, s in levels]

    def _book_frame(self, symbol: str, depth: int, kind: str, bids: list[Level], asks: list[Level], seq: int) -> str:
        ts = self.clock()
        mid = self.market_ids[symbol]
        data = {"s": mid, "b": self._levels(symbol, bids), "a": self._levels(symbol, asks), "u": seq, "seq": seq}
        return dumps({"topic": f"orderbook.{depth}.{mid}", "type": kind, "ts": ts, "data": data, "cts": ts - 1})

    def _topic(self, topic: str) -> tuple[str, int, str] | None:
        """``orderbook.50.BTCUSDT`` -> ("orderbook", 50, "BTC-USDT"); None if invalid."""
        parts = topic.split(".")
        if len(parts) == 3 and parts[0] == "orderbook" and parts[1].isdigit() and int(parts[1]) in BOOK_DEPTHS:
            symbol = self.symbol_of(parts[2])
            return None if symbol is None else ("orderbook", int(parts[1]), symbol)
        if len(parts) == 2 and parts[0] == "publicTrade":
            symbol = self.symbol_of(parts[1])
            return None if symbol is None else ("publicTrade", 0, symbol)
        return None

    # ------------------------------------------------------------ websocket

    async def on_text(self, conn: Connection, text: str) -> None:
        msg: dict[str, Any] = loads(text)
        op, req_id = msg.get("op"), msg.get("req_id")
        ack: dict[str, Any] = {"success": True, "ret_msg": "", "conn_id": f"{conn.id:08x}", "op": op}
        if req_id is not None:
            ack["req_id"] = str(req_id)
        if op == "ping":
            conn.send_json({**ack, "ret_msg": "pong"})
            return
        if op not in ("subscribe", "unsubscribe"):
            conn.send_json({**ack, "success": False, "ret_msg": f"Invalid op: {op}"})
            return
        topics = [(t, self._topic(str(t))) for t in msg.get("args") or []]
        bad = [t for t, parsed in topics if parsed is None]
        if bad or not topics:
            conn.send_json({**ack, "success": False, "ret_msg": f"Invalid topic :{bad}"})
            return
        conn.send_json({**ack, "ret_msg": op})
        for _, (kind, depth, symbol) in topics:  # type: ignore[misc]
            key = (kind, depth, symbol)
            if op == "unsubscribe":
                self.unsubscribe(conn, key)
                continue
            if kind == "orderbook":
                bids, asks = self.window(symbol, depth).snapshot()
                conn.send(self._book_frame(symbol, depth, "snapshot", bids, asks, self.markets[symbol].seq))
            self.subscribe(conn, key)

    # --------------------------------------------------------------- market

    def on_update(self, symbol: str, update: MarketUpdate) -> None:
        changes = self.advance_windows(symbol)
        if update.has_book:  # a gap-stripped update moved the windows silently: a lost message
            for depth, (bids, asks) in changes.items():
                if depth == 1:  # orderbook.1 is a snapshot every time
                    bids, asks = self.window(symbol, 1).snapshot()
                    frame = self._book_frame(symbol, 1, "snapshot", bids, asks, update.seq)
                else:
                    frame = self._book_frame(symbol, depth, "delta", bids, asks, update.seq)
                self.broadcast(("orderbook", depth, symbol), frame)
        if update.trades:
            self._send_trades(symbol, update)

    def _send_trades(self, symbol: str, update: MarketUpdate) -> None:
        m = self.markets[symbol]
        last = self._last_trade
        data = []
        for t in update.trades:
            prev, prev_dir = last.get(symbol, (t.price, "ZeroPlusTick"))
            direction = (
                "PlusTick" if t.price > prev else "MinusTick" if t.price < prev else
                "ZeroPlusTick" if prev_dir.endswith("PlusTick") else "ZeroMinusTick"
            )
            last[symbol] = (t.price, direction)
            data.append(
                {
                    "T": t.ts_ms,
                    "s": self.market_ids[symbol],
                    "S": "Buy" if t.side == "buy" else "Sell",
                    "v": fmt_num(t.size, m.size_decimals),
                    "p": fmt_num(t.price, m.price_decimals),
                    "L": direction,
                    "i": uuid_id(symbol, t.trade_id),
                    "BT": False,
                }
            )
        topic = f"publicTrade.{self.market_ids[symbol]}"
        self.broadcast(("publicTrade", 0, symbol), dumps({"topic": topic, "type": "snapshot", "ts": update.ts_ms, "data": data}))

    def inject_crossed(self, symbol: str) -> None:
        market = self.markets[symbol]
        for (sym, depth), window in list(self._windows.items()):
            if sym != symbol or depth == 1:
                continue
            bids, asks = window.crossed_changes()
            u1 = market.unapplied(bids=bids)
            self.broadcast(("orderbook", depth, symbol), self._book_frame(symbol, depth, "delta", bids, asks, u1.seq))
            bids2, asks2 = window.uncrossed_changes(bids[0])
            u2 = market.unapplied(bids=bids2)
            self.broadcast(("orderbook", depth, symbol), self._book_frame(symbol, depth, "delta", bids2, asks2, u2.seq))


VENUE = BybitVenue
