"""The aggregation engine: price buckets, heatmaps, imbalances and the consolidated book, per tick.

How a level's price maps to its bucket
--------------------------------------
Buckets of width ``s`` (``Settings.bucket_size(symbol)``: BTC $10, ETH $1 by default) are named by
an edge price ``e``, a multiple of ``s``. Each side rounds *away from the mid*:

* a **bid** at price ``p`` goes to ``e = floor(p / s) * s``: the bucket holds bids with
  ``e <= p < e + s`` and is keyed by its lower edge;
* an **ask** at price ``p`` goes to ``e = ceil(p / s) * s``: the bucket holds asks with
  ``e - s < p <= e`` and is keyed by its upper edge.

So each key is the price a taker is sure of within the bucket (sell into the bid bucket at no less
than ``e``; buy the ask bucket at no more than ``e``), and the two sides never share a bucket
while the book is uncrossed: every bid key <= best bid < best ask <= every ask key. Flooring both
sides would put a 60005 bid and a 60006 ask in the same 60000 bucket; rounding away from the mid
leaves such a bucket only to a locked or crossed book, where it is the truth.

Prices and widths are resolved to 1e-9 and bucketed in integers, so edges are exact decimals: a
bid at 0.3 on a 0.1 grid is in bucket 0.3 (``0.3 / 0.1`` is 2.9999999999999996 in binary).

The tick
--------
``update_book`` keeps the latest snapshot per (venue, symbol) - a dict store, nothing else.
``tick(now)`` puts every fresh book whose snapshot changed since the last tick into one
``BookFrame`` (one price and one size column over all those books at once) and returns, for
every symbol: per-venue and consolidated buckets, the consolidated heatmap (also recorded in the rolling
``HeatmapSeries``), per-venue and consolidated imbalances, per-venue ``OrderBookMetrics`` and the
consolidated book. A symbol none of whose books changed (and whose stale venues are the same) is
re-stamped, not recomputed; a symbol with any change has all its fresh books recomputed in the
frame, since its consolidated mid, and so every venue's share of the depth bands, moves with any
one of them. The frame's level lists live for that tick only: the engine keeps results.
A caller that must not hold its thread that long (the pipeline, on the event loop) runs the same tick in
parts: ``plan(now)`` takes the books and picks the symbols to recompute, ``compute`` recomputes a slice
of them (whole symbols, each slice one frame), ``result`` assembles the ``TickResult`` - the one pass's.

A book is *stale* when it is more than ``stale_after`` seconds older than ``now``, measured on
the clock ``now`` comes from, never a venue's clock against coby's (a venue whose clock lags ours
by more than ``stale_after`` would otherwise be left out for good): live (``stale_by="received"``)
by its receive time, on coby's clock; in an event-time engine (``stale_by="event"``: a replay, the
recorder of stored heatmaps) by the snapshot's own timestamp. Stale books are left out of
everything in the tick, and named in the symbol's ``ConsolidatedOrderBook.stale_exchanges``.

Timestamps: a venue's figures carry its snapshot's timestamp; consolidated figures carry ``now``.
The engine imports nothing downstream (no storage, cache or HTTP): it returns model objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Callable, Mapping, Sequence

from coby.aggregate.bookframe import ASK, BID, BookColumns, BookFrame, bucket_edge, bucket_index, bucket_units
from coby.config import Settings
from coby.aggregate.consolidated import consolidate
from coby.aggregate.heatmap import HeatmapSeries
from coby.aggregate.imbalance import DEPTH_BANDS, book_metrics, consolidated_imbalance, venue_imbalance
from coby.models import (
    ConsolidatedOrderBook,
    HeatmapData,
    ImbalanceMetrics,
    OrderBookMetrics,
    OrderBookSnapshot,
    PriceBuckets,
    ensure_utc,
    utcnow,
)


def bucket_price(price: float, side: str, bucket_size: float) -> float:
    """The bucket a level belongs to: ``floor`` for a bid, ``ceil`` for an ask (see the module docstring)."""
    units = bucket_units(bucket_size)
    if side == "bid":
        return bucket_edge(bucket_index(price, BID, units), units)
    if side == "ask":
        return bucket_edge(bucket_index(price, ASK, units), units)
    raise ValueError(f"side must be 'bid' or 'ask', got {side!r}")


def _lookup(sizes: dict[str, float]) -> Callable[[str], float]:
    """Bucket width by symbol, then by base asset (as ``Settings.bucket_size``)."""
    def bucket_size(symbol: str) -> float:
        for key in (symbol, symbol.split("-", 1)[0]):
            if key in sizes:
                return float(sizes[key])
        raise ValueError(f"no bucket size for {symbol!r} (give one for the symbol or its base asset)")
    return bucket_size


@dataclass(slots=True, frozen=True)
class TickResult:
    """Everything one tick computed. Per-venue maps are keyed by (symbol, exchange)."""

    timestamp: datetime
    books: dict[str, ConsolidatedOrderBook]
    buckets: dict[str, PriceBuckets]
    venue_buckets: dict[tuple[str, str], PriceBuckets]
    heatmaps: dict[str, HeatmapData]
    imbalances: dict[str, ImbalanceMetrics]
    venue_imbalances: dict[tuple[str, str], ImbalanceMetrics]
    metrics: dict[tuple[str, str], OrderBookMetrics]
    heatmaps_due: tuple[HeatmapData, ...] = ()  # due for the heatmap_data table (HeatmapSeries.store_interval)

    @property
    def stale(self) -> dict[str, tuple[str, ...]]:
        """Per symbol, the venues left out as stale (symbols with none are omitted)."""
        return {s: b.stale_exchanges for s, b in self.books.items() if b.stale_exchanges}


@dataclass(slots=True, frozen=True)
class _Venue:
    """What one venue's snapshot contributes to a tick."""

    exchange: str
    buckets: PriceBuckets
    totals: tuple[float, float]
    imbalance: ImbalanceMetrics
    metrics: OrderBookMetrics | None


