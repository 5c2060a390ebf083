"""The simulator's market model: real instruments, one fair value per symbol, thin markets, trade history;
and ``coby run`` / ``coby simulate`` refusing a port already in use with one line.

Everything here runs on a fake clock (no sockets, except the CLI tests' one listening socket), in seconds.
"""

from __future__ import annotations

import heapq
import random
import socket

import pytest
from typer.testing import CliRunner

from coby.cli import app
from coby.instruments import SYMBOLS, decimals, precision, spec
from coby.simulator.fair import FairValue
from coby.simulator.market import HISTORY, Market
from coby.simulator.venues import ALL_EXCHANGES
from coby.symbols import SymbolMap
from coby.collector.venues import VENUES, preset_market


def test_instruments_span_btc_to_sub_cent_assets_with_each_venues_tick_and_lot() -> None:
    """At least 20 symbols incl. BTC, ETH, SOL, XRP, DOGE and assets under 0.001 with 1e-8 ticks; every
    venue's tick and lot are exact powers of ten (bitfinex: five significant digits) and the connectors'
    preset markets carry the same precision."""
    assert len(SYMBOLS) >= 20
    assert {"BTC-USDT", "ETH-USDT", "SOL-USDT", "XRP-USDT", "DOGE-USDT"} <= set(SYMBOLS)
    cheap = [s for s, sp in SYMBOLS.items() if sp.price <= 0.001]
    assert cheap and all(precision("binance", s)[0] == 1e-8 for s in cheap)
    assert any(0.0002 <= SYMBOLS[s].price <= 0.0004 for s in cheap)
    assert any(sp.illiquid for sp in SYMBOLS.values())
    assert precision("okx", "BTC-USDT") == (0.1, 1e-8) and precision("binance", "BTC-USDT") == (0.01, 1e-5)
    assert precision("bitfinex", "BTC-USDT")[0] == 1.0 and precision("bitfinex", "SHIB-USDT")[0] == 1e-9
    for exchange in ALL_EXCHANGES:
        for symbol in SYMBOLS:
            tick, lot = precision(exchange, symbol)
            for step in (tick, lot):
                assert step == 10.0 ** -decimals(step) or step >= 1, (exchange, symbol, step)
            market = preset_market(VENUES[exchange], SymbolMap().market(exchange, symbol))
            if exchange != "bitfinex":  # bitfinex's precision mode is significant digits
                assert (market["precision"]["price"], market["precision"]["amount"]) == (tick, lot)


def offline_run(symbol: str, seconds: float, rate: float = 10.0, seed: int = 1) -> tuple[int, int, float]:
    """All ten venues of ``symbol`` on one fair value and a fake clock; the consolidated book (each venue's
    book as delivered 2-30 ms after its update) sampled every 500 ms. Returns (ticks, crossed, worst bp)."""
    now = [1_800_000_000_000]
    fair = FairValue(symbol, spec(symbol), seed)
    markets = {ex: Market(ex, symbol, seed=seed, clock=lambda: now[0], fair=fair) for ex in ALL_EXCHANGES}
    per_s = rate * spec(symbol).activity
    rng = random.Random(seed)
    due = {ex: now[0] + rng.uniform(0, 1000 / per_s) for ex in markets}
    seen = {ex: (m.best_bid, m.best_ask) for ex, m in markets.items()}
    pending: list[tuple[float, str, float, float]] = []
    end, sample_at = now[0] + seconds * 1000, now[0] + 500
    ticks = crossed = 0
    worst = 0.0
    while now[0] < end:
        ex = min(due, key=due.__getitem__)
        while sample_at <= due[ex]:
            while pending and pending[0][0] <= sample_at:
                _, who, bid, ask = heapq.heappop(pending)
                seen[who] = (bid, ask)
            best_bid, best_ask = max(b for b, _ in seen.values()), min(a for _, a in seen.values())
            ticks += 1
            if best_bid > best_ask:
                crossed += 1
                worst = max(worst, (best_bid - best_ask) / best_ask * 1e4)
            sample_at += 500
        now[0] = int(due[ex])
        markets[ex].step()
        heapq.heappush(pending, (due[ex] + rng.uniform(2, 30), ex, markets[ex].best_bid, markets[ex].best_ask))
        due[ex] += rng.uniform(0.8, 1.2) * 1000 / per_s
    return ticks, crossed, worst


