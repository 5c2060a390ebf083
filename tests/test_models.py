"""Levels: a book side held as columns that reads as a sequence of PriceLevels."""

from __future__ import annotations

import pickle
from array import array
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from coby import codec
from coby.models import ConsolidatedLevel, ConsolidatedOrderBook, Levels, MergedLevels, OrderBookSnapshot, PriceLevel

T0 = datetime(2024, 3, 1, tzinfo=timezone.utc)


def test_levels_read_as_price_levels():
    """Indexing, iteration, slicing and len behave as on the tuple of PriceLevels it replaces."""
    levels = Levels([100.0, 99.5, 99.0], [1.0, 2.0, 3.0])
    as_tuple = (PriceLevel(100.0, 1.0), PriceLevel(99.5, 2.0), PriceLevel(99.0, 3.0))
    assert len(levels) == 3 and bool(levels) and not Levels()
    assert levels[0] == as_tuple[0] and levels[-1] == as_tuple[-1] and list(levels) == list(as_tuple)
    assert isinstance(levels[1:], Levels) and levels[1:] == as_tuple[1:] and levels[:0] == ()
    assert levels == as_tuple and as_tuple == levels and levels == list(as_tuple) and hash(levels) == hash(as_tuple)
    assert levels != as_tuple[:2] and levels != Levels([100.0, 99.5, 99.0], [1.0, 2.0, 4.0])
    assert PriceLevel(99.5, 2.0) in levels and levels.index(PriceLevel(99.0, 3.0)) == 2
    with pytest.raises(IndexError):
        levels[3]


def test_levels_are_columns_of_doubles():
    """prices and sizes are array('d'); numbers of any numeric type become floats."""
    levels = Levels.of([(100, 1), PriceLevel(99.5, 2.0)])
    assert levels.prices == array("d", [100.0, 99.5]) and levels.sizes == array("d", [1.0, 2.0])
    assert type(levels[0].price) is float and levels.counts is None
    assert levels.pairs() == [(100.0, 1.0), (99.5, 2.0)]


def test_counts_are_kept_apart_and_all_none_counts_are_dropped():
    """Order counts (bitfinex) are kept beside the levels; the wire form stays [price, size]."""
    counted = Levels.of([(100.0, 1.0, 3), (99.0, 2.0, 1)])
    assert counted.counts == (3, 1) and counted[1] == PriceLevel(99.0, 2.0, 1)
    assert counted.pairs() == [(100.0, 1.0), (99.0, 2.0)] and counted[:1].counts == (3,)
    assert counted.count_list() == [3, 1] and Levels.of([(1.0, 1.0)]).count_list() == [None]
    assert Levels.of([PriceLevel(1.0, 1.0), PriceLevel(0.5, 1.0)]).counts is None


