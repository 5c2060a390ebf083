// The trade tape: newest trade on top, every venue, buys green and sells red; a trade much larger
// than the recent average is marked. Rows are added in batches, at most ten times a second.
// In a replay, a trade well before the newest one shown means a seek back: the tape starts afresh.

import { clock, el, ms, price, size, throttle, venueColour } from "./format.js";

const MAX_ROWS = 80;

export class TapeView {
  constructor(list, rate) {
    this.list = list;
    this.rateEl = rate;
    this.queue = [];
    this.replay = false;
    this.schedule = throttle(() => this.flush(), 100);
    this.reset();
  }

  reset() {
    this.queue = [];
    this.avg = null;
    this.times = [];
    this.newest = null;
    this.list.replaceChildren();
    this.rateEl.textContent = "";
  }

  add(trade) {
    const t = ms(trade.timestamp);
    if (this.replay && this.newest !== null && t < this.newest - 10_000) this.reset();
    if (this.newest === null || t > this.newest) this.newest = t;
    this.queue.push(trade);
    if (this.queue.length > MAX_ROWS) this.queue.splice(0, this.queue.length - MAX_ROWS);
    this.schedule();
  }

  flush() {
    const batch = this.queue;
    this.queue = [];
    if (!batch.length) return;
    const frag = document.createDocumentFragment();
    for (let i = batch.length - 1; i >= 0; i -= 1) {
      const t = batch[i];
      this.avg = this.avg == null ? t.size : this.avg * 0.98 + t.size * 0.02;
      const big = t.size >= 4 * this.avg;
      const li = el("li", { class: `${t.side === "buy" ? "buy" : "sell"}${big ? " big" : ""}`, dataset: { exchange: t.exchange } },
        el("span", { class: "mono", text: clock(ms(t.timestamp)), title: `${clock(ms(t.timestamp), true)} UTC` }),
        el("span", { class: "venue" }, el("i", { style: `background:${venueColour(t.exchange)}` }), t.exchange),
        el("span", { class: "mono num", text: price(t.price, t.price < 10 ? 4 : 2) }),
        el("span", { class: "mono num", text: size(t.size) }));
      frag.append(li);
    }
    this.list.prepend(frag);
    while (this.list.childElementCount > MAX_ROWS) this.list.lastElementChild.remove();
    // trades per second over the last five seconds of data time
    const last = ms(batch[batch.length - 1].timestamp);
    for (const t of batch) this.times.push(ms(t.timestamp));
    while (this.times.length && this.times[0] < last - 5000) this.times.shift();
    this.rateEl.textContent = `${(this.times.length / 5).toFixed(1)} trades/s`;
  }
}
