"""One aggregation tick at realistic depth, and encoding its consolidated books: the tree PYTHONPATH points at.

    .venv/bin/python bench/tick_encode.py                                  # this tree
    PYTHONPATH=/work/base16 .venv/bin/python bench/tick_encode.py         # a checkout of an older commit

10 symbols x 10 venues, 100 levels a side (``book_depth``'s default), every book a new snapshot at every tick
(a market at 10 updates/s, ticked every 0.5 s); ``consolidated_depth`` 100. Per tick: the engine's tick (CPU time),
then ``codec.dumps`` of each of its 10 consolidated books - what a subscriber or a read of the latest costs. Books
are made by ``bench/aggregate.py``'s helpers, fresh objects before each tick (not timed). Median and p10 of
``--ticks`` (200).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import aggregate as A  # noqa: E402 - bench/aggregate.py's book makers

import coby  # noqa: E402
from coby import codec  # noqa: E402
from coby.buckets import AggregationEngine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ticks", type=int, default=200)
    ap.add_argument("--levels", type=int, default=100)
    args = ap.parse_args()
    rng = random.Random(7)
    symbols = list(A.SYMBOLS)
    variants = [[A.make_book(s, v, args.levels, rng) for s in symbols for v in A.VENUES] for _ in range(3)]
    engine = AggregationEngine(bucket_size={s: A.SYMBOLS[s][2] for s in symbols}, consolidated_depth=100,
                               depth_bands=A.BANDS, stale_after=3600.0, clock=lambda: A.NOW)
    ticks, encodes, held = [], [], None
    for i in range(args.ticks):
        books = A.fresh(variants[i % 3])
        for b in books:
            engine.update_book(b)
        gc.collect()
        t0 = time.process_time()
        result = engine.tick(A.NOW)
        t1 = time.process_time()
        for book in result.books.values():
            codec.dumps(book)
        t2 = time.process_time()
        ticks.append((t1 - t0) * 1e3)
        encodes.append((t2 - t1) * 1e3)
        held = books  # the previous batch is freed after the clock stopped
    del held
    ticks.sort()
    encodes.sort()
    mid, p10 = len(ticks) // 2, len(ticks) // 10
    print(f"{os.path.dirname(coby.__file__)}: tick median {ticks[mid]:.2f} ms (p10 {ticks[p10]:.2f}); "
          f"encoding its {len(result.books)} consolidated books median {encodes[mid]:.2f} ms (p10 {encodes[p10]:.2f})")


if __name__ == "__main__":
    main()
