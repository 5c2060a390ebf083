// The Bookmap-style heatmap: time runs left to right, price bottom to top; each column is the
// consolidated book at one moment in cells of the chosen resolution, coloured by size; the best
// bid and ask as lines; trades as bubbles under them. History first: the app fills the window
// from GET /api/v1/heatmap/{symbol}/history (setHistory), then live columns come from the
// consolidated book (addBook), at the same resolution.
//
// Time is the data's own, so a replay scrolls at its own pace; a book older than the last column
// means the stream went back in time (a replay seek) and the picture starts afresh.
// Zoom and pan: the wheel zooms time, shift+wheel (or the wheel over the price axis, or a pinch)
// zooms price; dragging pans both and stops following the price; a double-click follows again.

import { GRADIENT, columnFromBook, resolutions, tickOf } from "./heatcolumns.js";
import { AXIS_W, GAP_MS, cellAt, paint } from "./heatdraw.js";
import { clock, decimalsFor, el, price, size, throttle } from "./format.js";

const MAX_WINDOW = 600_000;
const MIN_WINDOW = 15_000;
const MAX_TRADES = 20_000;
const DEFAULT_ROWS = 60; // rows in view at the default resolution
const DEFAULT_FRACTION = 0.1; // of the configured bucket

export class HeatmapView {
  /** controls: {resolution, scale, minimum (select elements), ramp, scaleText, follow (button)} */
  constructor(canvas, tip, controls) {
    this.canvas = canvas;
    this.tip = tip;
    this.c = controls;
    this.ctx = canvas.getContext("2d");
    this.windowMs = 60_000;
    this.scale = controls.scale.value;
    this.minNotional = Number(controls.minimum.value);
    this.onNeedHistory = () => {};
    this.onWindow = () => {}; // the window changed (a button, the wheel, a pinch)
    this.schedule = throttle(() => this.draw(), 100);
    controls.ramp.style.background = GRADIENT;
    controls.scale.addEventListener("change", () => { this.scale = controls.scale.value; this.schedule(); });
    controls.minimum.addEventListener("change", () => { this.minNotional = Number(controls.minimum.value); this.schedule(); });
    controls.resolution.addEventListener("change", () => this.setResolution(Number(controls.resolution.value)));
    controls.follow.addEventListener("click", () => this.setFollow(true));
    this.reset();
    new ResizeObserver(() => this.resize()).observe(canvas.parentElement);
    this._interactions();
    this.resize();
  }

  /** A new symbol (or mode): everything goes, the resolution too. */
  reset() {
    this.configured = null;
    this.tick = null;
    this.bucket = null;
    this.span = null;
    this.c.resolution.replaceChildren();
    this.clear();
  }

  /** The picture goes, the settings stay (a new resolution, a replay seek). */
  clear() {
    this.columns = []; // {t, bids, asks, bid, ask}, oldest first
    this.trades = [];  // {t, price, size, side}
    this.latest = null;
    this.loading = false;
    this.setFollow(true);
    this.canvas.dataset.columns = "0";
    this.schedule();
  }

  setFollow(on) {
    this.follow = on;
    this.head = null;
    this.centre = null;
    this.c.follow.hidden = on;
    this.schedule();
  }

  /** The symbol's configured bucket (from the history route or the heatmap channel): sets the choices. */
  setConfigured(bucket) {
    if (!(bucket > 0) || bucket === this.configured) return;
    this.configured = bucket;
    this._options();
  }

  _options() {
    const choices = resolutions(this.configured, this.tick);
    if (this.bucket === null || !choices.includes(this.bucket)) {
      const want = this.configured * DEFAULT_FRACTION;
      this.bucket = choices.find((b) => b <= want * (1 + 1e-9)) || choices[choices.length - 1];
    }
    this.c.resolution.replaceChildren(...choices.map((b) => el("option", { value: String(b),
      text: price(b, decimalsFor(b)) })));
    this.c.resolution.value = String(this.bucket);
    this.canvas.dataset.bucket = String(this.bucket);
  }

  setResolution(bucket) {
    if (bucket === this.bucket) return;
    this.bucket = bucket;
    this.c.resolution.value = String(bucket);
    this.canvas.dataset.bucket = String(bucket);
    const trades = this.trades;
    this.clear();
    this.trades = trades;
    this.onNeedHistory();
  }

  setWindow(seconds) {
    this.windowMs = Math.round(Math.min(MAX_WINDOW, Math.max(MIN_WINDOW, seconds * 1000)));
    this.onWindow(this.windowMs);
    if (this.columns.length && this.columns[0].t > (this.latest || 0) - this.windowMs + GAP_MS) {
      clearTimeout(this.widen); // a wheel turn is many events: one load when it stops
      this.widen = setTimeout(() => this.onNeedHistory(), 250);
    }
    this.schedule();
  }

