// attache status page: renders the admin API's snapshots as they come.
//
// It listens to /v1/events (server-sent events, one JSON snapshot per
// interval) and falls back to polling /v1/services, /v1/discovery and
// /readyz when the stream is refused. When no snapshot has come for a few
// intervals it shows the "disconnected" banner and greys out the stale
// figures; the next snapshot clears both.
//
// The DOM is updated in place, keyed by service name and backend address,
// and text is only written when it changed, so an operator can select and
// copy an address while the page updates. Every value from the API goes in
// through textContent, never as HTML.
"use strict";
(() => {
  const POLL_MS = 2000;
  let intervalMs = 1000; // the server's, learned from its snapshots
  let lastUpdate = Date.now();
  let everUpdated = false;
  const prev = new Map(); // service name -> {t, listen, inB, outB}

  const $ = (id) => document.getElementById(id);

  function el(tag, cls, text) {
    const n = document.createElement(tag);
    if (cls) n.className = cls;
    if (text !== undefined) n.textContent = text;
    return n;
  }
  function setText(node, text) {
    text = String(text);
    if (node.textContent !== text) node.textContent = text;
  }
  function setAttr(node, name, value) {
    if (value === null) {
      if (node.hasAttribute(name)) node.removeAttribute(name);
    } else if (node.getAttribute(name) !== String(value)) {
      node.setAttribute(name, value);
    }
  }
  // keyed makes container's children match items, one per key, in order,
  // reusing the nodes it already has.
  function keyed(container, items, key, create, update) {
    const have = new Map();
    for (const c of Array.from(container.children)) have.set(c.dataset.key, c);
    items.forEach((it, i) => {
      const k = key(it);
      let node = have.get(k);
      if (node) {
        have.delete(k);
      } else {
        node = create(it);
        node.dataset.key = k;
      }
      update(node, it);
      const at = container.children[i];
      if (at !== node) container.insertBefore(node, at || null);
    });
    for (const n of have.values()) n.remove();
  }

  const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];
  function bytes(n) {
    let i = 0;
    while (n >= 1024 && i < UNITS.length - 1) {
      n /= 1024;
      i++;
    }
    return (i === 0 ? String(Math.round(n)) : n.toFixed(n < 10 ? 2 : 1)) + " " + UNITS[i];
  }
  function duration(s) {
    s = Math.max(0, Math.floor(s));
    const d = Math.floor(s / 86400), h = Math.floor(s / 3600) % 24, m = Math.floor(s / 60) % 60;
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + (s % 60) + "s";
    return s + "s";
  }
  const clock = (ms) => new Date(ms).toLocaleTimeString();
  const num = (n) => Number(n || 0).toLocaleString();

  function health(b) {
    if (b.draining) return "draining";
    return b.healthy ? "up" : "down";
  }

  // --- services ----------------------------------------------------------

  const STATS = [
    ["rate_in", "throughput in"],
    ["rate_out", "throughput out"],
    ["active", "active"],
    ["accepted", "accepted"],
    ["failed", "failed"],
    ["no_backend", "no backend"],
    ["retried", "retried"],
    ["dial_errors", "dial errors"],
    ["limited", "limited"],
  ];
  const COLUMNS = ["Health", "Backend", "Weight", "Priority", "Check", "Active", "Passive failures", "Last error"];

  function createService() {
    const card = el("article", "card service");
    const head = el("div", "svc-head");
    head.append(el("h2", "name"), el("code", "listen"), el("span", "tag balance"), el("span", "summary"));
    const disc = el("div", "svc-disc");
    const stats = el("div", "stats");
    for (const [key, label] of STATS) {
      const s = el("div", "stat");
      s.dataset.stat = key;
      s.append(el("span", "v", "–"), el("span", "k", label));
      stats.append(s);
    }
    const table = el("table", "backends");
    const tr = el("tr");
    for (const c of COLUMNS) tr.append(el("th", "", c));
    table.append(el("thead"), el("tbody"));
    table.tHead.append(tr);
    card.append(head, disc, stats, table, el("p", "none", "No backends."));
    return card;
  }

  function throughput(s, t) {
    const c = s.connections || {};
    const p = prev.get(s.name);
    const cur = { t, listen: s.listen, inB: c.bytes_in || 0, outB: c.bytes_out || 0 };
    prev.set(s.name, cur);
    // No rate until two samples of the same listener; counters that went
    // back mean the listener was replaced by a reload.
    if (!p || p.listen !== cur.listen || t <= p.t || cur.inB < p.inB || cur.outB < p.outB) return null;
    const dt = (t - p.t) / 1000;
    return { in: (cur.inB - p.inB) / dt, out: (cur.outB - p.outB) / dt };
  }

  function updateService(card, s, t) {
    const c = s.connections || {};
    const backends = s.backends || [];
    const up = backends.filter((b) => health(b) === "up").length;
    setText(card.querySelector(".name"), s.name);
    setText(card.querySelector(".listen"), s.listen);
    setText(card.querySelector(".balance"), s.balance || "round_robin");
    setText(card.querySelector(".summary"), up + " of " + backends.length + " up");
    setAttr(card, "data-service", s.name);
    setAttr(card, "data-state", backends.length && up === backends.length ? "ok" : up ? "degraded" : "down");

    const disc = card.querySelector(".svc-disc");
    setText(disc, s.discovery && s.discovery.length ? "discovery: " + s.discovery.join(", ") : "");
    setAttr(disc, "hidden", s.discovery && s.discovery.length ? null : "");

    const r = throughput(s, t);
    const values = {
      rate_in: r ? bytes(r.in) + "/s" : "–",
      rate_out: r ? bytes(r.out) + "/s" : "–",
      active: num(c.active),
      accepted: num(c.accepted),
      failed: num(c.failed),
      no_backend: num(c.no_backend),
      retried: num(c.retried),
      dial_errors: num(c.dial_errors),
      limited: num(c.limited),
    };
    for (const [key] of STATS) {
      const stat = card.querySelector('[data-stat="' + key + '"]');
      setText(stat.querySelector(".v"), values[key]);
      const bad = ["failed", "no_backend", "dial_errors", "limited"].includes(key) && c[key] > 0;
      stat.classList.toggle("warn", bad);
    }
    const total = card.querySelector('[data-stat="rate_in"]');
    setAttr(total, "title", "from clients, counted as the bytes flow: " + bytes(c.bytes_in || 0) + " in total");
    setAttr(card.querySelector('[data-stat="rate_out"]'), "title", "to clients, counted as the bytes flow: " + bytes(c.bytes_out || 0) + " in total");

    keyed(card.querySelector("tbody"), backends, (b) => b.addr, createBackend, updateBackend);
    setAttr(card.querySelector(".none"), "hidden", backends.length ? "" : null);
    setAttr(card.querySelector("table"), "hidden", backends.length ? null : "");
  }

  function createBackend() {
    const tr = el("tr");
    const pill = el("span", "pill");
    const hc = el("td", "health");
    hc.append(pill);
    tr.append(hc, el("td", "addr"), el("td", "num"), el("td", "num"), el("td", "check"), el("td", "num"),
      el("td", "num"), el("td", "err"));
    return tr;
  }

  function updateBackend(tr, b) {
    const h = health(b);
    setAttr(tr, "data-addr", b.addr);
    setAttr(tr, "data-health", h);
    const cells = tr.children;
    const pill = cells[0].firstChild;
    setText(pill, h);
    setAttr(pill, "class", "pill " + h);
    setText(cells[1], b.addr);
    setText(cells[2], b.weight);
    setText(cells[3], b.priority);
    setText(cells[4], b.check || "");
    setAttr(cells[4], "class", "check " + (b.check || ""));
    setText(cells[5], num(b.active));
    let passive = num(b.passive_failures);
    if (b.ejected_until) passive += " · ejected until " + clock(Date.parse(b.ejected_until));
    setText(cells[6], passive);
    let err = b.last_error || "";
    if (!err && b.ejected_until) err = "passively ejected after failed connections";
    setText(cells[7], err);
    setAttr(cells[7], "title", err || null);
    if (b.last_check) setAttr(cells[4], "title", "last check " + clock(Date.parse(b.last_check)));
  }

  // --- discovery ---------------------------------------------------------

  function createProvider() {
    const tr = el("tr");
    const st = el("td");
    st.append(el("span", "pill"));
    tr.append(el("td", "addr"), st, el("td", "status"));
    return tr;
  }

  function updateProvider(tr, p) {
    const state = !p.reported ? "waiting" : p.up ? "up" : "down";
    setAttr(tr, "data-provider", p.name);
    setAttr(tr, "data-health", state);
    setText(tr.children[0], p.name);
    const pill = tr.children[1].firstChild;
    setText(pill, state);
    setAttr(pill, "class", "pill " + (state === "waiting" ? "draining" : state));
    const status = p.status === undefined || p.status === null ? "" : JSON.stringify(p.status);
    setText(tr.children[2], status);
    setAttr(tr.children[2], "title", status || null);
  }

  // --- the whole page ----------------------------------------------------

  function render(snap, mode) {
    if (snap.interval_ms > 0) intervalMs = snap.interval_ms;
    const t = snap.time ? Date.parse(snap.time) : Date.now();
    const services = snap.services || [];
    const providers = snap.providers || [];

    const ready = $("ready");
    setText(ready, snap.ready ? "ready" : "not ready");
    setAttr(ready, "data-ready", snap.ready ? "yes" : "no");
    setAttr(ready, "class", "badge " + (snap.ready ? "ok" : "warn"));
    setAttr(ready, "title", snap.ready ? null : snap.ready_error || "not ready");

    const meta = [];
    if (snap.version) meta.push("version " + snap.version);
    if (snap.started) meta.push("up " + duration((t - Date.parse(snap.started)) / 1000));
    meta.push("updated " + clock(t));
    if (!snap.ready && snap.ready_error) meta.push(snap.ready_error);
    setText($("meta"), meta.join(" · "));
    setText($("mode"), mode === "live" ? "live" : "polling every " + POLL_MS / 1000 + "s");

    keyed($("services"), services, (s) => s.name, createService, (card, s) => updateService(card, s, t));
    for (const name of Array.from(prev.keys())) {
      if (!services.some((s) => s.name === name)) prev.delete(name);
    }
    setAttr($("empty"), "hidden", services.length ? "" : null);
    keyed($("providers"), providers, (p) => p.name, createProvider, updateProvider);
    setAttr($("discovery"), "hidden", providers.length ? null : "");
  }

  function connected(snap, mode) {
    lastUpdate = Date.now();
    everUpdated = true;
    document.body.dataset.connection = mode;
    document.body.classList.remove("stale");
    $("banner").hidden = true;
    render(snap, mode);
  }

  function disconnected(why) {
    if (document.body.dataset.connection === "disconnected") return;
    document.body.dataset.connection = "disconnected";
    document.body.classList.add("stale");
    const since = everUpdated ? "; last update at " + clock(lastUpdate) : "";
    setText($("banner-text"), why + since);
    $("banner").hidden = false;
    setText($("mode"), "reconnecting…");
    const ready = $("ready");
    setText(ready, "unknown");
    setAttr(ready, "data-ready", "unknown");
    setAttr(ready, "class", "badge bad");
  }

  // A snapshot that does not come within a few intervals means the API is
  // gone even when the socket has not said so (a host that went away).
  setInterval(() => {
    const limit = Math.max(3 * intervalMs, 2 * POLL_MS);
    if (Date.now() - lastUpdate > limit) disconnected(everUpdated ? "no update for " + duration((Date.now() - lastUpdate) / 1000) : "no answer yet");
  }, 500);

  function stream() {
    const es = new EventSource("/v1/events");
    es.onmessage = (e) => {
      let snap;
      try {
        snap = JSON.parse(e.data);
      } catch (err) {
        return;
      }
      connected(snap, "live");
    };
    es.onerror = () => {
      if (es.readyState === EventSource.CLOSED) {
        // The server answered, but not with a stream (an older attache,
        // or a proxy in between that buffers): poll instead.
        es.close();
        poll();
        return;
      }
      // The browser reconnects by itself.
      disconnected("the event stream was cut");
    };
  }

  async function getJSON(path, anyStatus) {
    const r = await fetch(path, { cache: "no-store", signal: AbortSignal.timeout(2 * POLL_MS) });
    if (!r.ok && !anyStatus) throw new Error(path + " answered HTTP " + r.status);
    return r.json();
  }

  async function poll() {
    try {
      const [svc, disc, rdy] = await Promise.all([
        getJSON("/v1/services"),
        getJSON("/v1/discovery"),
        getJSON("/readyz", true),
      ]);
      connected({ services: svc.services, providers: disc.providers, ready: rdy.ready, ready_error: rdy.error }, "polling");
    } catch (err) {
      disconnected(err && err.message ? err.message : "the admin API does not answer");
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  if (window.EventSource) stream();
  else poll();
})();
