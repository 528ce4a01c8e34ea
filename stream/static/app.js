// subtag live viewer. Plain browser JavaScript, no dependencies, no build step.
//
// One WebSocket to /events (next to this page), speaking the protocol every subscriber speaks:
// JSON text frames that are events (tagged by "kind"), per-line "done" messages with a latency
// breakdown, and "error" messages. Event data is only ever put in the page with textContent,
// never innerHTML: subtitle lines are untrusted input.
"use strict";

(() => {
  const page = new URL(window.location.href);
  // Bounded DOM: each stream keeps its newest rows only (?max=N on the page's address).
  const MAX_EVENTS_PER_STREAM = Math.max(1, Number.parseInt(page.searchParams.get("max"), 10) || 200);
  const LATENCY_WINDOW = 500; // lines the p50/p99 and histogram cover
  const SPARK_POINTS = 120; // lines the sparkline shows
  const MAX_ERRORS = 20;
  const KINDS = ["speech", "music", "action"];
  const KIND_COLORS = { speech: "#4da3ff", music: "#b58cff", action: "#ffb547" };

  const $ = (id) => document.getElementById(id);

  const state = {
    socket: null,
    retryMs: 500,
    paused: false,
    serverStreams: page.searchParams.get("stream") || "",
    hiddenKinds: new Set(),
    hiddenStreams: new Set(),
    streams: new Map(), // name -> { section, list, count, chip }
    latency: { total: [], queue: [], model: [], first: [] },
    events: 0,
    lines: 0,
    dirty: false,
  };

  // --- connection --------------------------------------------------------------------------

  function eventsUrl() {
    const url = new URL("events", page);
    url.protocol = page.protocol === "https:" ? "wss:" : "ws:";
    url.search = "";
    if (state.serverStreams) url.searchParams.set("stream", state.serverStreams);
    for (const key of ["kind", "token"]) {
      const value = page.searchParams.get(key);
      if (value) url.searchParams.set(key, value);
    }
    return url.toString();
  }

  function setConnection(stateName, text) {
    $("conn").dataset.state = stateName;
    $("conn-text").textContent = text;
  }

  function connect() {
    const socket = new WebSocket(eventsUrl());
    state.socket = socket;
    setConnection("connecting", "connecting…");
    socket.addEventListener("open", () => {
      if (state.socket !== socket) return;
      state.retryMs = 500;
      const filter = state.serverStreams ? ` · streams ${state.serverStreams}` : "";
      setConnection("open", `live${filter}`);
    });
    socket.addEventListener("message", (frame) => {
      if (state.socket !== socket || typeof frame.data !== "string") return;
      let message;
      try {
        message = JSON.parse(frame.data);
      } catch {
        return; // the server only sends JSON; ignore anything else rather than stop
      }
      handle(message);
    });
    let opened = false;
    socket.addEventListener("open", () => {
      opened = true;
    });
    socket.addEventListener("close", () => {
      if (state.socket !== socket) return;
      const wait = state.retryMs;
      state.retryMs = Math.min(state.retryMs * 2, 5000);
      const again = `retrying in ${(wait / 1000).toFixed(1)} s`;
      // A refused handshake (bad or missing token, unknown kind) reaches a browser only as a
      // close before "open"; say what usually causes it.
      const why = opened
        ? "disconnected"
        : "cannot subscribe to /events: service down, or it needs ?token=… in this page's address";
      setConnection("closed", `${why} · ${again}`);
      setTimeout(() => {
        if (state.socket === socket) connect();
      }, wait);
    });
  }

  function reconnect() {
    const old = state.socket;
    state.socket = null;
    if (old) old.close(1000, "filter changed");
    connect();
  }

  // --- messages ----------------------------------------------------------------------------

  function handle(message) {
    if (message && KINDS.includes(message.kind)) {
      state.events += 1;
      if (!state.paused) addEvent(message);
    } else if (message && message.type === "done") {
      state.lines += 1;
      recordLatency(message.latency);
    } else if (message && message.type === "error") {
      addError(message);
    }
    $("count-events").textContent = String(state.events);
    $("count-lines").textContent = String(state.lines);
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null && text !== "") node.textContent = String(text);
    return node;
  }

  function streamColumn(name) {
    let column = state.streams.get(name);
    if (column) return column;
    $("empty").hidden = true;
    const section = el("section", "stream");
    section.dataset.stream = name;
    const head = el("header", "stream-head");
    head.append(el("h2", "stream-name", name));
    const count = el("span", "stream-count", "0");
    head.append(count);
    const list = el("ol", "events");
    section.append(head, list);
    $("streams").append(section);

    const chips = $("stream-chips");
    chips.querySelector(".hint")?.remove();
    const chip = el("button", "chip", name);
    chip.type = "button";
    chip.dataset.stream = name;
    chip.setAttribute("aria-pressed", "true");
    chip.addEventListener("click", () => {
      const hidden = !state.hiddenStreams.has(name);
      if (hidden) state.hiddenStreams.add(name);
      else state.hiddenStreams.delete(name);
      chip.setAttribute("aria-pressed", String(!hidden));
      section.hidden = hidden;
    });
    chips.append(chip);

    column = { section, list, count, chip, n: 0 };
    state.streams.set(name, column);
    $("count-streams").textContent = String(state.streams.size);
    section.hidden = state.hiddenStreams.has(name);
    return column;
  }

  function field(label, value, className) {
    const wrap = el("span", `field ${className || ""}`.trim());
    wrap.append(el("span", "field-label", label), el("span", "field-value", value || "—"));
    return wrap;
  }

  function renderBody(ev) {
    const body = el("div", "ev-body");
    if (ev.kind === "speech") {
      const who = el("div", "who");
      who.append(el("span", "speaker", ev.speaker || "(unknown)"));
      if (ev.status) who.append(el("span", "status", ev.status));
      body.append(who, el("p", "text", ev.text));
    } else if (ev.kind === "music") {
      body.append(el("p", "cue", ev.cue));
      const tags = el("div", "tags");
      tags.append(field("type", ev.type), field("mood", ev.mood));
      body.append(tags);
    } else {
      body.append(el("p", "cue", ev.cue));
      const tags = el("div", "tags");
      tags.append(field("action", ev.action, "wide"));
      body.append(tags);
    }
    return body;
  }

  function addEvent(ev) {
    const column = streamColumn(String(ev.stream));
    const row = el("li", `ev ev-${ev.kind}`);
    row.dataset.kind = ev.kind;
    row.dataset.stream = String(ev.stream);
    row.dataset.seq = String(ev.seq);
    const meta = el("div", "ev-meta");
    meta.append(el("span", "badge", ev.kind));
    meta.append(el("span", "t", ev.t || "no time"));
    meta.append(el("span", "seq", `#${ev.seq}`));
    if (typeof ev.confidence === "number") {
      const conf = el("span", "conf", ev.confidence.toFixed(2));
      conf.title = `confidence · ${ev.backend || "?"} backend`;
      meta.append(conf);
    }
    row.append(meta, renderBody(ev));
    row.hidden = state.hiddenKinds.has(ev.kind);
    // Newest line on top, but a line's own events keep their order in the line.
    let after = null;
    for (let node = column.list.firstElementChild; node; node = node.nextElementSibling) {
      if (node.dataset.seq !== row.dataset.seq) break;
      after = node;
    }
    if (after) after.after(row);
    else column.list.prepend(row);
    column.n += 1;
    column.count.textContent = String(column.n);
    while (column.list.childElementCount > MAX_EVENTS_PER_STREAM) {
      column.list.lastElementChild.remove();
    }
  }

  function addError(error) {
    const list = $("errors");
    list.querySelector(".hint")?.remove();
    const item = el("li", "error");
    item.append(el("span", "code", error.code));
    const where = [error.stream, error.seq !== null && error.seq !== undefined ? `#${error.seq}` : ""]
      .filter(Boolean)
      .join(" ");
    if (where) item.append(el("span", "where", where));
    item.append(el("span", "msg", error.message));
    list.prepend(item);
    while (list.childElementCount > MAX_ERRORS) list.lastElementChild.remove();
  }

  // --- latency -----------------------------------------------------------------------------

  function push(series, value) {
    if (typeof value !== "number" || !Number.isFinite(value)) return;
    series.push(value);
    if (series.length > LATENCY_WINDOW) series.shift();
  }

  function recordLatency(latency) {
    if (!latency) return;
    push(state.latency.total, latency.total);
    push(state.latency.queue, latency.queue);
    push(state.latency.model, latency.model);
    push(state.latency.first, latency.first_event);
    state.dirty = true;
  }

  function quantile(values, q) {
    if (values.length === 0) return NaN;
    const sorted = [...values].sort((a, b) => a - b);
    // nearest-rank: the smallest value with at least q of the values at or below it
    const rank = Math.max(1, Math.ceil(q * sorted.length));
    return sorted[rank - 1];
  }

  function ms(value) {
    if (!Number.isFinite(value)) return "–";
    if (value >= 1000) return `${(value / 1000).toFixed(2)} s`;
    if (value >= 100) return `${value.toFixed(0)} ms`;
    if (value >= 10) return `${value.toFixed(1)} ms`;
    return `${value.toFixed(2)} ms`;
  }

  function sizeCanvas(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || canvas.width;
    const height = canvas.clientHeight || canvas.height;
    if (canvas.width !== Math.round(width * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    return { ctx, width, height };
  }

  function drawSparkline(values, p99) {
    const { ctx, width, height } = sizeCanvas($("sparkline"));
    const points = values.slice(-SPARK_POINTS);
    if (points.length === 0) return;
    const top = Math.max(...points, p99) * 1.1 || 1;
    const y = (v) => height - 4 - (v / top) * (height - 10);
    const x = (i) => (points.length === 1 ? width / 2 : (i / (points.length - 1)) * (width - 4) + 2);
    ctx.strokeStyle = "rgba(255,255,255,0.18)";
    ctx.setLineDash([3, 3]);
    ctx.beginPath();
    ctx.moveTo(0, y(p99));
    ctx.lineTo(width, y(p99));
    ctx.stroke();
    ctx.setLineDash([]);
    ctx.fillStyle = "rgba(255,255,255,0.45)";
    ctx.font = "10px system-ui, sans-serif";
    ctx.fillText(`p99 ${ms(p99)}`, 4, Math.max(10, y(p99) - 3));
    const gradient = ctx.createLinearGradient(0, 0, 0, height);
    gradient.addColorStop(0, "rgba(77,163,255,0.35)");
    gradient.addColorStop(1, "rgba(77,163,255,0)");
    ctx.beginPath();
    points.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
    ctx.strokeStyle = KIND_COLORS.speech;
    ctx.lineWidth = 1.5;
    ctx.stroke();
    ctx.lineTo(x(points.length - 1), height);
    ctx.lineTo(x(0), height);
    ctx.closePath();
    ctx.fillStyle = gradient;
    ctx.fill();
  }

  function drawHistogram(values) {
    const { ctx, width, height } = sizeCanvas($("histogram"));
    if (values.length === 0) return;
    // Log-spaced buckets: latencies span from sub-millisecond (rules) to seconds (overload).
    const lo = Math.max(Math.min(...values), 0.01);
    const hi = Math.max(Math.max(...values), lo * 1.01);
    const buckets = 24;
    const counts = new Array(buckets).fill(0);
    const span = Math.log(hi) - Math.log(lo);
    for (const v of values) {
      const at = span > 0 ? (Math.log(Math.max(v, lo)) - Math.log(lo)) / span : 0;
      counts[Math.min(buckets - 1, Math.floor(at * buckets))] += 1;
    }
    const most = Math.max(...counts);
    const barWidth = width / buckets;
    const chartHeight = height - 14;
    counts.forEach((count, i) => {
      const h = (count / most) * (chartHeight - 2);
      ctx.fillStyle = KIND_COLORS.music;
      ctx.globalAlpha = count ? 0.85 : 0.15;
      ctx.fillRect(i * barWidth + 1, chartHeight - Math.max(h, 1), barWidth - 2, Math.max(h, 1));
    });
    ctx.globalAlpha = 1;
    ctx.fillStyle = "rgba(255,255,255,0.55)";
    ctx.font = "10px system-ui, sans-serif";
    ctx.textBaseline = "bottom";
    ctx.fillText(ms(lo), 2, height);
    const label = ms(hi);
    ctx.fillText(label, width - ctx.measureText(label).width - 2, height);
  }

  function renderLatency() {
    if (!state.dirty) return;
    state.dirty = false;
    const totals = state.latency.total;
    const p50 = quantile(totals, 0.5);
    const p99 = quantile(totals, 0.99);
    $("p50").textContent = ms(p50);
    $("p99").textContent = ms(p99);
    $("last").textContent = ms(totals[totals.length - 1]);
    $("lat-count").textContent = String(totals.length);
    $("q50").textContent = ms(quantile(state.latency.queue, 0.5));
    $("m50").textContent = ms(quantile(state.latency.model, 0.5));
    $("f50").textContent = ms(quantile(state.latency.first, 0.5));
    drawSparkline(totals, p99);
    drawHistogram(totals);
  }

  // --- controls ----------------------------------------------------------------------------

  function applyKindFilter() {
    for (const row of document.querySelectorAll("#streams .ev")) {
      row.hidden = state.hiddenKinds.has(row.dataset.kind);
    }
  }

  function setupControls() {
    const pageKinds = (page.searchParams.get("kind") || "").split(",").filter(Boolean);
    for (const box of document.querySelectorAll('input[name="kind"]')) {
      if (pageKinds.length && !pageKinds.includes(box.value)) {
        box.checked = false;
        state.hiddenKinds.add(box.value);
      }
      box.addEventListener("change", () => {
        if (box.checked) state.hiddenKinds.delete(box.value);
        else state.hiddenKinds.add(box.value);
        applyKindFilter();
      });
    }
    const input = $("filter-streams");
    input.value = state.serverStreams;
    $("server-filter").addEventListener("submit", (submit) => {
      submit.preventDefault();
      const wanted = input.value
        .split(",")
        .map((s) => s.trim())
        .filter(Boolean)
        .join(",");
      if (wanted === state.serverStreams) return;
      state.serverStreams = wanted;
      // Keep the page's own address in step, so a reload or a shared link keeps the filter.
      if (wanted) page.searchParams.set("stream", wanted);
      else page.searchParams.delete("stream");
      window.history.replaceState(null, "", page.toString());
      reconnect();
    });
    $("pause").addEventListener("click", () => {
      state.paused = !state.paused;
      $("pause").setAttribute("aria-pressed", String(state.paused));
      $("pause").textContent = state.paused ? "resume" : "pause";
    });
    $("clear").addEventListener("click", () => {
      for (const column of state.streams.values()) {
        column.list.replaceChildren();
        column.n = 0;
        column.count.textContent = "0";
      }
    });
    window.addEventListener("resize", () => {
      state.dirty = true;
    });
  }

  setupControls();
  connect();
  // Redraw the latency panel a few times a second, not per message: a busy service sends
  // thousands of "done" messages a second.
  window.setInterval(renderLatency, 250);
})();
