"""Load: is the daemon keeping up with its venues, and what it gives up, in order, when it is not.

Every second the HTTP monitor (``coby.http.Monitor``) hands :meth:`LoadGovernor.observe` what it
sampled: the event loop's lag (sleep overshoot, every 0.1 s), each venue's message counter and its
newest book (venue timestamp and coby's receive time), the write path's backlog, resident memory
and process CPU. From those the governor keeps, per venue, the *delivered* rate (messages/s over
the last ``WINDOW`` seconds) and the *expected* rate (the same messages over the venue time they
cover: what the venue sent while coby read them; equal while coby keeps up, higher while it
falls behind), and the *feed delay* (receive time minus venue time of the newest book, above the
least delay seen in the last five minutes, which absorbs clock skew).

A second is *overloaded* when any of these holds (the reasons, as shown in status and ``/ready``):

- the event loop lagged at least ``overload_loop_lag``;
- a venue's feed delay is at least ``overload_feed_delay`` (coby reads slower than it is sent);
- resident memory is at least ``overload_memory_mb`` (when set).

The first ``overload_warmup`` seconds after the first sample (the daemon's start: every venue's ccxt
clients built, their markets loaded and first books fetched at once) are a burst, not overload: their
seconds never count as overloaded and their loop lags stay out of the p99 (status shows ``warming_up``).

After ``overload_after`` overloaded seconds within ``2 x overload_after`` the daemon is ``overloaded`` (status, ``/ready``
503 with the reasons, ``coby_overloaded``) and degrades by :data:`LEVELS`, a fixed order, one level
per ``STEP_AFTER`` seconds it stays overloaded:

1. the book channels publish (and cache) at most every 4 x ``book_publish_interval`` and the
   aggregation tick runs every 2 x ``aggregate_interval``;
2. then 10 x and 4 x, and connectors hand on a book at most every 4 x ``book_emit_interval`` (the
   newest state still wins, so fewer books are normalised).

Trades, connection events and stored snapshots are never dropped or thinned at any level. After
``overload_recover`` clear seconds in a row every interval returns to its setting.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import structlog

from coby.metrics import DEGRADATION_LEVEL, FEED_DELAY, FEED_RATE, LOOP_LAG_P99, OVERLOADED

log = structlog.get_logger("coby.load")

WINDOW = 10.0  # seconds of samples behind the delivered and expected rates
BASELINE = 300  # seconds of feed delays whose least is a venue's baseline (clock skew)
STEP_AFTER = 10.0  # seconds overloaded at one level before the next


@dataclass(frozen=True, slots=True)
class Slowdown:
    """Multipliers of the intervals a degradation level stretches."""

    publish: float  # book_publish_interval
    aggregate: float  # aggregate_interval
    emit: float  # book_emit_interval


LEVELS = (Slowdown(1, 1, 1), Slowdown(4, 2, 1), Slowdown(10, 4, 4))


@dataclass(frozen=True, slots=True)
class VenueSample:
    """One venue at one second: its message counter and its newest book's venue and receive times."""

    messages: int
    venue_time: float | None = None  # epoch seconds
    received: float | None = None


