// linewatch console: live tiles, the score timeline and the heatmap overlay. No build step, no libraries.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

function fmt(x, digits) {
  if (x === null || x === undefined) return "-";
  return Number(x).toPrecision(digits || 3).replace(/\.?0+(e|$)/, "$1");
}

function path(text) {
  // a source id such as "line-1/press 2#b" as a URL path: each segment encoded, the slashes kept
  return String(text).split("/").map(encodeURIComponent).join("/");
}

function when(t) {
  return t ? new Date(t * 1000).toLocaleString() : "-";
}

// Live updates: one EventSource per page; the badge says whether it is connected.
function live(url, onData) {
  const badge = document.getElementById("live");
  const source = new EventSource(url);
  source.onopen = () => badge && badge.classList.add("on");
  source.onerror = () => badge && badge.classList.remove("on");
  source.onmessage = (ev) => {
    window.lwUpdates = (window.lwUpdates || 0) + 1; // read by tests and the load benchmark
    onData(JSON.parse(ev.data));
  };
  return source;
}

// ------------------------------------------------------------------ overview

function tileNode(t) {
  const a = el("a", { href: "/source/" + path(t.source), "data-source": t.source });
  a.append(el("span", { class: "name" }, t.source), el("span", { class: "detail" }), el("span", { class: "nums" }));
  return a;
}

function updateTile(a, t) {
  // in place: the same element lives as long as its source, so nothing holding it goes stale
  const cls = "tile " + t.status;
  if (a.className !== cls) a.className = cls;
  a.dataset.status = t.status;
  a.children[1].textContent = t.detail;
  a.children[2].textContent = "score " + fmt(t.score) + " / thr " + fmt(t.threshold);
}

function renderOverview(payload) {
  const counts = payload.counts;
  const c = document.getElementById("counts");
  c.replaceChildren(
    el("span", { class: "chip ok" }, counts.ok + " ok"), document.createTextNode(" "),
    el("span", { class: "chip incident" }, counts.incident + " incident"), document.createTextNode(" "),
    el("span", { class: "chip stale" }, counts.stale + " no data"), document.createTextNode(" "),
    el("span", { class: "chip deadletters" }, counts.deadletters + " dead letters rising"),
  );
  const lines = document.getElementById("lines");
  const empty = document.getElementById("empty");
  if (empty && payload.tiles.length) empty.remove();
  for (const t of payload.tiles) {
    let section = lines.querySelector('section.line[data-line="' + CSS.escape(t.line) + '"]');
    if (!section) {
      section = el("section", { class: "line", "data-line": t.line });
      section.append(el("h2", {}, t.line), el("div", { class: "tiles" }));
      const after = [...lines.children].find((s) => s.dataset.line > t.line);
      lines.insertBefore(section, after || null);
    }
    const grid = section.querySelector(".tiles");
    let a = grid.querySelector('a[data-source="' + CSS.escape(t.source) + '"]');
    if (!a) {
      a = tileNode(t);
      const after = [...grid.children].find((n) => n.dataset.source > t.source);
      grid.insertBefore(a, after || null);
    }
    updateTile(a, t);
  }
}

// ------------------------------------------------------------------ source timeline

