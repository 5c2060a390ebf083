"""OHLCV bars from trades: closing on time, grace for late trades, per venue and consolidated."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coby.models import TradeEvent, to_ms
from coby.aggregate.ohlcv import TIMEFRAMES, OHLCVBuilder

UTC = timezone.utc
T0 = datetime(2024, 3, 1, tzinfo=UTC)  # a day boundary


def trade(seconds: float, price: float, size: float = 1.0, side: str = "buy", exchange: str = "binance",
          symbol: str = "BTC-USDT", base: datetime = T0) -> TradeEvent:
    return TradeEvent(symbol=symbol, exchange=exchange, timestamp=base + timedelta(seconds=seconds), price=price,
                      size=size, side=side, trade_id=f"{exchange}-{seconds}-{price}")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def bars_by(bars, timeframe: str, exchange: str | None = "binance"):
    return [b for b in bars if b.timeframe == timeframe and b.exchange == exchange]


def test_bar_closes_on_its_boundary_plus_grace_without_another_trade():
    """A 1s bar is returned by advance() once now >= its end + grace, though no later trade came."""
    builder = OHLCVBuilder(timeframes=["1s"], grace=0.5)
    builder.add(trade(0.2, 100.0))
    builder.add(trade(0.7, 102.0))
    assert builder.advance(at(1.499)) == []
    (consolidated, venue) = sorted(builder.advance(at(1.5)), key=lambda b: b.exchange or "")
    assert consolidated.exchange is None and venue.exchange == "binance"
    assert (venue.open, venue.high, venue.low, venue.close, venue.volume, venue.trade_count) == \
        (100.0, 102.0, 100.0, 102.0, 2.0, 2)
    assert venue.timestamp == T0 and venue.closed
    assert builder.advance(at(10)) == []  # each bar is returned once


def test_late_trade_within_grace_updates_its_open_bar():
    """A trade for a bar whose end has passed, but not by more than the grace, is applied to it."""
    builder = OHLCVBuilder(timeframes=["1s"], grace=2.0)
    builder.add(trade(0.1, 100.0))
    assert builder.advance(at(2.5)) == []  # 1s bar [0, 1) ended 1.5 s ago: still open
    assert builder.add(trade(0.9, 90.0, size=3.0, side="sell")) is True
    (bar,) = bars_by(builder.advance(at(3.0)), "1s")
    assert (bar.low, bar.close, bar.volume, bar.sell_volume, bar.trade_count) == (90.0, 90.0, 4.0, 3.0, 2)
    assert builder.late_trades == 0


def test_trade_later_than_grace_is_counted_and_applied_nowhere():
    """Once a trade's finest bar has closed, add() returns False, counts it, and no timeframe gets it."""
    builder = OHLCVBuilder(timeframes=["1s", "1m"], grace=1.0)
    builder.add(trade(0.5, 100.0))
    closed = builder.advance(at(2.0))
    assert [b.timeframe for b in bars_by(closed, "1s")] == ["1s"]
    assert builder.add(trade(0.6, 500.0, exchange="okx")) is False
    assert builder.late_trades == 1 and builder.late_by_exchange == {"okx": 1}
    minute = builder.advance(at(62.0))
    assert {(b.exchange, b.high, b.volume) for b in minute} == {("binance", 100.0, 1.0), (None, 100.0, 1.0)}


