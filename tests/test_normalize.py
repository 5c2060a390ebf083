"""DataProcessor: ccxt-shaped dicts -> models, and every reject reason counted, never returned."""

from __future__ import annotations

import math
from array import array

import pytest
from ccxt.async_support.base.ws.order_book import CountedOrderBook, OrderBook

from coby.errors import ValidationError
from coby.metrics import REJECTS
from coby.models import Levels, OrderBookSnapshot, PriceLevel, TradeEvent, utc_from_ms
from coby.collector.normalize import DataProcessor

NOW = 1_800_000_000.0  # the fake wall clock, seconds
NOW_MS = int(NOW * 1000)


def processor(**kw) -> DataProcessor:
    return DataProcessor(clock=lambda: NOW, reject_log_interval=0.0, **kw)


def book(bids=((100.0, 1.0), (99.0, 2.0)), asks=((101.0, 1.5), (102.0, 3.0)), ts=NOW_MS, nonce=7) -> dict:
    return {"bids": [list(b) for b in bids], "asks": [list(a) for a in asks], "timestamp": ts, "nonce": nonce}


def trade(tid="1", price=100.5, amount=0.25, side="buy", ts=NOW_MS, info=None) -> dict:
    return {"id": tid, "price": price, "amount": amount, "side": side, "timestamp": ts, "info": info or {}}


def rejects(exchange: str, reason: str) -> float:
    return REJECTS.labels(exchange, reason)._value.get()


def test_orderbook_normalised_to_snapshot():
    """A ccxt book becomes a snapshot: levels best first, exchange time, nonce as sequence id."""
    snap = processor().normalize_orderbook(book(), "binance", "BTC-USDT")
    assert isinstance(snap, OrderBookSnapshot)
    assert snap.bids == (PriceLevel(100.0, 1.0), PriceLevel(99.0, 2.0))
    assert snap.asks[0] == PriceLevel(101.0, 1.5)
    assert snap.timestamp == utc_from_ms(NOW_MS) and snap.sequence_id == 7
    assert snap.received_at == utc_from_ms(NOW_MS)


def test_only_top_depth_levels_are_converted():
    """A 1000-level ccxt book yields ``depth`` levels a side."""
    bids = [(1000.0 - i, 1.0) for i in range(1000)]
    asks = [(1001.0 + i, 1.0) for i in range(1000)]
    snap = processor().normalize_orderbook(book(bids, asks), "okx", "BTC-USDT", depth=20)
    assert len(snap.bids) == len(snap.asks) == 20 and snap.bids[-1].price == 981.0


def test_book_sides_are_held_as_columns():
    """Each side is a Levels: two array('d') columns, no object per level, read as PriceLevels."""
    snap = processor().normalize_orderbook(book(bids=((100.0, 1.0), (99, 5))), "okx", "BTC-USDT")
    assert isinstance(snap.bids, Levels) and snap.bids.prices == array("d", [100.0, 99.0])
    assert snap.bids.sizes == array("d", [1.0, 5.0]) and snap.bids.counts is None
    assert list(snap.bids) == [PriceLevel(100.0, 1.0), PriceLevel(99.0, 5.0)]
    assert snap.bids == (PriceLevel(100.0, 1.0), PriceLevel(99.0, 5.0)) and snap.bids[:1] == [PriceLevel(100.0, 1.0)]
    assert type(snap.bids[1].price) is float


@pytest.mark.parametrize("levels, reason, detail", [
    (((100.0, 1.0), (99.0, "5")), "schema", "level 99.0 x '5'"),
    (((100.0, 1.0), (99.0,)), "schema", "is not [price, size]"),
    (((100.0, 1.0), (99.0, 0.0)), "range", "level 99.0 x 0.0"),
    (((100.0, 1.0), (99.0, math.nan)), "range", "level 99.0 x nan"),
    (((100.0, 1.0), (-99.0, 1.0)), "range", "level -99.0 x 1.0"),
    (((1e308, 1.0), (1e308, 1.0)), "range", "out of range"),
])
def test_a_bad_level_anywhere_in_a_side_is_named(levels, reason, detail):
    """The column checks catch a bad level in any position and the error names it."""
    with pytest.raises(ValidationError) as err:
        processor().normalize_orderbook(book(bids=levels), "okx", "BTC-USDT")
    assert err.value.reason == reason and detail in str(err.value)


