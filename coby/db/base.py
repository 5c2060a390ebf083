"""The storage interface (the design's StorageManager) and what both backends share.

Writes go through a ``WriteBuffer`` (journalled on local disk, then batched to the database); reads
are built here once from the table specs and run by the backend, so PostgreSQL and
SQLite answer the same questions with the same SQL shape. Range iterators read in
bounded chunks with keyset pagination (memory does not grow with the range) and
yield rows in primary-key order, which starts with ``timestamp``.
"""

from __future__ import annotations

import abc
import asyncio
import heapq
from datetime import datetime
from typing import Any, AsyncIterator, Iterable, Sequence

import structlog

from coby.config import Settings
from coby.db.buffer import WriteBuffer
from coby.db.tables import (
    CONNECTION_EVENTS, CONSOLIDATED, HEATMAP, OHLCV, SNAPSHOTS, TRADES, Table, connection_event_row, heatmap_rows,
    ohlcv_row, snapshot_row, trade_row, trades_from_rows,
)
from coby.errors import StorageUnavailable
from coby.models import (
    ConnectionEvent, HeatmapData, OHLCVBar, OrderBookSnapshot, TradeEvent, ensure_utc,
)

log = structlog.get_logger("coby.storage")

MAX_PAGE = 100_000


class Storage(abc.ABC):
    """One async interface over PostgreSQL/TimescaleDB and SQLite."""

    kind: str = "abstract"
    #: "timescaledb", "timescaledb-apache", "postgresql" or "sqlite"; set by setup.
    mode: str = "unknown"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.buffer = WriteBuffer(self, settings)
        self._closed = False
        self._prepared = False

    # --- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the journal, connect and migrate (a database that does not answer is not fatal: the
        writer keeps probing and writes the journal's backlog once it does), start the write path."""
        self.check_url()
        await self.buffer.open()
        try:
            await self.prepare()
        except StorageUnavailable as e:
            self.buffer.mark_down(str(e))
            log.warning("storage_down_at_start", error=str(e), hint="rows are journalled in data_dir/journal "
                        "and written once the database answers")
        self.buffer.start()

    async def prepare(self) -> None:
        """Connect and apply the migrations if not done yet; cheap once done. StorageUnavailable while
        the database does not answer."""
        await self.prepare_writer()  # the probe: a direct connection, no pool churn while the database is down
        if not self._prepared:
            await self.connect()
            await self.setup_database_schema()
            self._prepared = True

    async def prepare_writer(self) -> None:
        """Backends with a writer connection of their own make sure it is open."""

    def check_url(self) -> None:
        """Raise StorageError (fatal: the user must fix it) for a URL that can never work."""

    async def aclose(self) -> None:
        """Journal everything, write what the database takes within the time, then close. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await self.buffer.aclose(timeout=self.settings.shutdown_timeout / 2)
        await self.disconnect()

    def ready(self) -> tuple[bool, str | None]:
        """Whether accepted rows are being written now (database up, journal writable and not too far
        behind), and if not, why."""
        return self.buffer.ready()

    async def __aenter__(self) -> "Storage":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- backend hooks ----------------------------------------------------------------------
    @abc.abstractmethod
    async def connect(self) -> None: ...

    @abc.abstractmethod
    async def disconnect(self) -> None: ...

    @abc.abstractmethod
    async def setup_database_schema(self) -> None:
        """Apply pending migrations (idempotent). Async here: both backends do I/O."""

    @abc.abstractmethod
    async def write_batch(self, table: Table, rows: list[tuple]) -> int: ...

    @abc.abstractmethod
    async def fetch(self, sql: str, params: Sequence[Any]) -> list[tuple]:
        """Run a query built by ``select``; return rows with timestamps as aware datetimes."""

    async def delete_before(self, table: Table, cutoff: datetime, limit: int) -> int:
        """Delete at most about ``limit`` rows of ``table`` older than ``cutoff`` in one short transaction;
        return how many went (the retention job, ``db/retention.py``, calls it until it returns 0)."""
        raise NotImplementedError

    placeholder = "%s"

    def select_expr(self, table: Table, column: str) -> str:
        return column

    def adapt_ts(self, ts: datetime) -> Any:
        return ts

    # --- writes (the design's interface, plus batches) ------------------------------------
    async def store_orderbook(self, data: OrderBookSnapshot) -> bool:
        return self.buffer.add(SNAPSHOTS, snapshot_row(data, self.settings.snapshot_depth))

    async def store_trade(self, data: TradeEvent) -> bool:
        return self.buffer.add(TRADES, trade_row(data))

    async def store_trades(self, trades: Iterable[TradeEvent]) -> bool:
        return self.buffer.add_many(TRADES, [trade_row(t) for t in trades])

    async def store_ohlcv(self, bar: OHLCVBar) -> bool:
        return self.buffer.add(OHLCV, ohlcv_row(bar))

    async def store_heatmap(self, heatmap: HeatmapData) -> bool:
        return self.buffer.add_many(HEATMAP, heatmap_rows(heatmap))

    async def store_connection_event(self, event: ConnectionEvent) -> bool:
        return self.buffer.add(CONNECTION_EVENTS, connection_event_row(event))

    async def flush(self) -> None:
        """Journal what waits and wait until the database has it (StorageUnavailable while it is down)."""
        await self.buffer.flush()

    # --- reads --------------------------------------------------------------------------------
    def select(self, table: Table, start: datetime | None, end: datetime | None, *,
               exchanges: Sequence[str] | None = None, symbols: Sequence[str] | None = None,
               where: dict[str, Any] | None = None, after: tuple | None = None, order_desc: bool = False,
               limit: int = 1000) -> tuple[str, list[Any]]:
        """Build ``SELECT`` over ``table``: [start, end), filters, keyset ``after`` a key, key order."""
        ph = self.placeholder
        cols = ", ".join(self.select_expr(table, c) for c in table.names)
        conds: list[str] = []
        params: list[Any] = []
        if start is not None:
            conds.append(f"timestamp >= {ph}")
            params.append(self.adapt_ts(ensure_utc(start)))
        if end is not None:
            conds.append(f"timestamp < {ph}")
            params.append(self.adapt_ts(ensure_utc(end)))
        for col, values in (("exchange", exchanges), ("symbol", symbols)):
            if values:
                conds.append(f"{col} IN ({', '.join([ph] * len(values))})")
                params.extend(values)
        for col, value in (where or {}).items():
            conds.append(f"{col} = {ph}")
            params.append(value)
        if after is not None:
            conds.append(f"({', '.join(table.key)}) {'<' if order_desc else '>'} "
                         f"({', '.join([ph] * len(table.key))})")
            params.extend(self.adapt_ts(v) if isinstance(v, datetime) else v for v in after)
        direction = " DESC" if order_desc else ""
        sql = (f"SELECT {cols} FROM {table.name}" + (f" WHERE {' AND '.join(conds)}" if conds else "")
               + f" ORDER BY {', '.join(k + direction for k in table.key)} LIMIT {int(min(limit, MAX_PAGE))}")
        return sql, params

    async def rows(self, table: Table, start: datetime | None, end: datetime | None, **kw: Any) -> list[tuple]:
        sql, params = self.select(table, start, end, **kw)
        return await self.fetch(sql, params)

    async def get_trades(self, symbol: str, start: datetime | None = None, end: datetime | None = None, *,
                         exchange: str | None = None, limit: int = 1000, after: tuple | None = None,
                         newest_first: bool = False) -> list[TradeEvent]:
        rows = await self.rows(TRADES, start, end, symbols=[symbol], exchanges=[exchange] if exchange else None,
                               limit=limit, after=after, order_desc=newest_first)
        return trades_from_rows(rows)

    async def get_snapshots(self, symbol: str, start: datetime | None = None, end: datetime | None = None, *,
                            exchange: str | None = None, limit: int = 1000, after: tuple | None = None,
                            newest_first: bool = False) -> list[OrderBookSnapshot]:
        rows = await self.rows(SNAPSHOTS, start, end, symbols=[symbol], exchanges=[exchange] if exchange else None,
                               limit=limit, after=after, order_desc=newest_first)
        return [SNAPSHOTS.from_row(r) for r in rows]  # type: ignore[misc]

    async def get_ohlcv(self, symbol: str, timeframe: str, start: datetime | None = None,
                        end: datetime | None = None, *, exchange: str | None = None, limit: int = 1000,
                        after: tuple | None = None) -> list[OHLCVBar]:
        rows = await self.rows(OHLCV, start, end, symbols=[symbol], exchanges=[exchange or CONSOLIDATED],
                               where={"timeframe": timeframe}, limit=limit, after=after)
        return [OHLCV.from_row(r) for r in rows]  # type: ignore[misc]

    async def get_connection_events(self, start: datetime | None = None, end: datetime | None = None, *,
                                    exchange: str | None = None, limit: int = 1000) -> list[ConnectionEvent]:
        rows = await self.rows(CONNECTION_EVENTS, start, end, exchanges=[exchange] if exchange else None,
                               limit=limit)
        return [CONNECTION_EVENTS.from_row(r) for r in rows]  # type: ignore[misc]

    async def get_historical_data(self, symbol: str, start: datetime, end: datetime,
                                  limit: int = 10_000) -> list[dict]:
        """Trades and book snapshots of ``symbol`` in [start, end), merged in time order, as dicts."""
        trades = await self.get_trades(symbol, start, end, limit=limit)
        books = await self.get_snapshots(symbol, start, end, limit=limit)
        merged = heapq.merge(((t.timestamp, 1, "trade", t) for t in trades),
                             ((b.timestamp, 0, "orderbook", b) for b in books), key=lambda x: (x[0], x[1]))
        from coby.codec import to_dict  # local: codec is a leaf module, kept out of import time here
        return [{"type": kind, **to_dict(item)} for _, _, kind, item in list(merged)[:limit]]

    async def get_latest_data(self, symbol: str) -> dict:
        """The newest stored book and trade of ``symbol`` per venue."""
        from coby.codec import to_dict
        out: dict[str, Any] = {"symbol": symbol, "orderbooks": {}, "trades": {}}
        for exchange in self.settings.exchanges:
            books = await self.get_snapshots(symbol, exchange=exchange, limit=1, newest_first=True)
            if books:
                out["orderbooks"][exchange] = to_dict(books[0])
            trades = await self.get_trades(symbol, exchange=exchange, limit=1, newest_first=True)
            if trades:
                out["trades"][exchange] = to_dict(trades[0])
        return out

    # --- range iterators (replay) ---------------------------------------------------------------
    async def iter_rows(self, table: Table, start: datetime, end: datetime, *,
                        exchanges: Sequence[str] | None = None, symbols: Sequence[str] | None = None,
                        chunk: int = 5000) -> AsyncIterator[list[tuple]]:
        """Rows of [start, end) in key order, ``chunk`` at a time (keyset pagination).

        The next chunk is fetched while the caller works on the current one: at most two chunks
        are in memory, whatever the length of the range.
        """
        key_idx = table.key_index

        def fetch(after: tuple | None) -> asyncio.Task:
            return asyncio.ensure_future(self.rows(table, start, end, exchanges=exchanges, symbols=symbols,
                                                   after=after, limit=chunk))

        pending = fetch(None)
        try:
            while True:
                rows = await pending
                if len(rows) == chunk:
                    pending = fetch(tuple(rows[-1][i] for i in key_idx))
                if not rows:
                    return
                yield rows
                if len(rows) < chunk:
                    return
        finally:
            if not pending.done():
                pending.cancel()
            elif not pending.cancelled():
                pending.exception()  # retrieved: an abandoned prefetch's error is not an unhandled one

    async def iter_trades(self, start: datetime, end: datetime, **kw: Any) -> AsyncIterator[list[TradeEvent]]:
        async for rows in self.iter_rows(TRADES, start, end, **kw):
            yield trades_from_rows(rows)

    async def iter_snapshots(self, start: datetime, end: datetime,
                             **kw: Any) -> AsyncIterator[list[OrderBookSnapshot]]:
        async for rows in self.iter_rows(SNAPSHOTS, start, end, **kw):
            yield [SNAPSHOTS.from_row(r) for r in rows]  # type: ignore[misc]

    async def iter_connection_events(self, start: datetime, end: datetime, *, exchanges: Sequence[str] | None = None,
                                     chunk: int = 5000, **_: Any) -> AsyncIterator[list[ConnectionEvent]]:
        async for rows in self.iter_rows(CONNECTION_EVENTS, start, end, exchanges=exchanges, chunk=chunk):
            yield [CONNECTION_EVENTS.from_row(r) for r in rows]  # type: ignore[misc]
