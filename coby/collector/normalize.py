"""ccxt structures -> coby's models, and the one place incoming data is validated.

:class:`DataProcessor` turns a ccxt order book (``{'bids': [[price, size], ...],
'asks': ..., 'timestamp': ms, 'nonce': n}``) into an :class:`OrderBookSnapshot` and
a ccxt trade (``{'id', 'timestamp', 'price', 'amount', 'side', 'info'}``) into a
:class:`TradeEvent`, then checks them:

==================  ===============================================================
reason              rejected when
==================  ===============================================================
schema              a field is missing or of the wrong type (price None, side 'x')
range               a price or size is not a positive finite number
empty_book          a side of the book has no level
future_timestamp    the venue's time is ahead of ours by more than ``max_future_skew``
old_timestamp       the venue's time is behind ours by more than ``max_age``
crossed_book        best bid > best ask
locked_book         best bid == best ask
duplicate_trade     a trade id already seen recently for the (exchange, symbol)
malformed           (counted for the connectors) a frame that could not be parsed
==================  ===============================================================

A rejected item is counted in ``coby_rejects_total{exchange,reason}``, logged at
most once per ``reject_log_interval`` per (exchange, reason) with the number
suppressed meanwhile, and never returned to the caller.

Hot path: a ccxt book can hold 1000 levels per side and is mutated in place; only
the top ``depth`` levels are converted, each side into the two ``array('d')`` columns
of a :class:`Levels` (no object per level), and checked column-wise: ``array``
refuses anything that is not a number (schema), ``0 < min(column)`` and
``sum(column) < inf`` together refuse zero, negative, infinite and NaN values (range).
All of it runs in C: no Python code per level.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

import structlog
from ccxt.async_support.base.ws.order_book_side import CountedOrderBookSide

from coby.collector.recentkeys import RecentKeys
from coby.errors import ValidationError
from coby.metrics import REJECTS
from coby.models import Levels, OrderBookMetrics, OrderBookSnapshot, TradeEvent, UTC, to_ms

log = structlog.get_logger("coby.normalize")

REASONS: tuple[str, ...] = (
    "schema", "range", "empty_book", "future_timestamp", "old_timestamp", "crossed_book", "locked_book",
    "duplicate_trade", "malformed",
)
_INF = float("inf")
_SIDES = frozenset(("buy", "sell"))
_price, _size, _count = itemgetter(0), itemgetter(1), itemgetter(2)
_fromtimestamp = datetime.fromtimestamp

# Venues whose ccxt trade ``id`` is not the venue's trade id: take it from the raw payload.
# htx's 24-digit ``id`` does not survive JSON parsing as an integer (distinct trades
# collide); ``tradeId`` is the real, small, unique id. Its REST history (the gap filler) sends it as
# ``trade-id``, which ccxt makes the trade's ``id``: without the key in ``info``, the ``id`` is taken.
INFO_TRADE_ID: dict[str, str] = {"htx": "tradeId"}
# Venues that stamp trades in nanoseconds: ccxt parses them through a float (``int(float(ns)) / 1e6``: 1 ms
# early at times); coby divides the raw integer itself, exactly (trade_ms; the gap filler matches kucoin's
# trades by content, time included, so its fetched trades are timed the same way).
INFO_TIME_NS: dict[str, str] = {"kucoin": "time"}


def trade_ms(raw: Mapping[str, Any], exchange: str) -> Any:
    """A ccxt trade's time in ms, exact where the venue sends nanoseconds (INFO_TIME_NS)."""
    key = INFO_TIME_NS.get(exchange)
    if key is not None:
        ns = raw["info"].get(key)
        if ns is not None:
            return int(ns) // 1_000_000
    return raw["timestamp"]


