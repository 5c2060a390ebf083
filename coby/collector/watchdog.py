"""The staleness watchdog: finds a venue's streams that have gone quiet without failing.

A ccxt watch can hang without raising (a connection that stays open and delivers
nothing, a subscription whose ack was lost), so errors alone do not reveal a dead
feed. One :class:`Watchdog` per connector (:mod:`coby.exchanges`, which spawns its
``run()`` and cancels it on disconnect) checks every watching stream of the
current feed generation a few times per ``stale_after``:

* a book is stale when it has not changed for ``stale_after`` seconds
  (``connect_timeout`` for the first book);
* trades quiet for ``trade_stale_after`` seconds (0: never) are a quiet market, not a
  dead feed, when another trade stream on the same connection flows (nothing to do)
  or when the symbol's book flows (the venue is up): then the trades are only
  resubscribed, in case the venue forgot the subscription (``on_quiet``: no event, no
  failure counted, the book untouched). Quiet trades with no live book are stale.

A stall is counted (``coby_stalls_total``), logged, and handed to the connector
(``on_stale``), which marks the stream stale and recycles its feed. The watchdog
also keeps ``coby_book_age_seconds`` current.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from coby.errors import QuietTrades, StaleFeed
from coby.collector.feeds import BOOK, Stream
from coby.metrics import BOOK_AGE, STALLS
from coby.collector.venues import Venue

log = structlog.get_logger("coby.exchanges")


class Watchdog:
    """Checks the streams of one connector (the same dict the connector adds to) for staleness."""

    def __init__(self, exchange: str, settings: Any, venue: Venue, streams: dict[tuple[str, str], Stream],
                 on_stale: Callable[[Stream, StaleFeed], Awaitable[None]],
                 on_quiet: Callable[[Stream, QuietTrades], Awaitable[None]], *,
                 clock: Callable[[], float], sleep: Callable[[float], Awaitable[Any]]) -> None:
        self.exchange, self.settings, self.venue = exchange, settings, venue
        self._streams, self._on_stale, self._on_quiet = streams, on_stale, on_quiet
        self._clock, self._sleep = clock, sleep
        self._log = log.bind(exchange=exchange)

    async def run(self) -> None:
        """Check every stream a few times per ``stale_after`` (at most once a second) until cancelled."""
        every = max(0.05, min(self.settings.stale_after / 4.0, 1.0))
        while True:
            await self._sleep(every)
            try:
                await self.check(self._clock())
            except Exception as exc:  # noqa: BLE001 - the watchdog never dies
                self._log.error("watchdog_error", error=repr(exc))

    async def check(self, now: float) -> None:
        s = self.settings
        for st in list(self._streams.values()):
            if st.kind == BOOK:
                age = now - st.last_progress if st.last_progress > float("-inf") else 0.0
                BOOK_AGE.labels(self.exchange, st.symbol).set(age)
            if not st.watching or st.gen != st.feed.gen:
                continue
            if st.kind == BOOK:
                limit = s.stale_after if st.live else max(s.stale_after, s.connect_timeout)
            else:
                if not s.trade_stale_after:
                    continue
                limit = s.trade_stale_after if st.live else max(s.trade_stale_after, s.connect_timeout)
            quiet = now - max(st.last_progress, st.attempt_at)
            if quiet <= limit:
                continue
            if st.kind != BOOK:
                if any(o is not st and o.live and now - o.last_progress < limit for o in st.feed.streams):
                    continue  # the same connection delivers other trades: a quiet market, not a dead feed
                book = self._streams.get((BOOK, st.symbol))
                if book is not None and book.live and now - book.last_progress < s.stale_after:
                    self._log.info("trades_quiet", symbol=st.symbol, quiet=round(quiet, 2), live=st.live)
                    await self._on_quiet(st, QuietTrades(self.exchange, f"trades {st.symbol}: none for "
                                                         f"{quiet:.1f}s, book live: resubscribing"))
                    continue
            err = StaleFeed(self.exchange, f"{st.kind} {st.symbol}: nothing for {quiet:.1f}s")
            STALLS.labels(self.exchange).inc()
            self._log.warning("feed_stale", stream=st.kind, symbol=st.symbol, quiet=round(quiet, 2), live=st.live)
            await self._on_stale(st, err)
