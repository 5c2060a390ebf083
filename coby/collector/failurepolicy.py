"""The connectors' failure policy (:mod:`coby.exchanges`): what a stream's delivery, failure, stall or quiet
trades mean for its circuit breaker, its backoff and the venue's connection events; and what an exception
the frame guard caught (:mod:`coby.collector.feeds`) means for the connection.

A mixin of :class:`~coby.exchanges.ExchangeConnector`, which owns the state it reads: ``exchange``,
``venue``, ``processor``, ``_breakers``, ``_pool``, ``_resumed``, ``_clock``, ``_sleep``, ``_log``,
``_error``, ``_reconnects`` and ``_event``. The policy itself is described in the connector's docstring.
"""

from __future__ import annotations

from typing import Any

from coby.collector.ccxterrors import translate_frame_error
from coby.errors import BookOutOfSync, ExchangeError, PermanentExchangeError, QuietTrades, StaleFeed, \
    TemporaryExchangeError
from coby.collector.feeds import BOOK, TRADES, Feed, Stream
from coby.metrics import CIRCUIT_OPEN, RECONNECTS, RESYNCS
from coby.models import ConnectionEventKind
from coby.collector.resilience import CircuitState


class FailurePolicy:
    """Breakers, backoff and events of a connector's streams; the frame guard's verdicts."""

    exchange: str
    venue: Any
    processor: Any
    _breakers: dict[str, Any]
    _pool: Any
    _resumed: list[Any]
    _clock: Any
    _sleep: Any
    _log: Any
    _error: str | None
    _reconnects: int

    async def _delivered(self, st: Stream) -> None:
        """Bookkeeping of a stream that got data: success for the breaker, events after a gap."""
        breaker = self._breakers[st.kind]
        if breaker.failures or breaker.state is not CircuitState.CLOSED:
            if breaker.record_success(st) is CircuitState.CLOSED:
                self._circuit_gauge()
                await self._event(ConnectionEventKind.CIRCUIT_CLOSED, None, f"{st.kind}: probe succeeded")
        if st.live:
            return
        st.live = True
        st.backoff.reset()
        if st.kind == TRADES:
            for resumed in self._resumed:
                resumed(self.exchange, st.symbol, not st.ever, st.ever and st.cause is None)
        if st.ever and st.cause is None:
            return  # back after resubscribing quiet trades: there was no gap
        if not st.ever:
            st.ever = True
            await self._event(ConnectionEventKind.CONNECTED, st.symbol, st.kind)
        else:
            self._reconnects += 1
            RECONNECTS.labels(self.exchange).inc()
            if st.kind == BOOK and isinstance(st.cause, (BookOutOfSync, StaleFeed)):
                RESYNCS.labels(self.exchange).inc()
            await self._event(ConnectionEventKind.RESYNCED, st.symbol, f"{st.kind} after {st.cause}")
        st.cause = None

    async def _failed(self, st: Stream, err: ExchangeError) -> float | None:
        """Apply the failure policy; the delay before the next attempt, None if the stream must stop."""
        feed, own_incident = st.feed, st.gen == st.feed.gen
        if isinstance(err, QuietTrades):  # resubscribed by the watchdog, not failed: no event, no backoff
            st.live = False
            return 0.0
        self._error = str(err)
        if st.live:
            st.live = False
            st.cause = err
            await self._event(ConnectionEventKind.DISCONNECTED, st.symbol, f"{st.kind}: {err}")
        elif st.cause is None:
            st.cause = err
        if isinstance(err, PermanentExchangeError):
            st.failed = str(err)
            self._log.error("stream_failed_permanently", stream=st.kind, symbol=st.symbol, error=str(err))
            return None
        self._log.info("stream_failed", stream=st.kind, symbol=st.symbol, error=str(err), own=own_incident)
        if own_incident:
            local = getattr(err, "local", False)
            rewatch = (self.venue.book_recovery == "rewatch" and not local and not isinstance(err, StaleFeed)) or \
                (st.kind == TRADES and self.venue.trades_own_connection and not isinstance(err, StaleFeed))
            if not rewatch:
                self._pool.recycle(feed, err)
            await self._record_failure(st)
        return st.backoff.next_delay()

    async def _stalled(self, st: Stream, err: StaleFeed) -> None:
        """The watchdog's verdict: the stream goes stale and its feed is recycled (a failure for the breaker)."""
        if st.live:
            st.live, st.cause = False, err
            await self._event(ConnectionEventKind.STALE, st.symbol, f"{st.kind}: {err}")
        if st.gen == st.feed.gen:
            self._pool.recycle(st.feed, err)
            await self._record_failure(st)

    async def _quiet(self, st: Stream, err: QuietTrades) -> None:
        """The watchdog's verdict on quiet trades of a live book: resubscribe them (their feed alone)."""
        if st.gen == st.feed.gen:
            self._pool.recycle(st.feed, err)

    async def _record_failure(self, st: Stream) -> None:
        breaker = self._breakers[st.kind]
        if breaker.record_failure(self._clock(), st) is CircuitState.OPEN:
            self._circuit_gauge()
            self._log.warning("circuit_open", stream=st.kind, failures=breaker.threshold, cooldown=breaker.cooldown)
            for feed in self._pool.of_kind(st.kind):
                self._pool.recycle(feed, TemporaryExchangeError(self.exchange, f"{st.kind} circuit open"))
            await self._event(ConnectionEventKind.CIRCUIT_OPEN, None, f"{st.kind}: {self._error or ''}")

    def _circuit_gauge(self) -> None:
        is_open = any(b.state is not CircuitState.CLOSED for b in self._breakers.values())
        CIRCUIT_OPEN.labels(self.exchange).set(1 if is_open else 0)

    async def _gate(self, st: Stream) -> None:
        """Wait while the circuit of the stream's kind is open (the half-open probe goes through)."""
        while True:
            wait = self._breakers[st.kind].wait_time(self._clock(), st)
            if wait <= 0:
                return
            await self._sleep(min(wait, 1.0))

    # ---------------------------------------------------------- frame guard

    def _frame_failed(self, feed: Feed, gen: int, ws: Any, exc: Exception) -> None:
        if feed.gen != gen:
            return
        malformed, err = translate_frame_error(self.exchange, exc, self.venue.sequenced)
        if malformed is not None:
            self.processor.reject(self.exchange, None, "malformed", malformed)
        if err is not None:
            feed.torn += 1  # the handler stopped half-way: the books it was updating are not whole
            ws.reject(err)  # wakes every watcher of this connection into the failure policy
