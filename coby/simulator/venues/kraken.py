"""Kraken WebSocket v2: ``/kraken/v2``, channels ``book`` (depth 10/25/100/500/1000) and ``trade``.

The wire uses the unified symbol (``BTC/USDT``). On connect::

    {"channel":"status","type":"update","data":[{"api_version":"v2","connection_id":42,"system":"online","version":"2.0.9"}]}

Subscribe (``depth`` omitted = 10) and ack::

    {"method":"subscribe","params":{"channel":"book","symbol":["BTC/USDT"]},"req_id":1}
    {"method":"subscribe","result":{"channel":"book","depth":10,"snapshot":true,"symbol":"BTC/USDT"},
     "success":true,"time_in":"2026-11-23T18:56:41.500000Z","time_out":"2026-11-23T18:56:41.500100Z","req_id":1}

Book snapshot, then updates of the depth window (the client trims to ``depth``
after every message: a level leaving the window is deleted, the one entering is
sent). ``checksum`` is the unsigned crc32 of the top 10 asks then top 10 bids,
each price and qty formatted with the pair's precision, ``.`` and leading zeros
removed::

    {"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USDT","bids":[{"price":29999.9,"qty":4.0723}],
      "asks":[{"price":30000.1,"qty":2.7061}],"checksum":69302303}]}
    {"channel":"book","type":"update","data":[{"symbol":"BTC/USDT","bids":[{"price":29999.7,"qty":1.9354}],
      "asks":[],"checksum":3402234614,"timestamp":"2026-11-23T18:56:41.520000Z"}]}

Trades (a snapshot of the last 50 on subscribe, then updates)::

    {"channel":"trade","type":"update","data":[{"symbol":"BTC/USDT","side":"sell","price":29999.9,"qty":0.3383,
      "ord_type":"market","trade_id":5000879,"timestamp":"2026-11-23T18:56:41.520000Z"}]}

``{"channel":"heartbeat"}`` about once a second to subscribed connections.
Keepalive: ``{"method":"ping","req_id":N}`` -> ``{"method":"pong","req_id":N,...}``
(ccxt pings every 6 s and gives up after 12 s). Faults: ``bad_checksum`` -> wrong
``checksum`` (ccxt's check is off by default, so nothing visible); ``malformed``
-> truncated JSON, which kills ccxt's receive loop (the watch hangs); no ``gap``
(the protocol has no sequence numbers).
"""

from __future__ import annotations

import asyncio
import zlib
from collections import deque
from typing import Any

from aiohttp import web

from coby.simulator.history import in_time, int_param
from coby.simulator.market import Level, MarketUpdate, SimTrade
from coby.simulator.venues.base import Connection, Venue, dumps, loads, rfc3339
from coby.symbols import canonical_to_unified, derive_market

BOOK_DEPTHS = (10, 25, 100, 500, 1000)
DEFAULT_DEPTH = 10
TRADE_SNAPSHOT = 50
QTY_DECIMALS = 8


def _strip(text: str) -> str:
    return text.replace(".", "").lstrip("0")


def kraken_checksum(bids: list[Level], asks: list[Level], price_decimals: int) -> int:
    """Kraken v2 book checksum: crc32 of top-10 asks then top-10 bids, as ``price qty`` digit strings."""
    parts = [
        _strip(f"{p:.{price_decimals}f}") + _strip(f"{q:.{QTY_DECIMALS}f}") for p, q in (*asks[:10], *bids[:10])
    ]
    return zlib.crc32("".join(parts).encode())


