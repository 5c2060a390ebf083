"""The dashboard as a trader keeps it open (issue 18), in a real headless Chromium against one simulated
daemon whose storage is seeded with 11 minutes of history before the page opens: book snapshots of the ten
venues (their live books, shifted back in time), trades, and 420 one-minute candles.

History first: on load and on a symbol switch the heatmap is filled across the window and the candle chart
shows hundreds of bars; the heatmap's resolution, colour scale, zoom and pan are the user's; the volume has
its own pane; the ladder's crossed state is a badge that is never cut. Screenshots at desktop and phone widths
go to ``test-artifacts/dashboard/``; ``COBY_UPDATE_SCREENSHOT=1`` copies the desktop one to docs/dashboard.png.
"""

from __future__ import annotations

import asyncio
import random
import os
import shutil
import time
from datetime import datetime, timezone

import aiohttp
import pytest
import pytest_asyncio

from coby.config import EXCHANGES
from coby.models import OHLCVBar, OrderBookSnapshot, TradeEvent
from tests.conftest import RunningDaemon, free_port, make_settings
from tests.test_dashboard import ROOT, Watch, _shot, _until, browser  # noqa: F401 (the module's browser)

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

DESKTOP = {"width": 1400, "height": 900}
PHONE = {"width": 390, "height": 844}
SEED_S = 660  # seconds of seeded book history
SYMBOLS = ("BTC-USDT", "ETH-USDT")

# The share of the heatmap plot's pixel columns that hold at least one clearly coloured pixel (not the
# background, not grey axis text or grid).
PAINTED_JS = """() => {
  const c = document.getElementById('heatmap');
  const dpr = window.devicePixelRatio || 1;
  const w = c.width - Math.ceil(64 * dpr), h = c.height - Math.ceil(18 * dpr);
  const d = c.getContext('2d').getImageData(0, 0, w, h).data;
  let painted = 0;
  for (let x = 0; x < w; x++) {
    for (let y = 0; y < h; y += 2) {
      const i = (y * w + x) * 4, r = d[i], g = d[i + 1], b = d[i + 2];
      if (Math.abs(r - 11) + Math.abs(g - 14) + Math.abs(b - 20) > 100 && Math.max(r, g, b) - Math.min(r, g, b) > 40) {
        painted++;
        break;
      }
    }
  }
  return painted / w;
}"""


def _ts(t: float) -> datetime:
    return datetime.fromtimestamp(t, timezone.utc)


