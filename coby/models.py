"""coby's data model: the events that flow through the spine, and the aggregates made of them.

Every class is a frozen, slotted dataclass, except ``Levels``: one side of a book held as
two columns, which reads as a sequence of ``PriceLevel``. Timestamps are timezone-aware UTC
``datetime`` objects; ``timestamp`` is the exchange's time, ``received_at`` is
coby's own receive time (``None`` where it is not known, e.g. rows read back
from storage that predate it).

This module imports nothing of coby: everything else imports it.
"""

from __future__ import annotations

import dataclasses
import enum
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import repeat
from operator import itemgetter
from typing import Any, Callable, overload

UTC = timezone.utc
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc_from_ms(ms: float) -> datetime:
    """Milliseconds since the epoch -> aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC)


def to_ms(ts: datetime) -> int:
    """Aware datetime -> integer milliseconds since the epoch."""
    return int(round((ts - _EPOCH).total_seconds() * 1000))


def utcnow() -> datetime:
    return datetime.now(UTC)


def ensure_utc(ts: datetime) -> datetime:
    """Return ``ts`` as aware UTC; naive datetimes are taken to be UTC already."""
    if ts.tzinfo is None:
        return ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC)


def constructor(cls: type) -> Callable[..., Any]:
    """A function making a ``cls`` - a frozen, slotted dataclass - from its fields, positionally,
    as ``cls(...)`` would, at half the cost (replay builds one per stored row; the aggregation tick, many per tick).

    A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__(self, name, v)``
    (a lookup by name per field); this sets each slot through its descriptor. Only for classes whose
    ``__init__`` does nothing else: no ``__post_init__``, no default factories.
    """
    fields = dataclasses.fields(cls)
    if hasattr(cls, "__post_init__") or any(f.default_factory is not dataclasses.MISSING for f in fields):
        raise TypeError(f"{cls.__name__}.__init__ does more than set its fields")
    params = ", ".join(f.name if f.default is dataclasses.MISSING else f"{f.name}=_d_{f.name}" for f in fields)
    body = "".join(f"    _s_{f.name}(o, {f.name})\n" for f in fields)
    env: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    env.update((f"_s_{f.name}", getattr(cls, f.name).__set__) for f in fields)
    env.update((f"_d_{f.name}", f.default) for f in fields if f.default is not dataclasses.MISSING)
    exec(f"def make_{cls.__name__}({params}):\n    o = _new(_cls)\n{body}    return o\n", env)  # noqa: S102
    return env[f"make_{cls.__name__}"]


@dataclass(slots=True, frozen=True)
class PriceLevel:
    """One price level of an order book."""

    price: float
    size: float
    count: int | None = None


_make_level = constructor(PriceLevel)
_price, _size = itemgetter(0), itemgetter(1)


class Levels(Sequence[PriceLevel]):
    """One side of a book, best level first, as columns: ``prices`` and ``sizes`` are
    ``array('d')``, ``counts`` a tuple of order counts (None for venues that send none).

    It is a sequence of :class:`PriceLevel` - ``levels[0].price``, ``for lv in levels``,
    ``levels[:10]`` (a ``Levels`` again) and ``==`` with a tuple of PriceLevels all work - but
    holds no object per level: 16 bytes a level instead of ~110, built from a venue's
    ``[[price, size], ...]`` without a Python call per level, and handed to the aggregation
    tick as buffers it reads without converting (``coby.aggregate.bookframe``). A PriceLevel is made
    only when one is asked for. Values are not checked here (the normaliser does that).
    """

    __slots__ = ("prices", "sizes", "counts")

    def __init__(self, prices: Iterable[float] = (), sizes: Iterable[float] = (),
                 counts: Sequence[int | None] | None = None) -> None:
        self.prices = prices if type(prices) is array else array("d", prices)
        self.sizes = sizes if type(sizes) is array else array("d", sizes)
        if len(self.prices) != len(self.sizes):
            raise ValueError(f"{len(self.prices)} prices but {len(self.sizes)} sizes")
        if counts is not None:
            counts = tuple(counts)
            if len(counts) != len(self.prices):
                raise ValueError(f"{len(self.prices)} levels but {len(counts)} counts")
            if all(c is None for c in counts):
                counts = None
        self.counts = counts

    @classmethod
    def of(cls, levels: Iterable[Any]) -> Levels:
        """From PriceLevels or ``(price, size[, count])`` rows (a Levels is returned as it is)."""
        if type(levels) is Levels:
            return levels
        rows = [(lv.price, lv.size, lv.count) if type(lv) is PriceLevel else lv for lv in levels]
        counts = [r[2] if len(r) > 2 else None for r in rows]
        return cls(map(_price, rows), map(_size, rows), counts)

    def pairs(self) -> list[tuple]:
        """``[(price, size), ...]``: the wire and storage form, the same for every venue (counts, when
        the venue sends them, travel apart: ``count_list``)."""
        return list(zip(self.prices.tolist(), self.sizes.tolist()))

    def count_list(self) -> list[int | None]:
        """The order count of each level (None each for a venue that sends none)."""
        return list(self.counts) if self.counts is not None else [None] * len(self.prices)

    def __len__(self) -> int:
        return len(self.prices)

    @overload
    def __getitem__(self, i: int) -> PriceLevel: ...
    @overload
    def __getitem__(self, i: slice) -> Levels: ...

    def __getitem__(self, i):
        if type(i) is slice:
            return Levels(self.prices[i], self.sizes[i], None if self.counts is None else self.counts[i])
        return _make_level(self.prices[i], self.sizes[i], None if self.counts is None else self.counts[i])

    def __iter__(self):
        return map(_make_level, self.prices, self.sizes, repeat(None) if self.counts is None else self.counts)

    def __eq__(self, other: object) -> bool:
        if type(other) is Levels:
            return self.prices == other.prices and self.sizes == other.sizes and self.counts == other.counts
        if isinstance(other, (tuple, list)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __hash__(self) -> int:  # equal to a tuple of the same PriceLevels, so hashes must agree with it
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Levels({self.pairs()!r})"

    def __reduce__(self):
        return (Levels, (self.prices, self.sizes, self.counts))


@dataclass(slots=True, frozen=True)
class OrderBookSnapshot:
    """A venue's order book at one moment. Bids best (highest) first, asks best (lowest) first.

    ``bids`` and ``asks`` are :class:`Levels` (sequences of PriceLevel held as columns); any other
    sequence of PriceLevels or ``(price, size)`` rows given here is converted to one.
    """

    symbol: str
    exchange: str
    timestamp: datetime
    bids: Levels
    asks: Levels
    sequence_id: int | None = None
    received_at: datetime | None = None

    def __post_init__(self) -> None:
        if type(self.bids) is not Levels:
            object.__setattr__(self, "bids", Levels.of(self.bids))
        if type(self.asks) is not Levels:
            object.__setattr__(self, "asks", Levels.of(self.asks))

    @property
    def best_bid(self) -> float | None:
        return self.bids.prices[0] if self.bids.prices else None

    @property
    def best_ask(self) -> float | None:
        return self.asks.prices[0] if self.asks.prices else None


class Side(str, enum.Enum):
    BUY = "buy"
    SELL = "sell"


@dataclass(slots=True, frozen=True)
class TradeEvent:
    """One trade. ``side`` is the taker's side: 'buy' lifted an ask, 'sell' hit a bid."""

    symbol: str
    exchange: str
    timestamp: datetime
    price: float
    size: float
    side: str
    trade_id: str
    received_at: datetime | None = None


