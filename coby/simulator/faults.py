"""Fault injection for the simulator: the names, what each does, and what a client sees.

Inject with ``Simulator.inject(exchange, fault, **params)`` or
``POST /_sim/fault/{exchange}`` with ``{"fault": "<name>", ...params}``. Every
one-shot fault accepts an optional ``symbol`` (canonical, e.g. ``"BTC-USDT"``);
without it the fault hits the first matching message of any watched symbol. A venue that
cannot express a fault rejects it with :class:`UnsupportedFault` (HTTP 400).

``drop``
    Every WebSocket of the venue is closed now (close code 1001). ccxt: pending
    watch futures reject with ``NetworkError``; the next ``watch_*`` opens a new
    connection, resubscribes and gets a fresh snapshot.
``stall`` (``seconds``, default 10)
    Connections stay open and new ones are accepted, but nothing is sent on any of
    them for ``seconds``: no data, no acks, no pongs. Frames produced meanwhile are
    discarded, not delayed. ccxt: ``watch_*`` simply does not resolve; venues with
    app-level pings raise ``RequestTimeout`` once ``keepAlive * 2`` passes (kraken
    12 s, mexc 16 s, okx/bybit 36 s). After the stall, sequence-checked venues see a
    gap (binance ``ChecksumError``, okx ``InvalidNonce``); the others (bybit, kraken,
    coinbase) silently keep a stale book -> a staleness watchdog must reconnect.
``gap`` (sequenced protocols)
    The next book delta is not sent, so its sequence number is skipped. binance:
    ``ChecksumError``, recovered by the next ``watch_order_book`` (new snapshot).
    okx: ``InvalidNonce``, recovered by the next ``watch_order_book`` (resubscribe).
    bybit and coinbase: ccxt ignores ``u``/``sequence_num``, so the book silently
    diverges from the true book until the client reconnects.
``bad_checksum`` (protocols that carry one)
    The next book message carries a wrong checksum (the book content is right).
    okx and kraken: ccxt 4.5.90 does not check it (kraken's check is off by default
    and crashes when turned on), so nothing visible happens; bitfinex: ccxt raises
    ``ChecksumError``.
``malformed``
    One frame that is not valid for the protocol (by default truncated JSON) is sent
    now to every connection of the venue. ccxt 4.5.90 parses JSON frames without a
    guard, so the parse error escapes its receive loop ("Exception in callback" in
    the asyncio log) and the loop dies: no ``watch_*`` on that connection resolves
    again and nothing raises. Only ``await ex.close()`` (or a watchdog doing it) and
    a new watch recover. Keepalive may eventually notice (kraken 12 s, okx 36 s).
``crossed``
    A book delta with a bid strictly above the best ask, not applied to the true
    book, then at once a delta deleting it. ccxt applies both: for a moment the
    client's book is crossed, then it equals the true book again. A normaliser
    should reject the crossed state.
``duplicate_trade``
    The venue's last trade is sent again with the same id. binance, okx, bybit,
    kraken: ccxt passes it through, ``watch_trades`` holds it twice (dedup is the
    consumer's job); coinbase: ccxt's trade cache is keyed by id, so it is replaced.
``drop_book`` / ``drop_trades`` (venues whose book and trades can run on separate connections: htx, gate)
    Every connection of the venue carrying a book (``drop_book``) or a trade
    (``drop_trades``) subscription is closed now (close code 1001); connections
    carrying only the other kind stay open and keep delivering, as when one of a
    real venue's services restarts. A connection carrying both is closed (the
    venue cannot split it): a client that multiplexes both streams on one
    connection loses both, one that gives each its own connection loses one.
``burst`` (``count``, default 1000)
    ``count`` market updates per market of the venue (or of ``symbol``) are made and
    sent as fast as the clients take them (paced so no client queue overflows, but
    for at most 2 s in all: a client that stops reading is then disconnected).
    Runs even while frozen. ccxt coalesces: ``watch_order_book`` wakes far fewer
    times than messages arrive, and the book must still equal the true book after.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

ONE_SHOT = frozenset({"gap", "bad_checksum", "duplicate_trade", "crossed", "malformed"})
#: Every fault name the simulator knows.
ALL_FAULTS = frozenset({"drop", "stall", "burst", "drop_book", "drop_trades"}) | ONE_SHOT
#: Faults every venue honours (the framework implements them).
GENERIC_FAULTS = frozenset({"drop", "stall", "malformed", "crossed", "duplicate_trade", "burst"})


class UnsupportedFault(ValueError):
    """The fault is unknown, or the venue's protocol cannot express it."""


@dataclass(slots=True)
class FaultState:
    """Per-venue fault flags: one-shot faults armed until taken, and a stall deadline."""

    armed: dict[str, list[str | None]] = field(default_factory=dict)  # fault -> symbols (None = any)
    stall_until: float = 0.0

    def arm(self, fault: str, symbol: str | None = None) -> None:
        self.armed.setdefault(fault, []).append(symbol)

    def take(self, fault: str, symbol: str) -> bool:
        """True once per arming: the caller must now misbehave for ``symbol``."""
        pending = self.armed.get(fault)
        if not pending:
            return False
        for i, wanted in enumerate(pending):
            if wanted is None or wanted == symbol:
                del pending[i]
                return True
        return False

    def stall(self, seconds: float) -> None:
        self.stall_until = time.monotonic() + seconds

    @property
    def stalled(self) -> bool:
        return self.stall_until > 0.0 and time.monotonic() < self.stall_until

    def clear(self) -> None:
        self.armed.clear()
        self.stall_until = 0.0


def fault_params(params: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """Split the optional ``symbol`` from the other parameters of a fault."""
    rest = dict(params)
    symbol = rest.pop("symbol", None)
    return (str(symbol) if symbol is not None else None), rest
