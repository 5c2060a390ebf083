"""Heatmaps: price buckets turned into intensities, kept as a rolling series and sampled for storage.

Intensity
---------
For one heatmap (one symbol at one moment) let ``v`` be a bucket's volume and ``v_max`` the
largest bucket volume on *either* side, so that bid and ask colours are comparable. Then

* ``linear``:      ``intensity = v / v_max``
* ``log``:         ``intensity = ln(1 + k * v / v_max) / ln(1 + k)``, ``k = dynamic_range`` (default 1000)

Both lie in [0, 1], are 1 exactly for the largest bucket and 0 for an empty one, and depend only
on ``v / v_max`` - so they do not change with the unit of size (BTC vs satoshi). ``log`` spreads
the colours over about ``log10(k)`` decades below the largest bucket: with k = 1000 a bucket at
1/1000 of the largest still shows at intensity 0.1, where ``linear`` would show 0.001.

Series and storage
------------------
``HeatmapSeries`` keeps, per symbol, the last heatmap of each ``resolution``-second slot for the
last ``window`` seconds (the dashboard's scrolling history), and says which heatmaps are due for
the ``heatmap_data`` table (rows: ``coby.db.tables.heatmap_rows``): the first one recorded in
each ``store_interval``-second slot of the UTC epoch. Slots are counted from the heatmap's own
timestamp, so a replay stores the same rows as the live run did.
"""

from __future__ import annotations

import math
from collections import deque
from datetime import datetime
from itertools import repeat

from coby.models import HeatmapData, HeatmapPoint, PriceBuckets, constructor, to_ms

_point = constructor(HeatmapPoint)

SCALES = ("linear", "log")


def intensities(volumes: list[float], scale: str = "linear", dynamic_range: float = 1000.0) -> list[float]:
    """Intensity in [0, 1] of each volume, relative to the largest (see the module docstring)."""
    if not volumes:
        return []
    vmax = max(volumes)
    if not vmax > 0:
        return [0.0 for _ in volumes]
    if scale == "linear":
        return [min(1.0, max(0.0, v / vmax)) for v in volumes]
    if scale == "log":
        denom = math.log1p(dynamic_range)
        return [min(1.0, max(0.0, math.log1p(dynamic_range * v / vmax) / denom)) for v in volumes]
    raise ValueError(f"unknown heatmap scale {scale!r}; use one of {', '.join(SCALES)}")


class HeatmapSeries:
    """Builds heatmaps from buckets and keeps the rolling series per symbol.

    ``scale`` and ``dynamic_range`` choose the intensity formula; ``window`` (seconds of history
    kept), ``resolution`` (seconds per kept frame) and ``store_interval`` (seconds between
    heatmaps handed to storage) set the cadences.
    """

    def __init__(self, *, scale: str = "linear", dynamic_range: float = 1000.0, window: float = 300.0,
                 resolution: float = 1.0, store_interval: float = 10.0) -> None:
        if scale not in SCALES:
            raise ValueError(f"unknown heatmap scale {scale!r}; use one of {', '.join(SCALES)}")
        for name, value in (("dynamic_range", dynamic_range), ("window", window), ("resolution", resolution),
                            ("store_interval", store_interval)):
            if not value > 0:
                raise ValueError(f"heatmap {name} must be > 0, got {value!r}")
        self.scale = scale
        self.dynamic_range = float(dynamic_range)
        self.window_ms = int(window * 1000)
        self.resolution_ms = max(1, int(resolution * 1000))
        self.store_interval_ms = max(1, int(store_interval * 1000))
        self._frames: dict[str, deque[tuple[int, HeatmapData]]] = {}
        self._stored_slot: dict[str, int] = {}

    def build(self, buckets: PriceBuckets, timestamp: datetime | None = None) -> HeatmapData:
        """One heatmap from one set of buckets (a venue's, or consolidated with venue counts)."""
        bids, asks = buckets.bid_buckets, buckets.ask_buckets
        prices = [*bids, *asks]
        volumes = [*bids.values(), *asks.values()]
        levels = intensities(volumes, self.scale, self.dynamic_range)
        sides = [*repeat("bid", len(bids)), *repeat("ask", len(asks))]
        counts = [*map(buckets.bid_exchange_counts.get, bids, repeat(1)),
                  *map(buckets.ask_exchange_counts.get, asks, repeat(1))]
        points = tuple(map(_point, prices, volumes, levels, sides, counts))  # one per bucket: no per-field lookups
        return HeatmapData(symbol=buckets.symbol, timestamp=timestamp or buckets.timestamp,
                           bucket_size=buckets.bucket_size, data=points)

    def record(self, heatmap: HeatmapData) -> bool:
        """Add a heatmap to its symbol's series; True when it is due for storage."""
        ms = to_ms(heatmap.timestamp)
        frames = self._frames.setdefault(heatmap.symbol, deque())
        slot = ms // self.resolution_ms
        if frames and frames[-1][0] == slot:
            frames[-1] = (slot, heatmap)
        elif not frames or frames[-1][0] < slot:
            frames.append((slot, heatmap))
        horizon = (ms - self.window_ms) // self.resolution_ms
        while frames and frames[0][0] < horizon:
            frames.popleft()
        store_slot = ms // self.store_interval_ms
        if store_slot > self._stored_slot.get(heatmap.symbol, -1):
            self._stored_slot[heatmap.symbol] = store_slot
            return True
        return False

    def series(self, symbol: str) -> tuple[HeatmapData, ...]:
        """The kept history of one symbol, oldest first."""
        return tuple(h for _, h in self._frames.get(symbol, ()))

    def symbols(self) -> tuple[str, ...]:
        return tuple(self._frames)

