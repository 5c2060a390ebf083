// coby's dashboard: wires the views to one stream - the live /ws, or a replay session's - and to
// the symbol, timeframe and mode switches. Uses only the public API (docs/api.md).

import * as api from "./api.js";
import { CandlesView } from "./candles.js";
import { Feed } from "./feed.js";
import { el } from "./format.js";
import { columnsFromHistory } from "./heatcolumns.js";
import { HeatmapView } from "./heatmap.js";
import { ImbalanceView } from "./imbalance.js";
import { LadderView } from "./ladder.js";
import { ReplayControls } from "./replay.js";
import { TapeView } from "./tape.js";
import { VenueGrid } from "./venues.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const state = { mode: "live", symbol: null, timeframe: params.get("timeframe") || "1m", symbols: [], timeframes: [] };
const views = {
  heatmap: new HeatmapView($("heatmap"), $("heat-tip"), {
    resolution: $("heat-res"), scale: $("heat-scale"), minimum: $("heat-min"), ramp: $("heat-ramp"),
    scaleText: $("heat-scale-text"), follow: $("heat-follow"),
  }),
  ladder: new LadderView($("ladder"), $("ladder-flags"), $("ladder-legend"), $("ladder-group")),
  tape: new TapeView($("tape"), $("tape-rate")),
  candles: new CandlesView($("chart"), $("candle-info")),
  imbalance: new ImbalanceView($("imbalance")),
  venues: new VenueGrid($("venues"), $("venue-summary")),
};
let feed = null; // the stream feeding the views
let generation = 0; // bumps on every symbol, timeframe or mode change: late REST answers are dropped
const seenTrades = new Set();
const seenOrder = [];

// --- notices and the connection indicator ---------------------------------------------------------
let noticeTimer = null;
function notify(text) {
  console.warn(`coby: ${text}`);
  const n = $("notice");
  n.textContent = text;
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => { n.textContent = ""; }, 8000);
}

function showConnection(feedState) {
  const c = $("conn");
  const replay = state.mode === "replay";
  const labels = {
    idle: replay ? "replay: no session" : "idle", connecting: "connecting…", reconnecting: "reconnecting…",
    open: replay ? "replay stream" : "live", closed: "closed", ended: "replay ended",
  };
  c.dataset.state = feedState;
  c.dataset.connects = String(feed ? feed.connects : 0);
  c.textContent = labels[feedState] || feedState;
}

// --- what the views subscribe to, and where each message goes ----------------------------------------
function channels() {
  const s = state.symbol;
  return [`heatmap:${s}`, `consolidated:${s}`, `metrics:${s}`, `trades:${s}`, `ohlcv:${s}:${state.timeframe}`, "status"];
}

function addTrade(t, { heatmap = true } = {}) {
  const key = `${t.exchange}:${t.trade_id}`;
  if (seenTrades.has(key)) return;
  seenTrades.add(key);
  seenOrder.push(key);
  if (seenOrder.length > 5000) seenTrades.delete(seenOrder.shift());
  views.tape.add(t);
  if (heatmap) views.heatmap.addTrade({ data: t });
  views.venues.trade(t);
}

function dispatch(env) {
  switch (env.channel.split(":", 1)[0]) {
    case "heatmap":
      views.ladder.setBucket(env.data.bucket_size);
      views.heatmap.setConfigured(env.data.bucket_size);
      break;
    case "consolidated":
      views.heatmap.addBook(env);
      views.ladder.update(env);
      break;
    case "metrics":
      views.imbalance.update(env);
      break;
    case "trades":
      addTrade(env.data);
      break;
    case "ohlcv":
      if (!env.data.exchange) views.candles.update(env.data);
      break;
    case "status":
      views.venues.update(env);
      break;
    default:
      break;
  }
}

function resetViews({ venues = false } = {}) {
  views.heatmap.reset();
  views.ladder.reset();
  views.tape.reset();
  views.candles.reset();
  views.imbalance.reset();
  if (venues) views.venues.reset(state.mode === "replay");
  views.tape.replay = state.mode === "replay";
  seenTrades.clear();
  seenOrder.length = 0;
}

// --- live history from REST: stored candles, and the last minutes of trades ----------------------------
const TF_SECONDS = { "1s": 1, "1m": 60, "5m": 300, "15m": 900, "1h": 3600, "4h": 14400, "1d": 86400 };

