// Replay controls: pick a range (UTC) and a speed, play, pause, seek, stop - through the replay
// REST routes (docs/replay.md) - while the session's own WebSocket feeds the same views as live.
//
// Play with no session creates one (all venues and symbols, so the symbol switch works during a
// replay), opens its stream, waits until the stream's subscriptions are answered, then starts it;
// Play on a paused session resumes it. The status is polled once a second.

import * as api from "./api.js";
import { clock, ms, pad } from "./format.js";

const FINAL = new Set(["finished", "stopped", "failed"]);

function toInput(t) {
  const d = new Date(t);
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}T${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
}

function fromInput(value) {
  const t = Date.parse(`${value.length === 16 ? `${value}:00` : value}Z`);
  return Number.isFinite(t) ? t : null;
}

export class ReplayControls {
  /** openStream(id) -> Feed (opened, subscribed to the page's channels); closeStream(); notify(text);
   *  earliest() -> a promise of the time of the oldest stored data (ms) or null.
   *  A seek resets nothing: each view keeps its picture until data of the new position arrives and
   *  notices by itself when time went back. */
  constructor(els, { openStream, closeStream, notify, earliest }) {
    this.els = els;
    this.earliest = earliest;
    this.openStream = openStream;
    this.closeStream = closeStream;
    this.notify = notify;
    this.session = null; // the last status of the current session
    this.poller = null;
    this.dragging = false;
    this.busy = false;
    this.showing = null;
    els.play.addEventListener("click", () => this._guard(() => this.play()));
    els.pause.addEventListener("click", () => this._guard(() => this.control("pause")));
    els.stop.addEventListener("click", () => this._guard(() => this.control("stop")));
    els.seek.addEventListener("input", () => { this.dragging = true; this._showPosition(this._seekTime()); });
    els.seek.addEventListener("change", () => {
      const t = this._seekTime(); // before anything re-renders the slider
      this.dragging = false;
      this._guard(() => this.seek(t));
    });
    this._render();
  }

  /** Shown: unless a range was picked already, the last five minutes (or since the oldest stored data). */
  show() {
    this._render();
    this.showing = this._defaultRange();
    return this.showing;
  }

  async _defaultRange() {
    if (this.els.start.value && this.els.end.value) return;
    const now = Date.now();
    let start = now - 5 * 60_000;
    const oldest = await this.earliest().catch(() => null);
    if (oldest != null && oldest > start) start = Math.min(oldest, now - 1000);
    if (this.els.start.value && this.els.end.value) return; // picked meanwhile
    this.els.end.value = toInput(now + 1000);
    this.els.start.value = toInput(start);
  }

  async _guard(fn) {
    if (this.busy) return;
    this.busy = true;
    this._render();
    try {
      await fn();
    } catch (e) {
      this.notify(e.message);
    } finally {
      this.busy = false;
      this._render();
    }
  }

  get active() {
    return this.session !== null && !FINAL.has(this.session.state);
  }

  async play() {
    if (this.active && this.session.state === "paused") {
      await this.control("resume");
      return;
    }
    if (this.active) return;
    await this.showing;
    const start = fromInput(this.els.start.value);
    const end = fromInput(this.els.end.value);
    if (start == null || end == null || end <= start) throw new Error("replay: pick a start before the end");
    const speed = Number(this.els.speed.value);
    const created = await api.post("/api/v1/replay", { start, end, speed });
    this.session = created.replay;
    const feed = this.openStream(this.session.id);
    const subscribed = await Promise.race([feed.ready, new Promise((r) => setTimeout(() => r(false), 10_000))]);
    if (!subscribed) {
      await this.control("stop").catch(() => {});
      throw new Error("replay: the session's stream did not open");
    }
    await this.control("start");
    this._poll();
  }

  async control(action) {
    if (!this.session) return;
    const r = await api.post(`/api/v1/replay/${this.session.id}/${action}`);
    this._status(r.replay);
  }

  async seek(t) {
    if (!this.active) return;
    const r = await api.post(`/api/v1/replay/${this.session.id}/seek`, { timestamp: Math.round(t) });
    this._status(r.replay);
  }

  /** Leave replay mode: stop the session (if any) and its stream. */
  async leave() {
    clearInterval(this.poller);
    this.poller = null;
    if (this.active) await api.post(`/api/v1/replay/${this.session.id}/stop`).catch(() => {});
    this.session = null;
    this.closeStream();
    this._render();
  }

  _poll() {
    clearInterval(this.poller);
    this.poller = setInterval(async () => {
      if (!this.session) return;
      try {
        const r = await api.get(`/api/v1/replay/${this.session.id}`);
        this._status(r.replay);
      } catch (e) {
        this.notify(`replay: ${e.message}`);
        clearInterval(this.poller);
        this.poller = null;
      }
    }, 1000);
  }

  _status(status) {
    if (!this.session || status.id !== this.session.id) return;
    this.session = status;
    if (FINAL.has(status.state)) {
      clearInterval(this.poller);
      this.poller = null;
    }
    this._render();
  }

  _seekTime() {
    const s = this.session;
    const start = s ? ms(s.start) : fromInput(this.els.start.value);
    const end = s ? ms(s.end) : fromInput(this.els.end.value);
    return start + ((end - start) * Number(this.els.seek.value)) / 1000;
  }

  _showPosition(t) {
    this.els.position.textContent = t == null ? "" : `${clock(t)} UTC`;
  }

  _render() {
    const { els } = this;
    const s = this.session;
    const state = s ? s.state : "none";
    const active = this.active;
    els.state.dataset.state = state;
    els.state.textContent = s ? state : "no session";
    els.play.disabled = this.busy || (active && state !== "paused");
    els.play.textContent = state === "paused" ? "▶ Resume" : "▶ Play";
    els.pause.disabled = this.busy || !(active && state === "running");
    els.stop.disabled = this.busy || !active;
    els.seek.disabled = !active;
    for (const input of [els.start, els.end, els.speed]) input.disabled = active;
    if (s && !this.dragging) {
      const start = ms(s.start);
      const end = ms(s.end);
      const pos = ms(s.position);
      els.seek.value = String(Math.round((s.progress || 0) * 1000));
      this._showPosition(pos ?? start);
      els.position.dataset.position = pos == null ? "" : String(pos);
      els.position.title = `${clock(start)} – ${clock(end)} UTC, ${s.events_emitted} events`;
    }
  }
}
