"""The stored tables: columns, keys, and the conversion between model objects and rows.

A row is a plain tuple in column order, with ``datetime`` timestamps, ``float``
numbers and JSON text for book sides. Each backend adapts that one shape to its
own types (PostgreSQL: binary COPY into a float8 staging table; SQLite:
microsecond integers), so both backends store and return exactly the same data.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from itertools import starmap
from operator import itemgetter
from typing import Any, Callable

import orjson

from coby.models import (
    ConnectionEvent, HeatmapData, Levels, OHLCVBar, OrderBookSnapshot, TradeEvent, constructor,
)

CONSOLIDATED = "consolidated"  # the ``exchange`` value of cross-venue rows (OHLCV)

# Column kinds: text, ts (timestamptz), float, int, json (book side as JSON text).
TEXT, TS, FLOAT, INT, JSON = "text", "ts", "float", "int", "json"


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    kind: str
    nullable: bool = False


@dataclass(frozen=True, slots=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    # True: a row with a stored key replaces it (an OHLCV bar updated by a late trade).
    # False: the stored row wins and the new one is counted as a duplicate.
    upsert: bool = False
    from_row: Callable[[tuple], Any] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def key_index(self) -> tuple[int, ...]:
        names = self.names
        return tuple(names.index(k) for k in self.key)

    @property
    def ts_indexes(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.columns) if c.kind == TS)


_price, _size = itemgetter(0), itemgetter(1)
_trade = constructor(TradeEvent)


def _levels_json(levels: Levels) -> str:
    """A book side as stored: ``[[price, size], ...]`` (counts are not stored)."""
    return orjson.dumps(list(zip(levels.prices.tolist(), levels.sizes.tolist()))).decode()


def _levels(text: str | bytes) -> Levels:
    rows = orjson.loads(text)
    return Levels(map(_price, rows), map(_size, rows))


# --- order_book_snapshots -------------------------------------------------------------------
def snapshot_row(s: OrderBookSnapshot, depth: int | None = None) -> tuple:
    bids = s.bids[:depth] if depth else s.bids
    asks = s.asks[:depth] if depth else s.asks
    bid_volume = sum(bids.sizes, 0.0)
    ask_volume = sum(asks.sizes, 0.0)
    if bids and asks:
        best_bid, best_ask = bids.prices[0], asks.prices[0]
        mid = (best_bid + best_ask) / 2.0
        spread = best_ask - best_bid
    else:
        mid = spread = None
    return (s.symbol, s.exchange, s.timestamp, _levels_json(bids), _levels_json(asks), s.sequence_id,
            mid, spread, bid_volume, ask_volume, s.received_at)


def _snapshot_from_row(r: tuple) -> OrderBookSnapshot:
    return OrderBookSnapshot(symbol=r[0], exchange=r[1], timestamp=r[2], bids=_levels(r[3]), asks=_levels(r[4]),
                             sequence_id=r[5], received_at=r[10])


SNAPSHOTS = Table(
    "order_book_snapshots",
    (Column("symbol", TEXT), Column("exchange", TEXT), Column("timestamp", TS), Column("bids", JSON),
     Column("asks", JSON), Column("sequence_id", INT, True), Column("mid_price", FLOAT, True),
     Column("spread", FLOAT, True), Column("bid_volume", FLOAT, True), Column("ask_volume", FLOAT, True),
     Column("received_at", TS, True)),
    key=("timestamp", "symbol", "exchange"),
    from_row=_snapshot_from_row,
)


# --- trade_events -----------------------------------------------------------------------------
def trade_row(t: TradeEvent) -> tuple:
    return (t.symbol, t.exchange, t.timestamp, t.price, t.size, t.side, t.trade_id, t.received_at)


def _trade_from_row(r: tuple) -> TradeEvent:
    return _trade(*r)  # the row's columns are TradeEvent's fields, in order


def trades_from_rows(rows: list[tuple]) -> list[TradeEvent]:
    """Many rows at once (replay's hot path: no call per row in Python but the constructor's)."""
    return list(starmap(_trade, rows))


TRADES = Table(
    "trade_events",
    (Column("symbol", TEXT), Column("exchange", TEXT), Column("timestamp", TS), Column("price", FLOAT),
     Column("size", FLOAT), Column("side", TEXT), Column("trade_id", TEXT), Column("received_at", TS, True)),
    key=("timestamp", "symbol", "exchange", "trade_id"),
    from_row=_trade_from_row,
)


# --- heatmap_data -----------------------------------------------------------------------------
def heatmap_rows(h: HeatmapData) -> list[tuple]:
    return [(h.symbol, h.timestamp, h.bucket_size, p.price, p.volume, p.side, p.exchange_count) for p in h.data]


HEATMAP = Table(
    "heatmap_data",
    (Column("symbol", TEXT), Column("timestamp", TS), Column("bucket_size", FLOAT), Column("price_bucket", FLOAT),
     Column("volume", FLOAT), Column("side", TEXT), Column("exchange_count", INT)),
    key=("timestamp", "symbol", "bucket_size", "price_bucket", "side"),
    upsert=True,
)


# --- ohlcv_data -------------------------------------------------------------------------------
def ohlcv_row(b: OHLCVBar) -> tuple:
    return (b.symbol, b.exchange or CONSOLIDATED, b.timestamp, b.timeframe, b.open, b.high, b.low, b.close,
            b.volume, b.trade_count, b.vwap, b.buy_volume, b.sell_volume)


def _ohlcv_from_row(r: tuple) -> OHLCVBar:
    return OHLCVBar(symbol=r[0], exchange=None if r[1] == CONSOLIDATED else r[1], timestamp=r[2], timeframe=r[3],
                    open=r[4], high=r[5], low=r[6], close=r[7], volume=r[8], trade_count=r[9] or 0,
                    vwap=r[10] if r[10] is not None else r[7], buy_volume=r[11] or 0.0, sell_volume=r[12] or 0.0,
                    closed=True)


OHLCV = Table(
    "ohlcv_data",
    (Column("symbol", TEXT), Column("exchange", TEXT), Column("timestamp", TS), Column("timeframe", TEXT),
     Column("open_price", FLOAT), Column("high_price", FLOAT), Column("low_price", FLOAT),
     Column("close_price", FLOAT), Column("volume", FLOAT), Column("trade_count", INT, True),
     Column("vwap", FLOAT, True), Column("buy_volume", FLOAT, True), Column("sell_volume", FLOAT, True)),
    key=("timestamp", "symbol", "exchange", "timeframe"),
    upsert=True,
    from_row=_ohlcv_from_row,
)


# --- connection_events ------------------------------------------------------------------------
def connection_event_row(e: ConnectionEvent) -> tuple:
    return (e.timestamp, e.exchange, e.symbol or "", e.event, e.detail or "")


def _connection_event_from_row(r: tuple) -> ConnectionEvent:
    return ConnectionEvent(timestamp=r[0], exchange=r[1], symbol=r[2] or None, event=r[3], detail=r[4])


CONNECTION_EVENTS = Table(
    "connection_events",
    (Column("timestamp", TS), Column("exchange", TEXT), Column("symbol", TEXT), Column("event", TEXT),
     Column("detail", TEXT)),
    key=("timestamp", "exchange", "symbol", "event"),
    from_row=_connection_event_from_row,
)

TABLES: dict[str, Table] = {t.name: t for t in (SNAPSHOTS, TRADES, HEATMAP, OHLCV, CONNECTION_EVENTS)}


def dedupe_last(table: Table, rows: list[tuple]) -> list[tuple]:
    """Keep the last row per key (an upsert batch may not touch one key twice)."""
    idx = table.key_index
    seen: dict[tuple, tuple] = {}
    for r in rows:
        seen[tuple(r[i] for i in idx)] = r
    return list(seen.values())


def row_to_json(table: Table, row: tuple) -> bytes:
    """A row as one JSON line (spill and dead-letter files)."""
    return orjson.dumps([table.name, list(row)])


def row_from_json(line: bytes) -> tuple[Table, tuple]:
    name, values = orjson.loads(line)
    table = TABLES[name]
    for i in table.ts_indexes:
        if values[i] is not None:
            values[i] = datetime.fromisoformat(values[i])
    return table, tuple(values)