def test_trades_minutes_late_are_folded_into_their_closed_bars_within_the_repair_window():
    """Trades minutes older than the open bar (a venue's snapshot of recent trades on subscribe) are
    folded into their closed bars of every timeframe, per venue and consolidated, when within the
    repair window: take_repaired() returns each changed bar once, as it now stands; the open hour
    includes them. Trades before the window are counted late and applied nowhere."""
    late = []
    builder = OHLCVBuilder(timeframes=["1s", "1m", "1h"], grace=2.0, repair_window=600,
                           on_late=lambda ex, repaired: late.append((ex, repaired)))
    builder.add(trade(1.5, 100.0))
    builder.advance(at(5))  # the first horizon
    builder.add(trade(70.25, 101.0, size=2.0))
    closed = builder.advance(at(400))
    assert {(b.timeframe, b.exchange, b.volume) for b in closed} >= {("1m", "binance", 1.0), ("1m", "binance", 2.0)}
    # 3-4 minutes late: into the 1s and 1m bars already closed, and the open hour
    assert builder.add(trade(70.5, 99.0, size=4.0, side="sell", exchange="coinbase")) is True
    assert builder.add(trade(70.75, 102.0, size=8.0, exchange="binance")) is True
    assert builder.add(trade(180.0, 98.0, size=16.0, exchange="coinbase")) is True
    repaired = {(b.timeframe, b.exchange, b.timestamp): b for b in builder.take_repaired()}
    assert builder.take_repaired() == []  # each change returned once
    assert all(b.closed for b in repaired.values())
    minute = repaired[("1m", None, at(60))]
    assert (minute.open, minute.high, minute.low, minute.close, minute.volume, minute.trade_count) == \
        (101.0, 102.0, 99.0, 102.0, 14.0, 3)
    assert (minute.buy_volume, minute.sell_volume) == (10.0, 4.0)
    assert repaired[("1m", "binance", at(60))].volume == 10.0
    assert repaired[("1m", "coinbase", at(60))].volume == 4.0
    assert repaired[("1s", "coinbase", at(180))].volume == 16.0  # a second with no trade until now
    assert ("1h", None, T0) not in repaired  # the hour is still open: it simply includes them
    (hour,) = [b for b in builder.open_bars() if b.timeframe == "1h" and b.exchange is None]
    assert (hour.volume, hour.trade_count, hour.low) == (31.0, 5, 98.0)
    # beyond the window (and before the first horizon): counted, applied nowhere
    builder.advance(at(1000))
    assert builder.add(trade(100.0, 1.0, exchange="coinbase")) is False
    assert builder.take_repaired() == []
    assert (builder.repaired_trades, builder.repaired_by_exchange) == (3, {"coinbase": 2, "binance": 1})
    assert (builder.late_trades, builder.late_by_exchange) == (1, {"coinbase": 1})
    assert late == [("coinbase", True), ("binance", True), ("coinbase", True), ("coinbase", False)]
    (hour,) = [b for b in builder.advance(at(3700)) if b.timeframe == "1h" and b.exchange is None]
    assert (hour.volume, hour.trade_count) == (31.0, 5)


def test_trades_before_the_first_horizon_are_never_repaired():
    """A bar from before the builder's first close horizon may have been stored by an earlier process
    with trades this one never saw: a late trade for it is counted, not made into a bar."""
    builder = OHLCVBuilder(timeframes=["1s", "1m"], grace=1.0, repair_window=3600)
    builder.advance(at(300))
    assert builder.add(trade(250.0, 100.0)) is False and builder.late_trades == 1
    builder.advance(at(310))
    assert builder.add(trade(305.0, 100.0)) is True and builder.repaired_trades == 1


def test_empty_intervals_emit_no_bar():
    """Seconds without trades produce no 1s bar: the series has gaps, not invented flat bars."""
    builder = OHLCVBuilder(timeframes=["1s"], grace=0.0, consolidated=False)
    builder.add(trade(0.5, 100.0))
    builder.add(trade(5.5, 101.0))
    bars = builder.advance(at(60))
    assert [b.timestamp for b in bars] == [at(0), at(5)]


def test_bars_align_to_utc_epoch_boundaries():
    """4h bars start at 00/04/08.. UTC, 1d bars at midnight UTC, 15m at quarter hours."""
    base = datetime(2024, 3, 1, 13, 37, 12, tzinfo=UTC)
    builder = OHLCVBuilder(timeframes=["15m", "4h", "1d"], grace=0.0, consolidated=False)
    builder.add(trade(0, 100.0, base=base))
    bars = {b.timeframe: b.timestamp for b in builder.advance(base + timedelta(days=2))}
    assert bars == {"15m": datetime(2024, 3, 1, 13, 30, tzinfo=UTC), "4h": datetime(2024, 3, 1, 12, tzinfo=UTC),
                    "1d": datetime(2024, 3, 1, tzinfo=UTC)}


def test_open_and_close_follow_trade_time_not_arrival_order():
    """Open is the earliest trade by timestamp (ties: first received), close the latest."""
    builder = OHLCVBuilder(timeframes=["1m"], grace=5.0, consolidated=False)
    builder.add(trade(30, 103.0))
    builder.add(trade(10, 101.0))   # arrives second, happened first
    builder.add(trade(50, 104.0))
    builder.add(trade(50, 105.0))   # same time as the previous: received later, so it closes
    (bar,) = builder.advance(at(120))
    assert (bar.open, bar.close, bar.high, bar.low) == (101.0, 105.0, 105.0, 101.0)


