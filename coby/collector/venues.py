"""The per-venue table: how each of the ten venues is built, pointed elsewhere and recovered.

One row per exchange (:data:`VENUES`), not a subclass tree. A row says:

* ``ws_urls`` - where the recipe of the wire notes (section 2) puts each endpoint
  relative to a base (the simulator serves ``/<venue>/...`` under one base URL);
* ``book_limits`` - the depths the venue's book channel accepts (the smallest one
  covering ``book_depth`` is requested; None: ccxt's default);
* ``book_recovery`` - what a book that is out of sync needs: ``rewatch`` (ccxt
  resubscribes and resyncs on the next ``watch_order_book``: binance, okx) or
  ``recycle`` (close the ccxt client and build a new one: every venue where ccxt
  either does not notice, or cannot recover on the same connection);
* ``trades_own_connection`` - ccxt puts trades on a connection of their own (a different URL), where
  the next watch reconnects by itself: a failed trade stream re-watches instead of recycling its
  feed (books and trades never share a feed anyway: :mod:`coby.collector.feeds`);
* ``sequenced`` - a lost book frame is noticed (by ccxt or by ``gap_check``); where
  not (kraken), an unparseable frame forces a resync;
* ``gap_check`` - a sequence check ccxt does not do, run on each raw frame
  (``(method name, checker)``): bybit ``u``, coinbase ``sequence_num`` (per
  connection), kucoin ``sequenceStart``, gate ``U``, mexc ``fromVersion``.

:func:`build_client` makes an unmodified ``ccxt.pro`` exchange with preset markets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import ccxt
import ccxt.pro as ccxtpro

from coby.instruments import precision
from coby.symbols import VenueMarket

# A checker gets (state, ws client, raw frame) and returns None, or (market id | None, detail)
# when it saw a gap (market id None: every book on that connection).
GapChecker = Callable[[dict[Any, Any], Any, Any], "tuple[str | None, str] | None"]


def _bybit_gap(state: dict[Any, Any], client: Any, msg: Any) -> tuple[str | None, str] | None:
    topic = msg.get("topic") if type(msg) is dict else None
    if topic is None or not topic.startswith("orderbook."):
        return None
    data = msg.get("data") or {}
    mid, u = data.get("s"), data.get("u")
    if type(u) is not int:
        return None
    prev = state.get(mid)
    state[mid] = u
    # u counts the topic's messages; a snapshot (also sent with u=1 after a venue restart) resets it
    if msg.get("type") == "delta" and prev is not None and u != prev + 1:
        return mid, f"u {prev} -> {u}"
    return None


def _coinbase_gap(state: dict[Any, Any], client: Any, msg: Any) -> tuple[str | None, str] | None:
    seq = msg.get("sequence_num") if type(msg) is dict else None
    if type(seq) is not int:
        return None
    key = id(client)
    prev = state.get(key)
    state[key] = seq
    # one counter per connection over every channel: a gap may have been a book update
    if prev is not None and seq != prev + 1:
        return None, f"sequence_num {prev} -> {seq}"
    return None


def _kucoin_gap(state: dict[Any, Any], client: Any, msg: Any) -> tuple[str | None, str] | None:
    if type(msg) is not dict or msg.get("subject") != "trade.l2update":
        return None
    data = msg.get("data") or {}
    mid, start, end = data.get("symbol"), data.get("sequenceStart"), data.get("sequenceEnd")
    try:
        start, end = int(start), int(end)
    except (TypeError, ValueError):
        return None
    prev = state.get(mid)
    state[mid] = end
    if prev is not None and start != prev + 1:
        return mid, f"sequenceStart {start} after sequenceEnd {prev}"
    return None


def _gate_gap(state: dict[Any, Any], client: Any, msg: Any) -> tuple[str | None, str] | None:
    if type(msg) is not dict or msg.get("channel") != "spot.obu" or msg.get("event") != "update":
        return None
    result = msg.get("result") or {}
    s, first, last = result.get("s"), result.get("U"), result.get("u")
    if not isinstance(s, str) or type(last) is not int:
        return None
    mid = s.split(".")[1] if s.count(".") >= 2 else s
    prev = state.get(mid)
    state[mid] = last
    if not result.get("full") and prev is not None and type(first) is int and first != prev + 1:
        return mid, f"U {first} after u {prev}"
    return None


def _mexc_gap(state: dict[Any, Any], client: Any, msg: Any) -> tuple[str | None, str] | None:
    depth = msg.get("publicAggreDepths") if type(msg) is dict else None
    if depth is None:
        return None
    try:
        first, last = int(depth["fromVersion"]), int(depth["toVersion"])
    except (KeyError, TypeError, ValueError):
        return None
    mid = msg.get("symbol")
    prev = state.get(mid)
    state[mid] = last
    if prev is not None and first != prev + 1:
        return mid, f"fromVersion {first} after toVersion {prev}"
    return None


@dataclass(frozen=True, slots=True)
class Venue:
    """How coby runs one exchange through ccxt.pro."""

    name: str
    ws_urls: Callable[[Any, str, str], None]  # (ccxt exchange, http base, ws base) -> rewrites ex.urls
    book_limits: tuple[int, ...] | None = None
    book_recovery: str = "recycle"
    trades_own_connection: bool = False
    gap_check: tuple[str, GapChecker] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    market_extra: Callable[[VenueMarket], dict[str, Any]] | None = None
    sequenced: bool = True  # a lost book frame is caught (sequence numbers or checksum); kraken: neither

    def book_limit(self, depth: int) -> int | None:
        """The depth to ask the venue for: the smallest accepted one that covers ``depth``."""
        if not self.book_limits:
            return None
        for limit in self.book_limits:
            if limit >= depth:
                return limit
        return self.book_limits[-1]


def _binance_urls(ex: Any, http: str, ws: str) -> None:
    ex.urls["api"]["ws"]["spot"] = f"{ws}/binance/stream/ws"  # ccxt looks for '/stream' and appends '/<n>'
    ex.urls["api"]["public"] = f"{http}/binance/api/v3"


def _okx_urls(ex: Any, http: str, ws: str) -> None:
    ex.urls["api"]["ws"] = f"{ws}/okx/ws/v5"
    ex.urls["api"]["rest"] = f"{http}/okx"


def _bybit_urls(ex: Any, http: str, ws: str) -> None:
    ex.urls["api"]["ws"]["public"]["spot"] = f"{ws}/bybit/v5/public/spot"  # 'spot' in the url selects spot
    ex.urls["api"]["public"] = f"{http}/bybit"


def _kraken_urls(ex: Any, http: str, ws: str) -> None:
    ex.urls["api"]["ws"]["publicV2"] = f"{ws}/kraken/v2"  # 'v2' in the url selects the v2 ping
    ex.urls["api"]["public"] = f"{http}/kraken"


def _coinbase_urls(ex: Any, http: str, ws: str) -> None:
    ex.urls["api"]["ws"] = f"{ws}/coinbase/ws"
    ex.urls["api"]["rest"] = f"{http}/coinbase"


def _htx_urls(ex: Any, http: str, ws: str) -> None:
    spot = ex.urls["api"]["ws"][ex.options["api"]]["spot"]
    spot["public"] = f"{ws}/htx/ws"
    spot["feed"] = f"{ws}/htx/feed"
    ex.urls["api"]["spot"] = f"{http}/htx"  # REST: /market/history/trade (the gap filler)


def _kucoin_urls(ex: Any, http: str, ws: str) -> None:
    ex.urls["api"]["public"] = f"{http}/kucoin"  # bullet-public returns the WS endpoint


def _gate_urls(ex: Any, http: str, ws: str) -> None:
    ex.urls["api"]["spot"] = f"{ws}/gate/ws/v4/"
    ex.urls["api"]["public"]["spot"] = f"{http}/gate/api/v4"


def _bitfinex_urls(ex: Any, http: str, ws: str) -> None:
    ex.urls["api"]["ws"]["public"] = f"{ws}/bitfinex/ws/2"
    ex.urls["api"]["public"] = f"{http}/bitfinex"


def _mexc_urls(ex: Any, http: str, ws: str) -> None:
    ex.urls["api"]["ws"]["spot"] = f"{ws}/mexc/ws"
    ex.urls["api"]["spot"]["public"] = f"{http}/mexc"


VENUES: dict[str, Venue] = {v.name: v for v in (
    Venue("binance", _binance_urls, book_recovery="rewatch", trades_own_connection=True,
          market_extra=lambda m: {"lowercaseId": m.id.lower()}),
    Venue("okx", _okx_urls, book_recovery="rewatch"),
    Venue("bybit", _bybit_urls, book_limits=(50, 200, 1000), gap_check=("handle_message", _bybit_gap)),
    # kraken's crc32 is not checked (ccxt's check is off and crashes when on): no way to see a lost frame
    Venue("kraken", _kraken_urls, book_limits=(10, 25, 100, 500, 1000), sequenced=False),
    Venue("coinbase", _coinbase_urls, gap_check=("handle_message", _coinbase_gap)),
    # htx raises ChecksumError inside its handler on a gap; coby's frame guard turns that into a resync
    Venue("htx", _htx_urls, book_limits=(5, 20, 150, 400), trades_own_connection=True),
    Venue("kucoin", _kucoin_urls, gap_check=("handle_message", _kucoin_gap)),
    Venue("gate", _gate_urls, book_limits=(50, 400), gap_check=("handle_message", _gate_gap)),
    # bitfinex: no sequence numbers; ccxt checks the crc32 of the top 25 levels (a gap deeper down is only
    # caught once those levels reach the top 25) and needs a new client to recover (wire notes)
    Venue("bitfinex", _bitfinex_urls, book_limits=(25, 100)),
    # mexc: ccxt waits for 25 deltas before it fetches the snapshot - minutes on a thin market, past the
    # watchdog's stale_after, so the book never came; fetch it after the first delta (ccxt still syncs them)
    Venue("mexc", _mexc_urls, gap_check=("handle_protobuf_message", _mexc_gap),
          options={"watchOrderBook": {"snapshotDelay": 1}}),
)}


def ws_base(http_base: str) -> str:
    """``http://h:p`` -> ``ws://h:p`` (``https`` -> ``wss``)."""
    parts = urlsplit(http_base)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def override_base(settings: Any, exchange: str) -> str | None:
    """The base URL ``exchange`` is pointed at (simulator or proxy), or None for the real venue."""
    urls = settings.exchange_urls
    base = urls.get(exchange) or urls.get("*")
    if base is None and settings.simulate:
        base = f"http://127.0.0.1:{settings.simulator_port}"
    return base.rstrip("/") if base else None


