"""The aggregation engine: buckets, heatmap, imbalance and the consolidated book, per tick."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coby.buckets import AggregationEngine, bucket_price
from coby.config import Settings
from coby.aggregate.heatmap import HeatmapSeries, intensities
from coby.models import OrderBookSnapshot, PriceBuckets, PriceLevel

UTC = timezone.utc
NOW = datetime(2024, 3, 1, 12, tzinfo=UTC)


def book(exchange: str, bids, asks, symbol: str = "BTC-USDT", age: float = 0.0,
         received_age: float | None = None) -> OrderBookSnapshot:
    ts = NOW - timedelta(seconds=age)
    return OrderBookSnapshot(
        symbol=symbol, exchange=exchange, timestamp=ts,
        bids=tuple(PriceLevel(p, s) for p, s in bids), asks=tuple(PriceLevel(p, s) for p, s in asks),
        received_at=None if received_age is None else NOW - timedelta(seconds=received_age))


def engine(**kw) -> AggregationEngine:
    kw.setdefault("clock", lambda: NOW)
    return AggregationEngine(**kw)


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


# --- bucket mapping ----------------------------------------------------------------------------

def test_bids_floor_and_asks_ceil_to_their_bucket():
    """With $10 buckets a 60005 bid is in the 60000 bucket and a 60006 ask in the 60010 bucket;
    a level on an edge stays on it."""
    assert bucket_price(60005.0, "bid", 10.0) == 60000.0
    assert bucket_price(60006.0, "ask", 10.0) == 60010.0
    assert bucket_price(60000.0, "bid", 10.0) == 60000.0
    assert bucket_price(60010.0, "ask", 10.0) == 60010.0


def test_bucket_edges_are_exact_decimals():
    """0.3 on a 0.1 grid is bucket 0.3 on both sides, though 0.3 / 0.1 < 3 in binary."""
    assert bucket_price(0.3, "bid", 0.1) == 0.3
    assert bucket_price(0.3, "ask", 0.1) == 0.3
    assert bucket_price(0.30000000000000004, "ask", 0.1) == 0.3


def test_create_price_buckets_sums_levels_per_bucket():
    """create_price_buckets sums sizes per bucket, keyed by edge, best bucket first."""
    b = book("binance", bids=[(60009.5, 1.0), (60001.0, 2.0), (59999.0, 4.0)], asks=[(60010.0, 1.5), (60010.5, 0.5)])
    pb = engine().create_price_buckets(b)
    assert pb.bucket_size == 10.0 and pb.exchange == "binance"
    assert pb.bid_buckets == {60000.0: 3.0, 59990.0: 4.0}
    assert list(pb.bid_buckets) == [60000.0, 59990.0]
    assert pb.ask_buckets == {60010.0: 1.5, 60020.0: 0.5}


def test_levels_out_of_order_still_land_in_their_buckets():
    """A book whose levels are not sorted (a feed bug) still has every level in its own bucket."""
    b = book("binance", bids=[(100.5, 1.0), (90.2, 2.0), (100.1, 3.0)], asks=[(111.0, 1.0), (101.0, 1.0), (112.0, 2.0)])
    eng = engine(bucket_size={"BTC": 10.0})
    pb = eng.create_price_buckets(b)
    assert pb.bid_buckets == {100.0: 4.0, 90.0: 2.0}
    assert pb.ask_buckets == {120.0: 3.0, 110.0: 1.0}
    eng.update_book(b)
    assert eng.tick(NOW).books["BTC-USDT"].best_bid == 100.5  # and the tick survives it


def test_bucket_size_comes_from_settings_per_symbol():
    """BTC uses $10, ETH $1 by default; a per-symbol setting overrides the base asset's."""
    eng = AggregationEngine.from_settings(Settings(bucket_sizes={"BTC": 10.0, "ETH": 1.0, "ETH-BTC": 0.0001}))
    assert (eng.bucket_size("BTC-USDT"), eng.bucket_size("ETH-USDT"), eng.bucket_size("ETH-BTC")) == (10.0, 1.0, 0.0001)
    assert AggregationEngine(bucket_size={"BTC": 25.0}).bucket_size("BTC-USDC") == 25.0
    pb = eng.create_price_buckets(book("okx", [(0.05123, 1.0)], [(0.05127, 2.0)], symbol="ETH-BTC"))
    assert pb.bid_buckets == {0.0512: 1.0} and pb.ask_buckets == {0.0513: 2.0}


