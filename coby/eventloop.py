"""The event loop ``coby run`` runs on (the ``event_loop`` setting): uvloop or the standard library's.

uvloop is libuv's event loop behind asyncio's interface: the same coroutines, tasks and futures, with the
loop's own work - polling sockets, reading them into the protocols (aiohttp's WebSocket reader under every
ccxt.pro client), scheduling callbacks and timers - in C. At the rates users run, that work is a sixth of the
daemon's samples, and uvloop takes about a tenth off coby's CPU per message (docs/benchmarks.md, issue 16).
Nothing in coby depends on which loop runs; ``auto`` falls back to asyncio where uvloop is not installed
(it has no Windows build).
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
