// Painting the heatmap (plain canvas): liquidity cells, trade bubbles under the best bid/ask lines, axes.
// ``paint(view)`` reads the view's state and returns what it drew (the visible ranges, rows, scale),
// which the view keeps for hovering and exposes as data-* attributes for tests.

import { LUT, bucketKey, quantile, scaler } from "./heatcolumns.js";
import { clock, decimalsFor, niceStep, price } from "./format.js";

export const BG = "#0b0e14";
const GRID = "rgba(255,255,255,0.06)";
const AXIS_TEXT = "#8b93a7";
const BID = "#26a69a";
const ASK = "#ef5350";
export const AXIS_W = 64;
export const AXIS_H = 18;
export const GAP_MS = 5000; // columns further apart than this are drawn with a gap between them
const R_MIN = 2;
const R_MAX = 16; // px: the cap of a bubble's radius
const CONTRAST_Q = 0.97; // auto-contrast: full colour at this quantile of the visible cells

/** The time and price ranges in view: following, the newest data at the right and the mid in the middle. */
export function viewport(v, pw, ph) {
  const head = v.follow ? v.latest : v.head;
  const t0 = head - v.windowMs;
  let centre = v.centre;
  if (v.follow || centre == null) {
    const last = v.columns[v.columns.length - 1];
    if (last && last.bid != null && last.ask != null) centre = (last.bid + last.ask) / 2;
  }
  const lo = centre - v.span / 2;
  const hi = centre + v.span / 2;
  return { head, t0, lo, hi, pw, ph, centre, x: (t) => pw - ((head - t) / v.windowMs) * pw,
    y: (p) => ph - ((p - lo) / (hi - lo)) * ph };
}

function cellSpan(c, side, b) {
  return side === "bid" ? [c[0], c[0] + b] : [c[0] - b, c[0]];
}

/** Paint everything; returns the viewport with what it drew. */
export function paint(v, ctx, W, H, dpr) {
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.fillStyle = BG;
  ctx.fillRect(0, 0, W, H);
  const pw = W - AXIS_W;
  const ph = H - AXIS_H;
  if (!v.columns.length || v.latest == null || !(v.span > 0)) {
    ctx.fillStyle = AXIS_TEXT;
    ctx.font = "13px system-ui, sans-serif";
    ctx.textAlign = "center";
    ctx.fillText(v.loading ? "loading history…" : "waiting for the order book…", pw / 2, ph / 2);
    return null;
  }
  const vp = viewport(v, pw, ph);
  const { t0, head, lo, hi, x, y } = vp;
  const b = v.bucket;
  // the visible columns, each with its right edge
  const cols = [];
  for (let i = 0; i < v.columns.length; i += 1) {
    const c = v.columns[i];
    const next = v.columns[i + 1];
    const end = next && next.t - c.t <= GAP_MS ? next.t : Math.min(c.t + GAP_MS, next ? next.t : Math.max(head, c.t + 1000));
    if (end < t0 || c.t > head) continue;
    cols.push([c, end]);
  }
  const volumes = [];
  for (const [c] of cols) {
    for (const side of ["bids", "asks"]) for (const cell of c[side]) if (cell[0] >= lo - b && cell[0] <= hi + b) volumes.push(cell[1]);
  }
  const ref = quantile(volumes, CONTRAST_Q);
  const colour = scaler(v.scale, ref);
  const snap = (p) => Math.round(p * dpr) / dpr;
  const rows = new Set();
  let left = pw;
  ctx.save();
  ctx.beginPath();
  ctx.rect(0, 0, pw, ph);
  ctx.clip();
  for (const [c, end] of cols) {
    const x0 = snap(Math.max(0, x(c.t)));
    const x1 = Math.max(x0 + 1 / dpr, snap(Math.min(pw, x(end))));
    if (x0 < left) left = x0;
    for (const [side, key] of [["bid", "bids"], ["ask", "asks"]]) {
      for (const cell of c[key]) {
        const [bottom, top] = cellSpan(cell, side, b);
        if (top < lo || bottom > hi) continue;
        const y0 = snap(y(top));
        const y1 = snap(y(bottom));
        ctx.fillStyle = LUT[Math.max(20, colour(cell[1]))];
        ctx.fillRect(x0, y0, x1 - x0, Math.max(1 / dpr, y1 - y0));
        rows.add(Math.round(bottom / b));
      }
    }
  }
  drawBubbles(v, ctx, vp);
  drawBbo(v, ctx, vp);
  ctx.restore();
  axes(v, ctx, vp, W, H);
  return { ...vp, rows: rows.size, ref, left: left / pw };
}