def test_counted_book_keeps_order_counts():
    """bitfinex's counted book carries the order count of each level."""
    raw = CountedOrderBook({"bids": [[100.0, 1.0, 3]], "asks": [[101.0, 2.0, 1]], "timestamp": NOW_MS})
    snap = processor().normalize_orderbook(raw, "bitfinex", "BTC-USDT")
    assert snap.bids[0] == PriceLevel(100.0, 1.0, 3)


def test_third_item_that_is_not_a_count_is_ignored():
    """kucoin's [price, size, sequence] levels (mixed with 2-item ones) normalise without a count."""
    raw = OrderBook({"bids": [[100.0, 1.0], [99.0, 1.0, 12345]], "asks": [[101.0, 2.0, 12346]]})
    snap = processor().normalize_orderbook(raw, "kucoin", "BTC-USDT")
    assert snap.bids[1] == PriceLevel(99.0, 1.0) and snap.asks[0].count is None


def test_book_without_timestamp_uses_receive_time():
    snap = processor().normalize_orderbook(book(ts=None), "bybit", "BTC-USDT")
    assert snap.timestamp == snap.received_at


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"asks": []}, "schema"),
        (book(bids=((None, 1.0),)), "schema"),
        (book(bids=(("100", 1.0),)), "schema"),
        (book(ts="yesterday"), "schema"),
        (book(bids=((100.0, -1.0),)), "range"),
        (book(bids=((0.0, 1.0),)), "range"),
        (book(asks=((math.nan, 1.0),)), "range"),
        (book(asks=((math.inf, 1.0),)), "range"),
        (book(bids=()), "empty_book"),
        (book(bids=((102.5, 1.0),)), "crossed_book"),
        (book(bids=((101.0, 1.0),)), "locked_book"),
        (book(ts=NOW_MS + 60_000), "future_timestamp"),
        (book(ts=NOW_MS - 7_200_000), "old_timestamp"),
    ],
)
def test_bad_books_are_rejected_and_counted_by_reason(raw, reason):
    """Each reject reason: None is returned, the reason is counted in REJECTS and the status counts."""
    p = processor()
    exchange = f"test-book-{reason}"
    before = rejects(exchange, reason)
    assert p.process_orderbook(raw, exchange, "BTC-USDT") is None
    assert rejects(exchange, reason) == before + 1
    assert p.reject_counts(exchange) == {reason: 1}


def test_future_skew_within_tolerance_is_accepted():
    p = processor(max_future_skew=5.0)
    assert p.process_orderbook(book(ts=NOW_MS + 4_000), "binance", "BTC-USDT") is not None


def test_trade_normalised_and_validated():
    p = processor()
    [t] = p.process_trades([trade()], "binance", "BTC-USDT")
    assert t == TradeEvent("BTC-USDT", "binance", utc_from_ms(NOW_MS), 100.5, 0.25, "buy", "1", utc_from_ms(NOW_MS))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"price": 1.0}, "schema"),
        (trade(price=None), "schema"),
        (trade(side="long"), "schema"),
        (trade(ts=None), "schema"),
        (trade(price=-5.0), "range"),
        (trade(amount=0.0), "range"),
        (trade(amount=math.nan), "range"),
        (trade(ts=NOW_MS + 60_000), "future_timestamp"),
        (trade(ts=NOW_MS - 7_200_000), "old_timestamp"),
    ],
)
def test_bad_trades_are_rejected_and_counted(raw, reason):
    p = processor()
    exchange = f"test-trade-{reason}"
    assert p.process_trades([raw, trade(tid="ok")], exchange, "BTC-USDT")[0].trade_id == "ok"
    assert p.reject_counts(exchange) == {reason: 1}


