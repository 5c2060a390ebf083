// The Bookmap-style heatmap: time runs left to right, price bottom to top. Each heatmap message
// (one per aggregation tick) adds a column of price buckets coloured by intensity; the best bid
// and ask of the consolidated book are drawn as lines; trades as bubbles sized by volume.
// Plain canvas: no charting library draws a rolling time x price image.
//
// Time is the data's own (envelope timestamps), not the wall clock, so a replay scrolls at its
// own pace. The heatmap channel drives the clock: channels are ordered only within themselves, so
// the consolidated book and trades may run a little ahead or behind it. A heatmap older than the
// one before it means the stream went back in time (a replay seek): the picture starts afresh.

import { clock, decimalsFor, ms, niceStep, price, size, throttle } from "./format.js";

const BG = "#0b0e14";
const GRID = "rgba(255,255,255,0.06)";
const AXIS_TEXT = "#8b93a7";
const BID = "#26a69a";
const ASK = "#ef5350";
const MAX_WINDOW = 600_000;
const MAX_TRADES = 6000;
const AXIS_W = 64;
const AXIS_H = 18;

// intensity 0..1 -> colour: deep blue, blue, cyan, yellow, orange, white (Bookmap's palette family)
const STOPS = [[0, [13, 27, 62]], [0.2, [21, 70, 160]], [0.4, [0, 160, 200]], [0.6, [120, 220, 120]],
  [0.78, [255, 225, 60]], [0.92, [255, 120, 50]], [1, [255, 255, 255]]];