# --- the tick -----------------------------------------------------------------------------------

def test_tick_gives_venue_and_consolidated_buckets_with_venue_counts():
    """Consolidated buckets add the venues' buckets and count the venues present in each."""
    eng = engine()
    eng.update_book(book("binance", [(100.5, 1.0), (99.5, 2.0)], [(101.5, 1.0)], symbol="ETH-USDT"))
    eng.update_book(book("okx", [(100.2, 3.0)], [(101.2, 1.0), (102.7, 5.0)], symbol="ETH-USDT"))
    result = eng.tick(NOW)
    cons = result.buckets["ETH-USDT"]
    assert cons.exchange is None and cons.timestamp == NOW
    assert cons.bid_buckets == {100.0: 4.0, 99.0: 2.0}
    assert cons.ask_buckets == {102.0: 2.0, 103.0: 5.0}
    assert cons.bid_exchange_counts == {100.0: 2, 99.0: 1} and cons.ask_exchange_counts == {102.0: 2, 103.0: 1}
    assert result.venue_buckets[("ETH-USDT", "okx")].ask_buckets == {102.0: 1.0, 103.0: 5.0}
    heat = result.heatmaps["ETH-USDT"]
    assert {(p.side, p.price): p.exchange_count for p in heat.data}[("bid", 100.0)] == 2


def test_stale_books_are_left_out_and_named():
    """A book older than stale_after (by exchange or receive time) is out of every result and named."""
    eng = engine(stale_after=5.0)
    eng.update_book(book("binance", [(100.0, 1.0)], [(101.0, 1.0)]))
    eng.update_book(book("kraken", [(100.5, 9.0)], [(100.8, 9.0)], age=6.0))
    eng.update_book(book("okx", [(100.6, 9.0)], [(100.7, 9.0)], received_age=7.0))
    result = eng.tick(NOW)
    cons = result.books["BTC-USDT"]
    assert cons.exchanges == ("binance",)
    assert cons.stale_exchanges == ("kraken", "okx")
    assert result.stale == {"BTC-USDT": ("kraken", "okx")}
    assert cons.best_bid == 100.0 and cons.best_ask == 101.0
    assert set(result.venue_buckets) == {("BTC-USDT", "binance")}
    assert eng.aggregate_across_exchanges("BTC-USDT").stale_exchanges == ("kraken", "okx")


def test_symbol_with_only_stale_books_still_reports_them():
    """When every venue of a symbol is stale the tick still returns its (empty) book naming them."""
    eng = engine(stale_after=1.0)
    eng.update_book(book("binance", [(100.0, 1.0)], [(101.0, 1.0)], age=30))
    cons = eng.tick(NOW).books["BTC-USDT"]
    assert cons.bids == () and cons.best_bid is None and cons.stale_exchanges == ("binance",)


def test_update_book_keeps_the_latest_snapshot_per_venue_and_symbol():
    """A newer snapshot from the same venue replaces the older one; remove_book forgets it."""
    eng = engine()
    eng.update_book(book("binance", [(100.0, 1.0)], [(101.0, 1.0)]))
    eng.update_book(book("binance", [(100.0, 7.0)], [(101.0, 1.0)]))
    assert eng.tick(NOW).buckets["BTC-USDT"].bid_buckets == {100.0: 7.0}
    eng.remove_book("binance", "BTC-USDT")
    assert eng.tick(NOW).books == {}


