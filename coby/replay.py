"""Replay: the live pipeline with storage as its source, paced by a clock that can pause, seek and scale.

``ReplayManager`` is the design's interface - ``create_replay_session``, ``start_replay``,
``pause_replay``, ``stop_replay``, ``get_replay_status`` - plus resume, seek and filters, over
many sessions at once. Each session (``coby.api.replay_session.ReplaySession``) runs the stored
events of its range through a pipeline of its own onto a bus of its own; docs/replay.md is
the guide.

Limits (settings): ``replay_max_sessions`` active sessions, ``replay_max_range_days`` per
session, ``replay_chunk`` rows per read, ``replay_queue_size`` messages per subscriber.
Sessions that are finished, stopped, failed, or left untouched (created or paused and not
controlled, or running but blocked on a subscriber that does not read) for
``replay_idle_ttl`` seconds are reaped whenever the manager is used.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from datetime import datetime, timedelta
from typing import Any, Awaitable, Callable, Sequence

from coby.config import EXCHANGE_ALIASES, Settings
from coby.errors import ReplayError
from coby.models import ReplayState, ReplayStatus, ensure_utc, utc_from_ms
from coby.api.replay_session import (
    InvalidReplayRequest, ReplayConflict, ReplayLimitReached, ReplayNotFound, ReplaySession, log,
)

__all__ = ["CHANNEL_KINDS", "InvalidReplayRequest", "ReplayConflict", "ReplayError", "ReplayLimitReached",
           "ReplayManager", "ReplayNotFound", "ReplaySession", "check_speed", "parse_time"]

#: channel kinds a session can publish (a filter names kinds or full channel names)
CHANNEL_KINDS = ("trades", "book", "consolidated", "heatmap", "metrics", "ohlcv", "status", "gap", "replay")


def parse_time(value: Any, name: str = "time") -> datetime:
    """ISO 8601 (naive = UTC) or epoch milliseconds (number or digits) -> aware UTC datetime."""
    if isinstance(value, datetime):
        return ensure_utc(value)
    if isinstance(value, bool):
        raise InvalidReplayRequest(f"{name}: expected ISO 8601 or epoch milliseconds, got {value!r}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise InvalidReplayRequest(f"{name}: expected a finite epoch milliseconds value")
        return utc_from_ms(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            if text.lstrip("-").replace(".", "", 1).isdigit():
                return utc_from_ms(float(text))
            return ensure_utc(datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00")))
        except (ValueError, OverflowError, OSError):
            pass
    raise InvalidReplayRequest(f"{name}: expected ISO 8601 or epoch milliseconds, got {value!r}")


class ReplayManager:
    """Replay sessions: create, control, observe, reap. One per daemon (``Daemon.replay``)."""

    def __init__(self, settings: Settings, storage: Any, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.settings = settings
        self.storage = storage
        self.clock = clock
        self.sleep = sleep
        self._sessions: dict[str, ReplaySession] = {}
        self._reaping: set[asyncio.Task] = set()
        self._closed = False

    # --- the design's interface ------------------------------------------------------------------
    def create_replay_session(self, start: Any, end: Any, speed: float = 1.0, exchanges: Sequence[str] | None = None,
                              symbols: Sequence[str] | None = None, channels: Sequence[str] | None = None, *,
                              sink: Any = None) -> str:
        """A new session over [start, end) (created, not started); returns its id.

        ``sink``: an object with the storage's ``store_*`` methods that receives what the
        session's pipeline would store (tests compare it with what the live run stored).
        """
        if self._closed:
            raise ReplayConflict("the replay manager is closed")
        self.reap()
        start, end = parse_time(start, "start"), parse_time(end, "end")
        if not start < end:
            raise InvalidReplayRequest("start must be before end")
        max_days = self.settings.replay_max_range_days
        if end - start > timedelta(days=max_days):
            raise InvalidReplayRequest(f"range of {(end - start).total_seconds() / 86400:.2f} days exceeds "
                                       f"replay_max_range_days={max_days:g}")
        speed = check_speed(speed)
        active = self.active_count()
        if active >= self.settings.replay_max_sessions:
            raise ReplayLimitReached(f"{active} replay sessions are active (replay_max_sessions="
                                     f"{self.settings.replay_max_sessions}); stop one first")
        session_id = uuid.uuid4().hex[:12]
        self._sessions[session_id] = ReplaySession(
            self, session_id, start, end, speed, self._exchanges(exchanges), self._symbols(symbols),
            self._channels(channels), sink)
        log.info("replay_created", replay_id=session_id, start=start.isoformat(), end=end.isoformat(), speed=speed)
        return session_id

    async def start_replay(self, session_id: str) -> None:
        await self.session(session_id).begin()

    async def pause_replay(self, session_id: str) -> None:
        await self.session(session_id).pause()

    async def resume_replay(self, session_id: str) -> None:
        await self.session(session_id).resume()

    async def stop_replay(self, session_id: str) -> None:
        await self.session(session_id).stop()

    async def seek_replay(self, session_id: str, ts: Any) -> None:
        await self.session(session_id).seek(parse_time(ts, "timestamp"))

    def get_replay_status(self, session_id: str) -> ReplayStatus:
        session = self.session(session_id)
        session.touched = self.clock()
        return session.status()

    # --- the rest ------------------------------------------------------------------------------------
    def session(self, session_id: str) -> ReplaySession:
        """The session (its ``bus`` is what subscribers read); ``ReplayNotFound`` if unknown or reaped."""
        self.reap()
        session = self._sessions.get(session_id)
        if session is None:
            raise ReplayNotFound(f"no replay session {session_id!r}")
        return session

    def active_count(self) -> int:
        """Sessions active now (created, running or paused); a read, nothing reaped (the metrics ask it)."""
        return sum(1 for s in self._sessions.values() if s.active)

    def sessions(self) -> list[ReplaySession]:
        """Every session held (active, or ended and not yet reaped)."""
        self.reap()
        return list(self._sessions.values())

    def reap(self) -> list[str]:
        """Forget sessions idle for ``replay_idle_ttl``: ended, untouched, or blocked on a reader that left."""
        now, ttl = self.clock(), self.settings.replay_idle_ttl
        gone = []
        for sid, s in list(self._sessions.items()):
            if s.state == ReplayState.RUNNING:
                blocked = s.bus.blocked_since
                idle = blocked is not None and now - blocked > ttl
            else:
                idle = now - s.touched > ttl
            if idle:
                gone.append(sid)
                del self._sessions[sid]
                task = s.abandon(f"reaped after {ttl:g} s idle")
                if task is not None:  # cancelled; kept until it is done so that aclose can await it
                    self._reaping.add(task)
                    task.add_done_callback(self._reaping.discard)
                log.info("replay_reaped", replay_id=sid, state=s.state.value)
        return gone

    async def aclose(self) -> None:
        """Stop every session (each ends its subscribers' streams). Idempotent."""
        self._closed = True
        sessions, self._sessions = list(self._sessions.values()), {}
        await asyncio.gather(*(s.aclose() for s in sessions), *self._reaping, return_exceptions=True)

    # --- validation ----------------------------------------------------------------------------------
    def _exchanges(self, values: Sequence[str] | None) -> tuple[str, ...] | None:
        if not values:
            return None
        names = tuple(dict.fromkeys(EXCHANGE_ALIASES.get(v.strip().lower(), v.strip().lower()) for v in values))
        unknown = [n for n in names if n not in self.settings.exchanges]
        if unknown:
            raise InvalidReplayRequest(f"unknown exchange(s) {', '.join(unknown)}; configured: "
                                       f"{', '.join(self.settings.exchanges)}")
        return names

    def _symbols(self, values: Sequence[str] | None) -> tuple[str, ...] | None:
        if not values:
            return None
        names = tuple(dict.fromkeys(v.strip().upper().replace("/", "-") for v in values))
        unknown = [n for n in names if n not in self.settings.symbols]
        if unknown:
            raise InvalidReplayRequest(f"unknown symbol(s) {', '.join(unknown)}; configured: "
                                       f"{', '.join(self.settings.symbols)}")
        return names

    @staticmethod
    def _channels(values: Sequence[str] | None) -> tuple[str, ...] | None:
        if not values:
            return None
        names = tuple(dict.fromkeys(v.strip() for v in values))
        unknown = [n for n in names if n.split(":", 1)[0] not in CHANNEL_KINDS]
        if unknown:
            raise InvalidReplayRequest(f"unknown channel(s) {', '.join(unknown)}; kinds: {', '.join(CHANNEL_KINDS)}")
        return names


def check_speed(value: Any) -> float:
    """A replay speed: a finite number >= 0 (0: as fast as the consumer reads)."""
    if isinstance(value, bool):
        raise InvalidReplayRequest(f"speed must be a number >= 0, got {value!r}")
    try:
        speed = float(value)
    except (TypeError, ValueError):
        raise InvalidReplayRequest(f"speed must be a number >= 0, got {value!r}") from None
    if not math.isfinite(speed) or speed < 0:
        raise InvalidReplayRequest(f"speed must be a finite number >= 0, got {value!r}")
    return speed