const LUT = Array.from({ length: 256 }, (_, i) => {
  const x = i / 255;
  let k = 1;
  while (k < STOPS.length - 1 && STOPS[k][0] < x) k += 1;
  const [x0, c0] = STOPS[k - 1];
  const [x1, c1] = STOPS[k];
  const f = (x - x0) / (x1 - x0 || 1);
  const c = c0.map((v, j) => Math.round(v + (c1[j] - v) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
});

export class HeatmapView {
  constructor(canvas, tip) {
    this.canvas = canvas;
    this.tip = tip;
    this.ctx = canvas.getContext("2d");
    this.windowMs = 60_000;
    this.schedule = throttle(() => this.draw(), 100);
    this.reset();
    new ResizeObserver(() => this.resize()).observe(canvas.parentElement);
    canvas.addEventListener("mousemove", (ev) => this.hover(ev));
    canvas.addEventListener("mouseleave", () => { this.tip.hidden = true; });
    this.resize();
  }

  reset() {
    this.columns = []; // {t, bucket, points}
    this.bbo = [];     // {t, bid, ask}
    this.trades = [];  // {t, price, size, side}
    this.head = null;
    this.interval = 500;
    this.gaps = 0;
    this.canvas.dataset.columns = "0";
    this.schedule();
  }

  setWindow(seconds) {
    this.windowMs = Math.min(MAX_WINDOW, seconds * 1000);
    this.schedule();
  }

  /** The right edge: the newest heatmap, or the newest book or trade up to 3 s past it. */
  _advance(t) {
    let head = this.head === null ? t : Math.max(this.head, t);
    const last = this.columns.length ? this.columns[this.columns.length - 1].t : null;
    if (last !== null) head = Math.min(head, last + 3000);
    this.head = head;
  }

  addHeatmap(env) {
    const d = env.data;
    const t = ms(d.timestamp || env.ts);
    if (t == null) return;
    let prev = this.columns[this.columns.length - 1];
    if (prev && t === prev.t) return; // a snapshot we already have
    if (prev && t < prev.t) {
      this.reset();
      prev = undefined;
    }
    // the tick interval, estimated from the gaps between columns; a much longer gap (a feed outage,
    // a replay seek forward) is not one, and is drawn as a gap
    if (prev) {
      const gap = t - prev.t;
      if (this.gaps < 3) { // the first three gaps set the scale (their smallest)
        this.interval = Math.max(50, this.gaps ? Math.min(this.interval, gap) : Math.min(60_000, gap));
      } else if (gap < 4 * this.interval) {
        this.interval = Math.max(50, 0.8 * this.interval + 0.2 * gap);
      }
      this.gaps += 1;
    }
    this.columns.push({ t, bucket: d.bucket_size, points: d.data });
    this._advance(t);
    this._trim();
    this.canvas.dataset.columns = String(this.columns.length);
    this.schedule();
  }

  addBook(env) {
    const d = env.data;
    const t = ms(d.timestamp || env.ts);
    if (t == null) return;
    const prev = this.bbo[this.bbo.length - 1];
    if (prev && t <= prev.t) return;
    this._advance(t);
    this.bbo.push({ t, bid: d.best_bid, ask: d.best_ask });
    this.schedule();
  }

  addTrade(env) {
    const d = env.data;
    const t = ms(d.timestamp);
    if (t == null) return;
    if (this.head !== null && t < this.head - MAX_WINDOW) return;
    this._advance(t);
    this.trades.push({ t, price: d.price, size: d.size, side: d.side });
    if (this.trades.length > MAX_TRADES) this.trades.splice(0, this.trades.length - MAX_TRADES);
    this.schedule();
  }

  _trim() {
    const cut = this.head - MAX_WINDOW;
    const drop = (arr) => {
      let i = 0;
      while (i < arr.length && arr[i].t < cut) i += 1;
      if (i) arr.splice(0, i);
    };
    drop(this.columns);
    drop(this.bbo);
    drop(this.trades);
  }

  resize() {
    const box = this.canvas.parentElement.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.max(100, Math.floor(box.width));
    const h = Math.max(100, Math.floor(box.height));
    this.canvas.style.width = `${w}px`;
    this.canvas.style.height = `${h}px`;
    this.canvas.width = Math.floor(w * dpr);
    this.canvas.height = Math.floor(h * dpr);
    this.dpr = dpr;
    this.cssW = w;
    this.cssH = h;
    this.draw();
  }

  /** The visible price range: every bucket of the visible columns and the best bid and ask. */
  _range(t0) {
    let lo = Infinity;
    let hi = -Infinity;
    let bucket = 0;
    for (const c of this.columns) {
      if (c.t < t0) continue;
      bucket = c.bucket;
      for (const p of c.points) {
        const bottom = p.side === "bid" ? p.price : p.price - c.bucket;
        if (bottom < lo) lo = bottom;
        if (bottom + c.bucket > hi) hi = bottom + c.bucket;
      }
    }
    for (const b of this.bbo) {
      if (b.t < t0) continue;
      for (const v of [b.bid, b.ask]) {
        if (v == null) continue;
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
    }
    if (!Number.isFinite(lo)) return null;
    const pad = bucket || (hi - lo) * 0.05 || 1;
    const minSpan = (bucket || 1) * 10;
    if (hi - lo < minSpan) {
      const mid = (hi + lo) / 2;
      lo = mid - minSpan / 2;
      hi = mid + minSpan / 2;
    }
    return { lo: lo - pad, hi: hi + pad, bucket };
  }

  draw() {
    const { ctx, dpr } = this;
    const W = this.cssW;
    const H = this.cssH;
    if (!W) return;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = BG;
    ctx.fillRect(0, 0, W, H);
    const pw = W - AXIS_W;
    const ph = H - AXIS_H;
    if (this.head === null || !this.columns.length) {
      ctx.fillStyle = AXIS_TEXT;
      ctx.font = "13px system-ui, sans-serif";
      ctx.textAlign = "center";
      ctx.fillText("waiting for the order book…", pw / 2, ph / 2);
      return;
    }
    const head = this.head;
    const t0 = head - this.windowMs;
    const range = this._range(t0);
    if (!range) return;
    const { lo, hi } = range;
    const x = (t) => pw - ((head - t) / this.windowMs) * pw;
    const y = (p) => ph - ((p - lo) / (hi - lo)) * ph;
    this.view = { head, t0, lo, hi, pw, ph, x, y };

    ctx.save();
    ctx.beginPath();
    ctx.rect(0, 0, pw, ph);
    ctx.clip();

    // buckets: one rectangle per (column, bucket), snapped to device pixels so columns do not seam
    const snap = (v) => Math.round(v * dpr) / dpr;
    for (let i = 0; i < this.columns.length; i += 1) {
      const c = this.columns[i];
      const next = this.columns[i + 1];
      const tEnd = next ? Math.min(next.t, c.t + 2 * this.interval) : c.t + this.interval;
      if (tEnd < t0) continue;
      const x0 = snap(x(c.t));
      const x1 = Math.max(x0 + 1 / dpr, snap(x(tEnd)));
      for (const p of c.points) {
        const bottom = p.side === "bid" ? p.price : p.price - c.bucket;
        const y0 = snap(y(bottom + c.bucket));
        const y1 = snap(y(bottom));
        ctx.fillStyle = LUT[Math.max(24, Math.min(255, Math.round(p.intensity * 255)))];
        ctx.fillRect(x0, y0, x1 - x0, Math.max(1 / dpr, y1 - y0));
      }
    }

    // trades: volume bubbles. Trades are summed per (time slot, price step, side) - slots of
    // 1/150 of the window, steps of a tenth of a bucket - so each bubble is where volume traded,
    // its area following the volume relative to the large ones in view.
    const slot = this.windowMs / 150;
    const step = (range.bucket || (hi - lo) / 100) / 10;
    const cells = new Map();
    for (const tr of this.trades) {
      if (tr.t < t0) continue;
      const key = `${Math.floor(tr.t / slot)}|${Math.round(tr.price / step)}|${tr.side}`;
      const c = cells.get(key);
      if (c) {
        c.size += tr.size;
        c.pv += tr.price * tr.size;
        c.tv += tr.t * tr.size;
      } else {
        cells.set(key, { size: tr.size, pv: tr.price * tr.size, tv: tr.t * tr.size, side: tr.side });
      }
    }
    const bubbles = [...cells.values()].filter((c) => c.size > 0);
    if (bubbles.length) {
      const sizes = bubbles.map((c) => c.size).sort((a, b) => a - b);
      const big = sizes[Math.floor(sizes.length * 0.98)] || sizes[sizes.length - 1];
      ctx.lineWidth = 1;
      for (const c of bubbles) {
        const r = 1.5 + 9 * Math.sqrt(Math.min(1.5, c.size / big));
        ctx.beginPath();
        ctx.arc(x(c.tv / c.size), y(c.pv / c.size), r, 0, Math.PI * 2);
        ctx.fillStyle = c.side === "buy" ? "rgba(38,166,154,0.45)" : "rgba(239,83,80,0.45)";
        ctx.strokeStyle = c.side === "buy" ? "rgba(160,255,240,0.7)" : "rgba(255,190,190,0.7)";
        ctx.fill();
        ctx.stroke();
      }
    }
    // best bid and ask as step lines, on top
    for (const [key, colour] of [["bid", BID], ["ask", ASK]]) {
      ctx.strokeStyle = colour;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      let lastY = null;
      let lastT = null;
      for (const b of this.bbo) {
        const v = b[key];
        if (v == null || b.t < t0 - 5000) continue;
        const px = x(b.t);
        const py = y(v);
        if (lastY === null || b.t - lastT > 4 * this.interval) { // the first point, or after a gap
          if (lastY !== null) ctx.lineTo(x(lastT + this.interval), lastY);
          ctx.moveTo(px, py);
        } else {
          ctx.lineTo(px, lastY);
          ctx.lineTo(px, py);
        }
        lastY = py;
        lastT = b.t;
      }
      const started = lastY !== null;
      if (started) ctx.lineTo(pw, lastY);
      ctx.stroke();
    }

    ctx.restore();
    this._axes(range, pw, ph, W, H, x, y, t0, head);
  }

  _axes(range, pw, ph, W, H, x, y, t0, head) {
    const { ctx } = this;
    const { lo, hi } = range;
    ctx.font = "11px ui-monospace, SFMono-Regular, Menlo, monospace";
    ctx.textBaseline = "middle";
    ctx.textAlign = "left";
    const step = niceStep((hi - lo) / Math.max(3, Math.floor(ph / 45)));
    const dec = decimalsFor(step);
    ctx.strokeStyle = GRID;
    ctx.lineWidth = 1;
    for (let p = Math.ceil(lo / step) * step; p <= hi; p += step) {
      const py = Math.round(y(p)) + 0.5;
      ctx.beginPath();
      ctx.moveTo(0, py);
      ctx.lineTo(pw, py);
      ctx.stroke();
      ctx.fillStyle = AXIS_TEXT;
      ctx.fillText(price(p, dec), pw + 6, py);
    }
    // the latest best bid and ask, labelled on the axis
    const last = this.bbo[this.bbo.length - 1];
    const bookDec = Math.max(dec, decimalsFor(range.bucket / 100));
    if (last) {
      for (const [v, colour] of [[last.ask, ASK], [last.bid, BID]]) {
        if (v == null || v < lo || v > hi) continue;
        const py = y(v);
        ctx.fillStyle = colour;
        ctx.fillRect(pw + 1, py - 8, AXIS_W - 1, 16);
        ctx.fillStyle = "#0b0e14";
        ctx.fillText(price(v, bookDec), pw + 4, py);
      }
    }
    // time axis (UTC)
    const secs = this.windowMs / 1000;
    const tStep = [5, 10, 15, 30, 60, 120, 300].find((s) => secs / s <= Math.max(3, pw / 110)) || 600;
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let t = Math.ceil(t0 / (tStep * 1000)) * tStep * 1000; t <= head; t += tStep * 1000) {
      const px = Math.round(x(t)) + 0.5;
      ctx.strokeStyle = GRID;
      ctx.beginPath();
      ctx.moveTo(px, 0);
      ctx.lineTo(px, ph);
      ctx.stroke();
      ctx.fillStyle = AXIS_TEXT;
      if (px > 24 && px < pw - 24) ctx.fillText(clock(t), px, ph + 3);
    }
    ctx.strokeStyle = "rgba(255,255,255,0.15)";
    ctx.strokeRect(0.5, 0.5, pw - 1, ph - 1);
  }

  hover(ev) {
    const v = this.view;
    if (!v) return;
    const r = this.canvas.getBoundingClientRect();
    const px = ev.clientX - r.left;
    const py = ev.clientY - r.top;
    if (px > v.pw || py > v.ph) {
      this.tip.hidden = true;
      return;
    }
    const t = v.head - ((v.pw - px) / v.pw) * this.windowMs;
    const p = v.lo + ((v.ph - py) / v.ph) * (v.hi - v.lo);
    let col = null;
    for (const c of this.columns) if (c.t <= t) col = c; else break;
    let cell = null;
    if (col) {
      for (const q of col.points) {
        const bottom = q.side === "bid" ? q.price : q.price - col.bucket;
        if (p >= bottom && p < bottom + col.bucket) cell = q;
      }
    }
    const dec = decimalsFor((v.hi - v.lo) / 500);
    this.tip.textContent = `${clock(t)}  ${price(p, dec)}` + (cell
      ? `\n${cell.side} ${price(cell.price, decimalsFor(col.bucket))}: ${size(cell.volume)} on ${cell.exchange_count} venue${cell.exchange_count === 1 ? "" : "s"}`
      : "");
    this.tip.hidden = false;
    this.tip.style.left = `${Math.min(px + 12, v.pw - 180)}px`;
    this.tip.style.top = `${Math.max(0, py - 40)}px`;
  }
}
