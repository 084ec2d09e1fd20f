// ringcast dashboard: reads /dashboard/events (one JSON sample a second)
// and draws tiles, SVG line charts, the per-shard table and the top
// channels. No libraries; every number from the server goes in through
// textContent, never as markup.
"use strict";
(function () {
  const KEEP = 60; // samples kept per series (one minute)
  const COLORS = ["#4fb3ff", "#ffb454", "#6fdc8c", "#f07178", "#c792ea", "#89ddff", "#ffcb6b", "#aad94c"];
  const TOTAL_COLOR = "#e6e6e6";
  const SVG = "http://www.w3.org/2000/svg";

  const TILES = [
    ["connections", "connections"],
    ["subscriptions", "subscriptions"],
    ["channels", "channels"],
    ["publications_per_s", "publications/s"],
    ["deliveries_per_s", "deliveries/s"],
    ["slow_consumer_disconnects", "slow-consumer disconnects", true],
    ["dropped_deliveries", "dropped deliveries", true],
  ];
  // [id, title, per-shard key, or a list of total keys with labels]
  const CHARTS = [
    ["deliveries", "Deliveries/s", "deliveries_per_s"],
    ["publications", "Publications/s", "publications_per_s"],
    ["connections", "Connections", "connections"],
    ["trouble", "Slow consumers (per second)", null,
      [["slow_consumer_disconnects_per_s", "slow-consumer disconnects/s", "#f07178"],
       ["dropped_deliveries_per_s", "dropped deliveries/s", "#ffb454"]]],
  ];

  const $ = (id) => document.getElementById(id);
  const fmt = (v) => {
    if (v === null || v === undefined) return "–";
    if (typeof v !== "number") return String(v);
    if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(2) + "M";
    if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(1) + "k";
    return Number.isInteger(v) ? String(v) : v.toFixed(1);
  };
  const uptime = (s) => {
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + (s % 60) + "s";
  };
  const el = (tag, attrs, text) => {
    const e = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };

  // Tiles.
  const tiles = {};
  for (const [key, label, warn] of TILES) {
    const t = el("div", { class: "tile" + (warn ? " warn" : ""), "data-metric": key });
    t.append(el("div", { class: "label" }, label), el("div", { class: "value" }, "–"));
    $("tiles").append(t);
    tiles[key] = t;
  }

  // Charts: an SVG with a polyline per series.
  const H = 150, PAD = 34;
  const charts = {};
  for (const [id, title, key, totals] of CHARTS) {
    const box = el("div", { class: "chart", id: "chart-" + id });
    const svg = el("svg:svg", { role: "img", "aria-label": title });
    box.append(el("h2", {}, title), svg, el("div", { class: "legend" }));
    $("charts").append(box);
    charts[id] = { box, svg, key, totals, series: new Map() };
  }

  function push(chart, name, color, value, total) {
    let s = chart.series.get(name);
    if (!s) {
      s = { color, total, values: [] };
      chart.series.set(name, s);
    }
    s.values.push(value === null || value === undefined ? null : value);
    if (s.values.length > KEEP) s.values.shift();
  }

  function draw(chart) {
    const { svg } = chart;
    const W = svg.clientWidth || 600; // one SVG unit per pixel: text keeps its shape
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.replaceChildren();
    let max = 0;
    for (const s of chart.series.values()) for (const v of s.values) if (v !== null && v > max) max = v;
    const top = max > 0 ? niceCeil(max) : 1;
    for (const f of [0, 0.5, 1]) {
      const y = H - 12 - f * (H - 24);
      svg.append(el("svg:line", { class: "grid", x1: PAD, x2: W, y1: y, y2: y }));
      svg.append(el("svg:text", { class: "axis", x: 2, y: y + 3 }, fmt(top * f)));
    }
    svg.append(el("svg:text", { class: "axis", x: PAD, y: H - 1 }, "−" + KEEP + " s"));
    svg.append(el("svg:text", { class: "axis", x: W - 22, y: H - 1 }, "now"));
    for (const s of chart.series.values()) {
      const pts = [];
      const n = s.values.length;
      s.values.forEach((v, i) => {
        if (v === null) return;
        const x = PAD + ((KEEP - n + i) / (KEEP - 1)) * (W - PAD);
        const y = H - 12 - (v / top) * (H - 24);
        pts.push(x.toFixed(1) + "," + y.toFixed(1));
      });
      if (pts.length) svg.append(el("svg:polyline", { points: pts.join(" "), stroke: s.color, class: s.total ? "total" : "" }));
    }
    const legend = chart.box.querySelector(".legend");
    legend.replaceChildren();
    for (const [name, s] of chart.series) {
      const last = s.values[s.values.length - 1];
      const item = el("span");
      const swatch = el("i");
      swatch.style.background = s.color;
      item.append(swatch, document.createTextNode(name + " " + fmt(last)));
      legend.append(item);
    }
  }

  function niceCeil(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function row(cells, classes) {
    const tr = el("tr");
    cells.forEach((c, i) => tr.append(el("td", classes && classes[i] ? { class: classes[i] } : {}, fmt(c))));
    return tr;
  }

  function render(s) {
    $("version").textContent = s.version;
    $("driver").textContent = s.driver;
    $("shard-count").textContent = s.shards.length;
    $("uptime").textContent = uptime(s.uptime_s);
    for (const [key] of TILES) {
      const v = s.total[key];
      tiles[key].dataset.value = v === null ? "" : v;
      tiles[key].querySelector(".value").textContent = fmt(v);
    }
    for (const c of Object.values(charts)) {
      if (c.key) {
        s.shards.forEach((sh, i) => push(c, "shard " + sh.shard, COLORS[i % COLORS.length], sh[c.key], false));
        push(c, "total", TOTAL_COLOR, s.total[c.key], true);
      } else {
        for (const [key, label, color] of c.totals) push(c, label, color, s.total[key], true);
      }
      draw(c);
    }
    const body = $("shards").tBodies[0];
    body.replaceChildren(...s.shards.map((sh) => row([sh.shard, sh.driver, sh.connections, sh.subscriptions, sh.channels,
      sh.publications_per_s, sh.deliveries_per_s, sh.slow_consumer_disconnects, sh.dropped_deliveries])));
    const t = s.total;
    const total = row(["total", "", t.connections, t.subscriptions, t.channels, t.publications_per_s, t.deliveries_per_s,
      t.slow_consumer_disconnects, t.dropped_deliveries]);
    total.style.fontWeight = "600";
    body.append(total);
    const top = $("top").tBodies[0];
    top.replaceChildren(...s.top_channels.map((c) => row([c.channel, c.subscribers], ["channel"])));
    if (!s.top_channels.length) top.append(row(["no channel has subscribers", ""]));
  }

  // The page's own ?token= goes on to the event stream (an EventSource
  // cannot send an Authorization header).
  const token = new URLSearchParams(location.search).get("token");
  const url = "/dashboard/events" + (token ? "?token=" + encodeURIComponent(token) : "");
  const status = $("status");
  const source = new EventSource(url);
  source.onopen = () => { status.textContent = "live"; status.className = "status on"; };
  source.onerror = () => { status.textContent = "disconnected, retrying…"; status.className = "status off"; };
  source.onmessage = (e) => {
    try {
      render(JSON.parse(e.data));
      status.textContent = "live";
      status.className = "status on";
    } catch (err) {
      console.error("dashboard: bad sample", err);
    }
  };
})();
