"""A replay session's clock: event time mapped onto wall time, scaled, frozen while paused.

``Pacer`` holds one linear mapping, ``wall = wall0 + (t - t0) / speed``, where ``t`` is event
time (seconds since the epoch) and ``wall`` is the injected ``clock()`` (monotonic seconds).
An event is delivered once its wall time has come; the mapping is absolute, so lateness never
accumulates: a consumer that held the session up for a second is caught up with at once.

- speed 0: no mapping at all - every event is due now (the consumer's reads set the pace);
- ``freeze()`` (pause) remembers the event time reached; ``anchor(t)`` (start, resume, seek)
  restarts the mapping at event time ``t`` from now, so a resumed session waits exactly the
  remaining time before its next event;
- ``nap(delay)`` sleeps through the injected ``sleep`` and can be cut short by ``interrupt()``
  (pause, seek and stop use it).

``ManualClock`` is a clock whose time moves only when told to (``advance``), or, with
``auto=True``, jumps forward by each sleep at once: tests and tools get exact pacing without
waiting.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Awaitable, Callable

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[object]]


class Pacer:
    """Event time -> wall time for one session (see the module docstring)."""

    __slots__ = ("speed", "clock", "sleep", "t0", "wall0", "_waiter")

    def __init__(self, speed: float, clock: Clock, sleep: Sleep) -> None:
        self.speed = speed
        self.clock = clock
        self.sleep = sleep
        self.t0 = 0.0
        self.wall0 = 0.0
        self._waiter: asyncio.Future | None = None

    def anchor(self, t: float) -> None:
        """From now on, event time ``t`` is now."""
        self.t0 = t
        self.wall0 = self.clock()

    def event_time(self) -> float:
        """The event time the mapping has reached now (``t0`` at speed 0)."""
        if not self.speed:
            return self.t0
        return self.t0 + (self.clock() - self.wall0) * self.speed

    def delay(self, t: float) -> float:
        """Seconds of wall time until event time ``t`` is due (<= 0: due now)."""
        if not self.speed:
            return 0.0
        return self.wall0 + (t - self.t0) / self.speed - self.clock()

    async def nap(self, delay: float) -> None:
        """Sleep ``delay`` seconds of the injected clock, or less if ``interrupt()`` is called."""
        waiter = asyncio.ensure_future(self.sleep(delay))
        self._waiter = waiter
        try:
            await asyncio.wait((waiter,))
        finally:
            self._waiter = None
            if not waiter.done():
                waiter.cancel()
            elif not waiter.cancelled():
                waiter.exception()

    def interrupt(self) -> None:
        """Cut the current ``nap`` short (a no-op when not napping)."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.cancel()


class ManualClock:
    """A clock for tests and tools. Call it for the time; pass ``sleep`` where a sleep is injected.

    Manual (default): sleepers wake when ``advance`` moves the time past their deadline.
    ``auto=True``: each sleep moves the time forward by its delay at once (virtual time).
    """

    def __init__(self, start: float = 1_000.0, *, auto: bool = False) -> None:
        self.now = start
        self.auto = auto
        self._sleepers: list[tuple[float, int, asyncio.Future]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        if self.auto or delay <= 0:
            self.now += max(delay, 0.0)
            await asyncio.sleep(0)
            return
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + delay, next(self._seq), fut))
        await fut

    @property
    def sleepers(self) -> int:
        """How many sleeps are waiting (cancelled ones excluded)."""
        return sum(1 for *_, f in self._sleepers if not f.done())

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking every sleeper due by then, and let them run."""
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)
        for _ in range(5):
            await asyncio.sleep(0)
