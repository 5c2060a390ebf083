"""Every venue serves the new instruments through unmodified ccxt.pro and coby's connectors: sub-cent
prices with 1e-8 to 1e-10 ticks, venue ids with long codes (bitfinex ``tFLOKI:UST``, kraken ``XDG``) and
a thin market; each venue's book in coby equals the simulator's true book."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
import pytest_asyncio

from coby.config import Settings
from coby.exchanges import ExchangeConnector
from coby.simulator import Simulator
from coby.simulator.venues import ALL_EXCHANGES
from simulator_fixtures import poll

SYMBOLS = ("DOGE-USDT", "SHIB-USDT", "FLOKI-USDT", "XTZ-USDT")
amod = pytest.mark.asyncio(loop_scope="module")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def live(tmp_path_factory: pytest.TempPathFactory):
    """All ten venues x four new symbols, one connector per venue watching the books."""
    sim = Simulator(exchanges=ALL_EXCHANGES, symbols=SYMBOLS, port=free_port(), rate=10.0, seed=9)
    await sim.start()
    s = Settings.load(env={}, exchange_urls={"*": sim.url}, data_dir=str(tmp_path_factory.mktemp("instr")),
                      log_level="WARNING", book_emit_interval=0.0)
    conns = {v: ExchangeConnector(v, s, lambda item: None) for v in ALL_EXCHANGES}
    for c in conns.values():
        await c.connect()
        for sym in SYMBOLS:
            await c.subscribe_orderbook(sym)
    try:
        yield sim, conns
    finally:
        await asyncio.gather(*(c.disconnect() for c in conns.values()))
        await sim.aclose()


@amod
async def test_every_venue_books_of_the_new_instruments_equal_the_true_books(live: Any) -> None:
    """With the market frozen, coby's latest book of each (venue, symbol) holds the true top 10 levels,
    prices exact on the venue's tick."""
    sim, conns = live
    pairs = [(ex, sym) for ex in ALL_EXCHANGES for sym in SYMBOLS]
    try:
        await poll(lambda: all(conns[ex].latest_book(sym) is not None for ex, sym in pairs), 30)
    except AssertionError:
        missing = [(ex, sym) for ex, sym in pairs if conns[ex].latest_book(sym) is None]
        raise AssertionError(f"no book from {missing}: {[conns[ex].get_connection_status() for ex, _ in missing[:3]]}")
    sim.freeze()
    try:
        def top(ex: str, sym: str) -> tuple[list[Any], list[Any]]:
            b = conns[ex].latest_book(sym)
            return ([(p, s) for p, s in zip(b.bids.prices[:10], b.bids.sizes[:10])],
                    [(p, s) for p, s in zip(b.asks.prices[:10], b.asks.sizes[:10])])

        def differing() -> list[tuple[str, str]]:
            return [(ex, sym) for ex, sym in pairs if top(ex, sym) != sim.true_book(ex, sym, 10)]

        await poll(lambda: not differing(), 10)
        for ex, sym in pairs:
            tick = sim.markets[ex, sym].tick
            assert all(abs(p / tick - round(p / tick)) < 1e-6 for side in top(ex, sym) for p, _ in side), (ex, sym)
    finally:
        sim.unfreeze()