def _precision(exchange: str, market: VenueMarket) -> dict[str, float]:
    """ccxt's ``precision`` of the market, in the venue's precision mode (bitfinex: significant digits)."""
    if exchange == "bitfinex":
        return {"price": 5, "amount": 8}
    tick, lot = precision(exchange, f"{market.base}-{market.quote}")
    return {"price": tick, "amount": lot}


def preset_market(venue: Venue, market: VenueMarket) -> dict[str, Any]:
    """A structurally complete spot market, as ``set_markets`` needs it (wire notes, section 2)."""
    raw = {"id": market.id, "symbol": market.symbol, "base": market.base, "quote": market.quote,
           "baseId": market.base_id, "quoteId": market.quote_id, "type": "spot", "spot": True, "active": True,
           "precision": _precision(venue.name, market)}
    if venue.market_extra is not None:
        raw.update(venue.market_extra(market))
    return ccxt.Exchange().safe_market_structure(raw)


def build_client(exchange: str, markets: Mapping[str, dict[str, Any]], base_url: str | None) -> Any:
    """An unmodified ccxt.pro client with ``markets`` preset (no load_markets call), opened.

    Must run inside the event loop (``open()`` binds it; kucoin needs that before its
    first watch). ``base_url`` rewrites the venue's endpoints (simulator / proxy).
    """
    venue = VENUES[exchange]
    config: dict[str, Any] = {"markets": {sym: ccxt.Exchange().safe_market_structure(dict(m))
                                          for sym, m in markets.items()}}
    if venue.options:
        config["options"] = dict(venue.options)
    ex = getattr(ccxtpro, exchange)(config)
    ex.open()
    if base_url is not None:
        venue.ws_urls(ex, base_url, ws_base(base_url))
    return ex