class DataProcessor:
    """Normalises and validates venue data; one instance can serve every venue.

    ``clock`` returns the wall time in seconds since the epoch (the timestamp
    checks compare against it; tests pass a fake one).
    """

    def __init__(self, *, max_future_skew: float = 5.0, max_age: float = 3600.0, trade_id_memory: int = 10_000,
                 reject_log_interval: float = 10.0, clock: Callable[[], float] = time.time) -> None:
        self._clock = self.clock = clock  # wall time: a book's or trade's receive time
        self._skew_ms = max_future_skew * 1000.0
        self._age_ms = max_age * 1000.0
        self._id_memory = trade_id_memory
        self._log_interval = reject_log_interval
        self._trade_ids: dict[tuple[str, str], RecentKeys] = {}
        self.relost = 0  # validated live, never handed on, recovered by the gap filler (process_trades)
        self._rejects: dict[str, dict[str, int]] = {}
        self._counters: dict[tuple[str, str], Any] = {}
        self._log_state: dict[tuple[str, str], list[float]] = {}  # -> [last logged at, suppressed since]

    @classmethod
    def from_settings(cls, settings: Any, clock: Callable[[], float] = time.time) -> DataProcessor:
        return cls(max_future_skew=settings.max_future_skew, max_age=settings.max_data_age,
                   trade_id_memory=settings.trade_id_memory, reject_log_interval=settings.reject_log_interval,
                   clock=clock)

    # ------------------------------------------------------------------ books

    def normalize_orderbook(self, raw: Mapping[str, Any], exchange: str, symbol: str,
                            depth: int | None = None, received: float | None = None) -> OrderBookSnapshot:
        """The top ``depth`` levels of a ccxt book as a snapshot (ValidationError: schema, range);
        ``received``: when coby got it (wall seconds; now if not given)."""
        try:
            raw_bids, raw_asks = raw["bids"], raw["asks"]
            ts = raw.get("timestamp")
            nonce = raw.get("nonce")
        except (KeyError, TypeError, AttributeError):
            raise ValidationError("schema", "book without bids/asks") from None
        limit = depth if depth else 1 << 30
        bids = _convert(raw_bids, limit)
        asks = _convert(raw_asks, limit)
        received_at = _fromtimestamp(self._clock() if received is None else received, UTC)
        if ts is None:
            timestamp = received_at
        elif type(ts) is int or type(ts) is float:
            timestamp = _fromtimestamp(ts / 1000.0, UTC)
        else:
            raise ValidationError("schema", f"book timestamp {ts!r}")
        return OrderBookSnapshot(symbol, exchange, timestamp, bids, asks,
                                 nonce if type(nonce) is int else None, received_at)

    def process_orderbook(self, raw: Mapping[str, Any], exchange: str, symbol: str,
                          depth: int | None = None, received: float | None = None) -> OrderBookSnapshot | None:
        """Normalise and validate in one pass; None (counted, logged) if rejected. The connectors' path."""
        try:
            book = self.normalize_orderbook(raw, exchange, symbol, depth, received)
            reason = self._book_reason(book, levels_checked=True)
        except ValidationError as exc:
            self.reject(exchange, symbol, exc.reason, str(exc))
            return None
        if reason is not None:
            self.reject(exchange, symbol, reason[0], reason[1])
            return None
        return book

    def check_top(self, raw: Any, exchange: str, symbol: str) -> bool:
        """The O(1) checks of a ccxt book, run on every state a connector hands on unconverted
        (:mod:`coby.pendingbook`): both sides have a level, the top is neither crossed nor locked,
        the venue's time is within bounds. False (counted, logged) if rejected; the per-level checks
        (schema, range) run when a consumer resolves the book."""
        try:
            bids, asks, ts = raw["bids"], raw["asks"], raw.get("timestamp")
            if not bids or not asks:
                reason: tuple[str, str] | None = ("empty_book", f"{len(bids)} bids, {len(asks)} asks")
            else:
                best_bid, best_ask = bids[0][0], asks[0][0]
                if best_bid > best_ask:
                    reason = "crossed_book", f"bid {best_bid} > ask {best_ask}"
                elif best_bid == best_ask:
                    reason = "locked_book", f"bid == ask == {best_ask}"
                elif type(ts) is int or type(ts) is float:
                    reason = self._time_reason(ts, self._clock() * 1000.0)
                else:
                    reason = None
        except (KeyError, TypeError, AttributeError, IndexError):
            return True  # not a well-formed book: resolving it names the schema error
        if reason is not None:
            self.reject(exchange, symbol, reason[0], reason[1])
            return False
        return True

    # ----------------------------------------------------------------- trades

    def normalize_trade(self, raw: Mapping[str, Any], exchange: str, symbol: str,
                        _occurrence: int = 0) -> TradeEvent:
        """A ccxt trade as a TradeEvent (ValidationError: schema)."""
        try:
            price, amount, side, ts = raw["price"], raw["amount"], raw["side"], raw["timestamp"]
            key = INFO_TRADE_ID.get(exchange)
            trade_id = (raw["info"].get(key) or raw.get("id")) if key else raw.get("id")
            if exchange in INFO_TIME_NS:
                ts = trade_ms(raw, exchange)
        except (KeyError, TypeError, AttributeError):
            raise ValidationError("schema", "trade without price/amount/side/timestamp") from None
        if not (type(price) is float or type(price) is int) or not (type(amount) is float or type(amount) is int):
            raise ValidationError("schema", f"trade price/amount {price!r}/{amount!r}")
        if side not in _SIDES:
            raise ValidationError("schema", f"trade side {side!r}")
        if not (type(ts) is int or type(ts) is float):
            raise ValidationError("schema", f"trade timestamp {ts!r}")
        if trade_id is None or trade_id == "":
            # No venue id (mexc aggregated deals): a synthetic one from the content; the
            # occurrence index keeps identical trades within one batch apart.
            trade_id = f"{int(ts)}:{price!r}:{amount!r}:{side}:{_occurrence}"
        elif type(trade_id) is not str:
            trade_id = str(trade_id)
        return TradeEvent(symbol, exchange, _fromtimestamp(ts / 1000.0, UTC), float(price), float(amount), side,
                          trade_id, _fromtimestamp(self._clock(), UTC))

    def process_trades(self, raws: Iterable[Mapping[str, Any]], exchange: str, symbol: str, *,
                       recovered: bool = False) -> list[TradeEvent]:
        """Normalise and validate a batch (as ``watch_trades`` returns it); rejects are dropped. ``recovered``:
        trades the gap filler fetched and found neither live nor stored (coby.collector.backfill) - an id validated here
        before is no duplicate then: the live trade was validated but never handed on (its stream was cancelled
        between the two); counted in ``relost``."""
        out: list[TradeEvent] = []
        seen: dict[tuple[Any, ...], int] | None = None
        for raw in raws:
            occurrence = 0
            if raw.get("id") is None:
                seen = {} if seen is None else seen
                k = (raw.get("timestamp"), raw.get("price"), raw.get("amount"), raw.get("side"))
                occurrence = seen[k] = seen.get(k, -1) + 1
            try:
                trade = self.normalize_trade(raw, exchange, symbol, occurrence)
            except ValidationError as exc:
                self.reject(exchange, symbol, exc.reason, str(exc))
                continue
            if self._recovered(trade) if recovered else self.validate_data(trade):
                out.append(trade)
        return out

    # ------------------------------------------------------------- validation

    def _recovered(self, trade: TradeEvent) -> bool:
        reason = self._trade_reason(trade)
        if reason is not None and reason[0] == "duplicate_trade":
            self.relost += 1
            return True
        if reason is not None:
            self.reject(trade.exchange, trade.symbol, reason[0], reason[1])
            return False
        return True

    def validate_data(self, item: OrderBookSnapshot | TradeEvent) -> bool:
        """Full checks of a snapshot or trade; False (counted, logged) if rejected.

        A valid trade's id is remembered: validating the same trade again reports
        it as a duplicate (that is how duplicates from the venue are caught).
        """
        if isinstance(item, OrderBookSnapshot):
            reason = self._book_reason(item, levels_checked=False)
        elif isinstance(item, TradeEvent):
            reason = self._trade_reason(item)
        else:
            reason = ("schema", f"not a book or trade: {type(item).__name__}")
            self.reject(getattr(item, "exchange", "unknown"), getattr(item, "symbol", None), *reason)
            return False
        if reason is not None:
            self.reject(item.exchange, item.symbol, reason[0], reason[1])
            return False
        return True

    def _time_reason(self, ts_ms: float, now_ms: float) -> tuple[str, str] | None:
        if ts_ms > now_ms + self._skew_ms:
            return "future_timestamp", f"{(ts_ms - now_ms) / 1000.0:.3f}s ahead"
        if ts_ms < now_ms - self._age_ms:
            return "old_timestamp", f"{(now_ms - ts_ms) / 1000.0:.0f}s old"
        return None

    def _book_reason(self, book: OrderBookSnapshot, levels_checked: bool) -> tuple[str, str] | None:
        bids, asks = book.bids, book.asks
        if not bids or not asks:
            return "empty_book", f"{len(bids)} bids, {len(asks)} asks"
        if not levels_checked:
            for side in (bids, asks):
                bad = _out_of_range(side.prices, side.sizes)
                if bad is not None:
                    return "range", bad
        best_bid, best_ask = bids.prices[0], asks.prices[0]
        if best_bid > best_ask:
            return "crossed_book", f"bid {best_bid} > ask {best_ask}"
        if best_bid == best_ask:
            return "locked_book", f"bid == ask == {best_ask}"
        return self._time_reason(to_ms(book.timestamp), self._clock() * 1000.0)

    def _trade_reason(self, trade: TradeEvent) -> tuple[str, str] | None:
        p, s = trade.price, trade.size
        if not (type(p) is float or type(p) is int) or not (type(s) is float or type(s) is int):
            return "schema", f"price/size {p!r}/{s!r}"
        if not (0.0 < p < _INF and 0.0 < s < _INF):
            return "range", f"price {p!r} size {s!r}"
        if trade.side not in _SIDES:
            return "schema", f"side {trade.side!r}"
        if not trade.trade_id:
            return "schema", "empty trade id"
        reason = self._time_reason(trade.timestamp.timestamp() * 1000.0, self._clock() * 1000.0)
        if reason is not None:
            return reason
        key = (trade.exchange, trade.symbol)
        ids = self._trade_ids.get(key)
        if ids is None:
            ids = self._trade_ids[key] = RecentKeys(self._id_memory)
        if not ids.add(trade.trade_id):
            return "duplicate_trade", f"trade id {trade.trade_id}"
        return None

    # ---------------------------------------------------------------- metrics

    def calculate_metrics(self, book: OrderBookSnapshot) -> OrderBookMetrics:
        """Mid, spread and the volume on each side of ``book`` (ValidationError if a side is empty)."""
        if not book.bids or not book.asks:
            raise ValidationError("empty_book", "metrics need both sides")
        best_bid, best_ask = book.bids.prices[0], book.asks.prices[0]
        return OrderBookMetrics(
            symbol=book.symbol, exchange=book.exchange, timestamp=book.timestamp,
            mid_price=(best_bid + best_ask) / 2.0, spread=best_ask - best_bid,
            bid_volume=sum(book.bids.sizes), ask_volume=sum(book.asks.sizes),
            best_bid=best_bid, best_ask=best_ask,
        )

    # ---------------------------------------------------------------- rejects

    def reject(self, exchange: str, symbol: str | None, reason: str, detail: str = "") -> None:
        """Count a rejected item and log it at a bounded rate."""
        counts = self._rejects.get(exchange)
        if counts is None:
            counts = self._rejects[exchange] = {}
        counts[reason] = counts.get(reason, 0) + 1
        key = (exchange, reason)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = REJECTS.labels(exchange, reason)
        counter.inc()
        now = time.monotonic()
        state = self._log_state.get(key)
        if state is None:
            state = self._log_state[key] = [float("-inf"), 0.0]
        if now - state[0] >= self._log_interval:
            log.warning("item_rejected", exchange=exchange, symbol=symbol, reason=reason, detail=detail[:200],
                        suppressed=int(state[1]))
            state[0], state[1] = now, 0.0
        else:
            state[1] += 1

    def reject_counts(self, exchange: str) -> dict[str, int]:
        """Rejects of ``exchange`` by reason, since this processor was made."""
        return dict(self._rejects.get(exchange, {}))