def test_duplicate_trade_ids_are_rejected_per_symbol():
    """A trade id seen before for the same (exchange, symbol) is a duplicate; another symbol is not."""
    p = processor()
    assert len(p.process_trades([trade(tid="9")], "okx", "BTC-USDT")) == 1
    assert p.process_trades([trade(tid="9")], "okx", "BTC-USDT") == []
    assert len(p.process_trades([trade(tid="9")], "okx", "ETH-USDT")) == 1
    assert p.reject_counts("okx") == {"duplicate_trade": 1}


def test_trade_id_memory_is_bounded():
    """Only the last ``trade_id_memory`` ids are remembered."""
    p = processor(trade_id_memory=3)
    for i in range(5):
        p.process_trades([trade(tid=str(i))], "gate", "BTC-USDT")
    assert len(p._trade_ids[("gate", "BTC-USDT")]) == 3
    assert len(p.process_trades([trade(tid="0")], "gate", "BTC-USDT")) == 1  # forgotten, so accepted


def test_htx_trade_id_comes_from_the_raw_trade_id():
    """htx: ccxt's parsed ``id`` is a mangled 24-digit number; the raw ``tradeId`` is the key."""
    p = processor()
    raws = [trade(tid="1.0211234567890124e+23", info={"tradeId": 101}),
            trade(tid="1.0211234567890124e+23", info={"tradeId": 102})]
    assert [t.trade_id for t in p.process_trades(raws, "htx", "BTC-USDT")] == ["101", "102"]


def test_trades_without_id_get_a_synthetic_one():
    """mexc aggregated deals have no id: identical deals in one batch stay apart, a resent batch is a duplicate."""
    p = processor()
    batch = [trade(tid=None), trade(tid=None)]
    assert len(p.process_trades(batch, "mexc", "BTC-USDT")) == 2
    assert p.process_trades(batch, "mexc", "BTC-USDT") == []
    assert p.reject_counts("mexc") == {"duplicate_trade": 2}


def test_validate_data_checks_any_snapshot_fully():
    """validate_data also checks levels it did not build (e.g. replayed rows)."""
    p = processor()
    ts = utc_from_ms(NOW_MS)
    good = OrderBookSnapshot("BTC-USDT", "x", ts, (PriceLevel(1.0, 1.0),), (PriceLevel(2.0, 1.0),))
    bad = OrderBookSnapshot("BTC-USDT", "x", ts, (PriceLevel(1.0, -1.0),), (PriceLevel(2.0, 1.0),))
    assert p.validate_data(good) and not p.validate_data(bad)
    assert not p.validate_data("not an item")  # type: ignore[arg-type]


def test_metrics_mid_spread_and_volumes():
    snap = processor().normalize_orderbook(book(), "binance", "BTC-USDT")
    m = processor().calculate_metrics(snap)
    assert (m.mid_price, m.spread, m.bid_volume, m.ask_volume) == (100.5, 1.0, 3.0, 4.5)
    assert (m.best_bid, m.best_ask) == (100.0, 101.0)
    with pytest.raises(ValidationError):
        processor().calculate_metrics(OrderBookSnapshot("B-Q", "x", snap.timestamp, (), snap.asks))


def test_reject_log_is_rate_limited(monkeypatch):
    """At most one log line per (exchange, reason) per interval; the rest are counted as suppressed."""
    p = DataProcessor(clock=lambda: NOW, reject_log_interval=3600.0)
    lines = []
    monkeypatch.setattr("coby.collector.normalize.log.warning", lambda *a, **kw: lines.append(kw))
    for _ in range(50):
        p.process_orderbook(book(bids=()), "kraken", "BTC-USDT")
    assert len(lines) == 1 and p.reject_counts("kraken") == {"empty_book": 50}
