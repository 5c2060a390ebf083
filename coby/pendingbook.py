"""A venue's book as ccxt keeps it, normalised only when a consumer needs it (issue 16: pay per consumer).

At about 10 updates a second per market every update used to be normalised in full (2 x ``book_depth``
levels converted and checked), though every consumer keeps only the latest state: the aggregation tick
reads each book every ``aggregate_interval``, a stored snapshot is taken every ``snapshot_interval``, and a
book publish needs the levels only when someone subscribes to the channel or the cache is shared
(Redis). So a connector hands on a :class:`PendingBook` - one per book stream, the same object every
time, with the reference to ccxt's live book and a version - and a consumer calls :meth:`resolve` when
it needs the state: the top ``depth`` levels are converted and validated then, once per version (every
consumer of that version shares the result).

Correctness. ccxt.pro mutates its book in place. Between two of ccxt's frames the book is whole (ccxt
applies a frame synchronously, and coby's code runs only between frames), so converting ccxt's current
state when a consumer asks gives the newest whole state - the same "newest wins" the connectors' emit
throttle always had. What is not whole is a book ccxt has given up on: a frame whose handler raised
(the frame guard counts it on the feed: ``Feed.torn``), a sequence gap coby found (``Feed.bad_books``),
ccxt dropping the book itself (a checksum failure: it is no longer ccxt's book for that symbol), the
stream failing or the feed being recycled. ``valid`` (given by the connector) sees all of these, and a
book that is not valid resolves to None: consumers keep the state they had. Validation keeps its
guarantee: a level that is not a positive finite number is refused with its reason (counted, as
:mod:`coby.collector.normalize` always did) before any consumer sees the book; the O(1) checks (empty side,
crossed or locked top, a venue time too far ahead or behind) run on every hand-on, in the connector.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from coby.models import UTC, OrderBookSnapshot

_fromtimestamp = datetime.fromtimestamp


class PendingBook:
    """The latest state of one venue book, normalised on demand (see the module docstring)."""

    __slots__ = ("exchange", "symbol", "raw", "received", "ts_ms", "version", "token", "_process", "_depth",
                 "_valid", "_memo_version", "_memo", "_top_version", "_top_depth", "_top")

    def __init__(self, exchange: str, symbol: str, process: Callable[..., OrderBookSnapshot | None], depth: int,
                 valid: Callable[[PendingBook], bool]) -> None:
        self.exchange, self.symbol = exchange, symbol
        self._process, self._depth, self._valid = process, depth, valid
        self.raw: Any = None
        self.received = 0.0  # wall time of the last hand-on
        self.ts_ms: Any = None  # the venue's time of the book at the last hand-on
        self.version = 0
        self.token: Any = None  # what ``valid`` compares: the connector's state at the hand-on
        self._memo_version = -1
        self._memo: OrderBookSnapshot | None = None
        self._top_version = self._top_depth = -1  # a version converted only to a smaller depth (resolve(depth))
        self._top: OrderBookSnapshot | None = None

    def hand_on(self, raw: Any, received: float, token: Any) -> None:
        """A new state from ccxt (O(1): nothing is copied or converted)."""
        self.raw, self.received, self.token = raw, received, token
        self.ts_ms = raw.get("timestamp")
        self.version += 1

    def resolve(self, depth: int | None = None) -> OrderBookSnapshot | None:
        """The book's state as a validated snapshot of the top ``depth`` levels; None if it was rejected
        (counted with its reason) or is no longer whole. Converted once per version.

        ``depth`` below the book's (a stored snapshot needs ``snapshot_depth``, 20 of 100): if this version
        is not converted yet, only its top ``depth`` levels are converted and checked, and kept apart - a
        later full resolve of the same version converts the whole top (a bad level below ``depth`` is
        counted then, once). A version rejected at its top is rejected whole: not converted again."""
        if self._memo_version == self.version:
            return self._memo
        if depth is not None and depth < self._depth:
            if self._top_version == self.version and self._top_depth >= depth:
                return self._top
            top = self._convert(depth)
            if top is None:  # rejected (or not whole) at the top: so is the whole
                self._memo_version, self._memo = self.version, None
            else:
                self._top_version, self._top_depth, self._top = self.version, depth, top
            return top
        self._memo_version = self.version
        self._memo = self._convert(self._depth)
        return self._memo

    def _convert(self, depth: int) -> OrderBookSnapshot | None:
        if self.raw is None or not self._valid(self):
            return None
        return self._process(self.raw, self.exchange, self.symbol, depth, self.received)

    def invalidate(self) -> None:
        """The state handed on is no longer whole (its stream failed): consumers keep what they had."""
        self.raw = None
        self.version += 1

    # what coby.collector.load reads of the newest book once a second (as of an OrderBookSnapshot)
    @property
    def timestamp(self) -> datetime:
        ts = self.ts_ms
        return _fromtimestamp(ts / 1000.0 if type(ts) is int or type(ts) is float else self.received, UTC)

    @property
    def received_at(self) -> datetime:
        return _fromtimestamp(self.received, UTC)