def test_unchanged_books_give_the_same_figures_restamped():
    """A tick with no new book repeats the previous figures under the new time; a new book, or a
    venue turning stale, recomputes them."""
    eng = engine(stale_after=5.0)
    eng.update_book(book("binance", [(100.0, 1.0)], [(101.0, 1.0)]))
    eng.update_book(book("okx", [(100.0, 2.0)], [(101.0, 1.0)], age=3.0))
    first = eng.tick(NOW)
    later = NOW + timedelta(seconds=1)
    second = eng.tick(later)
    assert second.books["BTC-USDT"].timestamp == later and second.heatmaps["BTC-USDT"].timestamp == later
    assert second.books["BTC-USDT"].bids == first.books["BTC-USDT"].bids
    assert second.buckets["BTC-USDT"].bid_buckets == {100.0: 3.0}
    third = eng.tick(NOW + timedelta(seconds=2.5))  # okx's book is now 5.5 s old
    assert third.books["BTC-USDT"].stale_exchanges == ("okx",)
    assert third.buckets["BTC-USDT"].bid_buckets == {100.0: 1.0}
    eng.update_book(book("binance", [(100.0, 4.0)], [(101.0, 1.0)]))
    assert eng.tick(NOW).buckets["BTC-USDT"].bid_buckets == {100.0: 6.0}


def test_consolidated_book_merges_levels_with_venue_shares():
    """Equal prices from different venues merge into one level carrying each venue's size."""
    eng = engine()
    eng.update_book(book("binance", [(100.0, 1.0), (99.0, 2.0)], [(101.0, 1.0)]))
    eng.update_book(book("okx", [(100.0, 3.0)], [(101.0, 0.5), (102.0, 4.0)]))
    cons = eng.aggregate_across_exchanges("BTC-USDT")
    assert [(lv.price, lv.size, lv.venues) for lv in cons.bids] == \
        [(100.0, 4.0, {"binance": 1.0, "okx": 3.0}), (99.0, 2.0, {"binance": 2.0})]
    assert cons.best_bid_exchange == "okx"  # largest size at the best price
    assert cons.best_ask == 101.0 and cons.best_ask_exchange == "binance"
    assert not cons.crossed and cons.exchanges == ("binance", "okx")


def test_crossed_venues_are_reported_not_hidden():
    """A bid on one venue above an ask on another is flagged crossed, naming both venues."""
    eng = engine()
    eng.update_book(book("binance", [(101.0, 1.0)], [(102.0, 1.0)]))
    eng.update_book(book("kraken", [(99.0, 1.0)], [(100.0, 2.0)]))
    cons = eng.tick(NOW).books["BTC-USDT"]
    assert cons.crossed
    assert (cons.best_bid, cons.best_bid_exchange, cons.best_ask, cons.best_ask_exchange) == \
        (101.0, "binance", 100.0, "kraken")
    assert [lv.price for lv in cons.bids] == [101.0, 99.0] and [lv.price for lv in cons.asks] == [100.0, 102.0]


def test_consolidated_depth_limits_each_side():
    """consolidated_depth keeps the best N merged levels per side, reading venues only as deep as needed."""
    eng = engine(consolidated_depth=2)
    eng.update_book(book("binance", [(100.0, 1.0), (98.0, 1.0), (97.0, 1.0)], [(101.0, 1.0)]))
    eng.update_book(book("okx", [(99.0, 1.0), (98.0, 2.0)], [(103.0, 1.0), (104.0, 1.0)]))
    cons = eng.tick(NOW).books["BTC-USDT"]
    assert [(lv.price, lv.size) for lv in cons.bids] == [(100.0, 1.0), (99.0, 1.0)]
    assert [lv.price for lv in cons.asks] == [101.0, 103.0]


