"""The web dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright through
its executable path) against one ``coby run --simulate`` daemon in-process: ten simulated venues
through ccxt.pro, SQLite, the in-process cache, the API on a fixed local port.

Every page test listens for console errors, uncaught exceptions, failed requests and HTTP errors,
and asserts there were none (the restart test allows only the refused connections of the restart
itself). Screenshots go to ``test-artifacts/dashboard/`` (the README's picture comes from
tests/test_dashboard_history.py, which has history to show).

Chromium comes from ``scripts/test.sh`` (``apt-get install chromium`` when missing); without it
these tests are skipped, or fail when ``CI`` is set.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from coby.config import EXCHANGES
from tests.conftest import RunningDaemon, free_port, make_settings

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="module")]

CHROMIUM = os.environ.get("COBY_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TABLET = {"width": 900, "height": 1000}
RECORDED = 40.0  # seconds of recorded data the replay test needs

# Pixels of the heatmap's plot area that are clearly coloured: far from the background and not grey
# (grey is the axis text, grid lines and the "waiting" message).
HEAT_PIXELS_JS = """() => {
  const c = document.getElementById('heatmap');
  const dpr = window.devicePixelRatio || 1;
  const w = c.width - Math.ceil(64 * dpr), h = c.height - Math.ceil(18 * dpr);
  const d = c.getContext('2d').getImageData(0, 0, w, h).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {
    const r = d[i], g = d[i + 1], b = d[i + 2];
    if (Math.abs(r - 11) + Math.abs(g - 14) + Math.abs(b - 20) > 100 && Math.max(r, g, b) - Math.min(r, g, b) > 40) n++;
  }
  return n;
}"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dashboard")
    settings = make_settings(tmp, db_url=f"sqlite:///{tmp / 'coby.sqlite3'}", simulate=True, simulator_port=0,
                             api_port=free_port(), flush_interval=0.2, snapshot_interval=0.5, ohlcv_grace=0.5)
    srv = RunningDaemon(settings)
    await srv.start()
    yield srv
    await srv.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser():
    if not os.access(CHROMIUM, os.X_OK):
        message = f"no Chromium at {CHROMIUM} (scripts/test.sh installs Debian's chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.async_api import async_playwright
    pw = await async_playwright().start()
    b = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
    yield b
    await b.close()
    await pw.stop()


class Watch:
    """What went wrong in a page: console errors, uncaught exceptions, failed requests, HTTP errors,
    and the dashboard's own notices (console.warn 'coby: ...')."""

    def __init__(self, page, allow: tuple[str, ...] = ()) -> None:
        self.allow = [re.compile(a) for a in allow]
        self.problems: list[str] = []
        page.on("console", lambda m: self._console(m.type, m.text))
        page.on("pageerror", lambda e: self.problems.append(f"uncaught: {e}"))
        page.on("requestfailed", lambda r: self._add(f"request failed: {r.method} {r.url} {r.failure}"))
        page.on("response", lambda r: r.status >= 400 and self._add(f"HTTP {r.status}: {r.request.method} {r.url}"))

    def _console(self, kind: str, text: str) -> None:
        if kind == "error" or (kind == "warning" and text.startswith("coby:")):
            self._add(f"console {kind}: {text}")

    def _add(self, problem: str) -> None:
        if not any(a.search(problem) for a in self.allow):
            self.problems.append(problem)


async def _open(browser, url: str, viewport=DESKTOP, allow: tuple[str, ...] = ()):
    context = await browser.new_context(viewport=viewport)
    page = await context.new_page()
    watch = Watch(page, allow)
    await page.goto(url)
    return context, page, watch


async def _until(page, js: str, timeout: float = 20.0, arg=None):
    """Poll ``js`` (a function expression) in the page until it returns something truthy."""
    handle = await page.wait_for_function(js, arg=arg, timeout=timeout * 1000, polling=200)
    return await handle.json_value()


async def _shot(page, name: str, full_page: bool = False) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    await page.screenshot(path=str(path), full_page=full_page)
    return path


async def _heat_painted(page, pixels: int) -> None:
    """Wait until the heatmap has more than ``pixels`` painted pixels (it is redrawn when history
    arrives, so one look can fall between a clear and the next paint)."""
    await _until(page, f"() => ({HEAT_PIXELS_JS})() > {pixels}")


