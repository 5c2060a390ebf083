"""CPU per trade of OHLCVBuilder.add (200,000 trades of one market, best of 5): run against two trees to compare.

    PYTHONPATH=<tree> .venv/bin/python bench/ohlcv_add.py
"""
import time, random
from datetime import timedelta
from coby.aggregate.ohlcv import OHLCVBuilder
from coby.models import TradeEvent, utcnow
t0 = utcnow()
trades = [TradeEvent("binance", "BTC-USDT", t0 + timedelta(milliseconds=i * 5), 100 + random.random(), 0.1,
                     "buy" if i % 2 else "sell", str(i)) for i in range(200_000)]
best = 1e9
for _ in range(5):
    b = OHLCVBuilder(clock=lambda: t0)
    s = time.process_time()
    for t in trades:
        b.add(t)
    best = min(best, time.process_time() - s)
print(f"{best / len(trades) * 1e9:.0f} ns per trade")
