"""The event loop ``coby run`` runs on (the ``event_loop`` setting): uvloop or the standard library's.

uvloop is libuv's event loop behind asyncio's interface: the same coroutines, tasks and futures, with the
loop's own work - polling sockets, reading them into the protocols (aiohttp's WebSocket reader under every
ccxt.pro client), scheduling callbacks and timers - in C. Measured (docs/benchmarks.md, sixth round): it took
0-14 % off the CPU per venue message, but with 200 WebSocket clients its fan-out was slower (trades
p99 52-67 ms against 40-43 on asyncio, in three paired runs; seventh round, 17 runs: consolidated p99
median 53.5 ms against 47.3). So ``auto`` runs uvloop where nobody is served
- a ``collector`` (connectors, aggregation, storage; no API clients) - and asyncio for the roles that serve
clients (``all``, ``api``); ``uvloop`` or ``asyncio`` choose for every role. Nothing in coby depends on which
loop runs; uvloop has no Windows build, and ``auto`` falls back to asyncio where it is not installed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from coby.errors import ConfigError

T = TypeVar("T")


def choose(setting: str, role: str = "all") -> str:
    """The loop ``setting`` ("auto", "uvloop" or "asyncio") stands for in a process of ``role``: "uvloop" or
    "asyncio"."""
    if setting == "asyncio" or (setting == "auto" and role != "collector"):
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if setting == "uvloop":
            raise ConfigError("event_loop: uvloop is not installed (pip install uvloop, or set COBY_EVENT_LOOP="
                              "asyncio)") from None
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T], setting: str = "auto", role: str = "all") -> T:
    """``asyncio.run(main)`` on the loop ``setting`` chooses for ``role``."""
    if choose(setting, role) == "uvloop":
        import uvloop
        return uvloop.run(main)
    return asyncio.run(main)


def running() -> str:
    """The name of the running loop's kind, for status: "uvloop" or "asyncio"."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