def reference_merge(books, side: str, depth):
    """The consolidated side the plain way: per price a dict of venue sizes and a running total, venue by
    venue, each venue read to its own best ``depth`` levels as listed; the best ``depth`` prices."""
    shares: dict[float, dict[str, float]] = {}
    totals: dict[float, float] = {}
    for b in books:
        for lv in (b.bids if side == "bid" else b.asks)[:depth]:
            venues = shares.setdefault(lv.price, {})
            venues[b.exchange] = venues.get(b.exchange, 0.0) + lv.size
            totals[lv.price] = totals.get(lv.price, 0.0) + lv.size
    return [(p, totals[p], shares[p]) for p in sorted(shares, reverse=side == "bid")[:depth]]


@st.composite
def overlapping_books(draw):
    """Venues quoting on a coarse grid - many prices shared across venues, some listed twice by one venue,
    some sides out of order."""
    venues = draw(st.lists(st.sampled_from(["binance", "okx", "kraken", "bybit", "gate", "mexc"]), min_size=1,
                           max_size=6, unique=True))
    size = st.floats(1e-6, 1e3, allow_nan=False)
    out = []
    for venue in venues:
        bids = draw(st.lists(st.tuples(st.integers(80, 99).map(float), size), max_size=25))
        asks = draw(st.lists(st.tuples(st.integers(101, 120).map(float), size), max_size=25))
        if draw(st.booleans()):  # in order, as a venue sends them; else as drawn
            bids.sort(key=lambda lv: -lv[0])
            asks.sort()
        out.append(book(venue, bids, asks))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(books=overlapping_books(), depth=st.sampled_from([None, 1, 3, 10]))
def test_the_consolidated_book_equals_a_per_price_reference(books, depth):
    """The merge in columns gives what a dict per price gives: prices best first, each venue's share
    (a price listed twice by one venue: the sum), the level's size (its levels summed in venue order, to the bit)."""
    eng = engine(consolidated_depth=depth)
    for b in books:
        eng.update_book(b)
    cons = eng.tick(NOW).books["BTC-USDT"]
    for side, levels in (("bid", cons.bids), ("ask", cons.asks)):
        held = [eng.book(venue, "BTC-USDT") for venue in sorted(b.exchange for b in books)]  # the tick's order
        expected = reference_merge(held, side, depth)
        assert len(levels) == len(expected)
        assert [(lv.price, lv.size, lv.venues) for lv in levels] == expected
        assert [list(lv.venues.items()) for lv in levels] == [list(v.items()) for _, _, v in expected]


# --- imbalance and metrics ---------------------------------------------------------------------

def test_imbalance_top_of_book_and_depth_bands():
    """top = (bid0 - ask0)/(bid0 + ask0); band b counts bids >= mid(1-b) and asks <= mid(1+b)."""
    b = book("binance", bids=[(999.5, 3.0), (996.0, 1.0), (989.0, 10.0)], asks=[(1000.5, 1.0), (1004.0, 1.0)])
    imb = engine().calculate_imbalances(b)  # mid 1000: 0.1 % -> [999, 1001], 0.5 % -> [995, 1005], 1 % -> [990, 1010]
    assert imb.top_of_book == pytest.approx(0.5)
    assert imb.depth[0.001] == pytest.approx((3 - 1) / 4)
    assert imb.depth[0.005] == pytest.approx((4 - 2) / 6)
    assert imb.depth[0.01] == pytest.approx((4 - 2) / 6)
    assert imb.exchange == "binance"


def test_consolidated_imbalance_uses_all_venues_around_the_consolidated_mid():
    """Consolidated top of book sums the venues' sizes at the best prices; bands use the consolidated mid."""
    eng = engine(depth_bands=(0.001,))
    eng.update_book(book("binance", [(999.9, 2.0), (990.0, 50.0)], [(1000.1, 1.0)], symbol="ETH-USDT"))
    eng.update_book(book("okx", [(999.9, 1.0)], [(1000.1, 1.0), (1000.9, 1.0), (1001.1, 7.0)], symbol="ETH-USDT"))
    result = eng.tick(NOW)
    imb = result.imbalances["ETH-USDT"]
    assert imb.exchange is None and imb.top_of_book == pytest.approx((3 - 2) / 5)
    assert imb.depth[0.001] == pytest.approx((3 - 3) / 6)
    assert result.venue_imbalances[("ETH-USDT", "okx")].depth[0.001] == pytest.approx((1 - 2) / 3)