def test_vwap_and_buy_sell_volume():
    """vwap = sum(price*size)/volume; buy/sell volume split by the taker side."""
    builder = OHLCVBuilder(timeframes=["1m"], grace=0.0, consolidated=False)
    builder.add(trade(1, 100.0, size=1.0, side="buy"))
    builder.add(trade(2, 110.0, size=3.0, side="sell"))
    (bar,) = builder.advance(at(60))
    assert bar.vwap == pytest.approx((100.0 + 330.0) / 4.0)
    assert (bar.buy_volume, bar.sell_volume) == (1.0, 3.0)


def test_consolidated_bar_merges_venues():
    """The consolidated bar (exchange None) covers every venue's trades of the symbol."""
    builder = OHLCVBuilder(timeframes=["1m"], grace=0.0)
    builder.add(trade(1, 100.0, size=1.0, exchange="binance"))
    builder.add(trade(2, 99.0, size=2.0, exchange="okx"))
    builder.add(trade(3, 98.0, size=5.0, symbol="ETH-USDT", exchange="okx"))
    bars = builder.advance(at(60))
    (btc,) = [b for b in bars if b.exchange is None and b.symbol == "BTC-USDT"]
    assert (btc.open, btc.close, btc.low, btc.volume, btc.trade_count) == (100.0, 99.0, 99.0, 3.0, 2)
    assert len(bars) == 5  # binance BTC, okx BTC, okx ETH, consolidated BTC and ETH


def test_open_bars_shows_bars_in_progress():
    """open_bars() returns the bars not yet closed, marked closed=False, including pending trades."""
    builder = OHLCVBuilder(timeframes=["1m", "1h"], consolidated=False)
    builder.add(trade(5, 100.0))
    bars = builder.open_bars()
    assert {(b.timeframe, b.closed, b.volume) for b in bars} == {("1m", False, 1.0), ("1h", False, 1.0)}


def test_advance_uses_the_injected_clock():
    """Without an explicit now, advance() asks the clock it was given."""
    now = [at(0)]
    builder = OHLCVBuilder(timeframes=["1s"], grace=0.0, consolidated=False, clock=lambda: now[0])
    builder.add(trade(0.5, 100.0))
    assert builder.advance() == []
    now[0] = at(1)
    assert len(builder.advance()) == 1


def test_rejects_unknown_timeframes():
    """Timeframes come from the fixed set 1s..1d."""
    with pytest.raises(ValueError, match="unknown timeframe"):
        OHLCVBuilder(timeframes=["2m"])


# --- property: every timeframe equals an independent reference over the same trades -------------

def reference_bars(accepted: list[tuple[int, TradeEvent]], timeframes) -> dict:
    """Plain-Python OHLCV over (arrival order, trade) pairs: key -> (o, h, l, c, v, n, vwap, buy, sell)."""
    groups: dict = {}
    for seq, t in accepted:
        ts = to_ms(t.timestamp)
        for tf in timeframes:
            ms = TIMEFRAMES[tf]
            start = ts - ts % ms
            for exchange in (t.exchange, None):
                groups.setdefault((tf, t.symbol, exchange, start), []).append((ts, seq, t))
    out = {}
    for key, items in groups.items():
        items.sort(key=lambda x: (x[0], x[1]))
        prices = [t.price for _, _, t in items]
        volume = sum(t.size for _, _, t in items)
        out[key] = (prices[0], max(prices), min(prices), prices[-1], volume, len(items),
                    sum(t.price * t.size for _, _, t in items) / volume,
                    sum(t.size for _, _, t in items if t.side == "buy"),
                    sum(t.size for _, _, t in items if t.side == "sell"))
    return out


trade_ops = st.tuples(st.just("trade"), st.integers(0, 3 * 3600 * 1000), st.integers(1, 10_000),
                      st.integers(1, 1000), st.sampled_from(["buy", "sell"]),
                      st.sampled_from(["binance", "okx", "kraken"]), st.sampled_from(["BTC-USDT", "ETH-USDT"]))
advance_ops = st.tuples(st.just("advance"), st.integers(0, 3 * 3600 * 1000 + 10_000))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.one_of(trade_ops, trade_ops, advance_ops), max_size=60), grace_ms=st.integers(0, 5000),
       base_ms=st.sampled_from([0, 22 * 3600 * 1000, 86_400_000 - 1]))
