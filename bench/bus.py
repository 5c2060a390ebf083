"""The bus between processes (Redis Streams): messages/s from one collector to 1 and 2 reader processes, and the
collector's CPU per message for the Streams write against the pub/sub write it replaced, same run.

    PYTHONPATH=. .venv/bin/python bench/bus.py [--redis redis://127.0.0.1:6379/14] [--messages 60000] [--channels 4]

Each phase is its own processes:
- write cost: a writer process publishes ``--messages`` trade envelopes (a 200-byte trade each, like the
  pipeline's) over ``--channels`` trades channels through coby's real ``Publisher`` and ``RedisCache``, as
  fast as it can (yielding to the flusher every 200 messages), until Redis holds them all; CPU seconds of
  the writer process per message (``time.process_time``) and Redis' own CPU (``INFO cpu``, the server is
  shared: indicative), for ``transport="streams"`` (XADD, MAXLEN ~) and ``transport="pubsub"`` (PUBLISH,
  today's write before this change), alternated, best of ``--repeat``;
- delivery: the same writer with 1, then 2, reader processes (``open_cache(url, remote=True)``, what an API
  node runs), each subscribed to every channel: messages/s each reader received (first to last message),
  and whether each got every seq once in order.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time

CHANNELS = "trades:B{}-USDT"
TRADE = {"symbol": "BTC-USDT", "exchange": "binance", "timestamp": "2026-12-07T03:00:00.123456Z", "price": 43210.5,
         "size": 0.0123, "side": "buy", "trade_id": "1234567890", "received_at": "2026-12-07T03:00:00.125Z"}


async def clear(url: str, channels: int) -> None:
    import redis.asyncio as aioredis
    async with aioredis.from_url(url) as r:
        for i in range(channels):
            await r.delete("coby:s:" + CHANNELS.format(i))


async def writer(url: str, n: int, channels: int, transport: str, keep: bool = False) -> dict:
    from coby.cache import RedisCache
    from coby.publisher import Publisher
    import redis.asyncio as aioredis
    r = aioredis.from_url(url)
    chans = [CHANNELS.format(i) for i in range(channels)]
    if not keep:
        await clear(url, channels)
    cache = RedisCache(url, interval=0.05, transport=transport)
    await cache.start()
    pub = Publisher(cache)
    for c in chans:
        await pub.publish(c, TRADE)  # seeded (one read per channel) outside the measurement
    await asyncio.sleep(0.2)
    cpu0 = (await r.info("cpu"))
    t0, c0 = time.perf_counter(), time.process_time()
    per = n // channels
    for i in range(per):
        for c in chans:
            await pub.publish(c, TRADE)
        if i % 50 == 0:
            await asyncio.sleep(0)
    while cache._pending_pubs or cache._pending_latest:
        await asyncio.sleep(0.002)
    if transport == "streams":  # until Redis holds every message
        for c in chans:
            while await cache.last_seq(c) < per + 1:
                await asyncio.sleep(0.002)
    else:  # the flush in flight
        await asyncio.sleep(0.06)
    c1, t1 = time.process_time(), time.perf_counter()
    cpu1 = (await r.info("cpu"))
    redis_cpu = (cpu1["used_cpu_user"] + cpu1["used_cpu_sys"]) - (cpu0["used_cpu_user"] + cpu0["used_cpu_sys"])
    await cache.aclose()
    await r.aclose()
    sent = per * channels
    return {"transport": transport, "messages": sent, "seconds": t1 - t0, "cpu_us_per_msg": (c1 - c0) / sent * 1e6,
            "redis_cpu_us_per_msg": redis_cpu / sent * 1e6, "per_channel": per + 1}


async def reader(url: str, channels: int, last: int) -> dict:
    from coby.cache import open_cache
    import orjson
    cache = open_cache(url, remote=True)
    await cache.start()
    chans = [CHANNELS.format(i) for i in range(channels)]
    sub = cache.subscribe(*chans, maxsize=1_000_000)
    await asyncio.sleep(0.5)
    print("ready", flush=True)
    seen = {c: 0 for c in chans}
    ok, count, gaps, first, t_last = True, 0, 0, None, None
    c0 = time.process_time()
    queue = sub.queue
    while min(seen.values()) < last:
        try:
            batch = [await asyncio.wait_for(queue.get(), 30)]
        except asyncio.TimeoutError:
            break
        while not queue.empty():
            batch.append(queue.get_nowait())
        first = first or time.perf_counter()
        t_last = time.perf_counter()
        for ch, payload in batch:
            msg = orjson.loads(payload)
            if msg["type"] == "gap":
                gaps += 1
                seen[ch] = msg["to"]
                continue
            seq = msg["seq"]
            ok &= seq == seen[ch] + 1 or seen[ch] == 0
            seen[ch] = seq
            count += 1
    cpu = time.process_time() - c0
    await cache.aclose()
    return {"received": count, "gaps": gaps, "in_order_once": ok, "complete": min(seen.values()) >= last,
            "msgs_per_s": count / max(1e-9, (t_last or 0) - (first or 0)), "cpu_us_per_msg": cpu / max(1, count) * 1e6}


def child(args: argparse.Namespace, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--redis", args.redis, "--messages", str(args.messages),
                             "--channels", str(args.channels), *extra], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "COBY_LOG_LEVEL": "WARNING"}, stderr=subprocess.DEVNULL)


def result(proc: subprocess.Popen) -> dict:
    out, _ = proc.communicate(timeout=600)
    return json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    p.add_argument("--messages", type=int, default=60000)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--role", choices=["writer", "reader"])
    p.add_argument("--transport", default="streams")
    p.add_argument("--last", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="writer: keep the streams (readers wait on them)")
    args = p.parse_args()
    if args.role == "writer":
        print(json.dumps(asyncio.run(writer(args.redis, args.messages, args.channels, args.transport,
                                                args.keep))))
        return
    if args.role == "reader":
        print(json.dumps(asyncio.run(reader(args.redis, args.channels, args.last))))
        return
    best: dict[str, dict] = {}
    for _ in range(args.repeat):
        for transport in ("pubsub", "streams"):
            r = result(child(args, "--role", "writer", "--transport", transport))
            if transport not in best or r["cpu_us_per_msg"] < best[transport]["cpu_us_per_msg"]:
                best[transport] = r
    for t in ("pubsub", "streams"):
        r = best[t]
        print(f"write {t:8s}: {r['messages']} msgs in {r['seconds']:.2f} s ({r['messages'] / r['seconds']:,.0f}/s), "
              f"collector CPU {r['cpu_us_per_msg']:.1f} us/msg, Redis CPU {r['redis_cpu_us_per_msg']:.1f} us/msg")
    print(f"streams / pubsub collector CPU: {best['streams']['cpu_us_per_msg'] / best['pubsub']['cpu_us_per_msg']:.2f}")
    last = args.messages // args.channels + 1
    for readers in (1, 2):
        asyncio.run(clear(args.redis, args.channels))
        procs = [child(args, "--role", "reader", "--last", str(last)) for _ in range(readers)]
        for pr in procs:
            while pr.stdout.readline().strip() != "ready":
                pass
        w = result(child(args, "--role", "writer", "--transport", "streams", "--keep"))
        rs = [result(pr) for pr in procs]
        print(f"{readers} reader(s): writer {w['messages'] / w['seconds']:,.0f} msgs/s; " + "; ".join(
            f"reader {i}: {r['received']} msgs, {r['msgs_per_s']:,.0f}/s, {r['cpu_us_per_msg']:.1f} us/msg CPU, "
            f"complete={r['complete']}, once in order={r['in_order_once']}, gaps={r['gaps']}" for i, r in enumerate(rs)))


if __name__ == "__main__":
    main()