@dataclass(slots=True, frozen=True)
class _SymbolAggregate:
    """One symbol's consolidated figures."""

    book: ConsolidatedOrderBook
    buckets: PriceBuckets
    imbalance: ImbalanceMetrics
    heatmap: HeatmapData

    def __iter__(self):
        return iter((self.book, self.buckets, self.imbalance, self.heatmap))

    def stamped(self, now: datetime) -> "_SymbolAggregate":
        return _SymbolAggregate(replace(self.book, timestamp=now), replace(self.buckets, timestamp=now),
                                replace(self.imbalance, timestamp=now), replace(self.heatmap, timestamp=now))


@dataclass(slots=True)
class TickPlan:
    """A tick between ``AggregationEngine.plan`` and ``result``: the symbols it reports, the groups to
    recompute - (symbol, its fresh books, (their versions, stale venues)) - and each symbol's figures
    so far (the kept ones at once, the recomputed ones as ``compute`` makes them)."""

    now: datetime
    symbols: list[str]
    dirty: list[tuple[str, list[OrderBookSnapshot], tuple]] = field(default_factory=list)
    done: dict[str, tuple] = field(default_factory=dict)

    def parts(self, books: int) -> list[list[tuple[str, list[OrderBookSnapshot], tuple]]]:
        """``dirty`` in slices of whole symbols, each closed once it holds at least ``books`` books."""
        out: list[list] = []
        part: list = []
        n = 0
        for group in self.dirty:
            part.append(group)
            n += len(group[1])
            if n >= books:
                out.append(part)
                part, n = [], 0
        if part:
            out.append(part)
        return out


