"""Gap filling (coby.backfill) against the simulator's REST trade history, with unmodified ccxt.

Each test runs a daemon on the simulator (SQLite in a fresh file, one symbol, fast trades), breaks a
venue's trade stream the way the simulator's faults do, and then compares the stored trades of the
market with the simulator's own record of every trade it made (``Market.trades``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest

from coby.daemon import Daemon
from coby.models import OHLCVBar
from coby.ohlcv import OHLCVBuilder
from coby.simulator.venues._ids import uuid_id
from tests.conftest import make_settings

SYMBOL = "BTC-USDT"


def _wire_id(exchange: str, trade) -> str:
    return uuid_id(SYMBOL, trade.trade_id) if exchange == "bybit" else str(trade.trade_id)


async def _daemon(tmp_path, exchanges, **kw) -> Daemon:
    settings = make_settings(tmp_path, db_url=f"sqlite:///{tmp_path / 'coby.sqlite3'}", simulate=True,
                             simulator_port=0, api_port=0, exchanges=tuple(exchanges), symbols=(SYMBOL,),
                             backoff_initial=0.5, ohlcv_grace=0.5, **kw)
    d = Daemon(settings)
    await d.start()
    d.simulator.set_rate(40.0)
    return d


async def _until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"not in time: {what}"
        await asyncio.sleep(0.2)


async def _stored(d: Daemon, exchange: str) -> list:
    await d.storage.flush()
    return [t for t in await d.storage.get_trades(SYMBOL, exchange=exchange, limit=100_000)]


async def _gap_events(d: Daemon, exchange: str) -> list:
    await d.storage.flush()
    return [e for e in await d.storage.get_connection_events(exchange=exchange)
            if e.event in ("gap_closed", "gap_narrowed")]


async def _has_trades(d: Daemon, exchanges) -> bool:
    for ex in exchanges:
        if len(await _stored(d, ex)) < 5:
            return False
    return True


def _assert_equal_to_simulator(d: Daemon, exchange: str, stored: list) -> None:
    """Every trade the simulator made between the first and last stored trade is stored, once."""
    ids = [t.trade_id for t in stored]
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    assert not dupes, f"{exchange}: duplicated {dupes[:5]}"
    lo = min(round(t.timestamp.timestamp() * 1000) for t in stored)
    hi = max(round(t.timestamp.timestamp() * 1000) for t in stored)
    made = {_wire_id(exchange, t) for t in d.simulator.market(exchange, SYMBOL).trades if lo <= t.ts_ms <= hi}
    missing = made - set(ids)
    assert not missing, f"{exchange}: {len(missing)} of {len(made)} trades missing"


@pytest.mark.parametrize("exchange", ["binance", "okx", "bybit"])
async def test_a_dropped_trade_stream_is_filled_from_history_closed(tmp_path, exchange):
    """After the venue drops every connection (trades made meanwhile never sent), the stored trades of the
    market equal the simulator's full list for the period (0 missing, 0 duplicated), the gap's event says
    gap_closed with the count, and status counts it."""
    d = await _daemon(tmp_path, [exchange])
    try:
        await _until(lambda: _has_trades(d, [exchange]), 20, "first trades")
        d.simulator.venues[exchange].faults.stall(1.5)  # trades made in these 1.5 s are never sent ...
        await asyncio.sleep(1.5)
        await d.simulator.inject(exchange, "drop")  # ... and the connection drops: a gap to fill

        async def filled() -> bool:
            return bool(await _gap_events(d, exchange))
        await _until(filled, 20, "the gap's outcome")
        await asyncio.sleep(1.0)  # more live trades after the fill
        events = await _gap_events(d, exchange)
        assert [e.event for e in events] == ["gap_closed"], events
        recovered = int(events[0].detail.split()[1])
        assert recovered > 0, events[0].detail
        _assert_equal_to_simulator(d, exchange, await _stored(d, exchange))
        assert d.backfill.status()[exchange] == {"closed": 1, "narrowed": 0, "trades": recovered}
    finally:
        await d.stop()
