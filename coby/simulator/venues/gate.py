"""Gate.io spot v4: ``/gate/ws/v4/``, the ``spot.obu`` book (full snapshot + window deltas) and ``spot.trades``.

Subscribe and ack (``ob.<pair>.<levels>``, levels 50 or 400; ccxt asks for 50)::

    {"id":1,"time":1795460198,"channel":"spot.obu","event":"subscribe","payload":["ob.BTC_USDT.50"]}
    {"time":1795460198,"time_ms":1795460198430,"id":1,"conn_id":"1f","trace_id":"1f-1",
     "channel":"spot.obu","event":"subscribe","payload":["ob.BTC_USDT.50"],"result":{"status":"success"}}

then the window as a ``full`` snapshot and its changes, one frame per market update
(``U`` = ``u`` = the update's sequence; size "0" deletes)::

    {"channel":"spot.obu","result":{"t":1795460198430,"full":true,"s":"ob.BTC_USDT.50",
     "u":1004523,"b":[["29999.9","0.9302"]],"a":[["30000.1","1.9013"]]},"time_ms":1795460198430,"event":"update"}
    {"channel":"spot.obu","result":{"t":1795460198530,"s":"ob.BTC_USDT.50","U":1004524,"u":1004524,
     "b":[["29996.4","1.4621"]],"a":[["30003.7","0"]]},"time_ms":1795460198530,"event":"update"}

Trades (payload ``["BTC_USDT"]``), one per frame::

    {"time":1795460198,"time_ms":1795460198471,"channel":"spot.trades","event":"update",
     "result":{"id":5000902,"create_time":1795460198,"create_time_ms":"1795460198471.000",
     "side":"sell","currency_pair":"BTC_USDT","amount":"0.4875","price":"29999.9","range":"5000902-5000902"}}

Keepalive: ccxt relies on ws-level pings (aiohttp answers them); the app-level
``{"channel":"spot.ping"}`` is answered with ``spot.pong`` as well.

What ccxt does under each fault:

* ``gap``: nothing visible. ccxt only drops deltas with ``u <= nonce`` and never
  checks ``U``; the lost levels stay wrong until a resubscription.
* ``stall``: lost deltas, as ``gap``; no error (ws-level pings are answered by
  the transport even during a stall).
* ``malformed``: truncated JSON; ccxt's JSON parse raises in the receive loop,
  which dies (the watch hangs until the client is closed).
* ``crossed``: applied as sent, then removed by the next delta.
* ``duplicate_trade``: returned twice (same ``id``).
* ``drop``: ``NetworkError``; the next watch reconnects and gets a new ``full``
  snapshot.
* ``drop_book`` / ``drop_trades``: the connections carrying ``spot.obu`` (or ``spot.trades``)
  close. ccxt multiplexes both channels on one connection, so both fail together there;
  a client that opens one connection per kind keeps the other kind flowing.
* ``bad_checksum``: not offered, ``spot.obu`` carries no checksum.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from coby.simulator.history import in_time, int_param
from coby.simulator.market import Level, SimTrade
from coby.simulator.venues._windowed import WindowedVenue
from coby.simulator.venues.base import Connection, dumps, fmt_num, loads


class GateVenue(WindowedVenue):
    name = "gate"
    extra_faults = frozenset({"gap", "drop_book", "drop_trades"})
    stream_channels = {"book": frozenset({"spot.obu"}), "trades": frozenset({"spot.trades"})}
    book_depths = frozenset({50, 400})

    def routes(self) -> list[web.RouteDef]:
        return [web.get(self.path("ws/v4/"), self.websocket), web.get(self.path("api/v4/spot/trades"), self.rest_trades)]

    async def rest_trades(self, request: web.Request) -> web.Response:
        """``GET /api/v4/spot/trades?currency_pair=&limit=&last_id=&reverse=&from=&to=`` (limit 100, at most
        1000), newest first; ``last_id`` with ``reverse=true``: older trades than it (``false``: newer);
        HTTP 429 ``{"label":"TOO_MANY_REQUESTS"}`` over the rate limit."""
        if not await self.rest_admit():
            return self.json_response({"label": "TOO_MANY_REQUESTS", "message": "Request Rate limit Exceeded"}, 429)
        q = request.query
        symbol = self.symbol_of(q.get("currency_pair", ""))
        if symbol is None:
            return self.json_response({"label": "INVALID_CURRENCY_PAIR", "message": "Invalid currency pair"}, 400)
        limit = int_param(q.get("limit"), 100, 1, 1000)
        start, end = int_param(q.get("from"), None, 0, 1 << 40), int_param(q.get("to"), None, 0, 1 << 40)
        trades = in_time(self.history(symbol), None if start is None else start * 1000,
                         None if end is None else end * 1000 + 999)
        last_id = int_param(q.get("last_id"), None, 0, 1 << 62)
        if last_id is not None:
            older = q.get("reverse", "true").lower() == "true"
            trades = [t for t in trades if (t.trade_id < last_id if older else t.trade_id > last_id)]
        m, pair = self.markets[symbol], self.market_ids[symbol]
        return self.json_response([
            {"id": str(t.trade_id), "create_time": str(t.ts_ms // 1000), "create_time_ms": f"{t.ts_ms}.000",
             "currency_pair": pair, "side": t.side, "role": "taker", "amount": fmt_num(t.size, m.size_decimals),
             "price": fmt_num(t.price, m.price_decimals)} for t in reversed(trades[-limit:])])

    def _levels(self, symbol: str, levels: list[Level]) -> list[list[str]]:
        m = self.markets[symbol]
        return [[fmt_num(p, m.price_decimals), fmt_num(s, m.size_decimals)] for p, s in levels]

    def _parse_book(self, name: str) -> tuple[str, int] | None:
        """``ob.BTC_USDT.50`` -> ("BTC-USDT", 50)."""
        parts = name.split(".")
        if len(parts) != 3 or parts[0] != "ob" or not parts[2].isdigit():
            return None
        symbol = self.symbol_of(parts[1])
        if symbol is None or int(parts[2]) not in self.book_depths:
            return None
        return symbol, int(parts[2])

    # ------------------------------------------------------------- websocket

    async def on_text(self, conn: Connection, text: str) -> None:
        msg: dict[str, Any] = loads(text)
        channel, event = msg.get("channel"), msg.get("event")
        now = self.clock()
        head = {"time": now // 1000, "time_ms": now, "id": msg.get("id"), "conn_id": f"{conn.id:x}",
                "trace_id": f"{conn.id:x}-{now}", "channel": channel}
        if channel == "spot.ping":
            conn.send_json({**head, "channel": "spot.pong", "event": "", "result": None})
            return
        payload = msg.get("payload") or []
        if event not in ("subscribe", "unsubscribe") or not isinstance(payload, list) or not payload:
            conn.send_json({**head, "event": event, "error": {"code": 1, "message": "invalid argument"},
                            "result": {"status": "failed"}})
            return
        if channel == "spot.obu":
            parsed = [self._parse_book(str(p)) for p in payload]
        elif channel == "spot.trades":
            parsed = [(s, 0) if (s := self.symbol_of(str(p))) is not None else None for p in payload]
        else:
            conn.send_json({**head, "event": event, "error": {"code": 2, "message": f"unknown channel {channel}"},
                            "result": {"status": "failed"}})
            return
        if None in parsed:
            conn.send_json({**head, "event": event, "payload": payload,
                            "error": {"code": 2, "message": f"unknown currency pair in {payload}"},
                            "result": {"status": "failed"}})
            return
        conn.send_json({**head, "event": event, "payload": payload, "result": {"status": "success"}})
        for entry in parsed:
            if entry is None:
                continue
            symbol, depth = entry
            topic = (channel, symbol, depth)
            if event == "unsubscribe":
                self.unsubscribe(conn, topic)
                continue
            if channel == "spot.obu":
                conn.send(self._book_frame(symbol, depth, *self.window(symbol, depth).snapshot(),
                                           self.markets[symbol].seq, now, full=True))
            self.subscribe(conn, topic)

    # ---------------------------------------------------------------- market

    def _book_frame(self, symbol: str, depth: int, bids: list[Level], asks: list[Level], seq: int, ts_ms: int,
                    *, full: bool = False) -> str:
        result: dict[str, Any] = {"t": ts_ms, "s": f"ob.{self.market_ids[symbol]}.{depth}"}
        if full:
            result.update(full=True, u=seq)
        else:
            result.update(U=seq, u=seq)
        result.update(b=self._levels(symbol, bids), a=self._levels(symbol, asks))
        return dumps({"channel": "spot.obu", "result": result, "time_ms": ts_ms, "event": "update"})

    def send_book(self, symbol: str, depth: int, bids: list[Level], asks: list[Level], seq: int, ts_ms: int,
                  *, settled: bool = True) -> None:
        self.broadcast(("spot.obu", symbol, depth), self._book_frame(symbol, depth, bids, asks, seq, ts_ms))

    def send_trades(self, symbol: str, trades: list[SimTrade], ts_ms: int) -> None:
        m, pair = self.markets[symbol], self.market_ids[symbol]
        for t in trades:
            result = {
                "id": t.trade_id,
                "create_time": t.ts_ms // 1000,
                "create_time_ms": f"{t.ts_ms}.000",
                "side": t.side,
                "currency_pair": pair,
                "amount": fmt_num(t.size, m.size_decimals),
                "price": fmt_num(t.price, m.price_decimals),
                "range": f"{t.trade_id}-{t.trade_id}",
            }
            frame = {"time": ts_ms // 1000, "time_ms": ts_ms, "channel": "spot.trades", "event": "update",
                     "result": result}
            self.broadcast(("spot.trades", symbol, 0), dumps(frame))


VENUE = GateVenue
