// One WebSocket speaking coby's protocol (docs/api.md): subscriptions that survive reconnects,
// replies matched to requests by id, envelopes handed to one callback.
//
//   const feed = new Feed(() => wsUrl("/ws"), { onEnvelope, onState });
//   feed.setChannels(["heatmap:BTC-USDT", "trades:BTC-USDT"]);   // diffed against what is subscribed
//   feed.open(); ... feed.close();
//
// Reconnects by itself (backoff 0.5 s doubling to 5 s) unless closed by the page, or - with
// { reconnect: false }, as a replay stream is - when the server ends the stream.

export class Feed {
  constructor(url, { onEnvelope, onState = () => {}, onError = () => {}, reconnect = true } = {}) {
    this.url = url;
    this.onEnvelope = onEnvelope;
    this.onState = onState;
    this.onError = onError;
    this.reconnect = reconnect;
    this.channels = new Set();   // wanted
    this.subscribed = new Set(); // acknowledged or in flight on the current socket
    this.ws = null;
    this.state = "idle";
    this.connects = 0;
    this.messages = 0;
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject}
    this.backoff = 500;
    this.timer = null;
    this.closed = false;
    this.ready = new Promise((resolve) => { this._ready = resolve; }); // first subscription answered
  }

  open() {
    this.closed = false;
    this._connect();
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = ws.onmessage = ws.onerror = ws.onopen = null;
      if (ws.readyState <= 1) ws.close(1000, "page closed the stream");
    }
    this._fail("closed");
    this._setState("closed");
  }

  /** Subscribe to exactly these channels; resolves (true: accepted) when the server has answered.
   *  Never rejects: a refusal is reported through onError, a dropped connection resubscribes. */
  setChannels(list) {
    const want = new Set(list);
    const add = [...want].filter((c) => !this.channels.has(c));
    const drop = [...this.channels].filter((c) => !want.has(c));
    this.channels = want;
    const done = [];
    if (this.state === "open") {
      if (drop.length) done.push(this._request("unsubscribe", drop));
      if (add.length) done.push(this._request("subscribe", add));
    }
    return Promise.all(done).then(() => true, () => false);
  }

  _connect() {
    clearTimeout(this.timer);
    this._setState(this.connects ? "reconnecting" : "connecting");
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch (e) {
      this.onError(`WebSocket: ${e.message}`);
      this._retry();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      this.connects += 1;
      this.backoff = 500;
      this.subscribed.clear();
      this._setState("open");
      const first = this.channels.size ? this._request("subscribe", [...this.channels]) : Promise.resolve();
      first.then(() => this._ready(true), () => this._ready(false)); // refusals are reported through onError
    };
    ws.onmessage = (ev) => this._message(ev.data);
    ws.onerror = () => {}; // the close event that follows says what happened
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      this._fail(`connection closed (${ev.code})`);
      if (ev.code === 4008 || ev.code === 4013) this.onError(ev.reason || `stream closed (${ev.code})`);
      if (this.closed) return;
      if (!this.reconnect && this.connects > 0) {
        this._setState(ev.code === 1001 ? "ended" : "closed", ev);
        return;
      }
      this._retry();
    };
  }

  _retry() {
    this._setState("reconnecting");
    this.timer = setTimeout(() => this._connect(), this.backoff);
    this.backoff = Math.min(5000, this.backoff * 2);
  }

  _request(op, channels) {
    const id = this.nextId++;
    if (op === "subscribe") channels.forEach((c) => this.subscribed.add(c));
    else channels.forEach((c) => this.subscribed.delete(c));
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ op, channels, id }));
    });
  }

  _message(text) {
    let m;
    try {
      m = JSON.parse(text);
    } catch {
      return;
    }
    if (m.channel !== undefined) {
      this.messages += 1;
      // a channel unsubscribed a moment ago may still have messages in flight
      if (this.channels.has(m.channel)) this.onEnvelope(m);
      return;
    }
    const waiter = m.id != null ? this.pending.get(m.id) : undefined;
    if (waiter) this.pending.delete(m.id);
    if (m.type === "error") {
      this.onError(m.error);
      if (waiter) waiter.reject(new Error(m.error));
    } else if (waiter) {
      waiter.resolve(m);
    }
  }

  _fail(why) {
    for (const { reject } of this.pending.values()) reject(new Error(why));
    this.pending.clear();
  }

  _setState(state, detail) {
    if (state === this.state) return;
    this.state = state;
    this.onState(state, detail);
  }
}
