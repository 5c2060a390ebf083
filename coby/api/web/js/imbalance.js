// The imbalance gauge: consolidated (bid - ask) / (bid + ask) from the metrics channel, -1 (asks
// outweigh) to +1 (bids outweigh). The dial shows one figure - a depth band (+-0.1 %, +-0.5 %,
// +-1 % of mid) or the top of book - and the bars below show them all; click a bar to put it on the dial.

import { el, signed } from "./format.js";

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function bandName(key) {
  return key === "top" ? "top of book" : `±${+(parseFloat(key) * 100).toFixed(3)}%`;
}

export class ImbalanceView {
  constructor(root) {
    this.root = root;
    this.selected = "0.005";
    const dial = svg("svg", { viewBox: "0 0 200 112", class: "dial", role: "img", "aria-label": "imbalance dial" });
    const defs = svg("defs", {});
    const grad = svg("linearGradient", { id: "imb-grad", x1: "0", x2: "1", y1: "0", y2: "0" });
    grad.append(svg("stop", { offset: "0", "stop-color": "#ef5350" }), svg("stop", { offset: "0.5", "stop-color": "#5b6275" }),
      svg("stop", { offset: "1", "stop-color": "#26a69a" }));
    defs.append(grad);
    dial.append(defs,
      svg("path", { d: "M 14 100 A 86 86 0 0 1 186 100", fill: "none", stroke: "url(#imb-grad)", "stroke-width": "12", "stroke-linecap": "round" }),
      svg("line", { x1: "100", y1: "8", x2: "100", y2: "20", stroke: "#8b93a7", "stroke-width": "1.5" }));
    this.needle = svg("line", { x1: "100", y1: "100", x2: "100", y2: "26", stroke: "#e6e9f0", "stroke-width": "3", "stroke-linecap": "round", class: "needle" });
    dial.append(this.needle, svg("circle", { cx: "100", cy: "100", r: "5", fill: "#e6e9f0" }));
    const left = svg("text", { x: "14", y: "111", class: "dial-label", "text-anchor": "start" });
    left.textContent = "asks";
    const right = svg("text", { x: "186", y: "111", class: "dial-label", "text-anchor": "end" });
    right.textContent = "bids";
    dial.append(left, right);
    this.value = el("div", { class: "dial-value mono", text: "—" });
    this.caption = el("div", { class: "muted dial-caption", text: "" });
    this.rows = el("div", { class: "imb-rows" });
    root.replaceChildren(el("div", { class: "dial-box" }, dial, this.value, this.caption), this.rows);
    this.figures = null;
    this.render();
  }

  reset() {
    this.figures = null;
    this.render();
  }

  update(env) {
    const imb = env.data && env.data.imbalance && env.data.imbalance.consolidated;
    if (!imb) return;
    const figures = [["top", imb.top_of_book]];
    for (const [band, v] of Object.entries(imb.depth || {}).sort((a, b) => parseFloat(a[0]) - parseFloat(b[0]))) {
      figures.push([band, v]);
    }
    this.figures = figures;
    this.render();
  }

  render() {
    const figs = this.figures;
    if (!figs) {
      this.value.textContent = "—";
      this.caption.textContent = "waiting for metrics…";
      this.needle.style.transform = "rotate(0deg)";
      this.rows.replaceChildren();
      this.root.dataset.value = "";
      return;
    }
    const chosen = figs.find(([k]) => k === this.selected) || figs[figs.length > 2 ? 2 : 0];
    const v = chosen[1];
    this.needle.style.transform = `rotate(${Math.max(-1, Math.min(1, v)) * 90}deg)`;
    this.value.textContent = signed(v);
    this.value.className = `dial-value mono ${v > 0.05 ? "pos" : v < -0.05 ? "neg" : ""}`;
    this.caption.textContent = bandName(chosen[0]);
    this.root.dataset.value = String(v);
    this.rows.replaceChildren(...figs.map(([k, x]) => {
      const w = Math.min(1, Math.abs(x)) * 50;
      const bar = el("span", { class: "imb-bar" }, el("i", {
        class: x >= 0 ? "pos" : "neg", style: x >= 0 ? `left:50%;width:${w}%` : `left:${50 - w}%;width:${w}%` }));
      const row = el("button", { type: "button", class: `imb-row${k === chosen[0] ? " active" : ""}`, dataset: { figure: k } },
        el("span", { text: bandName(k) }), bar, el("span", { class: "mono num", text: signed(x) }));
      row.addEventListener("click", () => { this.selected = k; this.render(); });
      return row;
    }));
  }
}