const WANT_BARS = 400;
const MAX_SPAN = 6.9 * 86400_000; // under api_max_range_days (7 by default)

/** The newest WANT_BARS stored bars: pages back in ranges the API accepts, at most 8 requests. */
async function loadCandles() {
  if (state.mode !== "live") return;
  const gen = generation;
  const tf = state.timeframe;
  const tfMs = (TF_SECONDS[tf] || 60) * 1000;
  let end = Date.now() + tfMs;
  let bars = [];
  const began = performance.now();
  try {
    for (let i = 0; i < 8 && bars.length < WANT_BARS; i += 1) {
      const start = end - Math.min(MAX_SPAN, (WANT_BARS - bars.length + 50) * tfMs);
      const r = await api.get(`/api/v1/ohlcv/${state.symbol}${api.query({ timeframe: tf, start, end, limit: 1000 })}`);
      if (gen !== generation) return;
      bars = [...r.bars, ...bars];
      if (!r.bars.length) break; // older than the stored history
      end = start;
    }
    views.candles.setHistory(bars);
    $("chart").dataset.historyMs = String(Math.round(performance.now() - began));
  } catch (e) {
    notify(`candles: ${e.message}`);
  }
}

async function loadTrades() {
  if (state.mode !== "live") return;
  const gen = generation;
  try {
    const r = await api.get(`/api/v1/trades/${state.symbol}${api.query({ start: Date.now() - 180_000, order: "desc", limit: 200 })}`);
    if (gen === generation) for (const t of r.trades.reverse()) addTrade(t, { heatmap: false }); // it loads its own
  } catch (e) {
    notify(`trades: ${e.message}`);
  }
}

// The heatmap's window from stored snapshots at its resolution, and its trades; the newest request wins.
let heatLoads = 0;
async function loadHeatmap() {
  if (state.mode !== "live") return;
  const gen = generation;
  const load = ++heatLoads;
  const hv = views.heatmap;
  const path = `/api/v1/heatmap/${state.symbol}/history`;
  try {
    hv.loading = true;
    const began = performance.now();
    hv.setConfigured((state.bucketSizes || {})[state.symbol]); // sets the resolutions on offer
    if (hv.bucket === null) { // a daemon without bucket_sizes in /api/v1/symbols: ask the route
      const r = await api.get(`${path}${api.query({ start: Date.now() - 1000 })}`);
      if (gen !== generation || load !== heatLoads) return;
      hv.setConfigured(r.configured_bucket_size);
    }
    const bucket = hv.bucket;
    const start = Math.round(Date.now() - hv.windowMs);
    const [h, t] = await Promise.all([ // no end: the daemon's now, so no column is ahead of its live books
      // about 300 columns: finer than a screen needs only costs the daemon time (it reads every snapshot)
      api.get(`${path}${api.query({ start, bucket_size: bucket, step: Math.max(1, hv.windowMs / 300_000) })}`),
      api.get(`/api/v1/trades/${state.symbol}${api.query({ start, order: "desc", limit: 1000 })}`),
    ]);
    if (gen !== generation || load !== heatLoads || bucket !== hv.bucket) return;
    const trades = t.trades.reverse().map((x) => ({ t: Date.parse(x.timestamp), price: x.price, size: x.size, side: x.side }));
    hv.setHistory(columnsFromHistory(h), trades);
    $("heatmap").dataset.historyMs = String(Math.round(performance.now() - began)); // for tests and the curious
  } catch (e) {
    hv.loading = false;
    notify(`heatmap: ${e.message}`);
  }
}
views.heatmap.onNeedHistory = () => loadHeatmap();
views.heatmap.onWindow = (windowMs) => { // a zoomed window matches no button
  for (const b of $("heat-window").children) b.classList.toggle("active", Number(b.dataset.window) * 1000 === windowMs);
};

// --- streams ------------------------------------------------------------------------------------------
function openFeed(path, reconnect) {
  if (feed) feed.close();
  const f = new Feed(() => api.wsUrl(path), {
    onEnvelope: (env) => { if (f === feed) dispatch(env); },
    onState: (s) => {
      if (f !== feed) return;
      showConnection(s);
      if (s === "open" && state.mode === "live") { // history first (again after a reconnect: fills the gap)
        loadCandles();
        loadHeatmap();
      }
    },
    onError: (text) => notify(text),
    reconnect,
  });
  feed = f;
  window.coby.feed = f;
  f.setChannels(channels());
  f.open();
  return f;
}