def test_one_sided_book_has_top_of_book_but_no_depth_or_metrics():
    """Without a mid there are no depth bands and no OrderBookMetrics; top of book is +1."""
    eng = engine()
    eng.update_book(book("binance", [(100.0, 1.0)], []))
    result = eng.tick(NOW)
    imb = result.venue_imbalances[("BTC-USDT", "binance")]
    assert (imb.top_of_book, imb.depth) == (1.0, {})
    assert result.metrics == {}


def test_order_book_metrics_per_venue():
    """Metrics carry mid, spread, best prices and each side's whole volume."""
    eng = engine()
    eng.update_book(book("binance", [(100.0, 1.0), (99.0, 2.0)], [(102.0, 0.5)]))
    m = eng.tick(NOW).metrics[("BTC-USDT", "binance")]
    assert (m.mid_price, m.spread, m.best_bid, m.best_ask, m.bid_volume, m.ask_volume) == \
        (101.0, 2.0, 100.0, 102.0, 3.0, 0.5)


# --- heatmap ------------------------------------------------------------------------------------

def test_heatmap_intensity_scales():
    """Linear: v / vmax. Log: ln(1 + k v/vmax) / ln(1 + k). Both 1 at the largest, 0 at zero."""
    assert intensities([1.0, 4.0, 0.0]) == [0.25, 1.0, 0.0]
    logged = intensities([1.0, 1000.0, 0.0], "log", dynamic_range=1000.0)
    assert logged[1] == 1.0 and logged[2] == 0.0
    assert logged[0] == pytest.approx(math.log(2) / math.log(1001))
    with pytest.raises(ValueError):
        intensities([1.0], "cubic")


def test_heatmap_series_keeps_a_window_and_samples_for_storage():
    """The series keeps the last frame per resolution slot within the window; one per store interval is due."""
    series = HeatmapSeries(window=10.0, resolution=1.0, store_interval=5.0)
    eng = engine(heatmaps=series)
    eng.update_book(book("binance", [(100.0, 1.0)], [(101.0, 1.0)]))
    due = []
    for tenth in range(0, 150, 5):  # a tick every 0.5 s for 15 s
        due += eng.tick(NOW + timedelta(seconds=tenth / 10)).heatmaps_due
    kept = eng.heatmap_series("BTC-USDT")
    assert len(kept) == 11  # slots 4..14 s
    assert kept[-1].timestamp == NOW + timedelta(seconds=14.5)
    assert [h.timestamp - NOW for h in due] == [timedelta(seconds=s) for s in (0, 5, 10)]


def test_update_heatmap_from_one_venues_buckets():
    """update_heatmap turns any PriceBuckets into a heatmap (exchange_count 1 for one venue) and records it."""
    eng = engine()
    pb = PriceBuckets(symbol="BTC-USDT", timestamp=NOW, bucket_size=10.0, bid_buckets={100.0: 2.0},
                      ask_buckets={110.0: 8.0}, exchange="binance")
    heat = eng.update_heatmap("BTC-USDT", pb)
    assert [(p.side, p.intensity, p.exchange_count) for p in heat.data] == [("bid", 0.25, 1), ("ask", 1.0, 1)]
    assert eng.heatmap_series("BTC-USDT") == (heat,)
    with pytest.raises(ValueError):
        eng.update_heatmap("ETH-USDT", pb)


# --- properties ---------------------------------------------------------------------------------

BUCKETS = [0.1, 0.25, 1.0, 10.0]


