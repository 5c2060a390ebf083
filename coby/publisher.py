"""The publisher: every message on a channel in an envelope with the channel's next seq, handed to the bus
(``coby.cache``); the pipeline (``coby.pipeline``) and the replay publish through it."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import structlog

from coby.cache import MemoryCache
from coby.models import utcnow

log = structlog.get_logger("coby.publisher")


class Publisher:
    """Wraps data in envelopes with a per-channel sequence number; keeps the latest of book-like channels.

    A channel's numbering continues from where the bus has it: the first publish of a channel in this
    process asks ``bus.last_seq`` (Redis: the stream's newest seq; in-process: 0), so a restarted process, or
    one that takes a channel over from another (failover, ``resume``), goes on with the next number instead
    of 1. When Redis refuses a message because its stream already holds that seq (another process wrote
    it), the bus says so (``on_seq_conflict``) and the channel's numbering is taken from Redis again."""

    def __init__(self, bus: MemoryCache, replay_id: str | None = None) -> None:
        self.bus = bus
        self.replay_id = replay_id
        self._seq: dict[str, int] = {}
        self._stale: set[str] = set()  # channels whose numbering is read from the bus again before the next publish
        self._seeding = asyncio.Lock()
        self._unknown = 0  # channels numbered without asking Redis (it was down)
        bus.on_seq_conflict = self._stale.add

    def envelope(self, channel: str, data: Any, ts: datetime | None, received: datetime | None) -> dict:
        seq = self._seq[channel] = self._seq.get(channel, 0) + 1
        env = {"channel": channel, "type": "update", "seq": seq, "ts": ts, "received": received or utcnow(),
               "data": data}
        if self.replay_id is not None:
            env["replay"] = self.replay_id
        return env

    async def resume(self, channels: Any = None) -> None:
        """Take the numbering of ``channels`` (all: None) from the bus again before their next message: what a
        process calls when it takes channels over (failover) - they continue from the last seq in Redis."""
        self._stale.update(self._seq if channels is None else channels)

    async def _seed(self, channel: str) -> None:
        async with self._seeding:  # publishers of one channel run concurrently (one per venue)
            if channel in self._seq and channel not in self._stale:
                return
            try:
                last = await self.bus.last_seq(channel)
            except Exception as e:  # noqa: BLE001 - Redis down: number on from what this process knows
                if not self._unknown:  # once: every channel would say the same
                    log.warning("publisher_seq_unknown", channel=channel, error=str(e) or type(e).__name__,
                                detail="numbering from what this process knows; Redis refuses seqs it holds")
                self._unknown += 1
                last = 0
            self._stale.discard(channel)
            self._seq[channel] = max(self._seq.get(channel, 0), last)

    async def publish(self, channel: str, data: Any, ts: datetime | None = None, received: datetime | None = None,
                      latest: tuple[str, str] | None = None, book: tuple[str, str] | None = None,
                      backfill: bool = False) -> dict:
        if channel not in self._seq or self._stale and channel in self._stale:
            await self._seed(channel)
        env = self.envelope(channel, data, ts, received)
        if backfill:  # a trade a gap missed, fetched from the venue's history (coby.collector.backfill)
            env["backfill"] = True
        if book is not None:  # the cache and every subscriber share one encoding
            await self.bus.publish_book(book[0], book[1], channel, env)
        elif latest is not None:
            await self.bus.publish_latest(latest[0], latest[1], channel, env)
        else:
            await self.bus.publish(channel, env)
        return env
