// The consolidated ladder: the best levels of the cross-venue book around the spread, each row's
// size split into the venues that make it up (a stacked bar in each venue's colour). Levels can be
// grouped by a price step - the symbol's bucket size or a tenth of it - the way buckets are made
// (bids floor, asks ceil: docs/aggregation.md).

import { decimalsFor, el, price, size, throttle, venueColour } from "./format.js";

const ROW_H = 19;

/** Digits after the point of a price as the venue sent it (30009.5 -> 1), at most 8. */
function decimalsOf(p) {
  const s = String(p);
  const i = s.indexOf(".");
  return i < 0 || s.includes("e") ? 0 : Math.min(8, s.length - i - 1);
}

function group(levels, bucket, side) {
  if (!(bucket > 0)) return levels;
  const out = new Map();
  for (const lv of levels) {
    const q = lv.price / bucket;
    const key = (side === "bid" ? Math.floor(q + 1e-9) : Math.ceil(q - 1e-9)) * bucket;
    let g = out.get(key);
    if (!g) out.set(key, (g = { price: key, size: 0, venues: {} }));
    g.size += lv.size;
    for (const [v, s] of Object.entries(lv.venues)) g.venues[v] = (g.venues[v] || 0) + s;
  }
  return [...out.values()]; // insertion order keeps best first
}

export class LadderView {
  /** select: the grouping <select>, whose option values are fractions of the bucket size (0: none). */
  constructor(body, flags, legend, select) {
    this.body = body;
    this.flags = flags;
    this.legend = legend;
    this.select = select;
    this.fraction = Number(select.value);
    select.addEventListener("change", () => this.setGrouping(Number(select.value)));
    this.bucket = null;
    this.book = null;
    this.schedule = throttle(() => this.render(), 150);
    new ResizeObserver(() => this.schedule()).observe(body);
  }

  reset() {
    this.book = null;
    this.bucket = null;
    this.body.dataset.symbol = "";
    this.schedule();
  }

  setGrouping(fraction) {
    this.fraction = fraction;
    this.schedule();
  }

  setBucket(bucket) {
    if (bucket === this.bucket) return;
    this.bucket = bucket;
    for (const o of this.select.options) {
      const f = Number(o.value);
      if (f) o.textContent = `by ${price(bucket * f, decimalsFor(bucket * f))}`;
    }
  }

  update(env) {
    this.book = env.data;
    this.schedule();
  }

  render() {
    const b = this.book;
    this.body.replaceChildren();
    if (!b) {
      this.body.append(el("div", { class: "empty", text: "waiting for the consolidated book…" }));
      this.flags.replaceChildren();
      this.legend.replaceChildren();
      return;
    }
    this.body.dataset.symbol = b.symbol;
    const bucket = this.bucket && this.fraction ? this.bucket * this.fraction : null;
    const rows = Math.max(4, Math.min(25, Math.floor((this.body.clientHeight - ROW_H) / ROW_H / 2)));
    const asks = group(b.asks, bucket, "ask").slice(0, rows);
    const bids = group(b.bids, bucket, "bid").slice(0, rows);
    const maxSize = Math.max(1e-12, ...asks.map((l) => l.size), ...bids.map((l) => l.size));
    const dec = bucket ? decimalsFor(bucket)
      : Math.max(0, ...[...b.bids, ...b.asks].slice(0, 50).map((l) => decimalsOf(l.price)));

    const row = (lv, side) => {
      const bar = el("span", { class: "lbar" });
      const entries = Object.entries(lv.venues).sort((x, y) => y[1] - x[1]);
      for (const [venue, s] of entries) {
        bar.append(el("i", { style: `width:${(s / maxSize) * 100}%;background:${venueColour(venue)}`,
          title: `${venue} ${size(s)}` }));
      }
      return el("div", { class: `lrow ${side}`, dataset: { price: String(lv.price) } },
        el("span", { class: "lp", text: price(lv.price, dec) }),
        el("span", { class: "ls", text: size(lv.size) }), bar);
    };
    for (const lv of [...asks].reverse()) this.body.append(row(lv, "ask"));
    const spread = b.best_ask != null && b.best_bid != null ? b.best_ask - b.best_bid : null;
    const gap = spread == null ? "" : price(Math.abs(spread), Math.max(dec, 1));
    if (b.crossed) { // a compact badge; the venues and the amount in its tooltip, so nothing is cut
      const why = `crossed by ${gap}: ${b.best_bid_exchange} bid ${price(b.best_bid, dec)} ≥ `
        + `${b.best_ask_exchange} ask ${price(b.best_ask, dec)}`;
      this.body.append(el("div", { class: "lrow spread crossed", title: why },
        el("span", { class: "lp" }, el("span", { class: "crossed-badge", title: why, text: "crossed" })),
        el("span", { class: "ls", text: gap }),
        el("span", { class: "lnote", text: `${b.best_bid_exchange} ≥ ${b.best_ask_exchange}` })));
    } else {
      this.body.append(el("div", { class: "lrow spread" },
        el("span", { class: "lp", text: spread == null ? "—" : "spread" }),
        el("span", { class: "ls", text: gap }),
        el("span", { class: "lnote", text: `${b.best_bid_exchange || "—"} / ${b.best_ask_exchange || "—"}` })));
    }
    for (const lv of bids) this.body.append(row(lv, "bid"));

    this.flags.replaceChildren();
    if (b.stale_exchanges && b.stale_exchanges.length) {
      this.flags.append(el("span", { class: "badge", text: `stale: ${b.stale_exchanges.join(", ")}` }));
    }
    this.legend.replaceChildren(...b.exchanges.map((v) => el("span", { class: "chip" },
      el("i", { style: `background:${venueColour(v)}` }), v)));
  }
}