async def _seed(srv: RunningDaemon) -> None:
    """Each venue's live book, copied back over SEED_S seconds every 2 s with a slow drift; a trade every 2 s;
    420 consolidated 1m candles before the current minute."""
    storage = srv.daemon.storage
    now = time.time()
    async with aiohttp.ClientSession(srv.url) as http:
        for symbol in SYMBOLS:
            books: dict[str, dict] = {}
            deadline = time.monotonic() + 30
            while len(books) < len(EXCHANGES) and time.monotonic() < deadline:
                for ex in EXCHANGES:
                    if ex not in books:
                        async with http.get(f"/api/v1/orderbook/{ex}/{symbol}?depth=20") as r:
                            if r.status == 200:
                                books[ex] = (await r.json())["data"]
                if len(books) < len(EXCHANGES):
                    await asyncio.sleep(0.5)
            mid = sum(b["bids"][0][0] + b["asks"][0][0] for b in books.values()) / (2 * len(books))
            bucket = srv.settings.bucket_size(symbol)
            rng = random.Random(18)
            walk = [0.0]  # the book's offset from now, going back: a random walk that ends at the live book
            for _ in range(SEED_S // 2):
                walk.append(max(-3 * bucket, min(3 * bucket, walk[-1] + rng.gauss(0, bucket / 12))))
            for k in range(1, SEED_S // 2 + 1):
                ts = _ts(now - 2 * k)
                drift = walk[k]
                for ex, b in books.items():
                    await storage.store_orderbook(OrderBookSnapshot(
                        symbol, ex, ts, [(p + drift, s) for p, s in b["bids"]], [(p + drift, s) for p, s in b["asks"]],
                        None, ts))
                side = "buy" if rng.random() < 0.5 else "sell"
                px = mid + drift + (bucket / 20 if side == "buy" else -bucket / 20)
                await storage.store_trades([TradeEvent(symbol, EXCHANGES[k % len(EXCHANGES)], ts, px,
                                                       rng.expovariate(2.0), side, f"seed{k}", ts)])
            minute = int(now // 60) * 60
            close = mid
            for i in range(1, 421):  # backwards from the live price: each bar's close is the next one's open
                o = close + rng.gauss(0, bucket / 3)
                c, close = close, o
                hi, lo = max(o, c) + abs(rng.gauss(0, bucket / 5)), min(o, c) - abs(rng.gauss(0, bucket / 5))
                vol = 2.0 + abs(rng.gauss(0, 6.0))
                await storage.store_ohlcv(OHLCVBar(symbol, None, "1m", _ts(minute - 60 * i), o, hi, lo, c, vol, 40,
                                                   (o + c + hi + lo) / 4, vol * 0.55, vol * 0.45, True))
            await storage.flush()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def seeded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboard-history")
    settings = make_settings(tmp, db_url=f"sqlite:///{tmp / 'coby.sqlite3'}", simulate=True, simulator_port=0,
                             api_port=free_port(), flush_interval=0.2, ohlcv_grace=0.5)
    srv = RunningDaemon(settings)
    await srv.start()
    await _seed(srv)
    yield srv
    await srv.stop()


async def _page(browser, srv, viewport=DESKTOP, query: str = ""):
    context = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    watch = Watch(page)
    await page.goto(srv.url + "/" + query)
    await page.wait_for_selector("#conn[data-state=open]", timeout=15000)
    return context, page, watch


async def _filled(page, symbol: str, timeout: float) -> float:
    """Wait until the heatmap paints >= 90 % of its width and the chart has >= 100 bars of ``symbol``."""
    await _until(page, "s => document.getElementById('ladder').dataset.symbol === s"
                       " && Number(document.getElementById('chart').dataset.bars) >= 100", arg=symbol, timeout=timeout)
    await page.wait_for_function(PAINTED_JS.replace("return painted / w;", "return painted / w >= 0.9;"),
                                 timeout=timeout * 1000, polling=100)
    return await page.evaluate(PAINTED_JS)


async def test_history_fills_heatmap_and_candles_on_load_and_on_symbol_switch(seeded, browser):
    """At 1400x900: on load the heatmap is painted over >= 90 % of its width (1m, then the 10m window) with >= 40
    rows; the candle chart has >= 100 bars, the volume in a pane of its own; switching to ETH-USDT and back
    refills both (the better of the two within 2 s); no console errors."""
    context, page, watch = await _page(browser, seeded)
    try:
        assert await _filled(page, "BTC-USDT", 15) >= 0.9
        assert int(await page.get_attribute("#heatmap", "data-rows")) >= 40
        await page.click("#heat-window [data-window='600']")
        await _until(page, "() => document.getElementById('heatmap').dataset.windowMs === '600000'")
        assert await _filled(page, "BTC-USDT", 10) >= 0.9
        panes = await page.evaluate("""() => { const c = window.coby.views.candles;
          const panes = c.chart.panes();
          return [panes.length, panes[0].getSeries().includes(c.candles), panes[1].getSeries().includes(c.volume)]; }""")
        assert panes == [2, True, True]
        await page.hover("#chart", position={"x": 200, "y": 60})
        await _until(page, "() => /vwap/.test(document.getElementById('candle-info').textContent)")
        await page.wait_for_timeout(300)
        shot = await _shot(page, "history-1400x900.png")
        if os.environ.get("COBY_UPDATE_SCREENSHOT"):
            shutil.copy(shot, ROOT / "docs" / "dashboard.png")

        # the switch there and back: the machine is shared with other work, so the better of the two must
        # be within 2 s (both are printed)
        refills = []
        for symbol in ("ETH-USDT", "BTC-USDT"):
            started = time.monotonic()
            await page.select_option("#symbol", symbol)
            painted = await _filled(page, symbol, 10)
            refills.append(time.monotonic() - started)
            loads = await page.evaluate("[document.getElementById('heatmap').dataset.historyMs,"
                                        " document.getElementById('chart').dataset.historyMs]")
            print(f"switch to {symbol}: refilled in {refills[-1]:.2f} s (heatmap painted {painted:.3f}, its history"
                  f" {loads[0]} ms, candles {loads[1]} ms)")
            assert painted >= 0.9
        assert min(refills) <= 2.0, refills
        assert watch.problems == []
    finally:
        await context.close()


async def test_resolution_scale_zoom_pan_and_hover_are_the_users(seeded, browser):
    """A finer resolution paints more rows; the colour scale switches; shift+wheel narrows the price range, the
    wheel widens the time window;
    dragging stops following the price and double-clicking follows again; hovering a cell shows its price,
    time and size per venue; a crossed book shows a badge whose tooltip names the venues, inside the ladder."""
    context, page, watch = await _page(browser, seeded)
    try:
        await _filled(page, "BTC-USDT", 15)
        rows = int(await page.get_attribute("#heatmap", "data-rows"))
        options = await page.eval_on_selector_all("#heat-res option", "os => os.map(o => o.value)")
        assert len(options) >= 3, options
        current = await page.eval_on_selector("#heat-res", "s => s.value")
        coarser = options[options.index(current) - 1]
        await page.select_option("#heat-res", coarser)
        await _until(page, "b => document.getElementById('heatmap').dataset.bucket === b"
                           " && Number(document.getElementById('heatmap').dataset.rows) > 0", arg=coarser)
        await page.wait_for_timeout(600)
        coarse_rows = int(await page.get_attribute("#heatmap", "data-rows"))
        assert coarse_rows < rows, (rows, coarse_rows)

        await page.select_option("#heat-scale", "linear")
        await _until(page, "() => document.getElementById('heat-scale-text').textContent.startsWith('linear')")

        box = await page.locator("#heatmap").bounding_box()
        cx, cy = box["x"] + box["width"] / 3, box["y"] + box["height"] / 2
        before = await page.evaluate("() => { const d = document.getElementById('heatmap').dataset; return d.hi - d.lo; }")
        await page.mouse.move(cx, cy)
        await page.keyboard.down("Shift")
        await page.mouse.wheel(0, -300)
        await page.keyboard.up("Shift")
        await _until(page, "s => { const d = document.getElementById('heatmap').dataset; return d.hi - d.lo < s * 0.8; }",
                     arg=before)
        await page.mouse.wheel(0, 200)  # the wheel alone zooms time: 1m widens, and no window button matches it
        await _until(page, "() => Number(document.getElementById('heatmap').dataset.windowMs) > 60000"
                           " && !document.querySelector('#heat-window .seg.active')")
        await page.mouse.down()
        await page.mouse.move(cx + 80, cy + 40, steps=4)
        await page.mouse.up()
        await _until(page, "() => document.getElementById('heatmap').dataset.follow === 'false'")
        assert await page.is_visible("#heat-follow")
        await page.dblclick("#heatmap", position={"x": 50, "y": 50})
        await _until(page, "() => document.getElementById('heatmap').dataset.follow === 'true'")

        await page.select_option("#heat-res", current)
        await page.wait_for_timeout(1500)  # live columns with per-venue sizes at the right edge
        await page.mouse.move(box["x"] + box["width"] - 80, box["y"] + box["height"] / 2 + 30)
        await page.mouse.move(box["x"] + box["width"] - 75, box["y"] + box["height"] / 2 + 30)
        await _until(page, "() => !document.getElementById('heat-tip').hidden")
        tip = await page.text_content("#heat-tip")
        assert ":" in tip.splitlines()[0], tip

        why = await page.evaluate("""() => { const l = window.coby.views.ladder;
          const lv = (p) => ({price: p, size: 1, venues: {binance: 1}});
          l.update({data: {symbol: 'BTC-USDT', bids: [lv(100.5), lv(100)], asks: [lv(99.5), lv(101)], best_bid: 100.5,
            best_bid_exchange: 'bitfinex', best_ask: 99.5, best_ask_exchange: 'okx', crossed: true,
            exchanges: ['bitfinex', 'okx'], stale_exchanges: []}});
          l.render();
          const b = document.querySelector('#ladder .crossed-badge');
          const r = b.getBoundingClientRect(), box = document.getElementById('ladder').getBoundingClientRect();
          return [b.title, b.scrollWidth <= b.clientWidth + 1, r.left >= box.left && r.right <= box.right]; }""")
        assert "bitfinex bid" in why[0] and "okx ask" in why[0] and "by 1" in why[0] and why[1:] == [True, True], why
        assert watch.problems == []
    finally:
        await context.close()


async def test_phone_width_keeps_the_history_painted(seeded, browser):
    """At 390x844 the heatmap is painted over >= 90 % of its width and the chart has its bars; a screenshot."""
    context, page, watch = await _page(browser, seeded, PHONE)
    try:
        assert await _filled(page, "BTC-USDT", 15) >= 0.9
        assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        await _shot(page, "history-390x844.png", full_page=True)
        assert watch.problems == []
    finally:
        await context.close()