  /** Stored columns (and trades) for the window: live ones newer than the history stay. */
  setHistory(columns, trades) {
    const lastT = columns.length ? columns[columns.length - 1].t : -Infinity;
    this.columns = [...columns, ...this.columns.filter((c) => c.t > lastT)];
    if (trades) {
      const tradeT = trades.length ? trades[trades.length - 1].t : -Infinity;
      this.trades = [...trades, ...this.trades.filter((t) => t.t > tradeT)];
    }
    if (this.columns.length) this.latest = Math.max(this.latest || 0, this.columns[this.columns.length - 1].t);
    this.loading = false;
    this._trim();
    this.schedule();
  }

  addBook(env) {
    const d = env.data;
    const t = Date.parse(d.timestamp || env.ts);
    if (!Number.isFinite(t)) return;
    if (this.tick === null && this.configured) {
      this.tick = tickOf(d);
      if (this.tick) this._options();
    }
    if (this.bucket === null) return;
    const prev = this.columns[this.columns.length - 1];
    if (prev && t <= prev.t) {
      if (t < prev.t - 2000) this.clear(); // time went back: a replay seek
      else return;
    }
    this.columns.push(columnFromBook(t, d, this.bucket));
    this.latest = Math.max(this.latest || 0, t);
    this._trim();
    this.schedule();
  }

  addTrade(env) {
    const d = env.data;
    const t = Date.parse(d.timestamp);
    if (!Number.isFinite(t) || (this.latest !== null && t < this.latest - MAX_WINDOW)) return;
    this.trades.push({ t, price: d.price, size: d.size, side: d.side });
    if (this.trades.length > MAX_TRADES) this.trades.splice(0, this.trades.length - MAX_TRADES);
    this.schedule();
  }

  _trim() {
    const cut = (this.latest || 0) - MAX_WINDOW - GAP_MS;
    let i = 0;
    while (i < this.columns.length && this.columns[i].t < cut) i += 1;
    if (i) this.columns.splice(0, i);
    this.canvas.dataset.columns = String(this.columns.length);
  }

  resize() {
    const box = this.canvas.parentElement.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    this.cssW = Math.max(100, Math.floor(box.width));
    this.cssH = Math.max(100, Math.floor(box.height));
    this.canvas.style.width = `${this.cssW}px`;
    this.canvas.style.height = `${this.cssH}px`;
    this.canvas.width = Math.floor(this.cssW * dpr);
    this.canvas.height = Math.floor(this.cssH * dpr);
    this.dpr = dpr;
    this.draw();
  }

  /** The first picture sets the price span: DEFAULT_ROWS rows, or the best bid/ask's range in the window. */
  _defaultSpan() {
    if (this.span || !this.columns.length || this.bucket === null) return;
    let lo = Infinity;
    let hi = -Infinity;
    for (const c of this.columns) {
      if (c.t < this.latest - this.windowMs) continue;
      for (const p of [c.bid, c.ask]) if (p != null) { lo = Math.min(lo, p); hi = Math.max(hi, p); }
    }
    if (!Number.isFinite(lo)) return;
    this.span = Math.max(DEFAULT_ROWS * this.bucket, 1.3 * (hi - lo));
  }

  draw() {
    if (!this.cssW) return;
    this._defaultSpan();
    this.vp = paint(this, this.ctx, this.cssW, this.cssH, this.dpr);
    const ds = this.canvas.dataset;
    if (!this.vp) {
      ds.rows = "0";
      return;
    }
    const { lo, hi, rows, ref, left } = this.vp;
    Object.assign(ds, { rows: String(rows), lo: String(lo), hi: String(hi), painted: (1 - left).toFixed(3),
      windowMs: String(this.windowMs), bubbles: String(this.bubbles || 0), follow: String(this.follow) });
    const text = `${this.scale} · full colour ≥ ${size(ref)}`;
    if (this.c.scaleText.textContent !== text) this.c.scaleText.textContent = text;
  }

  // --- zoom, pan, hover -----------------------------------------------------------------------------
  _fix() { // leave following: the view stays where it is
    if (!this.follow || !this.vp) return;
    this.follow = false;
    this.head = this.vp.head;
    this.centre = this.vp.centre;
    this.c.follow.hidden = false;
  }

