"""``coby replay``: a stored range replayed to stdout as NDJSON, with a progress bar on stderr.

Each line is one envelope exactly as a WebSocket client would receive it (live's channel
names, ``"replay": id``). Writes to stdout are blocking: at speed 0 the replay runs as fast
as whatever reads the pipe. A reader that goes away (``| head``) ends the replay quietly.
"""

from __future__ import annotations

import os
import sys
import time
from typing import IO, Any, Sequence

from coby.config import Settings
from coby.models import ReplayState, ReplayStatus
from coby.replay import ReplayManager, parse_time


class ProgressBar:
    """One line on a terminal, redrawn at most ``hz`` times a second."""

    def __init__(self, stream: IO[str], width: int = 30, hz: float = 10.0) -> None:
        self.stream = stream
        self.width = width
        self.every = 1.0 / hz
        self._last = 0.0

    def update(self, st: ReplayStatus, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every:
            return
        self._last = now
        done = int(st.progress * self.width)
        at = st.position.strftime("%Y-%m-%dT%H:%M:%SZ") if st.position else "-"
        self.stream.write(f"\r[{'#' * done}{'.' * (self.width - done)}] {st.progress * 100:5.1f}%  {at}  "
                          f"{st.events_emitted:,} events")
        self.stream.flush()

    def close(self, st: ReplayStatus) -> None:
        self.update(st, force=True)
        self.stream.write("\n")
        self.stream.flush()


async def print_replay(settings: Settings, start: Any, end: Any, speed: float, *,
                       exchanges: Sequence[str] | None = None, symbols: Sequence[str] | None = None,
                       channels: Sequence[str] | None = None, out: IO[bytes] | None = None,
                       err: IO[str] | None = None) -> int:
    """Replay [start, end) from ``settings``' database to ``out``; returns the process exit code."""
    from coby.db import open_storage

    start, end = parse_time(start, "start"), parse_time(end, "end")  # refuse bad input before connecting
    out = out if out is not None else sys.stdout.buffer
    err = err if err is not None else sys.stderr
    storage = open_storage(settings)
    await storage.start()
    manager = ReplayManager(settings, storage)
    try:
        sid = manager.create_replay_session(start, end, speed, exchanges, symbols, channels)
        session = manager.session(sid)
        sub = session.bus.subscribe("*")
        bar = ProgressBar(err) if err.isatty() else None
        await manager.start_replay(sid)
        queue = sub.queue
        try:
            async for _, payload in sub:
                out.write(payload)
                out.write(b"\n")
                if speed or queue.empty():  # paced: each line when due; speed 0: whenever caught up
                    out.flush()
                if bar is not None:
                    bar.update(session.status())
            out.flush()
        except BrokenPipeError:  # the reader left: nothing more to do, and nothing to complain about
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        st = session.status()
        if bar is not None:
            bar.close(st)
        if st.state != ReplayState.FINISHED:
            err.write(f"coby: replay {st.state.value}: {st.error or ''}\n")
            return 1
        return 0
    finally:
        await manager.aclose()
        await storage.aclose()
