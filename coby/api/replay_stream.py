"""A replay's source: the stored events of a time range as one time-ordered stream, and its gaps.

``merged_events`` reads trades, book snapshots and connection events through the storage's
range iterators (chunked, next chunk prefetched) and yields *batches* of events in
``(timestamp, kind, key)`` order, kinds ranked connection event < book < trade at one
timestamp. The merge works a batch at a time, not an event at a time: each source keeps the
rows it has read; every row older than the *horizon* - the oldest last-read timestamp of the
sources not yet exhausted - can no longer be preceded by an unread row, so those rows are cut
from each source and merged by one stable sort (a C merge of already sorted runs). A source
whose last-read timestamp is the horizon reads its next chunk. Each source thus holds at most
the chunk being merged plus the one prefetched: memory does not grow with the range.

``GapTracker`` turns stored connection events into explicit gap messages: a feed that went
``disconnected``/``stale``/``circuit_open`` opens a gap, the next ``connected``/``resynced``/
``circuit_closed`` of the same (venue, symbol) closes it, with its duration.

``books_before`` and ``connection_state_before`` read what a session needs to know at its
start (or seek) point: the latest book of each venue, and the gaps open at that moment.
"""

from __future__ import annotations

import operator
from bisect import bisect_left
from datetime import datetime, timedelta
from typing import Any, AsyncIterator, Sequence

from coby.db.tables import CONNECTION_EVENTS
from coby.models import ConnectionEvent, ConnectionEventKind, OrderBookSnapshot, ensure_utc

_TS = operator.attrgetter("timestamp")
GAP_OPENERS = frozenset({ConnectionEventKind.DISCONNECTED.value, ConnectionEventKind.STALE.value,
                         ConnectionEventKind.CIRCUIT_OPEN.value})
GAP_CLOSERS = frozenset({ConnectionEventKind.CONNECTED.value, ConnectionEventKind.RESYNCED.value,
                         ConnectionEventKind.CIRCUIT_CLOSED.value})


class _Source:
    __slots__ = ("it", "buf", "frontier", "done", "keep")

    def __init__(self, it: AsyncIterator[list], keep: Any = None) -> None:
        self.it = it
        self.buf: list = []
        self.frontier: datetime | None = None
        self.done = False
        self.keep = keep  # a row filter the storage query cannot express (connection events' symbols)

    async def fill(self) -> None:
        try:
            chunk = await anext(self.it)
        except StopAsyncIteration:
            self.done = True
            return
        self.frontier = chunk[-1].timestamp
        if self.keep is not None:
            chunk = [e for e in chunk if self.keep(e)]
        if self.buf:
            self.buf.extend(chunk)
        else:
            self.buf = chunk


def _symbol_filter(symbols: Sequence[str] | None) -> Any:
    if not symbols:
        return None
    wanted = frozenset(symbols)
    return lambda e: e.symbol is None or e.symbol in wanted


async def merged_events(storage: Any, start: datetime, end: datetime, *, exchanges: Sequence[str] | None = None,
                        symbols: Sequence[str] | None = None, chunk: int = 5000,
                        kinds: Sequence[str] = ("connection", "book", "trade")) -> AsyncIterator[list]:
    """Batches of stored events in [start, end), time-ordered across tables and venues (see the module)."""
    filters = {"exchanges": exchanges or None, "symbols": symbols or None, "chunk": chunk}
    sources: list[_Source] = []
    if "connection" in kinds:  # first: at one timestamp, a gap marker precedes the data
        sources.append(_Source(storage.iter_connection_events(start, end, exchanges=filters["exchanges"],
                                                              chunk=chunk), _symbol_filter(symbols)))
    if "book" in kinds:
        sources.append(_Source(storage.iter_snapshots(start, end, **filters)))
    if "trade" in kinds:
        sources.append(_Source(storage.iter_trades(start, end, **filters)))
    try:
        for src in sources:
            await src.fill()
        while True:
            live = [s for s in sources if not s.done]
            horizon = min(s.frontier for s in live) if live else None  # type: ignore[type-var]
            parts = []
            for s in sources:
                buf = s.buf
                if not buf:
                    continue
                cut = len(buf) if horizon is None else bisect_left(buf, horizon, key=_TS)
                if cut == len(buf):
                    parts.append(buf)
                    s.buf = []
                elif cut:
                    parts.append(buf[:cut])
                    del buf[:cut]
            if parts:
                if len(parts) == 1:
                    yield parts[0]
                else:
                    batch = parts[0]
                    for p in parts[1:]:
                        batch += p
                    batch.sort(key=_TS)  # stable: ties keep the source order (connection, book, trade)
                    yield batch
            if horizon is None:
                return
            for s in live:
                if s.frontier == horizon:
                    await s.fill()
    finally:
        for s in sources:
            await s.it.aclose()  # type: ignore[attr-defined]


class GapTracker:
    """Open and closed gaps per (venue, symbol), from connection events in time order."""

    def __init__(self) -> None:
        self.open: dict[tuple[str, str | None], ConnectionEvent] = {}

    def update(self, e: ConnectionEvent) -> dict | None:
        """The gap message ``e`` makes (opened or closed), or None when it changes no gap."""
        key = (e.exchange, e.symbol)
        if e.event in GAP_OPENERS:
            if key in self.open:
                return None
            self.open[key] = e
            return gap_message(e, None)
        if e.event in GAP_CLOSERS:
            opened = self.open.pop(key, None)
            if opened is None:
                return None
            return gap_message(opened, e)
        return None


def gap_message(opened: ConnectionEvent, closed: ConnectionEvent | None) -> dict:
    """The ``gap`` channel's data: where there is no data, from when to when, and why."""
    msg = {"exchange": opened.exchange, "symbol": opened.symbol, "state": "open" if closed is None else "closed",
           "start": opened.timestamp, "end": None, "duration_s": None, "reason": opened.event,
           "detail": opened.detail}
    if closed is not None:
        msg["end"] = closed.timestamp
        msg["duration_s"] = round((closed.timestamp - opened.timestamp).total_seconds(), 6)
    return msg


async def books_before(storage: Any, ts: datetime, lookback: float, *, exchanges: Sequence[str] | None = None,
                       symbols: Sequence[str] | None = None, chunk: int = 5000) -> list[OrderBookSnapshot]:
    """The latest stored book of each (venue, symbol) in [ts - lookback, ts), oldest first."""
    latest: dict[tuple[str, str], OrderBookSnapshot] = {}
    start = ensure_utc(ts) - timedelta(seconds=lookback)
    async for rows in storage.iter_snapshots(start, ts, exchanges=exchanges or None, symbols=symbols or None,
                                             chunk=chunk):
        for b in rows:
            latest[(b.exchange, b.symbol)] = b
    return sorted(latest.values(), key=_TS)


async def connection_state_before(storage: Any, ts: datetime, exchanges: Sequence[str],
                                  symbols: Sequence[str] | None = None, depth: int = 100) -> GapTracker:
    """The gaps open at ``ts``: the newest ``depth`` stored connection events of each venue before it."""
    keep = _symbol_filter(symbols)
    events: list[ConnectionEvent] = []
    for exchange in exchanges:
        rows = await storage.rows(CONNECTION_EVENTS, None, ts, exchanges=[exchange], order_desc=True, limit=depth)
        events.extend(e for e in map(CONNECTION_EVENTS.from_row, rows) if keep is None or keep(e))
    tracker = GapTracker()
    for e in sorted(events, key=_TS):
        tracker.update(e)
    return tracker
