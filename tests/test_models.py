"""Levels: a book side held as columns that reads as a sequence of PriceLevels."""

from __future__ import annotations

import pickle
from array import array
from dataclasses import replace
from datetime import datetime, timezone

import pytest

from coby import codec
from coby.models import Levels, OrderBookSnapshot, PriceLevel

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