@st.composite
def venue_books(draw, symbol="BTC-USDT", split: int | None = None, max_levels: int = 30):
    """Uncrossed books of several venues on a 0.01 tick grid; with ``split`` every bid of every
    venue is below every ask (the union is uncrossed too)."""
    venues = draw(st.lists(st.sampled_from(["binance", "okx", "kraken", "bybit", "gate"]), min_size=1, max_size=5,
                           unique=True))
    out = []
    for venue in venues:
        mid = split if split is not None else draw(st.integers(5_000, 6_000))
        gap = draw(st.integers(1, 50))
        bid_ticks = draw(st.lists(st.integers(1, 3000), max_size=max_levels, unique=True))
        ask_ticks = draw(st.lists(st.integers(1, 3000), max_size=max_levels, unique=True))
        size = st.floats(1e-6, 1e3, allow_nan=False)
        bids = [(round((mid - gap // 2 - t) * 0.01, 2), draw(size)) for t in sorted(bid_ticks)]
        asks = [(round((mid + (gap + 1) // 2 + t - 1) * 0.01, 2), draw(size)) for t in sorted(ask_ticks)]
        out.append(book(venue, bids, asks, symbol=symbol))
    return out


def reference_buckets(levels, side: str, size: float) -> dict[float, float]:
    out: dict[float, float] = {}
    for lv in levels:
        key = bucket_price(lv.price, side, size)
        out[key] = out.get(key, 0.0) + lv.size
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(books=venue_books(), size=st.sampled_from(BUCKETS), eth=venue_books(symbol="ETH-USDT"))
def test_buckets_conserve_volume_and_match_the_scalar_mapping(books, size, eth):
    """Every level lands in the bucket bucket_price() names (bids in [e, e+s), asks in (e-s, e]),
    each side's volume is conserved, and the all-books tick agrees with the one-book method."""
    eng = engine(bucket_size={"BTC": size, "ETH": 1.0})
    for b in books + eth:
        eng.update_book(b)
    result = eng.tick(NOW)
    for b in books + eth:
        s = eng.bucket_size(b.symbol)
        pb = result.venue_buckets[(b.symbol, b.exchange)]
        single = eng.create_price_buckets(b)
        for side, levels, got, alone in (("bid", b.bids, pb.bid_buckets, single.bid_buckets),
                                         ("ask", b.asks, pb.ask_buckets, single.ask_buckets)):
            want = reference_buckets(levels, side, s)
            assert got.keys() == want.keys() == alone.keys()
            assert all(close(got[k], want[k]) and close(alone[k], want[k]) for k in want)
            assert close(sum(got.values()), sum(lv.size for lv in levels))
            for lv in levels:
                e = bucket_price(lv.price, side, s)
                if side == "bid":
                    assert e <= lv.price + 1e-9 and lv.price < e + s - 1e-9
                else:
                    assert e - s + 1e-9 < lv.price and lv.price <= e + 1e-9


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(books=venue_books(), size=st.sampled_from(BUCKETS))
def test_consolidated_volume_equals_the_sum_over_venues(books, size):
    """Consolidated buckets, their venue counts and the full-depth consolidated book add up the venues."""
    eng = engine(bucket_size={"BTC": size}, consolidated_depth=None)
    for b in books:
        eng.update_book(b)
    result = eng.tick(NOW)
    cons, merged = result.buckets["BTC-USDT"], result.books["BTC-USDT"]
    venue = [result.venue_buckets[("BTC-USDT", b.exchange)] for b in books]
    for side in ("bid", "ask"):
        got = getattr(cons, f"{side}_buckets")
        counts = getattr(cons, f"{side}_exchange_counts")
        keys = set().union(*(getattr(v, f"{side}_buckets") for v in venue))
        assert got.keys() == keys
        for k in keys:
            assert close(got[k], sum(getattr(v, f"{side}_buckets").get(k, 0.0) for v in venue))
            assert counts[k] == sum(k in getattr(v, f"{side}_buckets") for v in venue)
        levels = merged.bids if side == "bid" else merged.asks
        all_levels = [lv for b in books for lv in (b.bids if side == "bid" else b.asks)]
        assert close(sum(lv.size for lv in levels), sum(lv.size for lv in all_levels))
        assert all(close(lv.size, sum(lv.venues.values())) for lv in levels)
        prices = [lv.price for lv in levels]
        assert prices == sorted(prices, reverse=side == "bid") and len(set(prices)) == len(prices)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(btc=venue_books(), eth=venue_books(symbol="ETH-USDT"), sizes=st.tuples(st.sampled_from(BUCKETS),
       st.sampled_from(BUCKETS)), shuffle=st.randoms(use_true_random=False))
def test_consolidated_buckets_of_several_symbols_in_one_frame(btc, eth, sizes, shuffle):
    """One tick sums the buckets of every symbol at once (one sort of all the frame's runs): each
    symbol's consolidated buckets and venue counts equal its venues' buckets added up, with other
    widths and a venue whose levels are out of order (two runs of one bucket count one venue)."""
    messy = btc[0]
    bids, asks = list(messy.bids), list(messy.asks)
    shuffle.shuffle(bids)
    shuffle.shuffle(asks)
    btc = [OrderBookSnapshot(messy.symbol, messy.exchange, messy.timestamp, tuple(bids), tuple(asks)), *btc[1:]]
    eng = engine(bucket_size={"BTC": sizes[0], "ETH": sizes[1]})
    for b in btc + eth:
        eng.update_book(b)
    result = eng.tick(NOW)
    for symbol, books in (("BTC-USDT", btc), ("ETH-USDT", eth)):
        cons = result.buckets[symbol]
        for side in ("bid", "ask"):
            venue = [reference_buckets(b.bids if side == "bid" else b.asks, side, eng.bucket_size(symbol))
                     for b in books]
            got, counts = getattr(cons, f"{side}_buckets"), getattr(cons, f"{side}_exchange_counts")
            keys = set().union(*venue)
            assert got.keys() == keys == counts.keys()
            assert list(got) == sorted(keys, reverse=side == "bid")  # best bucket first
            for k in keys:
                assert close(got[k], sum(v.get(k, 0.0) for v in venue))
                assert counts[k] == sum(k in v for v in venue)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(books=venue_books(), scale=st.sampled_from(["linear", "log"]))
def test_intensities_lie_in_unit_interval_and_the_largest_is_one(books, scale):
    """Every heatmap intensity is in [0, 1]; the largest bucket's is exactly 1."""
    eng = engine(heatmaps=HeatmapSeries(scale=scale))
    for b in books:
        eng.update_book(b)
    heat = eng.tick(NOW).heatmaps["BTC-USDT"]
    if heat.data:
        assert all(0.0 <= p.intensity <= 1.0 for p in heat.data)
        top = max(heat.data, key=lambda p: p.volume)
        assert top.intensity == 1.0 == max(p.intensity for p in heat.data)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(split=st.integers(5_000, 6_000), data=st.data(), size=st.sampled_from(BUCKETS),
       depth=st.sampled_from([None, 1, 5]))
def test_uncrossed_inputs_never_give_a_crossed_consolidated_book(split, data, size, depth):
    """When every venue's bids lie below every venue's asks, the consolidated book is not crossed
    and no bid bucket reaches an ask bucket."""
    books = data.draw(venue_books(split=split))
    eng = engine(bucket_size={"BTC": size}, consolidated_depth=depth)
    for b in books:
        eng.update_book(b)
    result = eng.tick(NOW)
    cons = result.books["BTC-USDT"]
    assert not cons.crossed
    if cons.best_bid is not None and cons.best_ask is not None:
        assert cons.best_bid < cons.best_ask
    buckets = result.buckets["BTC-USDT"]
    if buckets.bid_buckets and buckets.ask_buckets:
        assert max(buckets.bid_buckets) < min(buckets.ask_buckets)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ticks=st.lists(st.integers(1, 10**7), min_size=1, max_size=40, unique=True), size=st.sampled_from(BUCKETS))
def test_prices_beyond_the_float_path_bucket_exactly_too(ticks, size):
    """Books priced above ~281,000 take the exact integer path and still match bucket_price()."""
    eng = engine(bucket_size={"BTC": size})
    mid = 300_000_00  # cents
    bids = [((mid - t) / 100, 1.0) for t in sorted(ticks)]
    asks = [((mid + t) / 100, 2.0) for t in sorted(ticks)]
    eng.update_book(book("binance", bids, asks))
    eng.update_book(book("okx", [(1000.0, 1.0)], [(1000.5, 1.0)]))  # another book, in the same (integer-path) frame
    pb = eng.tick(NOW).venue_buckets[("BTC-USDT", "binance")]
    b = eng.book("binance", "BTC-USDT")
    assert pb.bid_buckets.keys() == reference_buckets(b.bids, "bid", size).keys()
    assert pb.ask_buckets == pytest.approx(reference_buckets(b.asks, "ask", size))


def reference_imbalance(books, mid: float, band: float) -> float:
    bid = sum(lv.size for b in books for lv in b.bids if lv.price >= mid * (1 - band))
    ask = sum(lv.size for b in books for lv in b.asks if lv.price <= mid * (1 + band))
    return (bid - ask) / (bid + ask) if bid + ask > 0 else 0.0


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(books=venue_books(max_levels=60), size=st.sampled_from(BUCKETS),
       bands=st.lists(st.floats(1e-4, 0.5), min_size=1, max_size=4, unique=True))
def test_depth_imbalances_equal_plain_sums_over_the_levels_in_each_band(books, size, bands):
    """The tick sums a band as whole buckets plus part of one: it must equal the plain per-level sum,
    per venue around its own mid and consolidated around the consolidated mid."""
    eng = engine(bucket_size={"BTC": size}, depth_bands=bands)
    for b in books:
        eng.update_book(b)
    result = eng.tick(NOW)
    for b in books:
        got = result.venue_imbalances[("BTC-USDT", b.exchange)].depth
        if not (b.bids and b.asks):
            assert got == {}
            continue
        mid = (b.bids[0].price + b.asks[0].price) / 2
        assert all(close(got[band], reference_imbalance([b], mid, band)) for band in bands)
    bids = [b.bids[0].price for b in books if b.bids]
    asks = [b.asks[0].price for b in books if b.asks]
    cons = result.imbalances["BTC-USDT"].depth
    if bids and asks:
        mid = (max(bids) + min(asks)) / 2
        assert all(close(cons[band], reference_imbalance(books, mid, band)) for band in bands)


def test_staleness_is_judged_on_one_clock_never_a_venue_clock_against_ours():
    """Live (stale_by='received') a book is fresh while coby received it within stale_after, however far
    the venue's clock lags ours (here 30 s); an event-time engine (a replay, the recorder of stored
    heatmaps, whose `now` is event time) judges the snapshot's own time."""
    lagging = book("okx", [(100.6, 9.0)], [(100.7, 9.0)], age=30.0, received_age=0.5)
    live = engine(stale_after=5.0)
    live.update_book(lagging)
    assert live.tick(NOW).books["BTC-USDT"].exchanges == ("okx",)
    assert live.tick(NOW + timedelta(seconds=6)).books["BTC-USDT"].stale_exchanges == ("okx",)
    replayed = engine(stale_after=5.0, stale_by="event")
    replayed.update_book(lagging)
    assert replayed.tick(NOW - timedelta(seconds=28)).books["BTC-USDT"].exchanges == ("okx",)
    assert replayed.tick(NOW).books["BTC-USDT"].stale_exchanges == ("okx",)
    with pytest.raises(ValueError, match="stale_by"):
        engine(stale_by="exchange")
