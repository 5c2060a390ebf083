// Candles of the consolidated trades (every venue), drawn by TradingView's Lightweight Charts
// (vendored: ../vendor/README.md): stored bars from GET /api/v1/ohlcv, then the open bar as the
// ohlcv:{symbol}:{timeframe} channel re-sends it on every change.

import { CandlestickSeries, HistogramSeries, createChart } from "../vendor/lightweight-charts.standalone.production.mjs";
import { ms, price, size } from "./format.js";

const UP = "#26a69a";
const DOWN = "#ef5350";

export class CandlesView {
  constructor(container, info) {
    this.container = container;
    this.info = info;
    this.chart = createChart(container, {
      autoSize: true,
      layout: { background: { type: "solid", color: "#0f131c" }, textColor: "#8b93a7", fontSize: 11 },
      grid: { vertLines: { color: "rgba(255,255,255,0.04)" }, horzLines: { color: "rgba(255,255,255,0.04)" } },
      rightPriceScale: { borderColor: "rgba(255,255,255,0.12)" },
      timeScale: { borderColor: "rgba(255,255,255,0.12)", timeVisible: true, secondsVisible: false },
      crosshair: { mode: 0 },
    });
    this.candles = this.chart.addSeries(CandlestickSeries, {
      upColor: UP, downColor: DOWN, borderVisible: false, wickUpColor: UP, wickDownColor: DOWN,
    });
    this.volume = this.chart.addSeries(HistogramSeries, { priceFormat: { type: "volume" }, priceScaleId: "" });
    this.volume.priceScale().applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
    this.reset();
  }

  /** Seconds on the time axis only for second bars. */
  setTimeframe(tf) {
    this.chart.applyOptions({ timeScale: { secondsVisible: tf.endsWith("s") } });
  }

  reset() {
    this.bars = new Map(); // time (s) -> bar
    this.last = null;
    this.candles.setData([]);
    this.volume.setData([]);
    this.container.dataset.bars = "0";
    this.info.textContent = "";
  }

  _point(b) {
    const time = Math.floor(ms(b.timestamp) / 1000);
    return {
      candle: { time, open: b.open, high: b.high, low: b.low, close: b.close },
      volume: { time, value: b.volume, color: b.close >= b.open ? "rgba(38,166,154,0.45)" : "rgba(239,83,80,0.45)" },
    };
  }

  /** Stored bars, oldest first (the open bar, if it came already, stays). */
  setHistory(bars) {
    for (const b of bars) this.bars.set(Math.floor(ms(b.timestamp) / 1000), b);
    this._redraw();
  }

  _redraw() {
    const all = [...this.bars.entries()].sort((a, b) => a[0] - b[0]).map(([, b]) => this._point(b));
    this.candles.setData(all.map((p) => p.candle));
    this.volume.setData(all.map((p) => p.volume));
    this.last = all.length ? all[all.length - 1].candle.time : null;
    this._info();
  }

  /** A bar from the channel: the open one on every change, and each bar once more when it closes -
   *  which can come after the next bar opened, so an older closed bar redraws the series. An older
   *  open bar means the stream went back in time (a replay seek): the chart starts again. */
  update(bar) {
    const p = this._point(bar);
    if (this.last !== null && p.candle.time < this.last) {
      if (bar.closed) {
        this.bars.set(p.candle.time, bar);
        this._redraw();
        return;
      }
      this.reset();
    }
    this.bars.set(p.candle.time, bar);
    this.candles.update(p.candle);
    this.volume.update(p.volume);
    this.last = p.candle.time;
    this._info();
  }

  _info() {
    this.container.dataset.bars = String(this.bars.size);
    if (this.last === null) {
      this.info.textContent = "no trades yet";
      return;
    }
    const b = this.bars.get(this.last);
    const chg = b.open ? ((b.close - b.open) / b.open) * 100 : 0;
    const dec = b.close < 10 ? 4 : 2;
    this.info.textContent = `O ${price(b.open, dec)} H ${price(b.high, dec)} L ${price(b.low, dec)} C ${price(b.close, dec)}`
      + ` ${chg >= 0 ? "+" : ""}${chg.toFixed(2)}%  vol ${size(b.volume)}  vwap ${price(b.vwap, dec)}`;
  }
}
