"""A collector stand-in for tests/test_bus.py, run as its own process: coby's real Publisher on a RedisCache.

    python -m tests.bus_publisher REDIS_URL COUNT RATE CHANNEL... (COUNT 0: until killed)

Publishes COUNT messages on each queued CHANNEL (``{"i": n}``) at RATE a second, and with each one the state
of ``book:sim:{symbol}`` (book-like, coalesced); prints ``ready`` once connected and ``done`` at the end.
"""

from __future__ import annotations

import asyncio
import sys

from coby.cache import RedisCache
from coby.publisher import Publisher


async def main(url: str, count: int, rate: float, channels: list[str]) -> None:
    cache = RedisCache(url, interval=0.02)
    await cache.start()
    pub = Publisher(cache)
    print("ready", flush=True)
    n = 0
    try:
        while count == 0 or n < count:
            n += 1
            for ch in channels:
                await pub.publish(ch, {"i": n})
                await pub.publish(f"book:sim:{ch.split(':')[1]}", {"i": n}, book=("sim", ch.split(":")[1]))
            if rate:
                await asyncio.sleep(1 / rate)
    finally:
        await cache.aclose()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]))
