// The venue grid: one card per exchange - state, age of its last message, message rate, circuit
// breaker and reconnects.
//
// Live, from the status channel's per-venue ConnectionStatus: ages and rates are measured on the
// server's clock (the envelope's `received` against each venue's `last_message_at` and message
// counter), so a browser whose clock is off still shows them right.
// Replay, where the status channel carries only the recorded connection events: the state follows
// those events, and age and rate come from the venue's replayed trades, on the replay's clock.

import { el, ms, venueColour } from "./format.js";

const LIVE_AGE = 5; // seconds: a connected venue silent for longer is not shown as live
const RATE_WINDOW = 10_000;
const EVENT_STATE = {
  connected: "connected", resynced: "connected", circuit_closed: "connected",
  disconnected: "disconnected", stale: "stale", circuit_open: "circuit_open",
};

export class VenueGrid {
  constructor(root, summary) {
    this.root = root;
    this.summary = summary;
    this.cards = new Map();
    this.venues = new Map();
    this.replay = false;
    setInterval(() => this.tick(), 500);
  }

  setVenues(names) {
    this.root.replaceChildren();
    this.cards.clear();
    this.venues.clear();
    for (const name of names) this._card(name);
    this.tick();
  }

  /** Forget what was shown; `replay` says where the next figures come from. */
  reset(replay = this.replay) {
    this.replay = replay;
    this.head = null; // replay: the newest data time seen
    for (const name of this.venues.keys()) this.venues.set(name, this._blank());
    this.tick();
  }

  _blank() {
    return { status: null, ageAt: null, arrived: 0, samples: [], lastTrade: null, trades: [] };
  }

  _card(name) {
    const fields = {};
    const stat = (key) => (fields[key] = el("span", { class: "mono", text: "" }));
    const state = el("span", { class: "state", text: "waiting" });
    const card = el("article", { class: "venue", dataset: { venue: name, state: "unknown", live: "false" } },
      el("header", {}, el("i", { class: "vdot", style: `background:${venueColour(name)}` }), el("b", { text: name }), state),
      el("div", { class: "vstats" }, stat("age"), stat("rate")),
      el("div", { class: "vstats" }, stat("circuit"), stat("reconnects")));
    this.root.append(card);
    this.cards.set(name, { card, state, fields });
    this.venues.set(name, this._blank());
  }

  _venue(name) {
    if (!this.cards.has(name)) this._card(name);
    return this.venues.get(name);
  }

  update(env) {
    const d = env.data || {};
    if (this.replay) {
      if (d.event) this._event(d.event);
    } else if (d.exchanges) {
      this._statuses(d.exchanges, ms(env.received));
    }
    this.tick();
  }

  _statuses(exchanges, serverNow) {
    const arrived = performance.now();
    for (const [name, st] of Object.entries(exchanges)) {
      const v = this._venue(name);
      v.status = st;
      const last = ms(st.last_message_at);
      v.ageAt = serverNow != null && last != null ? Math.max(0, (serverNow - last) / 1000) : null;
      v.arrived = arrived;
      if (serverNow != null) {
        v.samples.push([serverNow, st.messages]);
        while (v.samples.length > 2 && serverNow - v.samples[0][0] > RATE_WINDOW) v.samples.shift();
      }
    }
  }

  _event(e) {
    const v = this._venue(e.exchange);
    const prev = v.status || { state: "unknown", circuit: "closed", reconnects: 0 };
    const state = EVENT_STATE[e.event] || prev.state;
    v.status = {
      state,
      circuit: e.event === "circuit_open" ? "open" : e.event === "circuit_closed" ? "closed" : prev.circuit,
      reconnects: prev.reconnects + (e.event === "connected" && prev.state === "disconnected" ? 1 : 0),
    };
  }

  /** Replay: a venue's trade (its activity, on the replay's clock). */
  trade(t) {
    if (!this.replay) return;
    const v = this._venue(t.exchange);
    const at = ms(t.timestamp);
    v.lastTrade = Math.max(v.lastTrade ?? at, at);
    v.trades.push(at);
    if (this.head === null || at > this.head) this.head = at;
    while (v.trades.length && v.trades[0] < this.head - RATE_WINDOW) v.trades.shift();
  }

  _figures(v, now) {
    const st = v.status;
    if (this.replay) {
      const age = v.lastTrade == null || this.head == null ? null : (this.head - v.lastTrade) / 1000;
      const recent = v.trades.filter((t) => t >= this.head - RATE_WINDOW).length;
      return { state: st ? st.state : v.lastTrade != null ? "trading" : null, age,
        rate: v.trades.length ? `${(recent / (RATE_WINDOW / 1000)).toFixed(1)} tr/s` : "— tr/s",
        circuit: st ? st.circuit : "closed", reconnects: st ? st.reconnects : 0 };
    }
    if (!st) return { state: null };
    const age = v.ageAt == null ? null : v.ageAt + (now - v.arrived) / 1000;
    const s = v.samples;
    const span = s.length > 1 ? (s[s.length - 1][0] - s[0][0]) / 1000 : 0;
    return { state: st.state, age, circuit: st.circuit, reconnects: st.reconnects,
      rate: `${span > 0.5 ? ((s[s.length - 1][1] - s[0][1]) / span).toFixed(1) : "—"} msg/s` };
  }

  tick() {
    const now = performance.now();
    let live = 0;
    for (const [name, { card, state, fields }] of this.cards) {
      const f = this._figures(this.venues.get(name), now);
      if (!f.state) {
        card.dataset.state = "unknown";
        card.dataset.live = "false";
        state.textContent = "waiting";
        for (const x of Object.values(fields)) x.textContent = "";
        continue;
      }
      const isLive = (f.state === "connected" || f.state === "trading") && f.age != null && f.age < LIVE_AGE;
      if (isLive) live += 1;
      card.dataset.state = f.state;
      card.dataset.live = String(isLive);
      state.textContent = f.state.replace("_", " ");
      fields.age.textContent = `age ${f.age == null ? "—" : f.age < 10 ? `${f.age.toFixed(1)}s` : `${Math.round(f.age)}s`}`;
      fields.age.classList.toggle("warn", f.age != null && f.age >= LIVE_AGE);
      fields.rate.textContent = f.rate;
      fields.circuit.textContent = `circuit ${f.circuit.replace("_", " ")}`;
      fields.circuit.classList.toggle("warn", f.circuit !== "closed");
      fields.reconnects.textContent = `↻${f.reconnects}`;
      fields.reconnects.title = `${f.reconnects} reconnects`;
    }
    this.summary.textContent = this.cards.size ? `${live}/${this.cards.size} ${this.replay ? "active (replay)" : "live"}` : "";
    this.root.dataset.live = String(live);
  }
}
