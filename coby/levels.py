"""A book side's levels as columns: what a venue's book and the consolidated book hold per side.

* :class:`Levels` - one venue's side: ``prices`` and ``sizes`` columns (``array('d')``), read as a sequence
  of :class:`PriceLevel`.
* :class:`MergedLevels` - one side of the consolidated book as the merge leaves it (columns of the merged
  levels and of the venue rows behind each), read as a sequence of :class:`ConsolidatedLevel`. The per-level
  venue dicts and level objects are made only when someone reads the levels (issue 16: pay per consumer):
  the aggregation tick merges every symbol twice a second, and most merged books are replaced before
  anyone reads them.

``coby.models`` re-exports all of these; this module imports nothing of coby.
"""

from __future__ import annotations

import dataclasses
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import itemgetter, ne, sub
from typing import Any, Callable, overload


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
class ConsolidatedLevel:
    """One price level of the consolidated book with each venue's share of it."""

    price: float
    size: float
    venues: dict[str, float]


_make_consolidated = constructor(ConsolidatedLevel)


class MergedLevels(Sequence[ConsolidatedLevel]):
    """One side of the consolidated book, best level first, as columns.

    Merged level ``k`` has price ``prices[k]`` and size ``sizes[k]`` (the venues' sizes summed); its
    venues are the rows ``starts[k]:starts[k + 1]`` of ``rows`` (an index into ``names``) and ``shares``
    (that venue's size). A venue listing one price twice has two rows; its share is their sum.

    It is a sequence of :class:`ConsolidatedLevel` - ``side[0].venues``, ``for lv in side``, ``side[:10]``
    (a tuple) and ``==`` with a tuple of ConsolidatedLevels all work - but no level object or venue dict
    exists until one is read: ``side[0]`` makes one level, anything that reads them all makes them all
    once (kept). ``json_form`` is the encoder's: the levels as JSON-ready dicts in one pass.
    """

    __slots__ = ("prices", "sizes", "names", "rows", "shares", "starts", "_levels")

    def __init__(self, prices: list[float], sizes: list[float], names: Sequence[str], rows: list[int],
                 shares: list[float], starts: list[int]) -> None:
        if len(prices) != len(sizes) or len(starts) != len(prices) + 1 or len(rows) != len(shares) \
                or (starts and (starts[0] != 0 or starts[-1] != len(rows))):
            raise ValueError("merged levels: one price, size and start per level, rows covering them all")
        self.prices, self.sizes, self.names = prices, sizes, tuple(names)
        self.rows, self.shares, self.starts = rows, shares, starts
        self._levels: tuple[ConsolidatedLevel, ...] | None = None

    @classmethod
    def of(cls, levels: Iterable[Any]) -> MergedLevels:
        """From ConsolidatedLevels or their JSON form (``{"price", "size", "venues"}``); a MergedLevels as it is."""
        if type(levels) is MergedLevels:
            return levels
        prices: list[float] = []
        sizes: list[float] = []
        names: dict[str, int] = {}
        rows: list[int] = []
        shares: list[float] = []
        starts = [0]
        for lv in levels:
            if type(lv) is not ConsolidatedLevel:
                lv = ConsolidatedLevel(float(lv["price"]), float(lv["size"]),
                                       {str(k): float(v) for k, v in lv["venues"].items()})
            prices.append(lv.price)
            sizes.append(lv.size)
            for venue, share in lv.venues.items():
                rows.append(names.setdefault(venue, len(names)))
                shares.append(share)
            starts.append(len(rows))
        return cls(prices, sizes, list(names), rows, shares, starts)

    def _venues(self, a: int = 0, b: int | None = None) -> list[dict[str, float]]:
        """The venue dicts of levels ``a:b`` (b None: to the end), made with map, not a Python loop per level."""
        starts = self.starts[a:(len(self.prices) if b is None else b) + 1]
        first, last = starts[0], starts[-1]
        venue = list(map(self.names.__getitem__, self.rows[first:last]))
        share = self.shares[first:last]
        lo, hi = starts[:-1], starts[1:]
        if first:
            lo, hi = [s - first for s in lo], [s - first for s in hi]
        spans = list(map(slice, lo, hi))
        out = list(map(dict, map(zip, map(venue.__getitem__, spans), map(share.__getitem__, spans))))
        if any(map(ne, map(len, out), map(sub, hi, lo))):  # a venue lists a price twice: its share is the sum
            for k, span in enumerate(spans):
                merged: dict[str, float] = {}
                for v, size in zip(venue[span], share[span]):
                    merged[v] = merged.get(v, 0.0) + size
                out[k] = merged
        return out

    def levels(self) -> tuple[ConsolidatedLevel, ...]:
        """Every level as a ConsolidatedLevel (made once, then kept)."""
        if self._levels is None:
            self._levels = tuple(map(_make_consolidated, self.prices, self.sizes, self._venues()))
        return self._levels

    def json_form(self) -> list[dict[str, Any]]:
        """The levels as ``coby.codec`` encodes ConsolidatedLevels: ``{"price", "size", "venues"}`` each."""
        return [{"price": p, "size": s, "venues": v} for p, s, v in zip(self.prices, self.sizes, self._venues())]

    def __len__(self) -> int:
        return len(self.prices)

    @overload
    def __getitem__(self, i: int) -> ConsolidatedLevel: ...
    @overload
    def __getitem__(self, i: slice) -> tuple[ConsolidatedLevel, ...]: ...

    def __getitem__(self, i):
        if type(i) is slice or self._levels is not None:
            return self.levels()[i]
        k = range(len(self.prices))[i]  # IndexError, negative indexes, as a tuple's
        return _make_consolidated(self.prices[k], self.sizes[k], self._venues(k, k + 1)[0])

    def __iter__(self):
        return iter(self.levels())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (MergedLevels, tuple, list)):
            return len(other) == len(self) and tuple(self) == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # as a tuple of ConsolidatedLevels (each holds a dict)

    def __repr__(self) -> str:
        return f"MergedLevels({list(self.levels())!r})"

    def __reduce__(self):
        return (MergedLevels, (self.prices, self.sizes, self.names, self.rows, self.shares, self.starts))