/** Trades summed per (moment, price bucket, side) - aggr's habit - sized by notional, capped, filtered. */
function drawBubbles(v, ctx, vp) {
  const { t0, head, lo, hi, x, y } = vp;
  const slot = Math.max(250, v.windowMs / 300);
  const cells = new Map();
  for (const tr of v.trades) {
    if (tr.t < t0 || tr.t > head || tr.price < lo || tr.price > hi) continue;
    const key = `${Math.floor(tr.t / slot)}|${bucketKey(tr.price, v.bucket, "bid")}|${tr.side}`;
    let c = cells.get(key);
    if (!c) cells.set(key, (c = { size: 0, notional: 0, pv: 0, tv: 0, n: 0, side: tr.side }));
    c.size += tr.size;
    c.notional += tr.price * tr.size;
    c.pv += tr.price * tr.size;
    c.tv += tr.t * tr.size;
    c.n += 1;
  }
  const shown = [...cells.values()].filter((c) => c.size > 0 && c.notional >= v.minNotional);
  v.bubbles = shown.length;
  if (!shown.length) return;
  const big = quantile(shown.map((c) => c.notional), 0.98) || 1;
  ctx.lineWidth = 1;
  for (const c of shown.sort((a, b) => b.notional - a.notional)) { // small ones on top
    const r = Math.min(R_MAX, R_MIN + (R_MAX - R_MIN) * Math.sqrt(c.notional / big));
    ctx.beginPath();
    ctx.arc(x(c.tv / c.size), y(c.pv / c.size), r, 0, Math.PI * 2);
    ctx.fillStyle = c.side === "buy" ? "rgba(38,166,154,0.35)" : "rgba(239,83,80,0.35)";
    ctx.strokeStyle = c.side === "buy" ? "rgba(160,255,240,0.6)" : "rgba(255,190,190,0.6)";
    ctx.fill();
    ctx.stroke();
  }
}

/** The best bid and ask as step lines over the bubbles, each with a dark casing so it reads on white cells. */
function drawBbo(v, ctx, vp) {
  for (const [key, colour] of [["bid", BID], ["ask", ASK]]) {
    bboPath(v, ctx, vp, key);
    ctx.strokeStyle = "rgba(0,0,0,0.75)";
    ctx.lineWidth = 3.5;
    ctx.stroke();
    ctx.strokeStyle = colour;
    ctx.lineWidth = 1.5;
    ctx.stroke();
  }
}

function bboPath(v, ctx, vp, key) {
  const { t0, x, y, pw } = vp;
  ctx.beginPath();
  let lastY = null;
  let lastT = null;
  for (const c of v.columns) {
    const p = c[key];
    if (p == null || c.t < t0 - GAP_MS) continue;
    const px = x(c.t);
    const py = y(p);
    if (lastY === null || c.t - lastT > GAP_MS) {
      if (lastY !== null) ctx.lineTo(x(lastT + 1000), lastY);
      ctx.moveTo(px, py);
    } else {
      ctx.lineTo(px, lastY);
      ctx.lineTo(px, py);
    }
    lastY = py;
    lastT = c.t;
  }
  if (lastY !== null) ctx.lineTo(Math.min(pw, x(lastT + GAP_MS)), lastY);
}

function axes(v, ctx, vp, W, H) {
  const { lo, hi, pw, ph, x, y, t0, head } = vp;
  ctx.font = "11px ui-monospace, SFMono-Regular, Menlo, monospace";
  ctx.textBaseline = "middle";
  ctx.textAlign = "left";
  const last = v.columns[v.columns.length - 1];
  const marks = [last.ask, last.bid].filter((p) => p != null && p >= lo && p <= hi).map((p) => y(p));
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
    if (py < 7 || py > ph - 7 || marks.some((m) => Math.abs(m - py) < 14)) continue; // never cut, never under a mark
    ctx.fillStyle = AXIS_TEXT;
    ctx.fillText(price(p, dec), pw + 6, py);
  }
  const bookDec = Math.max(dec, decimalsFor(v.bucket / 10));
  for (const [p, colour] of [[last.ask, ASK], [last.bid, BID]]) {
    if (p == null || p < lo || p > hi) continue;
    const py = Math.min(ph - 8, Math.max(8, y(p)));
    ctx.fillStyle = colour;
    ctx.fillRect(pw + 1, py - 8, AXIS_W - 1, 16);
    ctx.fillStyle = BG;
    ctx.fillText(price(p, bookDec), pw + 4, py);
  }
  const secs = v.windowMs / 1000;
  const tStep = [1, 2, 5, 10, 15, 30, 60, 120, 300].find((s) => secs / s <= Math.max(3, pw / 110)) || 600;
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

/** The column and cell under a point of the plot, for the tooltip. */
export function cellAt(v, vp, px, py) {
  const t = vp.head - ((vp.pw - px) / vp.pw) * v.windowMs;
  const p = vp.lo + ((vp.ph - py) / vp.ph) * (vp.hi - vp.lo);
  let lo = 0;
  let hi = v.columns.length - 1;
  let col = null;
  while (lo <= hi) { // the last column at or before t
    const mid = (lo + hi) >> 1;
    if (v.columns[mid].t <= t) {
      col = v.columns[mid];
      lo = mid + 1;
    } else hi = mid - 1;
  }
  if (col && t - col.t > GAP_MS) col = null;
  let cell = null;
  let side = null;
  if (col) {
    for (const [s, key] of [["bid", "bids"], ["ask", "asks"]]) {
      for (const c of col[key]) {
        const [bottom, top] = cellSpan(c, s, v.bucket);
        if (p >= bottom && p < top) {
          cell = c;
          side = s;
        }
      }
    }
  }
  return { t, p, col, cell, side };
}
