"""Coinbase Advanced Trade: ``/coinbase/ws``, channels ``level2``, ``market_trades``, ``heartbeats``.

Subscribe (one channel per message)::

    {"type":"subscribe","product_ids":["BTC-USDT"],"channel":"level2"}

Replies carry a per-connection ``sequence_num``. ``level2`` sends the whole book as
a snapshot on channel ``l2_data``, then updates (``new_quantity`` ``"0"`` deletes;
``side`` is ``bid`` or ``offer``)::

    {"channel":"l2_data","client_id":"","timestamp":"2026-11-23T18:56:41.520000Z","sequence_num":3,
     "events":[{"type":"update","product_id":"BTC-USDT","updates":[{"side":"bid",
       "event_time":"2026-11-23T18:56:41.520000Z","price_level":"29999.9","new_quantity":"0.3577"}]}]}

After the snapshot, the connection's subscriptions (``events[0]`` must hold a
``subscriptions`` dict, else ccxt raises inside its receive loop)::

    {"channel":"subscriptions","client_id":"","timestamp":"..","sequence_num":2,
     "events":[{"subscriptions":{"level2":["BTC-USDT"]}}]}

``market_trades`` starts with a snapshot of the last 50 trades, newest first, then
updates::

    {"channel":"market_trades","client_id":"","timestamp":"..","sequence_num":9,"events":[{"type":"update",
      "trades":[{"trade_id":"5000884","product_id":"BTC-USDT","price":"30000.1","size":"0.4796",
      "side":"BUY","time":"2026-11-23T18:56:41.520000Z"}]}]}

``heartbeats`` sends ``{"events":[{"current_time":"..","heartbeat_counter":N}]}``
every second. Keepalive is ws-level ping/pong. Faults: ``gap`` -> one update is
lost (its ``sequence_num`` skipped); ccxt ignores ``sequence_num``, so its book
silently diverges; ``duplicate_trade`` -> ccxt's trade cache is keyed by id, so
the duplicate replaces the original instead of appearing twice; ``malformed`` ->
truncated JSON, which kills ccxt's receive loop (the watch hangs).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from aiohttp import web

from coby.simulator.history import in_time, int_param
from coby.simulator.market import Level, MarketUpdate, SimTrade
from coby.simulator.venues.base import Connection, FrameSource, Venue, dumps, fmt_num, loads, rfc3339

CHANNELS = ("level2", "market_trades", "heartbeats")
TRADE_SNAPSHOT = 50


class CoinbaseVenue(Venue):
    name = "coinbase"
    extra_faults = frozenset({"gap"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # what the market traded before the simulator started: the first subscriber gets minutes-old trades
        self._recent: dict[str, deque[SimTrade]] = {
            s: deque(m.history, maxlen=TRADE_SNAPSHOT) for s, m in self.markets.items()
        }

    def routes(self) -> list[web.RouteDef]:
        return [web.get(self.path("ws"), self.websocket),
                web.get(self.path("api/v3/brokerage/market/products/{product_id}/ticker"), self.ticker)]

    # ------------------------------------------------------------------ rest

    async def ticker(self, request: web.Request) -> web.Response:
        """``GET /api/v3/brokerage/market/products/{id}/ticker?limit=&start=&end=`` (seconds): the latest
        ``limit`` (at most 1000) trades within [start, end], newest first; HTTP 429 over the rate limit."""
        if not await self.rest_admit():
            return self.json_response({"error": "RATE_LIMIT_EXCEEDED", "message": "Too many requests"}, 429)
        q = request.query
        symbol = self.symbol_of(request.match_info["product_id"])
        if symbol is None:
            return self.json_response({"error": "NOT_FOUND", "message": "ProductID is invalid"}, 404)
        limit = int_param(q.get("limit"), 100, 1, 1000)
        start, end = int_param(q.get("start"), None, 0, 1 << 40), int_param(q.get("end"), None, 0, 1 << 40)
        trades = in_time(self.history(symbol), None if start is None else start * 1000,
                         None if end is None else end * 1000 + 999)
        m = self.markets[symbol]
        return self.json_response({"trades": [self._trade(symbol, t) | {"bid": "", "ask": ""}
                                              for t in reversed(trades[-limit:])],
                                   "best_bid": fmt_num(m.best_bid, m.price_decimals),
                                   "best_ask": fmt_num(m.best_ask, m.price_decimals)})

    # --------------------------------------------------------------- frames

    @staticmethod
    def _next_seq(conn: Connection) -> int:
        seq = conn.state.get("seq", 0)
        conn.state["seq"] = seq + 1
        return seq

    def _frame(self, channel: str, events: list[dict[str, Any]]) -> FrameSource:
        """A frame with the per-connection ``sequence_num`` filled in for each receiver."""
        head = f'{{"channel":"{channel}","client_id":"","timestamp":"{rfc3339(self.clock())}","sequence_num":'
        tail = ',"events":' + dumps(events) + "}"
        return lambda conn: head + str(self._next_seq(conn)) + tail

    def _send(self, conn: Connection, channel: str, events: list[dict[str, Any]]) -> None:
        frame = self._frame(channel, events)
        conn.send(frame(conn))  # type: ignore[operator]

    def _updates(self, symbol: str, bids: list[Level], asks: list[Level], ts: str) -> list[dict[str, str]]:
        m = self.markets[symbol]
        out = []
        for side, levels in (("bid", bids), ("offer", asks)):
            for p, s in levels:
                out.append(
                    {
                        "side": side,
                        "event_time": ts,
                        "price_level": fmt_num(p, m.price_decimals),
                        "new_quantity": fmt_num(s, m.size_decimals),
                    }
                )
        return out

    def _trade(self, symbol: str, t: SimTrade) -> dict[str, str]:
        m = self.markets[symbol]
        return {
            "trade_id": str(t.trade_id),
            "product_id": self.market_ids[symbol],
            "price": fmt_num(t.price, m.price_decimals),
            "size": fmt_num(t.size, m.size_decimals),
            "side": t.side.upper(),
            "time": rfc3339(t.ts_ms),
        }

    def _subscriptions(self, conn: Connection) -> dict[str, list[str]]:
        subs: dict[str, list[str]] = {}
        for channel, symbol in sorted(conn.topics):  # type: ignore[misc]
            ids = subs.setdefault(channel, [])
            if symbol:
                ids.append(self.market_ids[symbol])
        return subs

    # ------------------------------------------------------------ websocket

    async def on_text(self, conn: Connection, text: str) -> None:
        msg: dict[str, Any] = loads(text)
        kind, channel = msg.get("type"), msg.get("channel")
        if kind not in ("subscribe", "unsubscribe") or channel not in CHANNELS:
            conn.send_json({"type": "error", "message": f"Failed to subscribe: unknown channel {channel!r}"})
            return
        product_ids = [str(p) for p in msg.get("product_ids") or []]
        symbols = [self.symbol_of(p) for p in product_ids]
        if channel != "heartbeats" and (not symbols or None in symbols):
            conn.send_json({"type": "error", "message": "Failure to subscribe"})
            return
        topics = [(channel, "")] if channel == "heartbeats" else [(channel, s) for s in symbols]
        for topic in topics:
            if kind == "unsubscribe":
                self.unsubscribe(conn, topic)
                continue
            symbol = topic[1]
            if channel == "level2":
                bids, asks = self.markets[symbol].snapshot()
                ts = rfc3339(self.clock())
                event = {
                    "type": "snapshot",
                    "product_id": self.market_ids[symbol],
                    "updates": self._updates(symbol, bids, asks, ts),
                }
                self._send(conn, "l2_data", [event])
            elif channel == "market_trades" and self._recent[symbol]:
                # ccxt reads trades[0] of every market_trades frame: never send an empty list
                trades = [self._trade(symbol, t) for t in reversed(self._recent[symbol])]
                self._send(conn, "market_trades", [{"type": "snapshot", "trades": trades}])
            self.subscribe(conn, topic)
        self._send(conn, "subscriptions", [{"subscriptions": self._subscriptions(conn)}])

    # --------------------------------------------------------------- market

    def on_update(self, symbol: str, update: MarketUpdate) -> None:
        if update.has_book:
            ts = rfc3339(update.ts_ms)
            event = {
                "type": "update",
                "product_id": self.market_ids[symbol],
                "updates": self._updates(symbol, update.bids, update.asks, ts),
            }
            self.broadcast(("level2", symbol), self._frame("l2_data", [event]))
        if update.trades:
            self._recent[symbol].extend(update.trades)
            trades = [self._trade(symbol, t) for t in reversed(update.trades)]  # newest first
            self.broadcast(("market_trades", symbol), self._frame("market_trades", [{"type": "update", "trades": trades}]))

    def on_gap(self, symbol: str, update: MarketUpdate) -> None:
        for conn in self.subscribers(("level2", symbol)):
            self._next_seq(conn)  # the lost message still took its sequence number

    async def run(self) -> None:
        """The ``heartbeats`` channel: one message a second with a running counter."""
        counter = 0
        while True:
            await asyncio.sleep(1.0)
            counter += 1
            subs = self.subscribers(("heartbeats", ""))
            if subs:
                event = {"current_time": rfc3339(self.clock()), "heartbeat_counter": counter}
                self.broadcast(("heartbeats", ""), self._frame("heartbeats", [event]))


VENUE = CoinbaseVenue