def _convert(side: Any, limit: int) -> Levels:
    """The top ``limit`` ccxt levels ``[price, size(, count)]`` as checked columns (see the module
    docstring); ValidationError 'schema' or 'range' names the first bad level."""
    top = side[:limit]
    counted = isinstance(side, CountedOrderBookSide)  # bitfinex: [price, size, count]; others' 3rd item is an id
    try:
        prices, sizes = list(map(_price, top)), list(map(_size, top))
        levels = Levels(array("d", prices), array("d", sizes), tuple(map(int, map(_count, top))) if counted else None)
    except (TypeError, IndexError, KeyError, ValueError, OverflowError):
        raise ValidationError("schema", _first_bad(top)) from None
    bad = _out_of_range(prices, sizes)  # on the lists: min and sum read list floats without boxing them
    if bad is not None:
        raise ValidationError("range", bad)
    return levels


def _out_of_range(prices: Sequence[float], sizes: Sequence[float]) -> str | None:
    """None if every price and size is positive and finite, else the first bad level. ``min`` is
    0 or less if any value is (or NaN if the first is); ``sum`` is inf or NaN if any value is."""
    if not prices or (0.0 < min(prices) and sum(prices) < _INF and 0.0 < min(sizes) and sum(sizes) < _INF):
        return None
    for p, s in zip(prices, sizes):
        if not (0.0 < p < _INF and 0.0 < s < _INF):
            return f"level {p!r} x {s!r}"
    return "level out of range"  # a sum overflowed: no single value is out of range, the side is


def _first_bad(top: Any) -> str:
    """The message for a side that did not convert: its first level that is not ``[number, number]``."""
    for level in top:
        try:
            p, s = level[0], level[1]
        except (TypeError, IndexError, KeyError):
            return f"book level {level!r} is not [price, size]"
        if not (type(p) is float or type(p) is int) or not (type(s) is float or type(s) is int):
            return f"level {p!r} x {s!r}"
    return "level count is not an integer"