class LoadGovernor:
    """Decides ``overloaded`` and the degradation level from one sample a second; ``apply`` is called with
    the new :class:`Slowdown` whenever the level changes."""

    def __init__(self, settings: Any, apply: Callable[[Slowdown], None] | None = None) -> None:
        self.settings = settings
        self.apply = apply
        self.overloaded = False
        self.level = 0
        self.reasons: list[str] = []  # of the last second
        self.since: float | None = None  # when the current state began (monitor clock)
        self._good = 0
        self._recent: deque[bool] = deque()  # the last 2 x overload_after seconds: overloaded or not
        self._stepped_at = 0.0
        self._lags: deque[float] = deque(maxlen=600)  # the last minute of 0.1 s lag samples
        self._samples: deque[tuple[float, float, dict[str, VenueSample]]] = deque()
        self._delays: dict[str, deque[float]] = {}
        self._venues: dict[str, dict[str, float | None]] = {}
        self.loop_lag = 0.0
        self.started: float | None = None  # the first sample: the warm-up runs from here
        self.warming_up = False
        self.cpu: float | None = None
        self.rss_bytes = 0
        self.backlog_rows = 0

    @property
    def slowdown(self) -> Slowdown:
        return LEVELS[self.level]

    def sample(self, now: float, lags: list[float], counts: dict[str, int], pipeline: Any, storage: Any) -> None:
        """This second's sample from the daemon's parts (the API's monitor calls it once a second): each
        venue's message counter and newest book, the write backlog, this process' memory and CPU time."""
        newest = pipeline.newest_books if pipeline is not None else {}
        venues = {}
        for name, n in counts.items():
            b = newest.get(name)
            venues[name] = VenueSample(n) if b is None else \
                VenueSample(n, b.timestamp.timestamp(), b.received_at.timestamp())
        self.observe(now, lags, venues, storage.buffer.pending() if storage is not None else 0,
                     rss_bytes(), time.process_time())

    def observe(self, now: float, lags: list[float], venues: dict[str, VenueSample], backlog_rows: int = 0,
                rss_bytes: int = 0, cpu_s: float = 0.0) -> None:
        """One second's sample (``now`` on a monotonic clock, ``lags`` the loop-lag samples of that second)."""
        s = self.settings
        if self.started is None:
            self.started = now
        self.warming_up = now - self.started < s.overload_warmup
        if not self.warming_up:
            self._lags.extend(lags)
        self.loop_lag = max(lags, default=0.0)
        self.rss_bytes, self.backlog_rows = rss_bytes, backlog_rows
        self._samples.append((now, cpu_s, venues))
        while len(self._samples) > 2 and now - self._samples[1][0] >= WINDOW:
            self._samples.popleft()
        t0, cpu0, first = self._samples[0]
        span = now - t0
        self.cpu = round((cpu_s - cpu0) / span, 3) if span > 0 else None
        reasons = []
        if self.loop_lag >= s.overload_loop_lag:
            reasons.append(f"event loop lag {self.loop_lag:.2f} s")
        for name, v in venues.items():
            info = self._venue(name, v, first.get(name), span)
            if info["delay_s"] is not None and info["delay_s"] >= s.overload_feed_delay:
                reasons.append(f"{name} {info['delay_s']:.1f} s behind")
        if s.overload_memory_mb and rss_bytes >= s.overload_memory_mb * 2 ** 20:
            reasons.append(f"memory {rss_bytes / 2 ** 20:.0f} MB")
        self.reasons = reasons
        self._decide(now, bool(reasons) and not self.warming_up)
        LOOP_LAG_P99.set(self.loop_lag_p99())

    def _venue(self, name: str, v: VenueSample, old: VenueSample | None, span: float) -> dict[str, float | None]:
        delay = None
        if v.venue_time is not None and v.received is not None:
            raw = v.received - v.venue_time
            history = self._delays.setdefault(name, deque(maxlen=BASELINE))
            history.append(raw)
            delay = round(max(0.0, raw - min(history)), 3)
            FEED_DELAY.labels(name).set(delay)
        delivered = expected = None
        if old is not None and span > 0:
            delivered = max(0, v.messages - old.messages) / span
            if old.venue_time is not None and v.venue_time is not None and v.venue_time > old.venue_time:
                # the messages delivered in the window, over the venue time they cover
                expected = delivered * span / (v.venue_time - old.venue_time)
            FEED_RATE.labels(name, "delivered").set(delivered)
            if expected is not None:
                FEED_RATE.labels(name, "expected").set(expected)
        info = {"delivered_per_s": None if delivered is None else round(delivered, 1),
                "expected_per_s": None if expected is None else round(expected, 1), "delay_s": delay}
        self._venues[name] = info
        return info

    def _decide(self, now: float, bad: bool) -> None:
        s = self.settings
        self._good = 0 if bad else self._good + 1
        self._recent.append(bad)
        while len(self._recent) > 2 * s.overload_after:
            self._recent.popleft()
        # overload_after bad seconds within twice that: a loop lag that hovers around its threshold (one
        # clear second between bad ones) is overload too, and is seen within 10 s
        if not self.overloaded and sum(self._recent) >= s.overload_after:
            self.overloaded, self.since = True, now
            log.warning("overloaded", reasons=self.reasons)
            self._set_level(1, now)
        elif self.overloaded and bad and self.level < len(LEVELS) - 1 and now - self._stepped_at >= STEP_AFTER:
            self._set_level(self.level + 1, now)
        elif self.overloaded and self._good >= s.overload_recover:
            self.overloaded, self.since = False, now
            log.warning("overload_recovered", level=self.level)
            self._set_level(0, now)
        OVERLOADED.set(1 if self.overloaded else 0)

    def _set_level(self, level: int, now: float) -> None:
        self.level, self._stepped_at = level, now
        DEGRADATION_LEVEL.set(level)
        if level:
            log.warning("degradation_level", level=level, slowdown=str(LEVELS[level]))
        if self.apply is not None:
            self.apply(LEVELS[level])

    def loop_lag_p99(self) -> float:
        if not self._lags:
            return 0.0
        ordered = sorted(self._lags)
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 4)

    def status(self) -> dict[str, Any]:
        """What ``/api/v1/status`` shows under ``load``."""
        return {"state": "overloaded" if self.overloaded else "ok", "overloaded": self.overloaded,
                "reasons": list(self.reasons), "degradation_level": self.level,
                "warming_up": self.warming_up,
                "slowdown": {"book_publish": self.slowdown.publish, "aggregate": self.slowdown.aggregate,
                             "book_emit": self.slowdown.emit},
                "loop_lag_s": round(self.loop_lag, 4), "loop_lag_p99_s": self.loop_lag_p99(), "cpu": self.cpu,
                "rss_bytes": self.rss_bytes, "write_backlog_rows": self.backlog_rows,
                "venues": {name: dict(v) for name, v in self._venues.items()}}


def rss_bytes() -> int:
    """This process' resident memory (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