function closeFeed() {
  if (feed) feed.close();
  feed = null;
  showConnection("idle");
}

// --- switches -------------------------------------------------------------------------------------------
function setUrl() {
  const q = new URLSearchParams(location.search);
  q.set("symbol", state.symbol);
  q.set("timeframe", state.timeframe);
  history.replaceState(null, "", `${location.pathname}?${q}`);
}

function setSymbol(symbol) {
  state.symbol = symbol;
  generation += 1;
  resetViews();
  setUrl();
  if (feed) feed.setChannels(channels());
  loadCandles();
  loadTrades();
  loadHeatmap();
}

function setTimeframe(tf) {
  state.timeframe = tf;
  generation += 1;
  for (const b of $("timeframes").children) b.classList.toggle("active", b.dataset.tf === tf);
  views.candles.reset();
  views.candles.setTimeframe(tf);
  setUrl();
  if (feed) feed.setChannels(channels());
  loadCandles();
}

const replay = new ReplayControls({
  start: $("replay-start"), end: $("replay-end"), speed: $("replay-speed"), play: $("replay-play"),
  pause: $("replay-pause"), stop: $("replay-stop"), seek: $("replay-seek"), state: $("replay-state"),
  position: $("replay-position"),
}, {
  openStream: (id) => {
    generation += 1;
    resetViews({ venues: true });
    return openFeed(`/api/v1/replay/${id}/ws`, false);
  },
  closeStream: () => closeFeed(),
  notify,
  earliest: async () => {
    const r = await api.get(`/api/v1/trades/${state.symbol}${api.query({ start: Date.now() - 6 * 86400_000, limit: 1 })}`);
    return r.trades.length ? Date.parse(r.trades[0].timestamp) : null;
  },
});

async function setMode(mode) {
  if (mode === state.mode) return;
  state.mode = mode;
  generation += 1;
  document.body.dataset.mode = mode;
  for (const [id, m] of [["mode-live", "live"], ["mode-replay", "replay"]]) {
    $(id).classList.toggle("active", m === mode);
    $(id).setAttribute("aria-selected", String(m === mode));
  }
  $("replay").hidden = mode !== "replay";
  resetViews({ venues: true });
  if (mode === "replay") {
    closeFeed();
    replay.show();
  } else {
    await replay.leave();
    openFeed("/ws", true);
    loadTrades();
  }
}

// --- start ------------------------------------------------------------------------------------------------
async function start() {
  let info;
  for (;;) {
    try {
      info = await api.get("/api/v1/symbols");
      break;
    } catch (e) {
      showConnection("reconnecting");
      notify(`waiting for the daemon: ${e.message}`);
      await new Promise((r) => setTimeout(r, 2000));
    }
  }
  state.symbols = info.symbols;
  state.timeframes = info.timeframes;
  state.bucketSizes = info.bucket_sizes || {};
  const wanted = (params.get("symbol") || "").toUpperCase();
  state.symbol = state.symbols.includes(wanted) ? wanted : state.symbols[0];
  if (!state.timeframes.includes(state.timeframe)) state.timeframe = state.timeframes.includes("1m") ? "1m" : state.timeframes[0];
  views.candles.setTimeframe(state.timeframe);

  const select = $("symbol");
  select.replaceChildren(...state.symbols.map((s) => el("option", { value: s, text: s })));
  select.value = state.symbol;
  select.addEventListener("change", () => setSymbol(select.value));

  $("timeframes").replaceChildren(...state.timeframes.map((tf) => {
    const b = el("button", { type: "button", class: `seg${tf === state.timeframe ? " active" : ""}`, dataset: { tf }, text: tf });
    b.addEventListener("click", () => setTimeframe(tf));
    return b;
  }));
  for (const b of $("heat-window").children) {
    b.addEventListener("click", () => views.heatmap.setWindow(Number(b.dataset.window)));
  }
  $("mode-live").addEventListener("click", () => setMode("live"));
  $("mode-replay").addEventListener("click", () => setMode("replay"));
  views.venues.setVenues(info.exchanges);

  setUrl();
  document.body.dataset.mode = "live";
  openFeed("/ws", true);
  loadTrades();
  document.body.dataset.ready = "true";
}

window.coby = { state, views, feed: null, replay };
start();