class KrakenVenue(Venue):
    name = "kraken"
    extra_faults = frozenset({"bad_checksum"})

    @classmethod
    def wire_id(cls, symbol: str) -> str:
        """WebSocket v2 subscribes by the unified symbol (``BTC/USDT``), not the REST id."""
        return canonical_to_unified(symbol)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # REST names markets by kraken's own ids (XBTUSDT), the v2 WebSocket by the unified symbol
        self._rest_ids = {derive_market(self.name, s, canonical_to_unified(s)).id: s for s in self.markets}
        # what the market traded before the simulator started: the first subscriber gets minutes-old trades
        self._recent: dict[str, deque[SimTrade]] = {
            s: deque(m.history, maxlen=TRADE_SNAPSHOT) for s, m in self.markets.items()
        }

    def routes(self) -> list[web.RouteDef]:
        return [web.get(self.path("v2"), self.websocket), web.get(self.path("0/public/Trades"), self.rest_trades)]

    # ------------------------------------------------------------------ rest

    async def rest_trades(self, request: web.Request) -> web.Response:
        """``GET /0/public/Trades?pair=XBTUSDT&since=&count=``: up to ``count`` (1000) trades from ``since``
        (seconds, as ccxt sends it) on, oldest first, ``[price, volume, time, b|s, m|l, misc, trade_id]``, and
        ``last`` (ns); over the rate limit ``{"error": ["EAPI:Rate limit exceeded"]}``, as kraken does."""
        if not await self.rest_admit():
            return self.json_response({"error": ["EAPI:Rate limit exceeded"], "result": {}})
        q = request.query
        pair = q.get("pair", "")
        symbol = self._rest_ids.get(pair)
        if symbol is None:
            return self.json_response({"error": ["EQuery:Unknown asset pair"], "result": {}})
        count = int_param(q.get("count"), 1000, 1, 1000)
        since = q.get("since")
        trades = in_time(self.history(symbol), None if since is None else int(float(since) * 1000), None)[:count]
        m = self.markets[symbol]
        rows = [[f"{t.price:.{m.price_decimals}f}", f"{t.size:.{m.size_decimals}f}", t.ts_ms / 1000,
                 "b" if t.side == "buy" else "s", "m", "", t.trade_id] for t in trades]
        last = str(trades[-1].ts_ms * 1_000_000) if trades else str(int(float(since or 0) * 1e9))
        return self.json_response({"error": [], "result": {pair: rows, "last": last}})

    # --------------------------------------------------------------- frames

    @staticmethod
    def _levels(levels: list[Level]) -> list[dict[str, float]]:
        return [{"price": p, "qty": q} for p, q in levels]

    def _book_frame(
        self, symbol: str, kind: str, bids: list[Level], asks: list[Level], top: tuple[list[Level], list[Level]]
    ) -> str:
        """``top`` is the client's book after this frame (for the checksum)."""
        checksum = kraken_checksum(top[0], top[1], self.markets[symbol].price_decimals)
        if self.faults.take("bad_checksum", symbol):
            checksum ^= 0x5A5A5A
        data: dict[str, Any] = {
            "symbol": self.market_ids[symbol],
            "bids": self._levels(bids),
            "asks": self._levels(asks),
            "checksum": checksum,
        }
        if kind == "update":
            data["timestamp"] = rfc3339(self.clock())
        return dumps({"channel": "book", "type": kind, "data": [data]})

    def _trade(self, symbol: str, t: SimTrade) -> dict[str, Any]:
        return {
            "symbol": self.market_ids[symbol],
            "side": t.side,
            "price": t.price,
            "qty": t.size,
            "ord_type": "market",
            "trade_id": t.trade_id,
            "timestamp": rfc3339(t.ts_ms),
        }

    # ------------------------------------------------------------ websocket

    async def on_open(self, conn: Connection) -> None:
        conn.send_json(
            {
                "channel": "status",
                "type": "update",
                "data": [{"api_version": "v2", "connection_id": conn.id, "system": "online", "version": "2.0.9"}],
            }
        )

    async def on_text(self, conn: Connection, text: str) -> None:
        msg: dict[str, Any] = loads(text)
        method, req_id = msg.get("method"), msg.get("req_id")
        now = rfc3339(self.clock())
        reply: dict[str, Any] = {"method": method, "time_in": now, "time_out": now}
        if req_id is not None:
            reply["req_id"] = req_id
        if method == "ping":
            conn.send_json({**reply, "method": "pong"})
            return
        if method not in ("subscribe", "unsubscribe"):
            conn.send_json({**reply, "error": f"Method not found: {method}", "success": False})
            return
        params = msg.get("params") or {}
        channel = params.get("channel")
        depth = int(params.get("depth", DEFAULT_DEPTH))
        if channel not in ("book", "trade") or (channel == "book" and depth not in BOOK_DEPTHS):
            conn.send_json({**reply, "error": f"Invalid channel or depth: {channel} {depth}", "success": False})
            return
        for wire_symbol in params.get("symbol") or []:
            symbol = self.symbol_of(str(wire_symbol))
            if symbol is None:
                conn.send_json(
                    {**reply, "error": f"Currency pair not supported {wire_symbol}", "success": False,
                     "symbol": wire_symbol}
                )
                continue
            result: dict[str, Any] = {"channel": channel, "symbol": wire_symbol}
            if channel == "book":
                result |= {"depth": depth, "snapshot": True}
            else:
                result |= {"snapshot": True}
            conn.send_json({**reply, "result": result, "success": True})
            topic = ("book", depth, symbol) if channel == "book" else ("trade", 0, symbol)
            if method == "unsubscribe":
                self.unsubscribe(conn, topic)
                continue
            if channel == "book":
                window = self.window(symbol, depth)
                bids, asks = window.snapshot()
                conn.send(self._book_frame(symbol, "snapshot", bids, asks, (bids, asks)))
            elif self._recent[symbol]:
                trades = [self._trade(symbol, t) for t in self._recent[symbol]]
                conn.send_json({"channel": "trade", "type": "snapshot", "data": trades})
            self.subscribe(conn, topic)

    # --------------------------------------------------------------- market

    def on_update(self, symbol: str, update: MarketUpdate) -> None:
        changes = self.advance_windows(symbol)
        if update.has_book:
            for depth, (bids, asks) in changes.items():
                if not bids and not asks:
                    continue  # nothing changed inside this window
                top = self.window(symbol, depth).snapshot()
                self.broadcast(("book", depth, symbol), self._book_frame(symbol, "update", bids, asks, top))
        if update.trades:
            self._recent[symbol].extend(update.trades)
            data = [self._trade(symbol, t) for t in update.trades]
            self.broadcast(("trade", 0, symbol), dumps({"channel": "trade", "type": "update", "data": data}))

    def inject_crossed(self, symbol: str) -> None:
        for (sym, depth), window in list(self._windows.items()):
            if sym != symbol:
                continue
            bids, asks = window.crossed_changes()
            wb, wa = window.snapshot()
            crossed_top = (sorted([*bids, *wb], reverse=True)[:depth], wa)
            self.broadcast(("book", depth, symbol), self._book_frame(symbol, "update", bids, asks, crossed_top))
            bids2, asks2 = window.uncrossed_changes(bids[0])
            self.broadcast(("book", depth, symbol), self._book_frame(symbol, "update", bids2, asks2, (wb, wa)))

    async def run(self) -> None:
        """Heartbeats, about once a second, to every connection with a subscription."""
        heartbeat = dumps({"channel": "heartbeat"})
        while True:
            await asyncio.sleep(1.0)
            for conn in tuple(self.connections):
                if conn.topics:
                    conn.send(heartbeat)


VENUE = KrakenVenue