def test_every_timeframe_equals_a_reference_over_the_accepted_trades(ops, grace_ms, base_ms):
    """Whatever the arrival order and advance() calls, the bars emitted for each timeframe equal a
    plain-Python OHLCV over exactly the trades add() accepted; the rest are counted late. Before the
    last advance(), open_bars() shows exactly the reference's bars not emitted yet."""
    base = T0 - timedelta(days=1) + timedelta(milliseconds=base_ms)
    builder = OHLCVBuilder(grace=grace_ms / 1000)
    accepted, emitted, total = [], [], 0
    clock = base
    for op in ops:
        if op[0] == "trade":
            _, ms, price, size, side, exchange, symbol = op
            t = TradeEvent(symbol=symbol, exchange=exchange, timestamp=base + timedelta(milliseconds=ms),
                           price=price / 10, size=size / 100, side=side, trade_id=str(total))
            total += 1
            if builder.add(t):
                accepted.append((len(accepted), t))
        else:
            clock = max(clock, base + timedelta(milliseconds=op[1]))
            bars = builder.advance(clock)
            limit = to_ms(clock) - grace_ms
            assert all(to_ms(b.timestamp) + TIMEFRAMES[b.timeframe] <= limit for b in bars)
            emitted += bars
    want = reference_bars(accepted, TIMEFRAMES)
    still_open = builder.open_bars()
    assert not any(b.closed for b in still_open)
    assert builder.open_bars(consolidated_only=True) == [b for b in still_open if b.exchange is None]
    assert_equal_to_reference(still_open, {k: v for k, v in want.items() if k not in as_dict(emitted)})
    emitted += builder.advance(base + timedelta(days=3))
    assert builder.late_trades + len(accepted) == total
    assert len(as_dict(emitted)) == len(emitted)  # no bar emitted twice
    assert_equal_to_reference(emitted, want)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.one_of(trade_ops, trade_ops, advance_ops), max_size=60), grace_ms=st.integers(0, 5000),
       window_ms=st.sampled_from([1000, 60_000, 1_800_000]), base_ms=st.sampled_from([0, 86_400_000 - 1]))
def test_with_repair_the_last_version_of_every_bar_equals_the_reference(ops, grace_ms, window_ms, base_ms):
    """With a repair window, whatever the arrival order: the last version of each bar emitted (closed,
    then repaired) equals a plain-Python OHLCV over exactly the trades add() accepted - now including
    those repaired in - and every trade is accepted or counted late, once."""
    base = T0 - timedelta(days=1) + timedelta(milliseconds=base_ms)
    builder = OHLCVBuilder(grace=grace_ms / 1000, repair_window=window_ms / 1000)
    accepted, final, total = [], {}, 0
    clock = base
    for op in ops:
        if op[0] == "trade":
            _, ms, price, size, side, exchange, symbol = op
            t = TradeEvent(symbol=symbol, exchange=exchange, timestamp=base + timedelta(milliseconds=ms),
                           price=price / 10, size=size / 100, side=side, trade_id=str(total))
            total += 1
            if builder.add(t):
                accepted.append((len(accepted), t))
        else:
            clock = max(clock, base + timedelta(milliseconds=op[1]))
            for b in builder.advance(clock) + builder.take_repaired():
                final[(b.timeframe, b.symbol, b.exchange, to_ms(b.timestamp))] = b
    for b in builder.advance(base + timedelta(days=3)) + builder.take_repaired():
        final[(b.timeframe, b.symbol, b.exchange, to_ms(b.timestamp))] = b
    assert builder.late_trades + builder.repaired_trades + (len(accepted) - builder.repaired_trades) == total
    assert_equal_to_reference(list(final.values()), reference_bars(accepted, TIMEFRAMES))


def as_dict(bars) -> dict:
    return {(b.timeframe, b.symbol, b.exchange, to_ms(b.timestamp)):
            (b.open, b.high, b.low, b.close, b.volume, b.trade_count, b.vwap, b.buy_volume, b.sell_volume)
            for b in bars}


def assert_equal_to_reference(bars, want: dict) -> None:
    got = as_dict(bars)
    assert got.keys() == want.keys()
    for key, values in want.items():
        assert got[key][5] == values[5]
        assert all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(got[key], values)), key