  zoomPrice(factor, atY) {
    if (!this.vp || !this.span) return;
    const { lo, hi, ph } = this.vp;
    const p = atY == null ? (lo + hi) / 2 : lo + ((ph - atY) / ph) * (hi - lo);
    const span = Math.min(2000 * this.bucket, Math.max(4 * this.bucket, this.span * factor));
    if (!this.follow) this.centre = p - (p - this.vp.centre) * (span / this.span);
    this.span = span;
    this.schedule();
  }

  zoomTime(factor) {
    this.setWindow((this.windowMs * factor) / 1000);
  }

  _interactions() {
    const cv = this.canvas;
    cv.style.touchAction = "none";
    cv.addEventListener("wheel", (ev) => {
      ev.preventDefault();
      const r = cv.getBoundingClientRect();
      const factor = Math.exp(Math.sign(ev.deltaY) * Math.min(0.5, Math.abs(ev.deltaY) / 400));
      if (ev.shiftKey || ev.ctrlKey || ev.clientX - r.left > this.cssW - AXIS_W) this.zoomPrice(factor, ev.clientY - r.top);
      else this.zoomTime(factor);
    }, { passive: false });
    const pointers = new Map();
    let pinch = null;
    cv.addEventListener("pointerdown", (ev) => {
      cv.setPointerCapture(ev.pointerId);
      pointers.set(ev.pointerId, { x: ev.clientX, y: ev.clientY });
      if (pointers.size === 2) {
        const [a, b] = [...pointers.values()];
        pinch = { dy: Math.max(20, Math.abs(a.y - b.y)), dx: Math.max(20, Math.abs(a.x - b.x)), span: this.span,
          window: this.windowMs };
      }
    });
    cv.addEventListener("pointermove", (ev) => {
      const prev = pointers.get(ev.pointerId);
      if (!prev) return this.hover(ev);
      const now = { x: ev.clientX, y: ev.clientY };
      pointers.set(ev.pointerId, now);
      if (pointers.size === 2 && pinch) {
        const [a, b] = [...pointers.values()];
        this.span = pinch.span * (pinch.dy / Math.max(20, Math.abs(a.y - b.y)));
        this.setWindow((pinch.window * (pinch.dx / Math.max(20, Math.abs(a.x - b.x)))) / 1000);
        return undefined;
      }
      if (pointers.size !== 1 || !this.vp) return undefined;
      this._fix();
      this.head -= ((now.x - prev.x) / this.vp.pw) * this.windowMs;
      this.head = Math.min(this.latest, Math.max(this.latest - MAX_WINDOW + this.windowMs / 2, this.head));
      this.centre += ((now.y - prev.y) / this.vp.ph) * (this.vp.hi - this.vp.lo);
      this.tip.hidden = true;
      this.schedule();
      return undefined;
    });
    const up = (ev) => {
      pointers.delete(ev.pointerId);
      if (pointers.size < 2) pinch = null;
    };
    cv.addEventListener("pointerup", up);
    cv.addEventListener("pointercancel", up);
    cv.addEventListener("dblclick", () => this.setFollow(true));
    cv.addEventListener("mouseleave", () => { this.tip.hidden = true; });
  }

  hover(ev) {
    const vp = this.vp;
    if (!vp) return;
    const r = this.canvas.getBoundingClientRect();
    const px = ev.clientX - r.left;
    const py = ev.clientY - r.top;
    if (px > vp.pw || py > vp.ph) {
      this.tip.hidden = true;
      return;
    }
    const { t, p, cell, side } = cellAt(this, vp, px, py);
    const b = this.bucket;
    const dec = decimalsFor(b);
    const lines = [`${clock(t)}  ${price(p, Math.max(dec, decimalsFor((vp.hi - vp.lo) / 500)))}`];
    if (cell) {
      const [bottom, top] = side === "bid" ? [cell[0], cell[0] + b] : [cell[0] - b, cell[0]];
      lines.push(`${side} ${price(bottom, dec)} – ${price(top, dec)}: ${size(cell[1])} on ${cell[2]} venue${cell[2] === 1 ? "" : "s"}`);
      const venues = Object.entries(cell[3] || {}).sort((x, y) => y[1] - x[1]);
      for (const [v, s] of venues.slice(0, 6)) lines.push(`  ${v} ${size(s)}`);
      if (venues.length > 6) lines.push(`  … ${venues.length - 6} more`);
    }
    this.tip.textContent = lines.join("\n");
    this.tip.hidden = false;
    this.tip.style.left = `${Math.max(0, Math.min(px + 12, vp.pw - 220))}px`;
    this.tip.style.top = `${Math.max(0, Math.min(py - 40, vp.ph - 20 * lines.length))}px`;
  }
}