@dataclass(slots=True, frozen=True)
class OrderBookMetrics:
    """Per-snapshot figures: mid, spread and the volume on each side of the (stored) book."""

    symbol: str
    exchange: str
    timestamp: datetime
    mid_price: float
    spread: float
    bid_volume: float
    ask_volume: float
    best_bid: float
    best_ask: float

    @property
    def spread_bps(self) -> float:
        return self.spread / self.mid_price * 10_000.0 if self.mid_price else 0.0


@dataclass(slots=True, frozen=True)
class PriceBuckets:
    """A book's volume summed into fixed-width price buckets (bucket edge price -> volume).

    Bid buckets are keyed by their lower edge, ask buckets by their upper edge (see ``coby.buckets``).
    """

    symbol: str
    timestamp: datetime
    bucket_size: float
    bid_buckets: dict[float, float]
    ask_buckets: dict[float, float]
    exchange: str | None = None  # None: consolidated across venues
    # Consolidated buckets only: how many venues hold volume in each bucket (empty for one venue's buckets).
    bid_exchange_counts: dict[float, int] = field(default_factory=dict)
    ask_exchange_counts: dict[float, int] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class HeatmapPoint:
    """One cell of the heatmap: a price bucket on one side, its volume and intensity in [0, 1]."""

    price: float
    volume: float
    intensity: float
    side: str  # 'bid' or 'ask'
    exchange_count: int = 1


