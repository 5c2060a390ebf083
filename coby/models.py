"""coby's data model: the events that flow through the spine, and the aggregates made of them.

Every class is a frozen, slotted dataclass, except the book sides (``coby.levels``, re-exported here):
``Levels``, one side of a venue's book held as two columns, which reads as a sequence of ``PriceLevel``,
and ``MergedLevels``, one side of the consolidated book, which reads as a sequence of
``ConsolidatedLevel``. Timestamps are timezone-aware UTC
``datetime`` objects; ``timestamp`` is the exchange's time, ``received_at`` is
coby's own receive time (``None`` where it is not known, e.g. rows read back
from storage that predate it).

This module imports nothing of coby but ``coby.levels``: everything else imports it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timezone

# the book sides' column forms and their level classes live in coby.levels; they are models too
from coby.levels import ConsolidatedLevel, Levels, MergedLevels, PriceLevel, constructor  # noqa: F401

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
class ConsolidatedOrderBook:
    """The venues' books for one symbol merged level by level.

    ``bids`` and ``asks`` are :class:`MergedLevels` (sequences of ConsolidatedLevel held as columns); any
    other sequence of ConsolidatedLevels (or their JSON form) given here is converted to one.
    """

    symbol: str
    timestamp: datetime
    bids: MergedLevels
    asks: MergedLevels
    best_bid: float | None
    best_bid_exchange: str | None
    best_ask: float | None
    best_ask_exchange: str | None
    crossed: bool  # best bid on one venue >= best ask on another: an arbitrage, reported
    exchanges: tuple[str, ...]
    stale_exchanges: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if type(self.bids) is not MergedLevels:
            object.__setattr__(self, "bids", MergedLevels.of(self.bids))
        if type(self.asks) is not MergedLevels:
            object.__setattr__(self, "asks", MergedLevels.of(self.asks))


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
