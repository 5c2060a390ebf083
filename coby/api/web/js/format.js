// Shared helpers: venue colours, number and time formatting, a tiny DOM builder.

export const VENUE_COLOURS = {
  binance: "#f0b90b", coinbase: "#3d7bff", kraken: "#8d6bff", bybit: "#ff9f1c", okx: "#e8e8e8",
  htx: "#2fb8d8", kucoin: "#23c38e", gate: "#e2556a", bitfinex: "#9ccc65", mexc: "#4e8fd6",
};
const SPARE = ["#c678dd", "#56b6c2", "#d19a66", "#98c379", "#e06c75"];

export function venueColour(name) {
  if (VENUE_COLOURS[name]) return VENUE_COLOURS[name];
  let h = 0;
  for (const c of name) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return SPARE[h % SPARE.length];
}

/** Milliseconds since the epoch from an RFC 3339 string (null stays null). */
export function ms(ts) {
  return ts == null ? null : Date.parse(ts);
}

export function pad(n, w = 2) {
  return String(n).padStart(w, "0");
}

/** HH:MM:SS (UTC: the API's times are UTC, and so is every label of the dashboard). */
export function clock(t, millis = false) {
  const d = new Date(t);
  const s = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
  return millis ? `${s}.${pad(d.getUTCMilliseconds(), 3)}` : s;
}

/** Digits after the point that show a step (10 -> 0, 0.5 -> 1, 0.01 -> 2). */
export function decimalsFor(step) {
  if (!(step > 0)) return 2;
  return Math.max(0, Math.min(8, Math.ceil(-Math.log10(step) - 1e-9)));
}

export function price(p, decimals = 2) {
  return p == null || !Number.isFinite(p) ? "—" : p.toLocaleString("en-US", {
    minimumFractionDigits: decimals, maximumFractionDigits: decimals,
  });
}

/** A size with about four significant digits (0.0123, 1.234, 12.35, 1,235). */
export function size(v) {
  if (v == null || !Number.isFinite(v)) return "—";
  const a = Math.abs(v);
  const d = a >= 1000 ? 0 : a >= 100 ? 1 : a >= 10 ? 2 : a >= 1 ? 3 : 4;
  return v.toLocaleString("en-US", { minimumFractionDigits: d, maximumFractionDigits: d });
}

export function signed(v, digits = 2) {
  if (v == null || !Number.isFinite(v)) return "—";
  return (v > 0 ? "+" : "") + v.toFixed(digits);
}

/** el("div", {class: "x", dataset: {a: 1}}, child, "text") */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "dataset") Object.assign(node.dataset, v);
    else if (k === "style") node.style.cssText = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

/** Calls fn at most once per animation frame, however often schedule() is called. */
export function frameThrottle(fn) {
  let pending = false;
  return function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => {
      pending = false;
      fn();
    });
  };
}

/** Calls fn at most once per `interval` ms (and once more after the last call), each time in an animation frame. */
export function throttle(fn, interval) {
  let last = 0;
  let timer = null;
  const run = frameThrottle(() => {
    last = performance.now();
    fn();
  });
  return function schedule() {
    if (timer !== null) return;
    const wait = Math.max(0, last + interval - performance.now());
    timer = setTimeout(() => {
      timer = null;
      run();
    }, wait);
  };
}

/** A round step (1, 2, 2.5 or 5 times a power of ten) near `raw`. */
export function niceStep(raw) {
  if (!(raw > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(raw));
  const f = raw / p;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * p;
}