function drawTimeline(svg, data) {
  const W = 960, H = 320, L = 56, R = 10, T = 10, B = 26;
  const span = (svg.dataset.span && Number(svg.dataset.span)) || 300;
  const t1 = data.now, t0 = t1 - span;
  const pts = data.points.filter((p) => p[0] >= t0 - data.bucket_s);
  let lo = Infinity, hi = -Infinity;
  for (const p of pts) { lo = Math.min(lo, p[2], p[5]); hi = Math.max(hi, p[3], p[5]); }
  for (const a of data.alerts) if (a[1] !== null) hi = Math.max(hi, a[1]);
  if (!isFinite(lo)) { lo = 0; hi = 1; }
  if (hi - lo < 1e-9) { hi = lo + 1; }
  const pad = (hi - lo) * 0.08; lo -= pad; hi += pad;
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
  const nodes = [];
  nodes.push(svgEl("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
  nodes.push(svgEl("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    const tick = svgEl("text", { class: "tick", x: 4, y: y(v) + 4 });
    tick.textContent = fmt(v, 3);
    nodes.push(tick, svgEl("line", { class: "axis", x1: L, y1: y(v), x2: W - R, y2: y(v), opacity: 0.4 }));
  }
  for (let i = 0; i <= 5; i++) {
    const t = t0 + (span * i) / 5;
    const tick = svgEl("text", { class: "tick", x: x(t) - 14, y: H - 8 });
    tick.textContent = "-" + Math.round(t1 - t) + " s";
    nodes.push(tick);
  }
  // one run per stretch without gaps, so silence shows as silence rather than a straight line across it
  const runs = [];
  for (const p of pts) {
    const run = runs[runs.length - 1];
    if (run && p[0] - run[run.length - 1][0] <= 2.5 * data.bucket_s) run.push(p); else runs.push([p]);
  }
  const w = (x(t0 + data.bucket_s) - x(t0)) / 2;
  for (const run of runs) {
    const upper = run.flatMap((p) => [(x(p[0]) - w) + "," + y(p[3]), (x(p[0]) + w) + "," + y(p[3])]);
    const lower = run.slice().reverse().flatMap((p) => [(x(p[0]) + w) + "," + y(p[2]), (x(p[0]) - w) + "," + y(p[2])]);
    nodes.push(svgEl("polygon", { class: "band", points: upper.concat(lower).join(" ") }));
    nodes.push(svgEl("polyline", { class: "mean", points: run.map((p) => x(p[0]) + "," + y(p[4])).join(" ") }));
    nodes.push(svgEl("polyline", { class: "thr", points: run.map((p) => (x(p[0]) - w) + "," + y(p[5]) + " " + (x(p[0]) + w) + "," + y(p[5])).join(" ") }));
  }
  for (const a of data.alerts) {
    if (a[0] < t0 || a[1] === null) continue;
    const link = svgEl("a", { href: "/alert/" + path(a[2]) });
    const dot = svgEl("circle", { class: "alert", cx: x(a[0]), cy: y(a[1]), r: 5, "data-alert": a[2] });
    const title = svgEl("title", {});
    title.textContent = "alert " + a[2] + " score " + fmt(a[1]);
    dot.append(title);
    link.append(dot);
    nodes.push(link);
  }
  svg.replaceChildren(...nodes);
  svg.dataset.points = String(pts.length);
}

function renderIncidents(rows) {
  const body = document.querySelector("#incidents tbody");
  if (!body) return;
  if (!rows.length) return;
  body.replaceChildren(...rows.map((i) => {
    const tr = el("tr");
    const id = el("td"); id.append(el("a", { href: "/incident/" + path(i.incident_id) }, i.incident_id));
    tr.append(id, el("td", {}, when(i.opened_at)), el("td", {}, when(i.last_at)),
      el("td", {}, i.closed_at ? when(i.closed_at) : "open"), el("td", {}, String(i.alerts)),
      el("td", {}, fmt(i.max_severity)), el("td", {}, (i.model || "-") + " v" + (i.version || "-")));
    return tr;
  }));
}

function renderStatus(tile) {
  const p = document.getElementById("tile-status");
  if (!p || !tile) return;
  p.replaceChildren(el("span", { class: "chip " + tile.status }, tile.detail),
    document.createTextNode(" model " + (tile.model || "-") + " v" + (tile.version || "-") + " · threshold " + fmt(tile.threshold, 4)));
}

// ------------------------------------------------------------------ image alert: heatmap over the frame

function heatColor(v) {
  // 0 -> transparent blue, 1 -> opaque red (a short perceptual ramp: blue, yellow, red)
  const stops = [[0, [49, 54, 149]], [0.5, [254, 224, 144]], [1, [215, 25, 28]]];
  let i = 0;
  while (i < stops.length - 2 && v > stops[i + 1][0]) i++;
  const [a, ca] = stops[i], [b, cb] = stops[i + 1];
  const f = Math.min(1, Math.max(0, (v - a) / (b - a)));
  const rgb = ca.map((c, k) => Math.round(c + f * (cb[k] - c)));
  return "rgba(" + rgb.join(",") + "," + (0.7 * Math.pow(v, 1.5)).toFixed(3) + ")"; // cold cells leave the frame visible
}

function drawHeatmap(img, canvas, explanation) {
  const grid = explanation.heatmap || [];
  if (!grid.length) return;
  const rows = grid.length, cols = grid[0].length;
  canvas.width = img.naturalWidth;
  canvas.height = img.naturalHeight;
  const ctx = canvas.getContext("2d");
  let lo = Infinity, hi = -Infinity;
  for (const row of grid) for (const v of row) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
  const cw = canvas.width / cols, ch = canvas.height / rows;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const v = hi > lo ? (grid[r][c] - lo) / (hi - lo) : 0;
      ctx.fillStyle = heatColor(v);
      ctx.fillRect(c * cw, r * ch, cw, ch);
    }
  }
  const peak = explanation.peak;
  if (peak) {
    const cx = (peak.col + 0.5) * cw, cy = (peak.row + 0.5) * ch;
    ctx.lineWidth = Math.max(2, canvas.width / 120);
    ctx.strokeStyle = "#ffffff";
    ctx.beginPath();
    ctx.arc(cx, cy, Math.max(cw, ch) * 0.75, 0, 2 * Math.PI);
    ctx.stroke();
  }
  canvas.dataset.drawn = "1";
}

// ------------------------------------------------------------------ wiring per page

document.addEventListener("DOMContentLoaded", () => {
  const page = document.body.dataset.page;
  if (page === "overview") {
    live("/events/overview", renderOverview);
  } else if (page === "source") {
    const svg = document.getElementById("timeline");
    const initial = JSON.parse(document.getElementById("initial").textContent);
    drawTimeline(svg, initial);
    live("/events/source/" + path(svg.dataset.source), (data) => {
      drawTimeline(svg, data);
      renderIncidents(data.incidents);
      renderStatus(data.tile);
    });
  } else if (page === "alert") {
    const img = document.getElementById("frame");
    const canvas = document.getElementById("heatmap");
    if (img && canvas) {
      const explanation = JSON.parse(document.getElementById("explanation").textContent);
      const draw = () => drawHeatmap(img, canvas, explanation);
      if (img.complete && img.naturalWidth) draw(); else img.addEventListener("load", draw);
    }
  } else if (page === "fleet") {
    setTimeout(() => window.location.reload(), 5000);
  }
});
