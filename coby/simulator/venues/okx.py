"""OKX v5 public: ``/okx/ws/v5/public``, channels ``books`` (400), ``books5``, ``bbo-tbt``, ``trades``.

Subscribe / ack (the ack is ignored by ccxt)::

    {"op":"subscribe","args":[{"channel":"books","instId":"BTC-USDT"}]}
    {"event":"subscribe","arg":{"channel":"books","instId":"BTC-USDT"},"connId":"a4d3ae55"}

``books`` starts with a snapshot of the top 400 levels, then updates of the
400-level window (a level that leaves the window is deleted, the one that enters
is sent); ``prevSeqId`` is the previous ``seqId``; ``checksum`` is the signed
crc32 of ``bid:size:ask:size`` over the top 25 levels::

    {"arg":{"channel":"books","instId":"BTC-USDT"},"action":"snapshot","data":[{
      "asks":[["30000.1","1.9944","0","1"]],"bids":[["29999.9","2.6013","0","1"]],
      "ts":"1795460198430","checksum":-647590544,"prevSeqId":-1,"seqId":1004343}]}
    {"arg":{"channel":"books","instId":"BTC-USDT"},"action":"update","data":[{
      "asks":[["30000.1","0","0","0"]],"bids":[],"ts":"1795460198530",
      "checksum":1298217140,"prevSeqId":1004343,"seqId":1004344}]}

``books5`` / ``bbo-tbt`` send the whole top 5 / top 1 in every message (no
``action``). Trades, one per message::

    {"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"instId":"BTC-USDT",
      "tradeId":"5000866","px":"29999.9","sz":"0.3033","side":"sell","ts":"1795460198471"}]}

Keepalive: text ``ping`` -> text ``pong``. Faults: ``gap`` -> ccxt raises
``InvalidNonce``, the next ``watch_order_book`` unsubscribes, resubscribes and
recovers; ``bad_checksum`` -> wrong ``checksum`` (ccxt 4.5.90 does not check it);
``malformed`` -> truncated JSON, which kills ccxt's receive loop (the watch hangs).
"""

from __future__ import annotations

import zlib
from typing import Any

from aiohttp import web

from coby.simulator.history import int_param
from coby.simulator.market import Level, MarketUpdate
from coby.simulator.venues.base import Connection, Venue, dumps, fmt_num, loads

BOOK_DEPTHS = {"books": 400, "books5": 5, "bbo-tbt": 1}
CHECKSUM_LEVELS = 25


