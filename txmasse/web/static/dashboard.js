// The masse dashboard: follows /api/events (Server-Sent Events) and shows
// the live instances and the last events. Everything from the registry is
// put into the page as text (textContent), never as HTML.
"use strict";

(() => {
  const MAX_EVENTS = 200;
  const peers = new Map(); // instance id -> {record, deadline (ms on performance.now) or null, cells}
  const statuses = new Map(); // namespace -> {synced, error}
  let source = null;
  let renderPending = false;

  const $ = (id) => document.getElementById(id);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function age(seconds) {
    seconds = Math.max(0, seconds);
    if (seconds < 60) return seconds.toFixed(0) + "s";
    if (seconds < 3600) return (seconds / 60).toFixed(0) + "m";
    if (seconds < 86400) return (seconds / 3600).toFixed(0) + "h";
    return (seconds / 86400).toFixed(0) + "d";
  }

  function left(entry) {
    if (entry.deadline === null) return "…";
    return (Math.max(0, entry.deadline - performance.now()) / 1000).toFixed(1) + "s";
  }

  function deadline(expiresIn) {
    return typeof expiresIn === "number" ? performance.now() + expiresIn * 1000 : null;
  }

  function healthText(record) {
    if (record.draining) return "draining";
    return record.reason ? record.health + ": " + record.reason : record.health;
  }

  function cell(row, label, className, text) {
    const td = el("td", className, text);
    td.dataset.label = label;
    row.appendChild(td);
    return td;
  }

  function lines(row, label, className, items) {
    const td = cell(row, label, className);
    for (const item of items) td.appendChild(el("div", "", item));
    return td;
  }

  function render() {
    renderPending = false;
    const shown = $("namespace").value;
    const entries = [...peers.values()]
      .filter((entry) => !shown || entry.record.namespace === shown)
      .sort((a, b) => {
        const x = a.record, y = b.record;
        return x.namespace.localeCompare(y.namespace) || x.name.localeCompare(y.name) ||
          x.registered - y.registered || x.instance.localeCompare(y.instance);
      });
    const body = document.createElement("tbody");
    for (const entry of entries) {
      const r = entry.record;
      const row = el("tr", "instance");
      row.dataset.instance = r.instance;
      cell(row, "namespace", "namespace", r.namespace);
      cell(row, "name", "name", r.name);
      cell(row, "instance", "instance", r.instance.slice(0, 12)).title = r.instance;
      lines(row, "endpoints", "endpoints", r.endpoints);
      // The host identity is "hostname/machine-id": the hostname says enough.
      cell(row, "host", "host", r.host.split("/")[0]).title = r.host;
      const ageCell = cell(row, "age", "age", age(Date.now() / 1000 - r.registered));
      const leftCell = cell(row, "lease left", "left", left(entry));
      const state = r.draining ? "draining" : "health-" + r.health;
      cell(row, "health", "health " + state, healthText(r));
      lines(row, "metadata", "meta",
        Object.keys(r.metadata).sort().map((key) => key + "=" + r.metadata[key]));
      entry.cells = { age: ageCell, left: leftCell };
      body.appendChild(row);
    }
    $("peers").replaceChild(body, $("peers").tBodies[0]);
    $("count").textContent = String(entries.length);
    $("noun").textContent = entries.length === 1 ? "instance" : "instances";
    $("empty").hidden = entries.length > 0;
  }

  function scheduleRender() {
    if (!renderPending) {
      renderPending = true;
      setTimeout(render, 0);
    }
  }

  function tick() {
    const now = Date.now() / 1000;
    for (const entry of peers.values()) {
      if (!entry.cells) continue;
      entry.cells.age.textContent = age(now - entry.record.registered);
      entry.cells.left.textContent = left(entry);
      const remaining = entry.deadline === null ? Infinity : entry.deadline - performance.now();
      entry.cells.left.classList.toggle("low", remaining < 1000);
    }
  }

  function logEvent(event) {
    const r = event.record;
    const item = el("li", "event");
    item.dataset.kind = event.kind;
    item.dataset.instance = r.instance;
    const when = new Date(event.time * 1000);
    item.appendChild(el("time", "", when.toTimeString().slice(0, 8)));
    item.appendChild(el("span", "kind kind-" + event.kind, event.kind));
    let text = r.namespace + "/" + r.name + " " + r.instance.slice(0, 12) + " " +
      r.endpoints.join(" ");
    if (event.source) text += " from " + event.source;
    item.appendChild(el("span", "what", text));
    const list = $("events");
    list.insertBefore(item, list.firstChild);
    while (list.children.length > MAX_EVENTS) list.removeChild(list.lastChild);
  }

  function onEvent(event) {
    const r = event.record;
    if (event.kind === "present" || event.kind === "joined" || event.kind === "updated") {
      const known = peers.get(r.instance);
      const until = deadline(r.expiresIn);
      peers.set(r.instance, { record: r, deadline: until ?? (known ? known.deadline : null) });
      scheduleRender();
    } else if (event.kind === "left" || event.kind === "timedout") {
      peers.delete(r.instance);
      scheduleRender();
    }
    if (event.kind !== "present") logEvent(event);
  }

  function onLeases(message) {
    for (const [instance, expiresIn] of Object.entries(message.expiresIn)) {
      const entry = peers.get(instance);
      if (entry) entry.deadline = deadline(expiresIn);
    }
    tick();
  }

  function showStatus() {
    const down = [...statuses.entries()].filter(([, s]) => !s.synced);
    const node = $("status");
    if (down.length === 0) {
      node.textContent = "live";
      node.className = "status live";
    } else {
      node.textContent = down.map(([ns, s]) => ns + ": " + (s.error || "catching up")).join("; ");
      node.className = "status down";
    }
  }

  function onHello(hello) {
    peers.clear();
    statuses.clear();
    $("events").replaceChildren(); // the stream sends the recent ones again
    $("registry").textContent = hello.registry;
    const select = $("namespace");
    const chosen = select.value;
    while (select.options.length > 1) select.remove(1);
    for (const ns of hello.namespaces) {
      const option = el("option", "", ns);
      option.value = ns;
      select.appendChild(option);
    }
    select.value = hello.namespaces.includes(chosen) ? chosen : "";
    scheduleRender();
  }

  function connect() {
    if (source) source.close();
    const params = new URLSearchParams();
    for (const ns of new URLSearchParams(location.search).getAll("ns")) params.append("ns", ns);
    if ($("usage").checked) params.set("usage", "1");
    const query = params.toString();
    source = new EventSource("api/events" + (query ? "?" + query : ""));
    source.addEventListener("hello", (m) => onHello(JSON.parse(m.data)));
    source.addEventListener("status", (m) => {
      const s = JSON.parse(m.data);
      statuses.set(s.namespace, s);
      showStatus();
    });
    source.addEventListener("leases", (m) => onLeases(JSON.parse(m.data)));
    source.addEventListener("recent", (m) => logEvent(JSON.parse(m.data)));
    source.onmessage = (m) => onEvent(JSON.parse(m.data));
    source.onerror = () => {
      const node = $("status");
      node.textContent = "dashboard unreachable, retrying…";
      node.className = "status down";
    };
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("usage").checked = new URLSearchParams(location.search).get("usage") === "1";
    $("usage").addEventListener("change", connect);
    $("namespace").addEventListener("change", render);
    setInterval(tick, 250);
    connect();
  });
})();
