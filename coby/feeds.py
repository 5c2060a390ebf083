"""The units a connector is made of: feeds (one ccxt client each, guarded) and streams (one watch loop each).

A :class:`Feed` owns one unmodified ccxt.pro client and wraps it, once, with:

* a **frame guard** on every connection the client opens: ccxt lets exceptions
  from JSON parsing and from its handlers escape its receive loop, which then
  dies silently and the watch hangs (wire notes, section 5). The guard catches
  them and hands them to the connector (``on_frame_error``) instead;
* the venue's **sequence check** (``Venue.gap_check``) where ccxt has none: a gap
  marks the symbol's book bad, and its stream resyncs on the next wake-up.

``gen`` counts the feed's clients: anything belonging to an older client (a late
frame, a failure caused by our own recycle) is recognised and ignored.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
import zlib
from collections.abc import Callable
from typing import Any

import structlog

from coby.models import OrderBookSnapshot
from coby.resilience import Backoff
from coby.venues import Venue

log = structlog.get_logger("coby.exchanges")

# Raised while decoding a frame, before any handler saw it: the frame can simply be dropped.
PARSE_ERRORS: tuple[type[BaseException], ...] = (json.JSONDecodeError, UnicodeDecodeError, zlib.error, EOFError,
                                                 OSError)
try:
    from google.protobuf.message import DecodeError as _ProtoDecodeError

    PARSE_ERRORS += (_ProtoDecodeError,)
except ImportError:  # pragma: no cover - protobuf is a dependency
    pass

class Callbacks:
    """The connector's consumers, sync or async; one that raises is logged (rate-bounded), never fatal."""

    def __init__(self, exchange: str, log_interval: float) -> None:
        self._callbacks: list[tuple[Callable[[Any], Any], bool]] = []
        self._exchange, self._interval = exchange, log_interval
        self._logged_at, self._suppressed = float("-inf"), 0

    def add(self, callback: Callable[[Any], Any]) -> None:
        self._callbacks.append((callback, inspect.iscoroutinefunction(callback)))

    async def __call__(self, item: Any) -> None:
        for callback, is_async in self._callbacks:
            try:
                result = callback(item)
                if is_async or (result is not None and hasattr(result, "__await__")):
                    await result
            except Exception as exc:  # noqa: BLE001 - a consumer's bug never kills the feed
                now = time.monotonic()
                if now - self._logged_at >= self._interval:
                    log.error("callback_failed", exchange=self._exchange, callback=repr(callback)[:120],
                              error=repr(exc)[:300], item=type(item).__name__, suppressed=self._suppressed)
                    self._logged_at, self._suppressed = now, 0
                else:
                    self._suppressed += 1


FrameErrorHandler = Callable[["Feed", int, Any, Exception], None]


class Feed:
    """One ccxt client serving some symbols of a venue."""

    def __init__(self, index: int, venue: Venue) -> None:
        self.index = index
        self.venue = venue
        self.client: Any = None
        self.gen = 0
        self.markets: dict[str, dict[str, Any]] = {}
        self.symbol_by_id: dict[str, str] = {}
        self.streams: list[Stream] = []
        self.gap_state: dict[Any, Any] = {}
        self.bad_books: set[str | None] = set()  # symbols (None: all) whose book a sequence check found bad

    def open_client(self, build: Callable[[], Any], on_frame_error: FrameErrorHandler) -> Any:
        """The current client, built and guarded if there is none."""
        if self.client is None:
            self.client = build()
            self.gap_state, self.bad_books = {}, set()
            self._guard(self.client, self.gen, on_frame_error)
        return self.client

    def drop_client(self) -> Any:
        """Forget the current client (the caller closes it); whatever it still does is ignored."""
        self.gen += 1
        old, self.client = self.client, None
        return old

    def _guard(self, ex: Any, gen: int, on_frame_error: FrameErrorHandler) -> None:
        make_client = ex.client

        def client(url: str) -> Any:
            c = make_client(url)
            if c is not None and not getattr(c, "_coby_guarded", False):
                c._coby_guarded = True
                handle = c.handle_message

                def guarded(message: Any) -> None:
                    try:
                        handle(message)
                    except Exception as exc:  # noqa: BLE001 - must not escape: it kills ccxt's receive loop
                        on_frame_error(self, gen, c, exc)

                c.handle_message = guarded
            return c

        ex.client = client  # ccxt calls self.client(url) for every connection it opens
        if self.venue.gap_check is not None:
            name, check = self.venue.gap_check
            inner, state = getattr(ex, name), self.gap_state

            def checked(ws: Any, message: Any) -> Any:
                hit = check(state, ws, message)
                if hit is not None and self.gen == gen:
                    mid, detail = hit
                    self.bad_books.add(self.symbol_by_id.get(mid) if mid is not None else None)
                    log.warning("sequence_gap", exchange=self.venue.name, market=mid, detail=detail)
                return inner(ws, message)

            setattr(ex, name, checked)  # looked up on the instance when ccxt creates a connection


BOOK, TRADES = "book", "trades"  # the kinds of Stream


class Stream:
    """One watch loop: the book or the trades of one symbol, and where it stands."""

    def __init__(self, kind: str, symbol: str, unified: str, feed: Feed, backoff: Backoff, now: float) -> None:
        self.kind, self.symbol, self.unified, self.feed, self.backoff = kind, symbol, unified, feed, backoff
        self.task: asyncio.Task[None] | None = None
        self.gen = -1  # the feed generation of the current attempt
        self.watching = False  # awaiting ccxt: the only state the watchdog interrupts
        self.attempt_at = now
        self.last_progress = float("-inf")
        self.live = False  # delivered since the last (re)connect
        self.ever = False  # delivered at least once
        self.cause: Exception | None = None  # why the current gap started
        self.interrupt: Exception | None = None  # set by whoever cancels the task to interrupt a watch
        self.failed: str | None = None  # permanent error: the stream stopped
        self.last_key: tuple[Any, Any] = (None, None)
        self.latest: OrderBookSnapshot | None = None
        self.raw: Any = None  # ccxt's (live, mutated in place) book held back by book_emit_interval
        self.pending = False
        self.next_emit = float("-inf")