@dataclass(slots=True, frozen=True)
class HeatmapData:
    symbol: str
    timestamp: datetime
    bucket_size: float
    data: tuple[HeatmapPoint, ...]


@dataclass(slots=True, frozen=True)
class ImbalanceMetrics:
    """Order-book imbalance, each figure in [-1, 1]: (bid - ask) / (bid + ask).

    ``top_of_book`` uses the sizes at the best bid and ask; ``depth`` maps a band
    (fraction of mid, e.g. 0.001 for +-0.1%) to the imbalance of the volume within it.
    """

    symbol: str
    exchange: str | None  # None: consolidated
    timestamp: datetime
    top_of_book: float
    depth: dict[float, float] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class ConsolidatedLevel:
    """One price level of the consolidated book with each venue's share of it."""

    price: float
    size: float
    venues: dict[str, float]


@dataclass(slots=True, frozen=True)
class ConsolidatedOrderBook:
    """The venues' books for one symbol merged level by level."""

    symbol: str
    timestamp: datetime
    bids: tuple[ConsolidatedLevel, ...]
    asks: tuple[ConsolidatedLevel, ...]
    best_bid: float | None
    best_bid_exchange: str | None
    best_ask: float | None
    best_ask_exchange: str | None
    crossed: bool  # best bid on one venue >= best ask on another: an arbitrage, reported
    exchanges: tuple[str, ...]
    stale_exchanges: tuple[str, ...] = ()


@dataclass(slots=True, frozen=True)
class OHLCVBar:
    """One candle. ``timestamp`` is the bar's open time; ``exchange`` None means consolidated."""

    symbol: str
    exchange: str | None
    timeframe: str
    timestamp: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float
    trade_count: int
    vwap: float
    buy_volume: float
    sell_volume: float
    closed: bool = False


class ConnectionState(str, enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    STALE = "stale"
    CIRCUIT_OPEN = "circuit_open"
    STOPPED = "stopped"


@dataclass(slots=True, frozen=True)
class ConnectionStatus:
    """A venue connector's health, as reported by ``ExchangeConnector.get_connection_status``."""

    exchange: str
    state: ConnectionState
    last_message_at: datetime | None = None
    messages: int = 0
    reconnects: int = 0
    rejects: dict[str, int] = field(default_factory=dict)
    circuit: str = "closed"  # the worst of ``circuits``
    error: str | None = None
    circuits: dict[str, str] = field(default_factory=dict)  # per stream kind: {"book": "closed", "trades": ...}


class ConnectionEventKind(str, enum.Enum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    RESYNCED = "resynced"
    STALE = "stale"
    CIRCUIT_OPEN = "circuit_open"
    CIRCUIT_CLOSED = "circuit_closed"
    GAP_CLOSED = "gap_closed"  # a trade gap's missed trades all recovered from the venue's history (coby.collector.backfill)
    GAP_NARROWED = "gap_narrowed"  # some recovered, or none: the history is too short, or the fetch failed


@dataclass(slots=True, frozen=True)
class ConnectionEvent:
    """A change in a feed's state, stored so that every gap in the data is explicit."""

    exchange: str
    symbol: str | None
    timestamp: datetime
    event: str  # a ConnectionEventKind value
    detail: str = ""


class ReplayState(str, enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    FINISHED = "finished"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(slots=True, frozen=True)
class ReplayStatus:
    session_id: str
    state: ReplayState
    start: datetime
    end: datetime
    speed: float
    position: datetime | None
    events_emitted: int
    progress: float  # 0..1 of the time range
    error: str | None = None
