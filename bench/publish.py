"""A book publish (envelope, cache, one subscriber) of a 100-level book: CPU per publish.

    PYTHONPATH=. .venv/bin/python bench/publish.py after; PYTHONPATH=<older checkout> ... before
"""
import asyncio, time, sys
from coby.cache import MemoryCache
from coby.publisher import Publisher
from coby.models import OrderBookSnapshot, Levels, utcnow
from array import array
def book():
    n=100
    bids = Levels(array('d',[30000-i*0.5 for i in range(n)]), array('d',[1.0+i for i in range(n)])) if hasattr(Levels,'__init__') else None
    asks = Levels(array('d',[30000.5+i*0.5 for i in range(n)]), array('d',[1.0+i for i in range(n)]))
    t=utcnow()
    return OrderBookSnapshot("BTC-USDT","binance",t,bids,asks,1,t)
async def main():
    bus=MemoryCache(); await bus.start()
    pub=Publisher(bus); b=book()
    for subs in (0, 1):
        if subs:
            bus.subscribe("book:binance:BTC-USDT", maxsize=10)
        for _ in range(200):
            await pub.publish("book:binance:BTC-USDT", b, b.timestamp, b.received_at, book=("binance", "BTC-USDT"))
        t = time.process_time()
        n = 5000
        for _ in range(n):
            await pub.publish("book:binance:BTC-USDT", b, b.timestamp, b.received_at, book=("binance", "BTC-USDT"))
        print(f"{sys.argv[1]}: {(time.process_time() - t) / n * 1e6:.1f} us per book publish "
              f"(100 levels a side, {subs} subscriber)")
asyncio.run(main())