def test_mismatched_columns_are_refused():
    with pytest.raises(ValueError, match="2 prices but 1 sizes"):
        Levels([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="counts"):
        Levels([1.0], [1.0], (1, 2))
    with pytest.raises(TypeError):
        Levels(["1.0"], [1.0])


def test_a_snapshot_converts_any_side_to_levels():
    """A snapshot given tuples of PriceLevels or rows holds Levels; equality and hashing follow."""
    bids = (PriceLevel(100.0, 1.0), PriceLevel(99.0, 2.0))
    a = OrderBookSnapshot("BTC-USDT", "binance", T0, bids, [(101.0, 1.5)])
    b = OrderBookSnapshot("BTC-USDT", "binance", T0, Levels.of(bids), Levels([101.0], [1.5]))
    assert type(a.bids) is Levels and type(a.asks) is Levels
    assert a == b and hash(a) == hash(b) and a.best_bid == 100.0 and a.best_ask == 101.0
    assert replace(a, bids=a.bids[:1]).bids == bids[:1]
    empty = OrderBookSnapshot("BTC-USDT", "binance", T0, (), ())
    assert empty.best_bid is None and empty.best_ask is None


def test_levels_survive_pickle_and_json():
    """Pickled (a process pool, a cache) and through coby's JSON codec, as the API and client use it."""
    snap = OrderBookSnapshot("BTC-USDT", "bitfinex", T0, Levels.of([(100.0, 1.0, 2)]), Levels([101.0], [0.25]))
    assert pickle.loads(pickle.dumps(snap)) == snap
    data = codec.to_dict(snap)
    assert data["bids"] == [[100.0, 1.0]] and data["asks"] == [[101.0, 0.25]]
    assert (data["bid_counts"], data["ask_counts"]) == ([2], [None])
    back = codec.from_dict(OrderBookSnapshot, data)
    assert back == snap and type(back.bids) is Levels
    assert codec.to_dict(snap.asks) == [[101.0, 0.25]]


# --- MergedLevels: a consolidated side as columns -----------------------------------------------------

def merged() -> MergedLevels:
    """Bids of binance, okx and kraken merged: 100 (binance 1, okx 3), 99 (okx 2; kraken lists it twice)."""
    return MergedLevels([100.0, 99.0], [4.0, 3.5], ["binance", "okx", "kraken"], [0, 1, 1, 2, 2],
                        [1.0, 3.0, 2.0, 1.0, 0.5], [0, 2, 5])


def test_merged_levels_read_as_consolidated_levels():
    side = merged()
    expected = (ConsolidatedLevel(100.0, 4.0, {"binance": 1.0, "okx": 3.0}),
                ConsolidatedLevel(99.0, 3.5, {"okx": 2.0, "kraken": 1.5}))
    assert side == expected and tuple(side) == expected and list(side) == list(expected)
    assert len(side) == 2 and side[0] == expected[0] and side[-1] == expected[1] and side[:1] == expected[:1]
    assert [lv.price for lv in side] == [100.0, 99.0]
    with pytest.raises(IndexError):
        side[2]
    with pytest.raises(TypeError):
        hash(side)  # as a tuple of ConsolidatedLevels (each holds a dict)
    assert MergedLevels([], [], [], [], [], [0]) == ()


def test_merged_levels_make_no_level_until_one_is_read():
    """The tick leaves its consolidated sides in columns: one level is made for the best, all of them
    once (kept) when anything reads them all."""
    side = merged()
    assert side._levels is None
    assert side[0].venues == {"binance": 1.0, "okx": 3.0} and side._levels is None
    assert side[1] == side[-1] == ConsolidatedLevel(99.0, 3.5, {"okx": 2.0, "kraken": 1.5}) and side._levels is None
    levels = side.levels()
    assert side.levels() is levels and side[1] is levels[1]


def test_merged_levels_encode_as_consolidated_levels_did():
    """One JSON form: a consolidated side encodes to the same bytes as the tuple of ConsolidatedLevels it
    reads as, and decodes back to MergedLevels."""
    side = merged()
    assert codec.dumps(side) == codec.dumps(tuple(side))
    assert codec.to_dict(side)[1] == {"price": 99.0, "size": 3.5, "venues": {"okx": 2.0, "kraken": 1.5}}
    book = ConsolidatedOrderBook("BTC-USDT", T0, side, MergedLevels.of(()), 100.0, "okx", None, None, False,
                                 ("binance", "kraken", "okx"))
    back = codec.from_dict(ConsolidatedOrderBook, codec.to_dict(book))
    assert back == book and type(back.bids) is MergedLevels and type(back.asks) is MergedLevels
    assert pickle.loads(pickle.dumps(book)) == book


def test_a_consolidated_book_converts_any_side_to_merged_levels():
    levels = (ConsolidatedLevel(101.0, 2.0, {"okx": 2.0}),)
    book = ConsolidatedOrderBook("BTC-USDT", T0, [], levels, None, None, 101.0, "okx", False, ("okx",))
    assert type(book.bids) is MergedLevels and type(book.asks) is MergedLevels
    assert book.asks == levels and book.bids == () and MergedLevels.of(book.asks) is book.asks
    assert MergedLevels.of([{"price": 101, "size": 2, "venues": {"okx": 2}}]) == levels


def test_mismatched_merged_columns_are_refused():
    with pytest.raises(ValueError, match="merged levels"):
        MergedLevels([100.0], [1.0, 2.0], ["okx"], [0], [1.0], [0, 1])
    with pytest.raises(ValueError, match="merged levels"):
        MergedLevels([100.0], [1.0], ["okx"], [0], [1.0], [0, 2])  # rows do not cover the levels
