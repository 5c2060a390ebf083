// Candles of the consolidated trades (every venue), drawn by TradingView's Lightweight Charts
// (vendored: ../vendor/README.md): stored bars from GET /api/v1/ohlcv, then the open bar as the
// ohlcv:{symbol}:{timeframe} channel re-sends it on every change. Price in the top pane, volume in
// its own pane below (its own scale); the line above the chart shows the bar under the crosshair
// (OHLC, change, volume, VWAP), the newest one otherwise.

import { CandlestickSeries, HistogramSeries, createChart } from "../vendor/lightweight-charts.standalone.production.mjs";
import { clock, ms, price, size } from "./format.js";

const UP = "#26a69a";
const DOWN = "#ef5350";

export class CandlesView {
  constructor(container, info) {
    this.container = container;
    this.info = info;
    this.chart = createChart(container, {
      autoSize: true,
      grid: { vertLines: { color: "rgba(255,255,255,0.04)" }, horzLines: { color: "rgba(255,255,255,0.04)" } },
      rightPriceScale: { borderColor: "rgba(255,255,255,0.12)" },
      timeScale: { borderColor: "rgba(255,255,255,0.12)", timeVisible: true, secondsVisible: false },
      crosshair: { mode: 0 },
      layout: { background: { type: "solid", color: "#0f131c" }, textColor: "#8b93a7", fontSize: 11,
        panes: { separatorColor: "rgba(255,255,255,0.12)", enableResize: true } },
    });
    this.candles = this.chart.addSeries(CandlestickSeries, {
      upColor: UP, downColor: DOWN, borderVisible: false, wickUpColor: UP, wickDownColor: DOWN,
    });
    this.volume = this.chart.addSeries(HistogramSeries, { priceFormat: { type: "volume" }, lastValueVisible: false,
      priceLineVisible: false }, 1); // pane 1: volume apart from price, on its own scale
    const [pricePane, volumePane] = this.chart.panes();
    pricePane.setStretchFactor(3);
    volumePane.setStretchFactor(1);
    this.hovered = null;
    this.chart.subscribeCrosshairMove((param) => {
      this.hovered = param && param.time != null ? param.time : null;
      this._info();
    });
    this.fitted = false;
    this.reset();
  }

  /** Seconds on the time axis only for second bars. */
  setTimeframe(tf) {
    this.chart.applyOptions({ timeScale: { secondsVisible: tf.endsWith("s") } });
  }

  reset() {
    this.bars = new Map(); // time (s) -> bar
    this.last = null;
    this.fitted = false;
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
    if (!this.fitted && all.length) { // the newest 150 bars, like TradingView's default zoom; all if fewer
      this.fitted = true;
      if (all.length > 150) this.chart.timeScale().setVisibleLogicalRange({ from: all.length - 150, to: all.length + 3 });
      else this.chart.timeScale().fitContent();
    }
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
    const t = this.hovered != null && this.bars.has(this.hovered) ? this.hovered : this.last;
    const b = this.bars.get(t);
    this.info.dataset.time = String(t);
    const chg = b.open ? ((b.close - b.open) / b.open) * 100 : 0;
    const dec = b.close < 10 ? 4 : 2;
    this.info.textContent = `${t === this.last ? "" : `${clock(t * 1000)}  `}O ${price(b.open, dec)} H ${price(b.high, dec)} L ${price(b.low, dec)} C ${price(b.close, dec)}`
      + ` ${chg >= 0 ? "+" : ""}${chg.toFixed(2)}%  vol ${size(b.volume)}  vwap ${price(b.vwap, dec)}`;
  }
}
