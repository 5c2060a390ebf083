"""The event loop ``coby run`` runs on (the ``event_loop`` setting): uvloop or the standard library's.

uvloop is libuv's event loop behind asyncio's interface: the same coroutines, tasks and futures, with the
loop's own work - polling sockets, reading them into the protocols (aiohttp's WebSocket reader under every
ccxt.pro client), scheduling callbacks and timers - in C. Measured (docs/benchmarks.md, sixth and seventh
rounds): the daemon's CPU per venue message 1.26-1.33 x ccxt.pro alone against 1.34-1.46 x on asyncio, in
paired rounds; fan-out to 200 WebSocket clients (measured with the clients in two processes, 7 pairs):
consolidated p99 median 52.0 ms against 59.4, and less CPU. (With the clients in one process, whose own lag
was most of the figure, uvloop had looked a few ms slower.) So ``auto`` runs uvloop for every role where it
is installed; ``asyncio`` keeps the standard library's loop. Nothing in coby depends on which loop runs;
uvloop has no Windows build, and ``auto`` falls back to asyncio where it is not installed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from coby.errors import ConfigError

T = TypeVar("T")


def choose(setting: str) -> str:
    """The loop ``setting`` ("auto", "uvloop" or "asyncio") stands for here: "uvloop" or "asyncio"."""
    if setting == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if setting == "uvloop":
            raise ConfigError("event_loop: uvloop is not installed (pip install uvloop, or set COBY_EVENT_LOOP="
                              "asyncio)") from None
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T], setting: str = "auto") -> T:
    """``asyncio.run(main)`` on the loop ``setting`` chooses."""
    if choose(setting) == "uvloop":
        import uvloop
        return uvloop.run(main)
    return asyncio.run(main)


def running() -> str:
    """The name of the running loop's kind, for status: "uvloop" or "asyncio"."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
