// Charts of the last hour: CPU, memory, disk and network of a VM (VM page) or of the host
// (dashboard).  Small own SVG code, no library: the history comes from the server's sampler
// (GET .../stats/history), then each "stats" event of the event stream adds a point.
// Text goes in with textContent only, like the rest of the UI.
"use strict";

const kvmgrCharts = (() => {
  const SVG = "http://www.w3.org/2000/svg";
  const WIDTH = 520, HEIGHT = 180;  // about the size drawn, so 11 px text stays 11 px
  const PAD = { left: 70, right: 12, top: 10, bottom: 24 };
  const WINDOW = 3600;  // seconds kept: the history the server keeps
  const SPANS = [[3600, "last hour"], [900, "15 minutes"], [300, "5 minutes"]];
  const GAP = 90;  // seconds without a point that break a line (the server's buckets are 30 s)
  const COLORS = ["#2f5fd0", "#e07a10", "#067647", "#b42318"];

  const percent = (v) => `${Number(v).toFixed(v < 10 && v > 0 ? 1 : 0)} %`;
  const bytes = (v) => kvmgr.bytes(v);
  const rate = (v) => `${kvmgr.bytes(v)}/s`;

  // The y axis: 3 to 5 steps of 1, 2, 2.5 or 5 times a power of ten (in KiB, MiB... for bytes,
  // so the labels read 256 MiB, 512 MiB rather than 268 MB), the lowest top above ``value``.
  function niceScale(value, binary) {
    if (!(value > 0)) return { top: binary ? 1024 : 1, steps: 4 };
    let base = 1;
    if (binary) { while (value >= base * 1024) base *= 1024; value /= base; }
    let best = null;
    for (const steps of [3, 4, 5]) {
      const rough = value / steps, power = 10 ** Math.floor(Math.log10(rough));
      const step = [1, 2, 2.5, 5, 10].find((m) => m * power >= rough) * power;
      if (!best || step * steps < best.top) best = { top: step * steps, steps };
    }
    return { top: best.top * base, steps: best.steps };
  }

  function node(tag, attrs, parent) {
    const element = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs)) element.setAttribute(key, value);
    if (parent) parent.appendChild(element);
    return element;
  }

  function clock(seconds) {
    const d = new Date(seconds * 1000);
    return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
  }

  // One chart: a title with a legend of the newest values, and an SVG of the last hour.
  class Chart {
    constructor(parent, spec) {
      this.spec = spec;
      this.box = document.createElement("figure");
      this.box.className = "chart";
      this.box.dataset.chart = spec.id;
      const caption = document.createElement("figcaption");
      const title = document.createElement("strong");
      title.textContent = spec.title;
      caption.appendChild(title);
      this.legend = spec.series.map((series, i) => {
        const item = document.createElement("span");
        item.className = "legend";
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.dataset.color = String(i);
        const text = document.createElement("span");
        item.append(swatch, text);
        caption.appendChild(item);
        return text;
      });
      this.box.appendChild(caption);
      this.svg = node("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": spec.title });
      this.box.appendChild(this.svg);
      parent.appendChild(this.box);
    }

    draw(data, now, emptyNote, span) {
      const { spec } = this;
      const svg = this.svg;
      svg.replaceChildren();
      const since = now - span;
      const plotW = WIDTH - PAD.left - PAD.right, plotH = HEIGHT - PAD.top - PAD.bottom;
      const x = (t) => PAD.left + ((t - since) / span) * plotW;
      let high = 0, points = 0;
      for (const series of spec.series) {
        const values = data[series.key] || [];
        data.t.forEach((t, j) => {
          const v = values[j];
          if (v != null && t >= since) { high = Math.max(high, v); points++; }
        });
      }
      const scale = high < (spec.floor || 0) ? { top: spec.floor, steps: 4 } : niceScale(high, spec.binary);
      const top = scale.top;
      const y = (v) => PAD.top + plotH - (v / top) * plotH;
      // grid and labels: the scale's steps up, a time at four even places across
      for (let i = 0; i <= scale.steps; i++) {
        const value = (top * i) / scale.steps, at = y(value);
        node("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: at, y2: at, stroke: "#e3e8f0" }, svg);
        node("text", { x: PAD.left - 6, y: at + 4, "text-anchor": "end", "font-size": 11, fill: "#667085" }, svg)
          .textContent = spec.format(value);
      }
      for (let part = 4; part >= 0; part--) {
        const t = now - (span * part) / 4, at = x(t);
        node("line", { x1: at, x2: at, y1: PAD.top, y2: PAD.top + plotH, stroke: "#eef1f6" }, svg);
        node("text", { x: at, y: HEIGHT - 6, "text-anchor": part === 0 ? "end" : "middle", "font-size": 11, fill: "#667085" }, svg)
          .textContent = part === 0 ? "now" : clock(t);
      }
      node("rect", { x: PAD.left, y: PAD.top, width: plotW, height: plotH, fill: "none", stroke: "#c9d1de" }, svg);
      spec.series.forEach((series, i) => {
        const values = data[series.key] || [];
        let path = "", last = null;
        data.t.forEach((t, j) => {
          const v = values[j];
          if (v == null || t < since) { last = null; return; }
          path += `${last === null || t - last > GAP ? "M" : "L"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
          last = t;
        });
        if (path) node("path", { d: path, fill: "none", stroke: COLORS[i], "stroke-width": 1.6, "stroke-linejoin": "round" }, svg);
        const newest = [...values].reverse().find((v) => v != null);
        this.legend[i].textContent = `${series.label} ${newest == null ? "–" : spec.format(newest)}`;
      });
      if (!points) {
        node("text", { x: PAD.left + plotW / 2, y: PAD.top + plotH / 2, "text-anchor": "middle", "font-size": 13, fill: "#667085", class: "chart-empty" }, svg)
          .textContent = emptyNote;
      }
      this.box.dataset.points = String(points);  // what the e2e tests count
    }
  }

  // The four charts of a VM or of the host (the host's CPU is of all its CPUs, a VM's of one).
  function specs(kind) {
    return [
      { id: "cpu", title: kind === "host" ? "CPU (100 % = all CPUs)" : "CPU (100 % = one CPU)",
        format: percent, floor: kind === "host" ? 100 : 10, series: [{ key: "cpu_percent", label: "busy" }] },
      { id: "memory", title: "Memory", format: bytes, binary: true,
        series: [{ key: "memory_used", label: "used" }, { key: "memory_total", label: "total" }] },
      { id: "disk", title: kind === "host" ? "Disk (all VMs)" : "Disk", format: rate, binary: true,
        series: [{ key: "disk_read_bps", label: "read" }, { key: "disk_write_bps", label: "write" }] },
      { id: "network", title: kind === "host" ? "Network (all VMs)" : "Network", format: rate, binary: true,
        series: [{ key: "net_rx_bps", label: "in" }, { key: "net_tx_bps", label: "out" }] },
    ];
  }

  async function mount(section) {
    const kind = section.dataset.kind;
    const name = section.dataset.name;
    const path = kind === "host" ? "/api/v1/host/stats/history"
      : `/api/v1/vms/${encodeURIComponent(name)}/stats/history`;
    const note = section.querySelector(".charts-note");
    const grid = section.querySelector(".charts");
    // How much of the hour to show (a minute of history is a sliver of an hour's width).
    const choice = document.createElement("select");
    choice.className = "charts-span";
    choice.setAttribute("aria-label", "time shown");
    for (const [seconds, label] of SPANS) choice.add(new Option(label, String(seconds)));
    section.querySelector("h3").append(" ", choice);
    const charts = specs(kind).map((spec) => new Chart(grid, spec));
    const history = await kvmgr.api("GET", path);
    const data = history.series;
    if (kind === "host") section.querySelector("h3").firstChild.textContent = `Host ${history.host}: last hour`;
    const empty = () => {
      if (!history.sampled) return "not sampled here";
      if (!data.t.length) return `no samples yet (every ${history.interval} s)`;
      return kind === "vm" && !data.running.some((v) => v === 1) ? "no values: the VM is not running" : "no values yet";
    };
    const draw = () => {
      const now = Date.now() / 1000;
      for (const chart of charts) chart.draw(data, now, empty(), Number(choice.value));
      section.dataset.points = String(data.t.length);
      if (!history.sampled) {
        note.textContent = history.interval > 0
          ? `This server keeps no statistics of host ${history.host}: each kvmgr serve samples its own host.`
          : "Statistics are not sampled (KVMGR_STATS_INTERVAL=0).";
      } else if (!data.t.length) {
        note.textContent = `No samples of ${kind === "host" ? "the host" : name} yet: the server takes one every ${history.interval} s.`;
      } else {
        note.textContent = `Every ${history.interval} s for the last ${Math.round(history.fine_seconds / 60)} minutes, ${history.bucket} s averages before; live.`;
      }
    };
    const add = (t, row) => {
      data.t.push(t);
      for (const key of Object.keys(data)) if (key !== "t") data[key].push(row ? row[key] ?? null : null);
      if (row && "state" in row) data.running[data.running.length - 1] = row.state === "running" ? 1 : 0;
      const since = t - WINDOW;
      let old = 0;
      while (old < data.t.length && data.t[old] < since) old++;
      if (old) for (const key of Object.keys(data)) data[key].splice(0, old);
    };
    draw();
    choice.addEventListener("change", draw);
    if (!history.sampled) return;
    kvmgr.events((event) => {
      if (event.host_name !== history.host) return;  // another replica's host
      if (kind === "host") add(event.t, event.host);
      else {
        const row = event.vms.find((vm) => vm.name === name);
        if (!row) return;
        add(event.t, row);
      }
      draw();
    }, null, ["stats"]);
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("section[data-charts]").forEach((section) => {
      mount(section).catch((err) => {
        section.querySelector(".charts-note").textContent = `Statistics unavailable: ${err.message}`;
      });
    });
  });

  return { niceScale, Chart, specs };
})();
