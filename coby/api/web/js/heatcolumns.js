// The heatmap's data: columns of price cells at the chosen resolution, from the consolidated book
// (live) or from GET /api/v1/heatmap/{symbol}/history (stored snapshots), and the colour scale.
//
// A column is {t, bids, asks, bid, ask}: t its time (ms), bid/ask the best bid and ask, and each
// side a list of cells [price, size, venues, perVenue] - price the bucket's key the way coby makes
// buckets (bids floor, keyed by the lower edge; asks ceil, keyed by the upper edge: docs/aggregation.md),
// venues how many venues have size there, perVenue {venue: size} (live columns only).

// intensity 0..1 -> colour: deep blue, blue, cyan, green, yellow, orange, white (Bookmap's palette family)
export const STOPS = [[0, [13, 27, 62]], [0.2, [21, 70, 160]], [0.4, [0, 160, 200]], [0.6, [120, 220, 120]],
  [0.78, [255, 225, 60]], [0.92, [255, 120, 50]], [1, [255, 255, 255]]];
export const LUT = Array.from({ length: 256 }, (_, i) => {
  const x = i / 255;
  let k = 1;
  while (k < STOPS.length - 1 && STOPS[k][0] < x) k += 1;
  const [x0, c0] = STOPS[k - 1];
  const [x1, c1] = STOPS[k];
  const f = (x - x0) / (x1 - x0 || 1);
  const c = c0.map((v, j) => Math.round(v + (c1[j] - v) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
});
/** The palette as a CSS gradient (the legend's ramp). */
export const GRADIENT = `linear-gradient(90deg, ${STOPS.map(([x, c]) => `rgb(${c.join(",")}) ${x * 100}%`).join(", ")})`;

const EPS = 1e-9;

/** The bucket key of a price: floor for bids, ceil for asks, on a grid of ``bucket``. */
export function bucketKey(p, bucket, side) {
  const q = p / bucket;
  const n = side === "bid" ? Math.floor(q + EPS) : Math.ceil(q - EPS);
  return Number((n * bucket).toPrecision(12));
}

function bin(levels, bucket, side) {
  const cells = new Map();
  for (const lv of levels) {
    const key = bucketKey(lv.price, bucket, side);
    let c = cells.get(key);
    if (!c) cells.set(key, (c = [key, 0, 0, {}]));
    c[1] += lv.size;
    for (const [v, s] of Object.entries(lv.venues || {})) {
      if (!(v in c[3])) c[2] += 1;
      c[3][v] = (c[3][v] || 0) + s;
    }
  }
  return [...cells.values()];
}

/** A live column from a consolidated book (``consolidated:`` channel's data). */
export function columnFromBook(t, book, bucket) {
  return { t, bids: bin(book.bids || [], bucket, "bid"), asks: bin(book.asks || [], bucket, "ask"),
    bid: book.best_bid, ask: book.best_ask };
}

/** Columns from the history route's answer. */
export function columnsFromHistory(answer) {
  return answer.columns.map((c) => ({ t: Date.parse(c.timestamp), bids: c.bids, asks: c.asks, bid: c.best_bid,
    ask: c.best_ask }));
}

/** The smallest price step among the levels of a book (a venue's tick, at most): bounds the resolution. */
export function tickOf(book) {
  let tick = Infinity;
  for (const side of [book.bids || [], book.asks || []]) {
    for (let i = 1; i < Math.min(side.length, 200); i += 1) {
      const d = Math.abs(side[i].price - side[i - 1].price);
      if (d > EPS && d < tick) tick = d;
    }
  }
  return Number.isFinite(tick) ? Number(tick.toPrecision(6)) : null;
}

/** Resolutions offered: fractions of the configured bucket, none finer than the tick. */
export function resolutions(configured, tick) {
  const all = [1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01].map((f) => Number((configured * f).toPrecision(6)));
  const ok = all.filter((b) => !tick || b >= tick * (1 - 1e-6));
  return ok.length ? ok : [configured];
}

/** The value at fraction ``q`` of the sorted values (nearest rank). */
export function quantile(values, q) {
  if (!values.length) return 0;
  const a = Float64Array.from(values).sort();
  return a[Math.min(a.length - 1, Math.max(0, Math.floor(q * (a.length - 1))))];
}

/** The colour scale: size -> LUT index. ``ref`` is the size shown at full colour (auto-contrast: a high
 *  quantile of the visible cells, so one outlier does not wash the rest out); larger sizes clip to it. */
export function scaler(kind, ref) {
  const top = ref > 0 ? ref : 1;
  if (kind === "log") {
    const k = 100; // two decades below the reference
    const denom = Math.log1p(k);
    return (v) => Math.round(255 * Math.min(1, Math.log1p((k * v) / top) / denom));
  }
  return (v) => Math.round(255 * Math.min(1, v / top));
}