def _input_time(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


# --- the files ----------------------------------------------------------------------------------------
async def test_static_files_are_served_with_content_types_and_revalidation(server):
    """/ is the page with a self-only Content-Security-Policy; its modules, stylesheet and the vendored
    chart library (with its licence) come with explicit types and no-cache + ETag (304 on revalidation);
    paths outside coby/api/web and unknown file types are 404."""
    async with aiohttp.ClientSession(server.url) as s:
        async with s.get("/") as r:
            assert r.status == 200 and r.content_type == "text/html"
            assert "default-src 'self'" in r.headers["Content-Security-Policy"]
            assert r.headers["Cache-Control"] == "no-cache"
            assert '<script type="module" src="/static/js/app.js">' in await r.text()
        for path, ctype in [("/static/js/app.js", "text/javascript"), ("/static/style.css", "text/css"),
                            ("/static/favicon.svg", "image/svg+xml"),
                            ("/static/vendor/lightweight-charts.standalone.production.mjs", "text/javascript"),
                            ("/static/vendor/LICENSE", "text/plain")]:
            async with s.get(path) as r:
                assert (r.status, r.content_type) == (200, ctype), path
                etag = r.headers["ETag"]
                assert r.headers["Cache-Control"] == "no-cache"
            async with s.get(path, headers={"If-None-Match": etag}) as r:
                assert r.status == 304, path
        for path in ("/static/%2e%2e/dashboard.py", "/static/..%2fdashboard.py", "/static/vendor/README.mdx",
                     "/static/nothing.js", "/static/js"):
            async with s.get(path) as r:
                assert r.status == 404, path


# --- live -------------------------------------------------------------------------------------------------
async def test_live_page_loads_connects_and_draws_every_view_without_errors(server, browser):
    """At 1280x800: the WebSocket connects; the heatmap canvas gets coloured pixels; the venue grid shows
    the ten venues live; the ladder, tape, candles and imbalance gauge fill; everything fits the screen;
    no console error, failed request or HTTP error."""
    context, page, watch = await _open(browser, server.url)
    try:
        await page.wait_for_selector("#conn[data-state=open]", timeout=15000)
        assert await page.evaluate("window.coby.feed.url()") == f"ws://127.0.0.1:{server.settings.api_port}/ws"
        await _until(page, "() => document.querySelectorAll('#venues .venue[data-live=true]').length === 10")
        live = await page.eval_on_selector_all("#venues .venue[data-live=true]", "els => els.map(e => e.dataset.venue)")
        assert sorted(live) == sorted(EXCHANGES)
        await _until(page, "() => Number(document.getElementById('heatmap').dataset.columns) >= 20")
        await _heat_painted(page, 3000)
        await _until(page, "() => document.querySelectorAll('#ladder .lrow.bid').length > 3"
                           " && document.querySelectorAll('#ladder .lrow.ask').length > 3")
        await _until(page, "() => document.querySelectorAll('#tape li').length >= 10")
        await _until(page, "() => Number(document.getElementById('chart').dataset.bars) >= 1")
        await _until(page, "() => document.getElementById('imbalance').dataset.value !== ''")
        assert await page.locator("#chart canvas").count() > 0  # drawn by the vendored Lightweight Charts
        size = await page.evaluate("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
        assert size[0] <= DESKTOP["width"] and size[1] <= DESKTOP["height"], size
        await page.wait_for_timeout(500)
        await _shot(page, "live-1280x800.png")
        assert watch.problems == []
    finally:
        await context.close()


async def test_symbol_and_timeframe_switches_resubscribe(server, browser):
    """Choosing ETH-USDT resubscribes the stream to ETH's channels and redraws the views with ETH's
    prices; choosing 5m swaps the candle channel and reloads the candles; the URL keeps both."""
    context, page, watch = await _open(browser, server.url)
    try:
        await page.wait_for_selector("#conn[data-state=open]", timeout=15000)
        await _until(page, "() => document.getElementById('ladder').dataset.symbol === 'BTC-USDT'")
        btc_bid = float(await page.get_attribute("#ladder .lrow.bid", "data-price"))
        await page.select_option("#symbol", "ETH-USDT")
        await _until(page, "() => document.getElementById('ladder').dataset.symbol === 'ETH-USDT'")
        channels = await page.evaluate("[...window.coby.feed.channels].sort()")
        assert channels == sorted(["heatmap:ETH-USDT", "consolidated:ETH-USDT", "metrics:ETH-USDT", "trades:ETH-USDT",
                                   "ohlcv:ETH-USDT:1m", "status"])
        eth_bid = float(await page.get_attribute("#ladder .lrow.bid", "data-price"))
        assert abs(eth_bid - btc_bid) > 100, (btc_bid, eth_bid)  # the simulator's ETH is not priced like BTC
        await _until(page, "() => Number(document.getElementById('heatmap').dataset.columns) >= 3")
        await _heat_painted(page, 300)

        await page.click("#timeframes [data-tf='5m']")
        await _until(page, "() => window.coby.feed.channels.has('ohlcv:ETH-USDT:5m')"
                           " && !window.coby.feed.channels.has('ohlcv:ETH-USDT:1m')")
        await _until(page, "() => Number(document.getElementById('chart').dataset.bars) >= 1")
        assert await page.get_attribute("#timeframes [data-tf='5m']", "class") == "seg active"
        assert "symbol=ETH-USDT" in page.url and "timeframe=5m" in page.url
        assert watch.problems == []
    finally:
        await context.close()


async def test_phone_and_tablet_widths_stack_the_views_without_sideways_scrolling(server, browser):
    """At 390 px (one column) and 900 px (two) wide every panel fits the width - no horizontal
    scrolling - and keeps a usable height, and the heatmap still draws."""
    context, page, watch = await _open(browser, server.url, viewport=PHONE)
    try:
        await page.wait_for_selector("#conn[data-state=open]", timeout=15000)
        await _until(page, "() => Number(document.getElementById('heatmap').dataset.columns) >= 4")
        await _until(page, "() => document.querySelectorAll('#venues .venue[data-live=true]').length === 10")
        await _heat_painted(page, 500)
        for viewport in (PHONE, TABLET):
            await page.set_viewport_size(viewport)
            await page.wait_for_timeout(300)
            assert await page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
            boxes = await page.eval_on_selector_all(".panel", "els => els.map(e => e.getBoundingClientRect())"
                                                              ".map(r => [r.right, r.height])")
            assert len(boxes) == 6, boxes
            assert all(right <= viewport["width"] and height >= 150 for right, height in boxes), boxes
            await _shot(page, f"{'phone' if viewport is PHONE else 'tablet'}-{viewport['width']}.png", full_page=True)
        assert watch.problems == []
    finally:
        await context.close()


# --- replay -----------------------------------------------------------------------------------------------
async def test_replay_plays_pauses_seeks_and_returns_to_live(server, browser):
    """Replay mode over the range recorded since the daemon started, at 2x: Play creates a session and
    its stream fills the same views with recorded data; Pause freezes the position and the heatmap;
    seeking to 80 % moves the position there, still paused; Play resumes; Live stops the session (unless
    it has finished) and reconnects to /ws."""
    await asyncio.sleep(max(0.0, server.first_start + RECORDED - time.time()))  # enough to replay (run alone)
    context, page, watch = await _open(browser, server.url)
    try:
        await page.wait_for_selector("#conn[data-state=open]", timeout=15000)
        await page.click("#mode-replay")
        assert await page.is_visible("#replay")
        await _until(page, "() => document.getElementById('replay-start').value !== ''")
        start, end = server.first_start, time.time()
        await page.fill("#replay-start", _input_time(start))
        await page.fill("#replay-end", _input_time(end))
        await page.select_option("#replay-speed", "2")
        await page.click("#replay-play")
        await page.wait_for_selector("#replay-state[data-state=running]", timeout=15000)
        assert "/api/v1/replay/" in await page.evaluate("window.coby.feed.url()")
        await _until(page, "() => Number(document.getElementById('heatmap').dataset.columns) >= 6", timeout=30)
        await _until(page, "() => document.querySelectorAll('#tape li').length > 0")
        await _heat_painted(page, 300)
        recorded = await page.evaluate("window.coby.views.heatmap.latest")
        assert start * 1000 - 2000 <= recorded <= end * 1000, "the heatmap shows the recorded range, not live data"

        await page.click("#replay-pause")
        await page.wait_for_selector("#replay-state[data-state=paused]", timeout=10000)
        await page.wait_for_timeout(500)  # what was in flight at the pause arrives
        before = (await page.get_attribute("#replay-position", "data-position"),
                  await page.get_attribute("#heatmap", "data-columns"))
        await page.wait_for_timeout(2000)
        after = (await page.get_attribute("#replay-position", "data-position"),
                 await page.get_attribute("#heatmap", "data-columns"))
        assert before == after, "a paused replay moves on"
        assert await page.text_content("#replay-play") == "▶ Resume"

        sid = await page.evaluate("window.coby.replay.session.id")
        await page.evaluate("() => { const s = document.getElementById('replay-seek');"
                            " s.value = '800'; s.dispatchEvent(new Event('change')); }")
        target = start + (end - start) * 0.8
        await _until(page, "t => Math.abs(Number(document.getElementById('replay-position').dataset.position) - t)"
                           " < 2000", arg=target * 1000)
        assert await page.get_attribute("#replay-state", "data-state") == "paused"
        await _shot(page, "replay-paused-1280x800.png")

        await page.click("#replay-play")
        await page.wait_for_selector("#replay-state[data-state=running]", timeout=10000)
        await _until(page, "t => Number(document.getElementById('replay-position').dataset.position) > t + 1000",
                     arg=target * 1000)
        await _until(page, "() => Number(document.getElementById('heatmap').dataset.columns) >= 2")
        await _shot(page, "replay-1280x800.png")

        await page.click("#mode-live")
        await page.wait_for_selector("#conn[data-state=open]", timeout=15000)
        assert await page.evaluate("window.coby.feed.url()") == f"ws://127.0.0.1:{server.settings.api_port}/ws"
        async with aiohttp.ClientSession(server.url) as s:
            async with s.get(f"/api/v1/replay/{sid}") as r:
                assert (await r.json())["replay"]["state"] in ("stopped", "finished")  # not left running
        await _until(page, "() => document.querySelectorAll('#venues .venue[data-live=true]').length === 10")
        assert watch.problems == []
    finally:
        await context.close()


# --- the token ---------------------------------------------------------------------------------------------
async def test_token_in_the_page_url_goes_to_rest_as_a_header_and_to_the_websocket_as_a_query(browser, tmp_path):
    """With api_token set, /?token=T makes the page send ``Authorization: Bearer T`` on its REST calls and
    ``?token=T`` on its WebSocket URL (browsers cannot set headers on one): the calls pass the server's
    token check and the stream opens. (The page's own files get the header from the test: the server's
    token middleware guards them too, so a browser cannot load them while a token is set - see
    docs/dashboard.md.)"""
    from coby.cache import MemoryCache
    from coby.db import open_storage
    from tests.api_fixtures import Host, serving

    token = "s3cret-token"
    settings = make_settings(tmp_path, api_token=token, db_url=f"sqlite:///{tmp_path / 'coby.sqlite3'}")
    storage = open_storage(settings)
    await storage.start()
    cache = MemoryCache()
    await cache.start()
    try:
        async with serving(Host(settings, storage, cache)) as client:
            base = str(client.make_url("/"))
            context = await browser.new_context(viewport=DESKTOP)
            page = await context.new_page()
            watch = Watch(page)
            api_calls: list[tuple[str, str | None]] = []
            page.on("request", lambda r: "/api/v1/" in r.url
                    and api_calls.append((r.url, r.headers.get("authorization"))))

            async def files_with_header(route):
                await route.continue_(headers={**route.request.headers, "authorization": f"Bearer {token}"})

            await page.route(lambda url: "/api/" not in url and not url.endswith("/ws"), files_with_header)
            try:
                await page.goto(f"{base}?token={token}")
                await page.wait_for_selector("#conn[data-state=open]", timeout=15000)
                assert await page.evaluate("window.coby.feed.url()") == f"{base.replace('http', 'ws')}ws?token={token}"
                await _until(page, "() => document.querySelectorAll('#timeframes .seg').length > 0")
                await page.wait_for_timeout(500)
                assert api_calls and all(auth == f"Bearer {token}" for _, auth in api_calls), api_calls
                assert watch.problems == []  # no 401 anywhere
            finally:
                await context.close()
    finally:
        await cache.aclose()
        await storage.aclose()


# --- resilience (last: it replaces the daemon) -------------------------------------------------------------
async def test_page_reconnects_by_itself_when_the_daemon_restarts(server, browser):
    """The daemon stops and a new one starts on the same port: the page shows it is reconnecting, then
    reconnects by itself, resubscribes and draws live data again - with no uncaught error and no failed
    request other than the refused connections while the daemon was down."""
    refused = (r"ERR_CONNECTION_REFUSED", r"WebSocket connection to 'ws://127\.0\.0\.1:\d+/ws' failed",
               r"request failed: GET .*/api/v1/.* net::ERR_(ABORTED|EMPTY_RESPONSE|CONNECTION_(RESET|CLOSED))")
    context, page, watch = await _open(browser, server.url, allow=refused)
    try:
        await page.wait_for_selector("#conn[data-state=open]", timeout=15000)
        await _until(page, "() => Number(document.getElementById('heatmap').dataset.columns) >= 2")
        assert await page.get_attribute("#conn", "data-connects") == "1"

        await server.stop()
        await page.wait_for_selector("#conn[data-state=reconnecting]", timeout=15000)
        await asyncio.sleep(1.5)  # a few refused attempts
        await server.start()

        await page.wait_for_selector("#conn[data-state=open]", timeout=20000)
        assert await page.get_attribute("#conn", "data-connects") == "2"
        columns = int(await page.get_attribute("#heatmap", "data-columns"))
        await _until(page, "n => Number(document.getElementById('heatmap').dataset.columns) >= n + 4", arg=columns)
        await _until(page, "() => document.querySelectorAll('#venues .venue[data-live=true]').length === 10",
                     timeout=30)
        await _shot(page, "reconnected-1280x800.png")
        assert [p for p in watch.problems if p.startswith("uncaught")] == []
        assert watch.problems == []
    finally:
        await context.close()
