"""The garbage collector's settings for coby's processes: a higher first-generation threshold (every command)
and the imports' objects frozen out of later collections (``coby run``). Both are called once, at start-up,
by ``coby.cli``.
"""

from __future__ import annotations

import gc

#: The collector's first-generation threshold (Python's default: 700). See ``tune_gc``.
GC_THRESHOLD = 10_000


def tune_gc() -> None:
    """Collect cyclic garbage less often: once per process, at start-up (``run``, ``replay``, ``simulate``).

    By default the collector runs its first generation every 700 net allocations of container
    objects. coby allocates several per message (the event, its envelope, a queue entry) that stay
    alive for thousands more - a chunk read ahead, a queue not yet drained - so each pass finds them
    alive and promotes them, and soon a full collection of every object follows. Replaying 300k
    stored events at speed 0: ~1,100 + 100 passes and 9 full collections of ~45 ms each, a quarter
    of the replay's time (bench/replay.py). At 10,000: ~15 passes of about a millisecond, one
    second-generation pass, no full collection. What waits longer is only cyclic garbage - rare
    here; reference counting frees the rest at once.
    """
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


def freeze_imports() -> None:
    """Leave the modules' own objects out of every later collection (``run``).

    A full collection walks every tracked object and holds the event loop while it does: 260-520 ms at
    16 symbols x 10 venues (bench/looplag.py, docs/benchmarks.md). About 245,000 of those objects are the
    imports' - ccxt with its hundred exchange classes, polars, numpy, aiohttp, coby - which live as long as
    the process; walking them cost ~80 ms of each full collection here. So the modules the daemon's parts
    use are imported before it starts, collected once and frozen (``gc.freeze``): objects made after this
    are collected as before (a frozen object is never freed, so nothing made at run time is frozen).
    """
    import ccxt.pro  # noqa: F401 - the daemon imports these anyway, later, part by part
    import polars  # noqa: F401
    import coby.buckets, coby.collector.backfill, coby.exchanges, coby.http, coby.pipeline  # noqa: E401, F401
    gc.collect()
    gc.freeze()
