"""One replay session: its task, its bus, its pipeline, its clock (``ReplayManager`` creates them).

A session owns one task, one ``ReplayBus`` (its subscribers are waited for, never dropped from)
and one ``Pipeline(settings, sink, bus, replay_id=id, run_timers=False)`` - the very code the
live run goes through, so trades, books, gaps and every aggregate leave on the same channels in
the same envelopes, marked ``"replay": id``.

The task reads ``merged_events`` (trades, snapshots and connection events of [start, end),
time-ordered, chunked) and for each event, in order:

1. runs the aggregation tick of every ``aggregate_interval`` boundary it passed (boundaries
   aligned on the epoch; the tick at ``b`` sees exactly the events before ``b``), through
   ``Pipeline.advance_to``; the last tick is at ``end``;
2. waits for its wall time (``replayclock.Pacer``: speed 1 real time, any positive factor
   faster or slower, 0 no waiting) or, while paused, for ``resume``;
3. hands it to the pipeline; a connection event also becomes a ``gap`` message.

At its start (and after a seek) a session first delivers the latest stored book of each venue
within ``stale_after`` before that point - the books the live run held then - and announces
the gaps open at that moment. A seek cancels the task, rebuilds the pipeline (its sequence
numbers continue) and starts again from the new point.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from datetime import datetime
from typing import Any, Awaitable, Callable, Iterable, Protocol

import structlog

from coby.errors import ReplayError
from coby.models import ConnectionEvent, ReplayState, ReplayStatus, utc_from_ms, utcnow
from coby.api.replay_bus import ReplayBus
from coby.api.replay_clock import Pacer
from coby.api.replay_stream import GapTracker, books_before, connection_state_before, gap_message, merged_events



class ReplayManager(Protocol):
    """What a session reads of :class:`coby.replay.ReplayManager`, which creates it (a protocol, so the
    two modules do not import each other)."""

    settings: Any
    storage: Any
    clock: Callable[[], float]
    sleep: Callable[[float], Awaitable[None]]

log = structlog.get_logger("coby.replay")
ACTIVE = frozenset({ReplayState.CREATED, ReplayState.RUNNING, ReplayState.PAUSED})


class ReplayNotFound(ReplayError):
    status = 404


class ReplayConflict(ReplayError):
    """The session is in the wrong state for the request (e.g. resume while running)."""

    status = 409


class ReplayLimitReached(ReplayError):
    status = 429


class InvalidReplayRequest(ReplayError):
    status = 400


class ReplaySession:
    """One replay: its task, bus, pipeline and clock. Controlled through ``ReplayManager``."""

    def __init__(self, manager: "ReplayManager", session_id: str, start: datetime, end: datetime, speed: float,
                 exchanges: tuple[str, ...] | None, symbols: tuple[str, ...] | None,
                 channels: tuple[str, ...] | None, sink: Any = None) -> None:
        s = manager.settings
        self.manager = manager
        self.settings = s
        self.id = session_id
        self.start, self.end, self.speed = start, end, speed
        self.exchanges, self.symbols, self.channels = exchanges, symbols, channels
        self.sink = sink  # what the pipeline would store (tests compare it with the live run's rows)
        self.bus = ReplayBus(channels, maxsize=s.replay_queue_size, clock=manager.clock)
        self.state = ReplayState.CREATED
        self.error: str | None = None
        self.events = 0
        self.position = start
        self.created_at = utcnow()
        self.touched = manager.clock()
        self.pacer = Pacer(speed, manager.clock, manager.sleep)
        self.pipeline: Any = None
        self._task: asyncio.Task | None = None
        self._resumed = asyncio.Event()
        self._resumed.set()
        self.done = asyncio.Event()  # set once the session has ended (finished, stopped, failed)
        self._gaps = GapTracker()
        self._tick_us = max(1, round(s.aggregate_interval * 1e6))
        self._next_tick = 0.0

    # --- status -----------------------------------------------------------------------------------
    def status(self) -> ReplayStatus:
        span = (self.end - self.start).total_seconds()
        done = (self.position - self.start).total_seconds()
        progress = 1.0 if self.state == ReplayState.FINISHED else min(1.0, max(0.0, done / span)) if span else 1.0
        return ReplayStatus(self.id, self.state, self.start, self.end, self.speed, self.position, self.events,
                            round(progress, 6), self.error)

    def describe(self) -> dict:
        """The status with the session's filters: the REST API's view of a session."""
        st = self.status()
        return {"id": self.id, "session_id": self.id, "state": st.state.value, "start": st.start, "end": st.end,
                "speed": st.speed, "position": st.position, "events_emitted": st.events_emitted,
                "progress": st.progress, "error": st.error, "exchanges": self.exchanges, "symbols": self.symbols,
                "channels": self.channels, "subscribers": self.bus.subscribers, "created_at": self.created_at}

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    # --- control (through the manager) ------------------------------------------------------------
    async def begin(self) -> None:
        self._expect({ReplayState.CREATED}, "start")
        self.state = ReplayState.RUNNING
        await self._launch()
        self._announce("started")

    async def pause(self) -> None:
        self._expect({ReplayState.RUNNING}, "pause")
        self.state = ReplayState.PAUSED
        self._resumed.clear()
        self.pacer.t0 = max(self.pacer.event_time(), self.position.timestamp())
        self.pacer.interrupt()
        self._announce("paused")

    async def resume(self) -> None:
        self._expect({ReplayState.PAUSED}, "resume")
        self.state = ReplayState.RUNNING
        self.pacer.anchor(self.pacer.t0)  # the remaining wait before the next event is kept
        self._resumed.set()
        self._announce("resumed")

    async def seek(self, ts: datetime) -> None:
        self._expect(ACTIVE, "seek")
        if not self.start <= ts <= self.end:
            raise InvalidReplayRequest(f"seek target {ts.isoformat()} is outside the session's range "
                                       f"[{self.start.isoformat()}, {self.end.isoformat()}]")
        await self._halt()
        self.position = ts
        if self.state != ReplayState.CREATED:
            await self._launch()
        self._announce("seeked")

    async def stop(self) -> None:
        self._expect(ACTIVE, "stop")
        await self._halt()
        await self._finish(ReplayState.STOPPED)

    def _expect(self, states: Iterable[ReplayState], action: str) -> None:
        self.touched = self.manager.clock()
        if self.state not in states:
            raise ReplayConflict(f"cannot {action} replay {self.id}: it is {self.state.value}")

    # --- the task -----------------------------------------------------------------------------------
    async def _launch(self) -> None:
        """Build the pipeline at ``position`` and start the task (paused sessions wait for resume)."""
        from coby.pipeline import Pipeline  # the pipeline is downstream of storage, like replay itself

        old = self.pipeline
        self.pipeline = Pipeline(self.settings, self.sink, self.bus, replay_id=self.id,
                                 clock=self._event_clock, run_timers=False)
        if old is not None:
            self.pipeline.publisher = old.publisher  # sequence numbers continue across a seek
        await self.pipeline.start()
        t = self.position.timestamp()
        self._next_tick = math.ceil(round(t * 1e6) / self._tick_us) * self._tick_us / 1e6
        self.pacer.anchor(t)
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"coby-replay-{self.id}")

    def _event_clock(self) -> float:
        return self.position.timestamp()

    async def _halt(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        # the session's own context: its task was created by the request that started it; what it logs is
        # about the session (replay_id), not about that request
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(replay_id=self.id)
        try:
            await self._prime()
            s = self.settings
            async for batch in merged_events(self.manager.storage, self.position, self.end, exchanges=self.exchanges,
                                             symbols=self.symbols, chunk=s.replay_chunk):
                pipeline = self.pipeline
                for ev in batch:
                    ts = ev.timestamp
                    t = ts.timestamp()
                    if t >= self._next_tick:
                        await self._ticks_until(t, inclusive=True)
                    if self.speed or not self._resumed.is_set():
                        await self._wait_turn(t)
                    if type(ev) is ConnectionEvent:
                        gap = self._gaps.update(ev)
                        if gap is not None:
                            await pipeline.publisher.publish("gap", gap, ts, None)
                    await pipeline.on_event(ev)
                    self.position = ts
                    self.events += 1
            await self._ticks_until(self.end.timestamp(), inclusive=True)
            self.position = self.end
            await self._finish(ReplayState.FINISHED)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the session fails, the process does not
            log.exception("replay_failed")
            self.error = f"{type(e).__name__}: {e}"
            await self._finish(ReplayState.FAILED)

    async def _prime(self) -> None:
        """The books live held at ``position``, and the gaps open then (see the module docstring)."""
        storage, s = self.manager.storage, self.settings
        books = await books_before(storage, self.position, s.stale_after, exchanges=self.exchanges,
                                   symbols=self.symbols, chunk=s.replay_chunk)
        self._gaps = await connection_state_before(storage, self.position, self.exchanges or s.exchanges,
                                                   self.symbols)
        for opened in self._gaps.open.values():
            await self.pipeline.publisher.publish("gap", gap_message(opened, None), opened.timestamp, None)
        for b in books:
            await self.pipeline.on_event(b)
            self.events += 1

    async def _ticks_until(self, t: float, inclusive: bool) -> None:
        """Run the aggregation tick of every boundary up to event time ``t`` (each paced like an event).

        Always, whatever the channel filter: the tick also flushes the books held back by
        ``book_publish_interval`` and applies the trades waiting in the OHLCV builder.
        """
        step = self._tick_us / 1e6
        while self._next_tick < t or (inclusive and self._next_tick == t):
            b = self._next_tick
            if self.speed or not self._resumed.is_set():
                await self._wait_turn(b)
            self.position = max(self.position, utc_from_ms(b * 1000))
            await self.pipeline.advance_to(utc_from_ms(b * 1000))
            self._next_tick = round((b + step) * 1e6) / 1e6

    async def _wait_turn(self, t: float) -> None:
        while True:
            if not self._resumed.is_set():
                await self._resumed.wait()
                continue
            delay = self.pacer.delay(t)
            if delay <= 0:
                return
            await self.pacer.nap(delay)

    async def _finish(self, state: ReplayState) -> None:
        self.state = state
        self.touched = self.manager.clock()
        self._resumed.set()
        self._announce(state.value)
        if self.pipeline is not None:
            try:
                await self.pipeline.aclose()  # open OHLCV bars go to the sink, as live stores them at shutdown
            except Exception:  # noqa: BLE001 - closing must finish the session whatever the sink did
                log.exception("replay_pipeline_close_failed", replay_id=self.id)
        if state == ReplayState.FINISHED:
            await self.bus.finish()  # subscribers read everything before their stream ends
        else:
            self.bus.end()
        self.pipeline = None  # an ended session keeps its status, not its engine's state
        self.done.set()
        log.info("replay_" + state.value, replay_id=self.id, events=self.events, error=self.error)

    def _announce(self, event: str) -> None:
        """A ``replay`` channel message on each change of state (subscribe to ``replay`` to follow it).

        Best effort: a control request never waits for a slow reader, so a subscriber whose queue
        is full misses the announcement (the data stream itself is never dropped from).
        """
        if self.pipeline is not None and not self.bus.ended:
            env = self.pipeline.publisher.envelope("replay", {"event": event, "status": self.status()},
                                                   self.position, None)
            self.bus.offer("replay", env)

    def abandon(self, reason: str) -> asyncio.Task | None:
        """Reaping, without waiting: cancel the task, mark the session stopped, end the stream."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
        else:
            task = None
        if self.active:
            self.state, self.error = ReplayState.STOPPED, reason
        self.bus.end()
        self.pipeline = None
        self.done.set()
        return task

    async def aclose(self) -> None:
        """Stop the task and end the stream; idempotent."""
        await self._halt()
        if self.active:
            await self._finish(ReplayState.STOPPED)
        self.done.set()
        await self.bus.aclose()