@pytest.mark.parametrize("symbol", ["BTC-USDT", "FLOKI-USDT", "KSM-USDT"])
def test_venues_follow_one_fair_value_so_the_consolidated_book_is_rarely_crossed(symbol: str) -> None:
    """Ten venues with their own lag, basis and tick, one fair value: over 3 simulated minutes the
    consolidated book is crossed in at most 5 % of 500 ms ticks, by at most a few basis points."""
    ticks, crossed, worst = offline_run(symbol, 180)
    assert ticks >= 350
    assert crossed / ticks <= 0.05 and worst <= 5.0, (crossed, ticks, worst)


def test_the_fair_value_moves_and_every_venue_follows_it() -> None:
    """The fair value moves (a few bp a minute); each venue's mid stays within a few half-spreads of it."""
    now = [0]
    fair = FairValue("ETH-USDT", spec("ETH-USDT"), 3)
    markets = [Market(ex, "ETH-USDT", seed=3, clock=lambda: now[0], fair=fair) for ex in ALL_EXCHANGES]
    start = fair.at(0)
    far = 0.0
    for step in range(1, 1200):  # 2 minutes at 10 updates/s
        now[0] = step * 100
        for m in markets:
            m.step()
            far = max(far, abs(m.mid / fair.at(now[0]) - 1) * 1e4)
    assert fair.at(now[0]) != start
    assert far < 4 * spec("ETH-USDT").half_spread_bp + 2


def test_a_thin_market_trades_minutes_apart_and_keeps_a_thin_book() -> None:
    """KSM-USDT at the default rate: one book update a second, a trade every minute or more, ~60-100 levels."""
    s = spec("KSM-USDT")
    assert s.illiquid and s.trade_interval_s(10.0) >= 60
    now = [0]
    market = Market("okx", "KSM-USDT", seed=2, clock=lambda: now[0])
    trades = 0
    for second in range(3600):  # one simulated hour, 10 * activity = 1 update a second
        now[0] = second * 1000
        trades += len(market.step().trades)
    assert 3600 / max(trades, 1) >= 60
    assert 50 <= len(market.bids) <= 120


def test_market_history_is_older_than_the_start_and_ends_where_live_ids_begin() -> None:
    """A market starts with HISTORY trades made before it, seconds (busy) to minutes (quiet) old, ids just
    below its first live trade's."""
    for symbol, oldest_s in (("BTC-USDT", 5), ("KSM-USDT", 600)):
        market = Market("coinbase", symbol, seed=4, clock=lambda: 1_800_000_000_000)
        hist = market.history
        assert len(hist) == HISTORY
        assert [t.ts_ms for t in hist] == sorted(t.ts_ms for t in hist)
        assert 1_800_000_000_000 - hist[-1].ts_ms >= 5_000
        assert 1_800_000_000_000 - hist[0].ts_ms >= oldest_s * 1000
        first_live = next(t for _ in range(200) for t in market.step().trades)
        assert [t.trade_id for t in hist] == list(range(first_live.trade_id - HISTORY, first_live.trade_id))


# ------------------------------------------------------------------------------ ports


@pytest.fixture
def taken_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.parametrize(("flag", "other", "names"), [
    ("--simulator-port", "--port", ("simulator_port", "--simulator-port", "COBY_SIMULATOR_PORT")),
    ("--port", "--simulator-port", ("api_port", "--port", "API_PORT")),
])
def test_run_simulate_on_a_port_in_use_prints_one_line_and_exits_2(taken_port: int, flag: str, other: str,
                                                                   names: tuple[str, ...], tmp_path) -> None:
    """``coby run --simulate`` with the API's or the simulator's port taken: one line naming the port and
    how to change it, exit code 2, no traceback."""
    result = CliRunner().invoke(app, ["run", "--simulate", flag, str(taken_port), other, "0",
                                      "--db", f"sqlite:///{tmp_path}/x.db", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(taken_port) in lines[0] and all(n in lines[0] for n in names), result.output
    assert "Traceback" not in result.output


def test_simulate_command_on_a_port_in_use_exits_2(taken_port: int) -> None:
    """``coby simulate --port N`` with N taken: one line, exit 2."""
    result = CliRunner().invoke(app, ["simulate", "--port", str(taken_port)])
    assert result.exit_code == 2 and str(taken_port) in result.output and len(result.output.strip().splitlines()) == 1