def okx_checksum(bids: list[list[str]], asks: list[list[str]]) -> int:
    """OKX's signed crc32 over ``bid:size:ask:size`` interleaved, top 25 levels."""
    parts: list[str] = []
    for i in range(CHECKSUM_LEVELS):
        if i < len(bids):
            parts += bids[i][:2]
        if i < len(asks):
            parts += asks[i][:2]
    crc = zlib.crc32(":".join(parts).encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc


class OkxVenue(Venue):
    name = "okx"
    extra_faults = frozenset({"gap", "bad_checksum"})

    def routes(self) -> list[web.RouteDef]:
        return [web.get(self.path("ws/v5/public"), self.websocket),
                web.get(self.path("api/v5/market/trades"), self.rest_trades),
                web.get(self.path("api/v5/market/history-trades"), self.rest_trades)]

    # ------------------------------------------------------------------ rest

    async def rest_trades(self, request: web.Request) -> web.Response:
        """``GET /api/v5/market/trades?instId=&limit=`` (the latest, 100 by default, at most 500) and
        ``GET /api/v5/market/history-trades?instId=&after=&before=&limit=`` (at most 100; ``after``: trades
        with an older id, ``before``: newer), newest first; HTTP 429 with code 50011 over the rate limit."""
        if not await self.rest_admit():
            return self.json_response({"code": "50011", "msg": "Too Many Requests", "data": []}, 429)
        q = request.query
        symbol = self.symbol_of(q.get("instId", ""))
        if symbol is None:
            return self.json_response({"code": "51001", "msg": "Instrument ID does not exist", "data": []})
        history = request.path.endswith("history-trades")
        limit = int_param(q.get("limit"), 100, 1, 100 if history else 500)
        trades = self.history(symbol)
        after, before = int_param(q.get("after"), None, 0, 1 << 62), int_param(q.get("before"), None, 0, 1 << 62)
        if history and after is not None:
            trades = [t for t in trades if t.trade_id < after]
        if history and before is not None:
            trades = [t for t in trades if t.trade_id > before]
        m = self.markets[symbol]
        page = list(reversed(trades[-limit:]))
        return self.json_response({"code": "0", "msg": "", "data": [
            {"instId": self.market_ids[symbol], "side": t.side, "sz": fmt_num(t.size, m.size_decimals),
             "px": fmt_num(t.price, m.price_decimals), "source": "0", "tradeId": str(t.trade_id), "ts": str(t.ts_ms)}
            for t in page]})

    # --------------------------------------------------------------- frames

    def _levels(self, symbol: str, levels: list[Level]) -> list[list[str]]:
        m = self.markets[symbol]
        pd, sd = m.price_decimals, m.size_decimals
        return [[fmt_num(p, pd), fmt_num(s, sd), "0", "0" if s == 0 else "1"] for p, s in levels]

    def _book_frame(self, symbol: str, action: str, bids: list[Level], asks: list[Level], prev: int, seq: int) -> str:
        """A ``books`` frame; the checksum covers the client's top 25 after applying it."""
        if action == "snapshot":
            top_b, top_a = bids[:CHECKSUM_LEVELS], asks[:CHECKSUM_LEVELS]
        else:
            top_b, top_a = self.markets[symbol].snapshot(CHECKSUM_LEVELS)
            crossing = [lv for lv in bids if lv[1] > 0 and lv[0] >= self.markets[symbol].best_ask]
            top_b = sorted(crossing + top_b, reverse=True)[:CHECKSUM_LEVELS]
        checksum = okx_checksum(self._levels(symbol, top_b), self._levels(symbol, top_a))
        if self.faults.take("bad_checksum", symbol):
            checksum ^= 0x5A5A
        return dumps(
            {
                "arg": {"channel": "books", "instId": self.market_ids[symbol]},
                "action": action,
                "data": [
                    {
                        "asks": self._levels(symbol, asks),
                        "bids": self._levels(symbol, bids),
                        "ts": str(self.clock()),
                        "checksum": checksum,
                        "prevSeqId": prev,
                        "seqId": seq,
                    }
                ],
            }
        )

    def _top_frame(self, symbol: str, channel: str) -> str:
        bids, asks = self.markets[symbol].snapshot(BOOK_DEPTHS[channel])
        m = self.markets[symbol]
        return dumps(
            {
                "arg": {"channel": channel, "instId": self.market_ids[symbol]},
                "data": [
                    {
                        "asks": self._levels(symbol, asks),
                        "bids": self._levels(symbol, bids),
                        "instId": self.market_ids[symbol],
                        "ts": str(self.clock()),
                        "seqId": m.seq,
                    }
                ],
            }
        )

    # ------------------------------------------------------------ websocket

    async def on_text(self, conn: Connection, text: str) -> None:
        if text == "ping":
            conn.send("pong")
            return
        msg: dict[str, Any] = loads(text)
        op = msg.get("op")
        conn_id = f"{conn.id:08x}"
        if op not in ("subscribe", "unsubscribe"):
            conn.send_json({"event": "error", "code": "60012", "msg": f"Invalid request: {text}", "connId": conn_id})
            return
        for arg in msg.get("args") or []:
            channel, symbol = arg.get("channel"), self.symbol_of(str(arg.get("instId")))
            if symbol is None or (channel not in BOOK_DEPTHS and channel != "trades"):
                conn.send_json(
                    {
                        "event": "error",
                        "code": "60018",
                        "msg": f"Wrong URL or channel:{channel},instId:{arg.get('instId')} doesn't exist.",
                        "connId": conn_id,
                    }
                )
                continue
            conn.send_json({"event": op, "arg": {"channel": channel, "instId": arg["instId"]}, "connId": conn_id})
            if op == "unsubscribe":
                self.unsubscribe(conn, (channel, symbol))
                continue
            if channel == "books":
                bids, asks = self.window(symbol, BOOK_DEPTHS["books"]).snapshot()
                seq = self.markets[symbol].seq
                conn.send(self._book_frame(symbol, "snapshot", bids, asks, -1, seq))
            elif channel in BOOK_DEPTHS:
                conn.send(self._top_frame(symbol, channel))
            self.subscribe(conn, (channel, symbol))

    # --------------------------------------------------------------- market

    def on_update(self, symbol: str, update: MarketUpdate) -> None:
        changes = self.advance_windows(symbol).get(BOOK_DEPTHS["books"])
        if update.has_book:  # a gap-stripped update advanced the window silently: a lost message
            if changes is not None:
                frame = self._book_frame(symbol, "update", *changes, update.seq - 1, update.seq)
                self.broadcast(("books", symbol), frame)
            for channel in ("books5", "bbo-tbt"):
                if self.subscribers((channel, symbol)):
                    self.broadcast((channel, symbol), self._top_frame(symbol, channel))
        inst = self.market_ids[symbol]
        m = self.markets[symbol]
        for t in update.trades:
            trade = {
                "instId": inst,
                "tradeId": str(t.trade_id),
                "px": fmt_num(t.price, m.price_decimals),
                "sz": fmt_num(t.size, m.size_decimals),
                "side": t.side,
                "ts": str(t.ts_ms),
            }
            self.broadcast(("trades", symbol), dumps({"arg": {"channel": "trades", "instId": inst}, "data": [trade]}))

    def inject_crossed(self, symbol: str) -> None:
        window, market = self.window(symbol, BOOK_DEPTHS["books"]), self.markets[symbol]
        bids, asks = window.crossed_changes()
        u1 = market.unapplied(bids=bids)
        self.broadcast(("books", symbol), self._book_frame(symbol, "update", bids, asks, u1.seq - 1, u1.seq))
        bids2, asks2 = window.uncrossed_changes(bids[0])
        u2 = market.unapplied(bids=bids2)
        self.broadcast(("books", symbol), self._book_frame(symbol, "update", bids2, asks2, u2.seq - 1, u2.seq))


VENUE = OkxVenue