class AggregationEngine:
    """Holds the latest book per (venue, symbol) and aggregates them all at once on ``tick``.

    ``bucket_size``: symbol -> width (a callable such as ``Settings.bucket_size``, or a mapping by
    symbol or base asset); ``stale_after``: seconds; ``depth_bands``: fractions of mid for the depth
    imbalances; ``consolidated_depth``: levels per side of the consolidated book (None: all);
    ``heatmaps``: how heatmaps are scaled, kept and sampled for storage; ``clock``: the time
    ``tick()`` and ``aggregate_across_exchanges()`` use when not given ``now`` (a replay passes its own);
    ``stale_by``: which time of a book staleness reads - ``"received"`` (coby's receive time, the
    timestamp for a book without one) when ``now`` is coby's clock, ``"event"`` when it is event time.
    """

    def __init__(self, *, bucket_size: Callable[[str], float] | Mapping[str, float] | None = None,
                 stale_after: float = 10.0, depth_bands: Sequence[float] = DEPTH_BANDS,
                 consolidated_depth: int | None = 100, heatmaps: HeatmapSeries | None = None,
                 clock: Callable[[], datetime] = utcnow, stale_by: str = "received") -> None:
        if stale_by not in ("received", "event"):
            raise ValueError(f"stale_by must be 'received' or 'event', got {stale_by!r}")
        self._by_receipt = stale_by == "received"
        if not stale_after > 0:
            raise ValueError(f"stale_after must be > 0, got {stale_after!r}")
        if consolidated_depth is not None and consolidated_depth < 1:
            raise ValueError(f"consolidated_depth must be >= 1 or None, got {consolidated_depth!r}")
        if any(not 0 < b < 1 for b in depth_bands):
            raise ValueError(f"depth bands must be fractions of mid in (0, 1), got {tuple(depth_bands)!r}")
        if bucket_size is None:
            bucket_size = Settings().bucket_size
        elif isinstance(bucket_size, Mapping):
            bucket_size = _lookup(dict(bucket_size))
        self._bucket_size_of = bucket_size
        self.stale_after = timedelta(seconds=stale_after)
        self.depth_bands = tuple(depth_bands)
        self.consolidated_depth = consolidated_depth
        self.heatmaps = heatmaps if heatmaps is not None else HeatmapSeries()
        self._clock = clock
        self._books: dict[tuple[str, str], OrderBookSnapshot] = {}
        # Each update_book gives the book a new version. Per symbol: the (venue, version) of the fresh
        # books and the stale venues its last aggregate was made from, and that aggregate's figures.
        # Versions, not snapshots: the engine holds no book it has been handed a newer one for.
        self._versions: dict[tuple[str, str], int] = {}
        self._version = 0
        self._symbols: dict[str, tuple[tuple[tuple[str, int], ...], tuple[str, ...], tuple[_Venue, ...],
                                       _SymbolAggregate]] = {}
        self._units: dict[str, tuple[float, int]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs) -> "AggregationEngine":
        """An engine with bucket widths, staleness and consolidated depth taken from settings."""
        kwargs.setdefault("bucket_size", settings.bucket_size)
        kwargs.setdefault("stale_after", settings.stale_after)
        kwargs.setdefault("consolidated_depth", settings.book_depth)
        return cls(**kwargs)

    # --- state ---------------------------------------------------------------------------------
    def update_book(self, snapshot: OrderBookSnapshot) -> None:
        """Keep ``snapshot`` as its venue's latest book for its symbol. O(1): no copying, no polars."""
        key = (snapshot.exchange, snapshot.symbol)
        self._books[key] = snapshot
        self._version += 1
        self._versions[key] = self._version

    def remove_book(self, exchange: str, symbol: str) -> None:
        """Forget a venue's book (unsubscribed); a stale book is otherwise kept and named each tick."""
        self._books.pop((exchange, symbol), None)
        self._versions.pop((exchange, symbol), None)
        self._symbols.pop(symbol, None)

    def book(self, exchange: str, symbol: str) -> OrderBookSnapshot | None:
        return self._books.get((exchange, symbol))

    def bucket_size(self, symbol: str) -> float:
        return self._symbol_units(symbol)[0]

    # --- the tick ------------------------------------------------------------------------------
    def tick(self, now: datetime | None = None) -> TickResult:
        """Aggregate every held book at once (see the module docstring)."""
        plan = self.plan(now)
        self.compute(plan, plan.dirty)
        return self.result(plan)

    def plan(self, now: datetime | None = None) -> "TickPlan":
        """The first part of a tick in parts: which symbols it reports, and which of them are recomputed
        (``TickPlan.dirty``), each with the books it is recomputed from - taken now, so that a book
        handed in between the parts waits for the next tick. ``compute`` the dirty groups (all at once or
        in slices, in order), then ``result``: the same ``TickResult`` as one ``tick(now)``."""
        now = self._now(now)
        fresh, stale = self._partition(now)
        by_symbol: dict[str, list[tuple[str, str]]] = {}
        for key in fresh:
            by_symbol.setdefault(key[1], []).append(key)
        symbols = sorted(by_symbol.keys() | stale.keys())
        # A symbol whose fresh books (by version) and stale venues are those of its last aggregate is
        # re-stamped; the others are recomputed, all of their books in one frame.
        plan = TickPlan(now, symbols)
        for symbol in symbols:
            keys = by_symbol.get(symbol, [])
            state = (tuple([(key[0], self._versions[key]) for key in keys]), tuple(sorted(stale.get(symbol, ()))))
            cached = self._symbols.get(symbol)
            if cached is None or cached[:2] != state:
                plan.dirty.append((symbol, [self._books[key] for key in keys], state))
            else:
                plan.done[symbol] = cached
        return plan

    def compute(self, plan: "TickPlan", groups: list[tuple[str, list[OrderBookSnapshot], tuple]]) -> None:
        """Recompute ``groups`` (a slice of ``plan.dirty``): every book of them in one ``BookFrame``."""
        for symbol, entry in self._aggregate(groups, plan.now):
            self._symbols[symbol] = plan.done[symbol] = entry

    def result(self, plan: "TickPlan") -> TickResult:
        """The tick's figures once every dirty group of ``plan`` is computed."""
        now = plan.now
        books, buckets, heatmaps, imbalances = {}, {}, {}, {}
        venue_buckets, venue_imbalances, metrics = {}, {}, {}
        due = []
        for symbol in plan.symbols:
            _, _, venues, agg = plan.done[symbol]
            if agg.book.timestamp != now:
                agg = agg.stamped(now)
            for v in venues:
                key = (symbol, v.exchange)
                venue_buckets[key] = v.buckets
                venue_imbalances[key] = v.imbalance
                if v.metrics is not None:
                    metrics[key] = v.metrics
            books[symbol], buckets[symbol], imbalances[symbol], heatmaps[symbol] = agg
            if self.heatmaps.record(agg.heatmap):
                due.append(agg.heatmap)
        return TickResult(timestamp=now, books=books, buckets=buckets, venue_buckets=venue_buckets,
                          heatmaps=heatmaps, imbalances=imbalances, venue_imbalances=venue_imbalances,
                          metrics=metrics, heatmaps_due=tuple(due))

    def _aggregate(self, groups: list[tuple[str, list[OrderBookSnapshot], tuple[tuple, tuple[str, ...]]]],
                   now: datetime) -> list[tuple[str, tuple]]:
        """The per-venue and consolidated figures of ``groups`` (symbol, its fresh books, (their versions,
        stale venues)), every book of them in one ``BookFrame``: per symbol, the entry kept for it."""
        if not groups:
            return []
        snaps = [snap for _, group, _ in groups for snap in group]
        frame = BookFrame(snaps, [self._symbol_units(s.symbol)[1] for s in snaps],
                          [g for g, (_, group, _) in enumerate(groups) for _snap in group])
        cols_iter = iter(zip(frame.books, frame.bucket_volumes()))
        out = []
        for (symbol, group, state), consolidated in zip(groups, frame.group_volumes(len(groups))):
            stale = state[1]
            size = self.bucket_size(symbol)
            venues, cols, totals = [], [], []
            for c, (bid_vol, ask_vol) in (next(cols_iter) for _ in group):
                snap = c.snapshot
                book_totals = (sum(bid_vol.values()), sum(ask_vol.values()))
                buckets = PriceBuckets(symbol=symbol, timestamp=snap.timestamp, bucket_size=size,
                                       bid_buckets=bid_vol, ask_buckets=ask_vol, exchange=snap.exchange)
                venues.append(_Venue(snap.exchange, buckets, book_totals,
                                     venue_imbalance(c, book_totals, self.depth_bands, snap.timestamp),
                                     book_metrics(c, *book_totals)))
                cols.append(c)
                totals.append(book_totals)
            agg = self._symbol_aggregate(symbol, consolidated, cols, totals, stale, now)
            out.append((symbol, (*state, tuple(venues), agg)))
        return out

    def _symbol_aggregate(self, symbol: str,
                          consolidated: tuple[tuple[dict[float, float], dict[float, int]],
                                              tuple[dict[float, float], dict[float, int]]],
                          cols: list[BookColumns], totals: list[tuple[float, float]], stale: tuple[str, ...],
                          now: datetime) -> _SymbolAggregate:
        """The consolidated figures of one symbol (``consolidated``: its buckets summed over the
        venues, with venue counts, from ``BookFrame.group_volumes``)."""
        (bid_vol, bid_counts), (ask_vol, ask_counts) = consolidated
        book = consolidate(symbol, now, cols, self.consolidated_depth, stale)
        buckets = PriceBuckets(
            symbol=symbol, timestamp=now, bucket_size=self.bucket_size(symbol),
            bid_buckets=bid_vol, ask_buckets=ask_vol,
            exchange=None, bid_exchange_counts=bid_counts, ask_exchange_counts=ask_counts)
        imbalance = consolidated_imbalance(
            cols, totals,
            (book.bids[0].price, book.bids[0].size) if book.bids else None,
            (book.asks[0].price, book.asks[0].size) if book.asks else None,
            self.depth_bands, symbol, now)
        return _SymbolAggregate(book, buckets, imbalance, self.heatmaps.build(buckets, now))

    # --- the design's single-book methods --------------------------------------------------------
    def create_price_buckets(self, orderbook: OrderBookSnapshot, bucket_size: float | None = None) -> PriceBuckets:
        """One venue's book in buckets (``bucket_size`` defaults to the symbol's configured width)."""
        size = self.bucket_size(orderbook.symbol) if bucket_size is None else float(bucket_size)
        ((bid_vol, ask_vol),) = BookFrame([orderbook], [bucket_units(size)]).bucket_volumes()
        return PriceBuckets(symbol=orderbook.symbol, timestamp=orderbook.timestamp, bucket_size=size,
                            bid_buckets=bid_vol, ask_buckets=ask_vol, exchange=orderbook.exchange)

    def update_heatmap(self, symbol: str, buckets: PriceBuckets) -> HeatmapData:
        """A heatmap of ``buckets``, recorded in ``symbol``'s rolling series."""
        if buckets.symbol != symbol:
            raise ValueError(f"buckets are for {buckets.symbol}, not {symbol}")
        heatmap = self.heatmaps.build(buckets)
        self.heatmaps.record(heatmap)
        return heatmap

    def calculate_imbalances(self, orderbook: OrderBookSnapshot) -> ImbalanceMetrics:
        """Top-of-book and depth-band imbalance of one venue's book."""
        (cols,) = BookFrame([orderbook], [self._symbol_units(orderbook.symbol)[1]]).books
        totals = (cols.prefix_volume(BID, cols.count(BID)), cols.prefix_volume(ASK, cols.count(ASK)))
        return venue_imbalance(cols, totals, self.depth_bands, orderbook.timestamp)

    def aggregate_across_exchanges(self, symbol: str, now: datetime | None = None) -> ConsolidatedOrderBook:
        """The consolidated book of ``symbol`` from the fresh books held now."""
        now = self._now(now)
        fresh, stale = self._partition(now, symbol)
        snaps = [self._books[key] for key in fresh]
        frame = BookFrame(snaps, [self._symbol_units(symbol)[1]] * len(snaps))
        return consolidate(symbol, now, frame.books, self.consolidated_depth, stale.get(symbol, ()))

    def heatmap_series(self, symbol: str) -> tuple[HeatmapData, ...]:
        """The rolling heatmap history of ``symbol``, oldest first."""
        return self.heatmaps.series(symbol)

    # --- internals -------------------------------------------------------------------------------
    def _now(self, now: datetime | None) -> datetime:
        return ensure_utc(now) if now is not None else ensure_utc(self._clock())

    def _partition(self, now: datetime, symbol: str | None = None
                   ) -> tuple[list[tuple[str, str]], dict[str, list[str]]]:
        """Fresh book keys sorted by (symbol, exchange), and stale venues per symbol."""
        horizon = now - self.stale_after
        fresh: list[tuple[str, str]] = []
        stale: dict[str, list[str]] = {}
        for (exchange, sym), snap in self._books.items():
            if symbol is not None and sym != symbol:
                continue
            seen = snap.received_at if self._by_receipt and snap.received_at is not None else snap.timestamp
            if seen < horizon:
                stale.setdefault(sym, []).append(exchange)
            else:
                fresh.append((exchange, sym))
        fresh.sort(key=lambda k: (k[1], k[0]))
        return fresh, stale

    def _symbol_units(self, symbol: str) -> tuple[float, int]:
        found = self._units.get(symbol)
        if found is None:
            size = float(self._bucket_size_of(symbol))
            found = self._units[symbol] = (size, bucket_units(size))
        return found
