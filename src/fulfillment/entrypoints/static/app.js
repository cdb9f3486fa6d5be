// Fulfillment Saga dashboard: plain JavaScript, no build step, nothing from other origins.
//
// Pages are hash routes: `#/` (overview, the pharmacist's queue and orders,
// `#/?status=cancelled` filtered) and `#/orders/<id>` (one order's saga timeline and its
// lifecycle: verification, cancellation, pickup, tracking, lots). Data comes from the
// key-protected JSON API; with FULFILLMENT_API_KEYS set the page asks for a key once and
// keeps it in this tab's sessionStorage. The queue's decisions are POSTed with that key
// (only a pharmacist or admin key may decide). Every value is written with textContent,
// never as HTML. Times are shown in UTC, and say so ("12:03:04.123 UTC"); each one's
// <time> element has the browser's local time in its tooltip.
"use strict";

(() => {
  const REFRESH_MS = 2000;
  const PAGE_SIZE = 25;
  const KEY_STORAGE = "fulfillment.apiKey";
  const PHARMACIST_STORAGE = "fulfillment.pharmacistId";
  const MAX_ID = 200;
  const MAX_NOTE = 2000;
  const LINGER_MS = 6000; // how long a row that left the queue keeps saying why

  // Step titles, hints and their order come with each timeline, from the saga's definition.
  const STATUS_ICONS = {
    succeeded: "\u2713",
    failed: "\u2715",
    compensated: "\u21ba",
    compensation_failed: "!",
    running: "\u25cf",
    waiting: "\u25d4",
    pending: "\u2026",
    skipped: "\u2013",
    dead: "\u2298",
  };
  const ORDER_FILTERS = [
    [null, "All"],
    ["pending", "Pending"],
    ["awaiting_verification", "Awaiting verification"],
    ["fulfilled", "Fulfilled"],
    ["delivered", "Delivered"],
    ["returned", "Returned"],
    ["cancelled", "Cancelled"],
    ["needs_attention", "Needs attention"],
  ];
  const SUCCESS_EVENTS = new Set([
    "OrderCreated", "OrderFulfillmentSagaStarted", "PrescriptionCreated", "InventoryReserved",
    "ShipmentInitiated", "OrderFulfillmentSagaCompleted", "OrderFulfilled",
    "PrescriptionVerified", "ShipmentPickedUp", "ShipmentDelivered",
  ]);
  const FAILURE_EVENTS = new Set([
    "PrescriptionCreationFailed", "InventoryReservationFailed", "ShipmentInitiationFailed",
    "SagaStepAttemptFailed", "CompensationAttemptFailed", "SagaCompensationFailed",
    "PrescriptionRejected", "SagaWaitTimedOut",
  ]);
  const COMPENSATION_EVENTS = new Set([
    "SagaCompensationStarted", "ShipmentCancelled", "InventoryReleased",
    "PrescriptionCancelled", "SagaCompensationRetried", "OrderCancelled",
    "OrderCancellationRequested", "ShipmentReturned",
  ]);
  // Waits and what the outside world said meanwhile: neither good nor bad news.
  const INFO_EVENTS = new Set([
    "SagaWaitStarted", "SagaSignalReceived", "PrescriptionClarificationRequested",
    "ShipmentTrackingUpdated",
  ]);
  // The pharmacist's three answers (POST /orders/{id}/verification): what the button
  // says, what the form asks for besides the pharmacist's ID, what a 202 means.
  const DECISIONS = {
    approve: {
      button: "Approve", submit: "Approve", cls: "btn-ok", field: "note", required: false,
      fieldLabel: "Note (optional)",
      done: "Approved: the order leaves the queue on the next refresh.",
    },
    reject: {
      button: "Reject", submit: "Reject", cls: "btn-bad", field: "reason", required: true,
      fieldLabel: "Reason",
      done: "Rejected: the order is cancelled and leaves the queue on the next refresh.",
    },
    request_clarification: {
      button: "Ask prescriber", submit: "Send question", cls: "ghost", field: "note", required: true,
      fieldLabel: "Question for the prescriber",
      done: "Question sent to the prescriber: the order keeps waiting for a decision.",
    },
  };
  const TRACKING_LABELS = {
    in_transit: "in transit", out_for_delivery: "out for delivery", delivered: "delivered",
    delivery_failed: "delivery failed", returned_to_sender: "returned to sender",
  };

  // --- tiny DOM helper ------------------------------------------------------------------

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") el.className = value;
      else if (name === "dataset") Object.assign(el.dataset, value);
      else if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
      else if (name === "style") Object.assign(el.style, value); // CSSOM: allowed by the CSP
      else el.setAttribute(name, value === true ? "" : String(value));
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [name, value] of Object.entries(attrs || {})) el.setAttribute(name, String(value));
    for (const child of children.flat()) if (child) el.append(child);
    return el;
  }

  const $ = (id) => document.getElementById(id);

  // replaceChildren, skipping null/false children (the DOM would print them as text).
  function fill(el, ...children) {
    el.replaceChildren();
    return append(el, children);
  }

  // --- formatting -----------------------------------------------------------------------

  let clockSkewMs = 0; // server time minus this browser's time

  function pretty(word) {
    return String(word).replace(/_/g, " ");
  }

  function formatMs(ms) {
    if (ms === null || ms === undefined) return "\u2013";
    if (ms < 1) return `${ms.toFixed(2)} ms`;
    if (ms < 1000) return `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
    const s = ms / 1000;
    if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${Math.round(s % 60)} s`;
    return `${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function offsetMs(from, to) {
    if (!from || !to) return null;
    return Date.parse(to) - Date.parse(from) + microExtra(to) - microExtra(from);
  }

  // Date.parse keeps milliseconds only; sagas on a fast machine take a few of them.
  function microExtra(iso) {
    const match = /\.(\d{3})(\d{1,3})/.exec(iso);
    return match ? Number(`0.${match[2].padEnd(3, "0")}`) : 0;
  }

  function ago(iso) {
    if (!iso) return "\u2013";
    const s = Math.max(0, (Date.now() + clockSkewMs - Date.parse(iso)) / 1000);
    if (s < 5) return "just now";
    if (s < 60) return `${Math.floor(s)} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
    return `${Math.floor(s / 86400)} d ago`;
  }

  // `12:03:04.123 UTC` (`12:03 UTC` without seconds).
  function clockTime(iso, seconds = true) {
    if (!iso) return "\u2013";
    return `${new Date(iso).toISOString().slice(11, seconds ? 23 : 16)} UTC`;
  }

  // `2026-12-02 12:03:04 UTC`.
  function fullTime(iso) {
    return iso ? `${new Date(iso).toISOString().slice(0, 19).replace("T", " ")} UTC` : "";
  }

  // `local time (Europe/Paris): 2026-12-02 13:03:04.123`: a tooltip.
  function localTime(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    const pad = (n, w = 2) => String(n).padStart(w, "0");
    const zone = Intl.DateTimeFormat().resolvedOptions().timeZone || "this browser";
    return `local time (${zone}): ${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `
      + `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  // A time as shown: `text` (by default its UTC clock time) in a <time> whose tooltip is
  // the local time; a relative `text` ("3 min ago") gets the UTC time in it too.
  function timeEl(iso, text, ...more) {
    if (!iso) return h("span", {}, text || "\u2013", ...more);
    const title = text === undefined ? localTime(iso) : `${fullTime(iso)} \u00b7 ${localTime(iso)}`;
    return h("time", { datetime: iso, title }, text === undefined ? clockTime(iso) : text, ...more);
  }

  function shortId(id) {
    return id.length > 13 ? `${id.slice(0, 8)}\u2026${id.slice(-4)}` : id;
  }

  function items(lines) {
    return lines.map((l) => `${l.sku} \u00d7${l.quantity}`).join(", ");
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  function pill(status, text) {
    return h("span", { class: `pill st-${status}`, dataset: { status } }, text || pretty(status));
  }

  function until(iso) {
    if (!iso) return "\u2013";
    const s = (Date.parse(iso) - Date.now() - clockSkewMs) / 1000;
    if (s <= 0) return "now";
    return `in ${formatMs(s * 1000).replace(/\.\d+ s$/, " s")}`;
  }

  function lotsText(lots) {
    return lots && lots.length
      ? lots.map((l) => `${l.sku} \u00b7 lot ${l.lot} \u00d7${l.quantity}`).join(", ")
      : "\u2013";
  }

  // What an order's verification shows: its status, and who decided.
  function verificationPill(v, orderStatus) {
    if (!v) return "\u2013";
    const ended = orderStatus === "cancelled" || orderStatus === "needs_attention";
    if (v.status === "pending" && ended) return pill("skipped", "undecided");
    const text = v.status === "not_required" ? "not required" : pretty(v.status);
    const who = v.by && v.by !== "policy" ? ` by ${v.by}` : "";
    return h("span", { class: "verification", dataset: { verification: v.status } }, pill(v.status, text), who);
  }

  // --- API access and the key gate ------------------------------------------------------

  class Unauthorized extends Error {}

  function storedKey() {
    return sessionStorage.getItem(KEY_STORAGE);
  }

  // A random Idempotency-Key (crypto.getRandomValues works on plain http too).
  function idempotencyKey() {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return `dashboard-${Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("")}`;
  }

  // POST JSON with the stored key; answers {status, body} whatever the status (the
  // caller says what each means), throws only when the server is not reached.
  async function apiPost(path, json, idemKey) {
    const headers = { Accept: "application/json", "Content-Type": "application/json" };
    const key = storedKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    if (idemKey) headers["Idempotency-Key"] = idemKey;
    const response = await fetch(path, { method: "POST", headers, body: json, cache: "no-store" });
    const body = await response.json().catch(() => null);
    return { status: response.status, body };
  }

  function errorCode(body) {
    return body && body.error ? body.error.code : null;
  }

  function errorText(body, status) {
    if (!body || !body.error) return `HTTP ${status}`;
    const details = (body.error.details || []).map((d) => `${(d.loc || []).slice(1).join(".")}: ${d.message}`);
    return details.length ? `${body.error.message} (${details.join("; ")})` : body.error.message;
  }

  async function api(path) {
    const headers = { Accept: "application/json" };
    const key = storedKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    const response = await fetch(path, { headers, cache: "no-store" });
    if (response.status === 401) throw new Unauthorized();
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function showGate(rejected) {
    $("app").hidden = true;
    $("key-gate").hidden = false;
    $("key-error").hidden = !rejected;
    $("forget-key").hidden = true;
    setLive("locked", "locked");
    $("key-input").focus();
  }

  function hideGate() {
    $("key-gate").hidden = true;
    $("app").hidden = false;
    $("forget-key").hidden = !storedKey();
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) return;
    sessionStorage.setItem(KEY_STORAGE, key);
    $("key-input").value = "";
    route();
  });

  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORAGE);
    route();
  });

  // A key the server refused on a request the user made (not a poll): drop it, stop
  // polling and ask for one; entering it starts the page again.
  function askForKey() {
    const rejected = Boolean(storedKey());
    sessionStorage.removeItem(KEY_STORAGE);
    generation += 1;
    clearTimeout(timer);
    showGate(rejected);
  }

  function setLive(state, text) {
    $("live").dataset.state = state;
    $("live-text").textContent = text;
  }

  // --- routing and live refresh ---------------------------------------------------------

  let view = null; // {refresh(): Promise, dispose?()}
  let timer = null;
  let busy = false;
  let again = false; // a refresh was asked for while one was in flight
  let generation = 0;

  function parseHash() {
    const raw = location.hash.replace(/^#/, "") || "/";
    const [path, query] = raw.split("?");
    const params = new URLSearchParams(query || "");
    const order = /^\/orders\/(.+)$/.exec(path);
    if (order) return { page: "order", id: decodeURIComponent(order[1]) };
    const limit = Number(params.get("limit"));
    return { page: "overview", status: params.get("status"), limit: limit >= 1 && limit <= 200 ? limit : PAGE_SIZE };
  }

  function route() {
    generation += 1;
    clearTimeout(timer);
    const target = parseHash();
    view = target.page === "order" ? orderView(target.id) : overviewView(target.status, target.limit);
    tick(generation, true);
  }

  // One refresh at a time, and one timer: a refresh asked for while one is in flight
  // runs right after it (whatever asked: a route, a pager button, a decision).
  async function tick(gen, first) {
    if (gen !== generation) return;
    if (busy) {
      again = true;
      return;
    }
    clearTimeout(timer);
    busy = true;
    again = false;
    let next = REFRESH_MS; // null: stop polling
    try {
      if (!document.hidden || first) {
        await view.refresh(first);
        if (gen === generation) {
          hideGate();
          const now = new Date(Date.now() + clockSkewMs).toISOString();
          setLive("live", `live \u00b7 ${clockTime(now).replace(/\.\d+ /, " ")}`);
          $("live").title = localTime(now);
        }
      }
    } catch (error) {
      if (gen === generation) next = failed(error);
    } finally {
      busy = false;
    }
    clearTimeout(timer);
    if (again) timer = setTimeout(() => tick(generation, true), 0);
    else if (gen === generation && next !== null) timer = setTimeout(() => tick(gen, false), next);
  }

  // What a failed refresh shows; the delay until the next one, or null to stop polling.
  function failed(error) {
    if (error instanceof Unauthorized) {
      // A stored key that the server refuses (mistyped, or rotated) is dropped.
      const rejected = Boolean(storedKey());
      sessionStorage.removeItem(KEY_STORAGE);
      showGate(rejected);
      return null; // no polling until a key is entered
    }
    if (error.status === 403) {
      // A known key whose role may not read this: say so, keep the key, stop polling.
      hideGate();
      mount(h("div", { class: "panel" }, h("p", { class: "empty", id: "forbidden" },
        `This key's role may not see this page (${error.message}). Use "Forget key" to enter another.`)));
      setLive("error", "forbidden");
      return null;
    }
    setLive("error", `offline \u00b7 retrying (${error.message})`);
    if (error.status === 404 && view.notFound) view.notFound(error);
    return REFRESH_MS;
  }

  window.addEventListener("hashchange", route);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) {
      clearTimeout(timer);
      tick(generation, false);
    }
  });

  function mount(...children) {
    const app = $("app");
    fill(app, ...children);
    window.scrollTo(0, 0);
  }

  function crumbs(...parts) {
    fill($("crumbs"), ...parts);
  }

  // --- overview: KPIs, throughput, queue, stuck sagas, orders ------------------------------

  function overviewView(status, pageSize) {
    const filter = ORDER_FILTERS.some(([value]) => value === status) ? status : null;
    const cursors = [null]; // cursor of each page seen; the last is the current page's
    let nextCursor = null;

    const kpis = h("section", { class: "kpis", id: "kpis" });
    const rxQueue = verificationQueue();
    const chart = h("div", { class: "chart", id: "throughput-chart" });
    const chartNote = h("span", { class: "muted" });
    const queue = h("div", { class: "queue", id: "queue" });
    const stuck = h("div", { class: "stuck", id: "stuck" });
    const stuckNote = h("span", { class: "muted" }, "parked, job dead, or no progress for a whole step timeout");
    const tabs = h("div", { class: "tabs", role: "tablist", id: "status-filter" });
    const table = h("div", { class: "table-wrap" });
    const pager = h("div", { class: "pager" });

    crumbs(h("span", {}, "Overview"));
    mount(
      h("div", { class: "page-head" },
        h("h1", {}, "Overview"),
        h("p", { class: "muted" }, "Orders and their fulfillment sagas, refreshed every 2 seconds.")),
      kpis,
      h("section", { class: "panel", id: "verifications" },
        h("div", { class: "panel-head" }, h("h2", {}, "Pharmacist's queue"), rxQueue.note),
        rxQueue.el),
      h("section", { class: "grid-2" },
        h("div", { class: "panel" },
          h("div", { class: "panel-head" }, h("h2", {}, "Throughput"), chartNote),
          chart),
        h("div", { class: "panel" },
          h("div", { class: "panel-head" }, h("h2", {}, "Queue"), h("span", { class: "muted" }, "durable jobs, one per saga")),
          queue)),
      h("section", { class: "panel" },
        h("div", { class: "panel-head" }, h("h2", {}, "Stuck sagas"), stuckNote),
        stuck),
      h("section", { class: "panel", id: "orders" },
        h("div", { class: "panel-head" }, h("h2", {}, "Orders"), tabs),
        table,
        pager),
    );

    async function refresh() {
      const query = new URLSearchParams({ limit: String(pageSize) });
      if (filter) query.set("status", filter);
      const cursor = cursors[cursors.length - 1];
      if (cursor) query.set("cursor", cursor);
      const [summary, page, waiting] = await Promise.all([
        api("/api/dashboard/overview"),
        api(`/api/dashboard/orders?${query}`),
        api("/api/dashboard/verifications"),
      ]);
      clockSkewMs = Date.parse(summary.now) - Date.now();
      renderKpis(kpis, summary);
      rxQueue.render(waiting);
      renderChart(chart, chartNote, summary.throughput);
      renderQueue(queue, summary.queue, summary.projections);
      renderStuck(stuck, summary.stuck);
      renderTabs(tabs, filter, summary.orders);
      nextCursor = page.next_cursor;
      renderOrders(table, page.items, filter);
      renderPager();
    }

    function renderPager() {
      const page = cursors.length;
      fill(pager,
        h("button", {
          type: "button", class: "ghost", disabled: page === 1,
          onclick: () => { cursors.pop(); tick(generation, true); },
        }, "\u2190 Newer"),
        h("span", { class: "muted" }, `page ${page}`),
        h("button", {
          type: "button", class: "ghost", id: "older", disabled: !nextCursor,
          onclick: () => { cursors.push(nextCursor); tick(generation, true); },
        }, "Older \u2192"),
      );
    }

    return { refresh };
  }

  function kpi(label, value, sub, tone, id) {
    return h("div", { class: `kpi ${tone || ""}`, id },
      h("div", { class: "kpi-label" }, label),
      h("div", { class: "kpi-value" }, value),
      h("div", { class: "kpi-sub" }, sub));
  }

  // The jobs still to run (ready, scheduled, running), and apart the dead ones: those
  // wait for an operator, not a worker.
  function queueKpi(q) {
    const waiting = [`${q.ready} ready`, q.scheduled ? `${q.scheduled} scheduled` : null, `${q.running} running`].filter(Boolean).join(" \u00b7 ");
    const card = kpi("Queue depth", q.depth, h("span", {},
      h("span", { class: "kpi-queue-live" }, waiting),
      h("span", { class: q.dead ? "kpi-queue-dead bad" : "kpi-queue-dead", dataset: { dead: q.dead } },
        q.dead ? `${q.dead} dead: an operator must retry` : "none dead")),
      "", "kpi-queue");
    card.title = "jobs still to run: ready (due now), scheduled (a retry's backoff or a timer) and running; dead jobs are not counted";
    return card;
  }

  function renderKpis(el, s) {
    const o = s.orders;
    // Delivered and returned orders were fulfilled (picked up by the carrier) first.
    const shipped = o.fulfilled + (o.delivered || 0) + (o.returned || 0);
    const finished = shipped + o.cancelled;
    const rate = finished ? Math.round((shipped / finished) * 100) : null;
    const after = [o.delivered ? `${o.delivered} delivered` : null, o.returned ? `${o.returned} returned` : null].filter(Boolean);
    const waiting = o.awaiting_verification || 0;
    fill(el,
      kpi("Orders", o.total, `${o.pending + waiting} in flight`, "", "kpi-total"),
      kpi("To verify", waiting, waiting ? "awaiting a pharmacist" : "no prescription waiting", waiting ? "tone-warn" : "", "kpi-verification"),
      kpi("Fulfilled", shipped, [rate === null ? "no order finished yet" : `${rate}% of finished`, ...after].join(" \u00b7 "), "tone-ok", "kpi-fulfilled"),
      kpi("Cancelled", o.cancelled, "compensated", "tone-warn", "kpi-cancelled"),
      kpi("Needs attention", o.needs_attention, "compensation failed", o.needs_attention ? "tone-bad" : "", "kpi-attention"),
      kpi("Throughput", s.throughput.finished_per_minute_5m, "finished per minute, last 5 min", "", "kpi-throughput"),
      queueKpi(s.queue),
      kpi("Stuck sagas", s.stuck.count + (s.stuck.more ? "+" : ""), s.stuck.count ? "need an operator" : "all moving", s.stuck.count ? "tone-bad" : "tone-ok", "kpi-stuck"),
    );
  }

  // --- the pharmacist's queue ----------------------------------------------------------------
  //
  // Rows are kept by order id across refreshes, so a decision form being filled in keeps
  // its text and focus while the queue refreshes around it.

  function verificationQueue() {
    const note = h("span", { class: "muted" });
    const notice = h("p", { class: "queue-notice", id: "queue-notice", hidden: true });
    const empty = h("p", { class: "empty ok", id: "queue-empty" }, "\u2713 No prescriptions waiting for a pharmacist.");
    const tbody = h("tbody", {});
    const table = h("table", { class: "rx-queue" },
      h("thead", {}, h("tr", {}, ["Order", "Items", "Placed", "Waiting", "Verification", ""].map((c) => h("th", {}, c)))),
      tbody);
    const el = h("div", { class: "table-wrap" }, notice, empty, table);
    const rows = new Map(); // order id -> row state

    function render(data) {
      note.textContent = data.count
        ? `${plural(data.count, "order")} waiting, longest first${data.more ? ` (the first ${data.items.length} shown)` : ""} \u00b7 deciding needs a pharmacist key`
        : "orders a pharmacist must verify before they go on";
      const seen = new Set();
      for (const item of data.items) {
        seen.add(item.order_id);
        let state = rows.get(item.order_id);
        if (!state) {
          state = newRow(item.order_id);
          rows.set(item.order_id, state);
        }
        updateRow(state, item);
      }
      const nodes = []; // in the order first seen: the queue's, oldest first
      for (const [id, state] of rows) {
        if (!seen.has(id)) {
          // Gone from the queue (decided, cancelled or timed out): a form being filled
          // in stays, a warning stays for a few seconds; else the row goes.
          if (!state.form && Date.now() - state.saidAt >= LINGER_MS) {
            if (state.decided) flash(state.row.dataset.gone ? "warn" : "ok", `${shortId(id)}: ${state.decided} \u2014 it has left the queue.`);
            rows.delete(id);
            continue;
          }
          if (!state.row.dataset.gone) {
            state.row.dataset.gone = "true";
            for (const b of state.buttons) b.disabled = true;
            if (state.form) say(state, "warn", "No longer in the queue: decided, cancelled or timed out meanwhile.");
          }
        }
        nodes.push(state.row);
        if (state.form) nodes.push(state.form);
      }
      keep(tbody, nodes);
      empty.hidden = nodes.length > 0;
      table.hidden = nodes.length === 0;
    }

    function flash(tone, text) {
      notice.hidden = false;
      notice.className = `queue-notice tone-${tone}`;
      notice.textContent = text;
    }

    function newRow(orderId) {
      const href = `#/orders/${encodeURIComponent(orderId)}`;
      const state = { orderId, form: null, sent: null, decided: null, saidAt: 0 };
      state.cells = {
        items: h("td", { class: "items" }),
        placed: h("td", { class: "muted nowrap" }),
        waiting: h("td", { class: "nowrap" }),
        verification: h("td", {}),
      };
      state.message = h("div", { class: "decide-message", role: "status" });
      state.buttons = Object.entries(DECISIONS).map(([decision, d]) =>
        h("button", { type: "button", class: `small ${d.cls}`, dataset: { decision }, onclick: () => openForm(state, decision) }, d.button));
      state.row = h("tr", { dataset: { orderId } },
        h("td", {}, h("a", { href, class: "mono order-link", title: orderId }, shortId(orderId))),
        state.cells.items, state.cells.placed, state.cells.waiting, state.cells.verification,
        h("td", { class: "actions" }, h("div", { class: "buttons" }, state.buttons), state.message));
      return state;
    }

    function updateRow(state, item) {
      state.row.dataset.verification = item.verification.status;
      state.cells.items.textContent = items(item.items);
      fill(state.cells.placed, timeEl(item.placed_at, ago(item.placed_at)));
      fill(state.cells.waiting,
        timeEl(item.waiting_since, item.waiting_since ? ago(item.waiting_since).replace(" ago", "") : "\u2013"),
        item.timeout_at ? h("small", { class: "muted" }, " \u00b7 ", timeEl(item.timeout_at, `cancels ${until(item.timeout_at)}`)) : null);
      fill(state.cells.verification, verificationPill(item.verification, "awaiting_verification"));
    }

    function say(state, tone, text) {
      state.message.className = `decide-message tone-${tone}`;
      state.message.textContent = text;
      state.saidAt = tone === "warn" || tone === "bad" ? Date.now() : 0;
    }

    function closeForm(state) {
      if (state.form) state.form.remove();
      state.form = null;
      for (const b of state.buttons) b.classList.remove("active");
    }

    function openForm(state, decision) {
      const d = DECISIONS[decision];
      closeForm(state);
      for (const b of state.buttons) b.classList.toggle("active", b.dataset.decision === decision);
      const who = h("input", {
        name: "pharmacist_id", required: true, maxlength: MAX_ID, spellcheck: "false", autocomplete: "off",
        placeholder: "e.g. ph-12", value: sessionStorage.getItem(PHARMACIST_STORAGE) || "",
      });
      const extra = d.field === "reason"
        ? h("input", { name: "reason", required: d.required, maxlength: MAX_ID, autocomplete: "off", placeholder: "e.g. duplicate therapy" })
        : h("textarea", { name: "note", required: d.required, maxlength: MAX_NOTE, rows: 1, placeholder: decision === "approve" ? "e.g. dose checked" : "what the prescriber should clarify" });
      const note = d.field === "reason"
        ? h("textarea", { name: "note", maxlength: MAX_NOTE, rows: 1, placeholder: "optional" })
        : null;
      const submit = h("button", { type: "submit", class: `small ${d.cls === "ghost" ? "" : d.cls}` }, d.submit);
      const form = h("form", { class: "decide", dataset: { decision }, autocomplete: "off" },
        h("label", {}, h("span", {}, "Pharmacist ID"), who),
        h("label", { class: "grow" }, h("span", {}, d.fieldLabel), extra),
        note ? h("label", { class: "grow" }, h("span", {}, "Note (optional)"), note) : null,
        h("div", { class: "decide-buttons" },
          submit,
          h("button", { type: "button", class: "small ghost", onclick: () => closeForm(state) }, "Cancel")));
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        decide(state, decision, form, submit);
      });
      state.form = h("tr", { class: "decide-row", dataset: { orderId: state.orderId } }, h("td", { colspan: 6 }, form));
      state.row.after(state.form);
      say(state, "muted", "");
      (who.value ? extra : who).focus();
    }

    async function decide(state, decision, form, submit) {
      const body = { decision, pharmacist_id: form.elements.pharmacist_id.value.trim() };
      for (const name of ["reason", "note"]) {
        const field = form.elements[name];
        if (field && field.value.trim()) body[name] = field.value.trim();
      }
      if (!body.pharmacist_id) { form.elements.pharmacist_id.focus(); return; }
      sessionStorage.setItem(PHARMACIST_STORAGE, body.pharmacist_id);
      const json = JSON.stringify(body);
      // The same decision sent again (a retry) keeps its key; another one gets a new key.
      if (!state.sent || state.sent.json !== json) state.sent = { json, key: idempotencyKey() };
      submit.disabled = true;
      say(state, "muted", "Sending\u2026");
      let answer;
      try {
        answer = await apiPost(`/orders/${encodeURIComponent(state.orderId)}/verification`, json, state.sent.key);
      } catch (error) {
        submit.disabled = false;
        say(state, "bad", `The server did not answer (${error.message}): try again.`);
        return;
      }
      submit.disabled = false;
      const { status, body: reply } = answer;
      if (status === 202 || status === 200) {
        closeForm(state);
        state.sent = null;
        say(state, "ok", DECISIONS[decision].done);
        state.row.dataset.decided = decision;
        if (decision !== "request_clarification") {
          state.decided = { approve: "approved", reject: "rejected" }[decision];
          for (const b of state.buttons) b.disabled = true;
        }
        const gen = generation;
        setTimeout(() => tick(gen, false), 300); // projected by then, most likely
      } else if (status === 401) {
        askForKey();
      } else if (status === 403) {
        say(state, "bad", "This key's role may not decide verifications: use a pharmacist key (\u201cForget key\u201d, then enter one).");
      } else if (status === 409 && errorCode(reply) === "verification_not_pending") {
        closeForm(state);
        state.decided = "no longer waiting for a decision";
        say(state, "warn", "No longer waiting for a decision: someone decided, it was cancelled, or it timed out.");
      } else if (status === 404) {
        closeForm(state);
        say(state, "bad", "No such order.");
      } else {
        say(state, "bad", `Not recorded: ${errorText(reply, status)}`);
      }
    }

    return { el, note, render };
  }

  // Make `parent`'s children exactly `nodes`, in order, moving as few as possible (a node
  // moved in the DOM loses its focus).
  function keep(parent, nodes) {
    const wanted = new Set(nodes);
    for (const child of [...parent.children]) if (!wanted.has(child)) child.remove();
    nodes.forEach((node, i) => {
      if (parent.children[i] !== node) parent.insertBefore(node, parent.children[i] || null);
    });
  }

  function renderChart(el, note, t) {
    const buckets = t.buckets;
    const W = 600, H = 190, pad = { l: 28, r: 8, t: 10, b: 22 };
    const max = Math.max(1, ...buckets.map((b) => Math.max(b.placed, b.fulfilled + b.cancelled + b.needs_attention)));
    const bw = (W - pad.l - pad.r) / buckets.length;
    const y = (v) => pad.t + (H - pad.t - pad.b) * (1 - v / max);
    const parts = [];
    for (const frac of [0, 0.5, 1]) {
      const v = Math.round(max * frac);
      parts.push(svg("line", { x1: pad.l, x2: W - pad.r, y1: y(v), y2: y(v), class: "grid" }));
      parts.push(svg("text", { x: pad.l - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, document.createTextNode(v)));
    }
    buckets.forEach((b, i) => {
      const x = pad.l + i * bw + 1.5;
      let base = 0;
      for (const [key, cls] of [["fulfilled", "bar-ok"], ["cancelled", "bar-warn"], ["needs_attention", "bar-bad"]]) {
        if (!b[key]) continue;
        const rect = svg("rect", { x, width: Math.max(1, bw - 3), y: y(base + b[key]), height: y(base) - y(base + b[key]), rx: 2, class: cls });
        rect.append(svg("title", {}, document.createTextNode(`${b[key]} ${pretty(key)} at ${clockTime(b.minute, false)}`)));
        parts.push(rect);
        base += b[key];
      }
    });
    const points = buckets.map((b, i) => `${pad.l + (i + 0.5) * bw},${y(b.placed)}`).join(" ");
    parts.push(svg("polyline", { points, class: "line-placed" }));
    parts.push(svg("text", { x: pad.l, y: H - 6, class: "axis" }, document.createTextNode(`\u2212${t.minutes} min`)));
    parts.push(svg("text", { x: W - pad.r, y: H - 6, class: "axis", "text-anchor": "end" }, document.createTextNode("now")));
    fill(el,
      svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "orders finished per minute" }, parts),
      h("div", { class: "legend" },
        h("span", { class: "key key-ok" }, "fulfilled"),
        h("span", { class: "key key-warn" }, "cancelled"),
        h("span", { class: "key key-bad" }, "needs attention"),
        h("span", { class: "key key-line" }, "placed")),
    );
    note.textContent = `${t.placed_per_minute_5m} placed / min \u00b7 per minute, last ${t.minutes} min`;
  }

  function renderQueue(el, q, projections) {
    const row = (label, value, tone, hint) =>
      h("div", { class: `qrow ${tone || ""}` },
        h("span", { class: "qlabel" }, label, h("small", {}, hint)),
        h("span", { class: "qvalue" }, value));
    const lag = Object.values(projections || {}).map((p) => p.behind).reduce((a, b) => a + b, 0);
    fill(el,
      row("ready", q.ready, "", "due now"),
      row("scheduled", q.scheduled, "", "waiting to retry"),
      row("running", q.running, "", "claimed by a worker"),
      row("dead", q.dead, q.dead ? "tone-bad" : "", "gave up; operator retry"),
      row("projection lag", lag, lag > 100 ? "tone-warn" : "", "events not yet in the read model"),
    );
  }

  function renderStuck(el, stuck) {
    if (!stuck.sagas.length) {
      fill(el, h("p", { class: "empty ok" }, "\u2713 No stuck sagas: everything is moving."));
      return;
    }
    fill(el, h("table", { class: "stuck-list" }, h("tbody", {}, stuck.sagas.map((s) =>
      h("tr", {},
        h("td", {}, h("a", { href: `#/orders/${encodeURIComponent(s.saga_id)}`, class: "mono order-link", title: s.saga_id }, shortId(s.saga_id))),
        h("td", {}, pill(s.status)),
        h("td", {}, miniSteps(s.steps)),
        h("td", { class: "reason" }, s.reason ? pretty(s.reason) : ""),
        h("td", { class: "muted" }, s.job ? `job ${s.job.kind}: ${s.job.status}${s.job.last_error ? ` \u2014 ${s.job.last_error}` : ""}` : "no job"),
        h("td", { class: "muted num" }, timeEl(s.updated_at, ago(s.updated_at))))))),
      stuck.more ? h("p", { class: "muted" }, "More: fulfillment sagas list --status stuck") : null);
  }

  function renderTabs(el, active, counts) {
    fill(el, ...ORDER_FILTERS.map(([value, label]) => {
      const count = value ? counts[value] : counts.total;
      const href = value ? `#/?status=${value}` : "#/";
      return h("a", {
        href, role: "tab", class: `tab${value === active ? " active" : ""}`,
        "aria-selected": value === active ? "true" : "false", dataset: { filter: value || "all" },
      }, label, h("span", { class: "count" }, count));
    }));
  }

  function miniSteps(steps) {
    return h("span", { class: "mini-steps" }, steps.map((s) =>
      h("span", { class: `mini st-${s.status}`, title: `${pretty(s.name)}: ${pretty(s.status)}${s.attempts > 1 ? ` (${s.attempts} attempts)` : ""}` })));
  }

  function renderOrders(el, orders, filter) {
    if (!orders.length) {
      fill(el, h("p", { class: "empty" }, filter ? `No ${pretty(filter)} orders.` : "No orders yet. Place one with POST /orders."));
      return;
    }
    const rows = orders.map((o) => {
      const href = `#/orders/${encodeURIComponent(o.order_id)}`;
      return h("tr", { dataset: { orderId: o.order_id, status: o.status }, onclick: (e) => { if (e.target.tagName !== "A") location.hash = href; } },
        h("td", {}, h("a", { href, class: "mono order-link", title: o.order_id }, shortId(o.order_id))),
        h("td", {}, pill(o.status)),
        h("td", {}, miniSteps(o.saga.steps), h("span", { class: "saga-status" }, pretty(o.saga.status))),
        h("td", { class: "reason" }, o.reason ? pretty(o.reason) : ""),
        h("td", { class: "items" }, items(o.items)),
        h("td", { class: "muted" }, timeEl(o.placed_at, ago(o.placed_at))),
        h("td", { class: "num" }, formatMs(o.duration_ms)));
    });
    fill(el, h("table", { class: "orders" },
      h("thead", {}, h("tr", {}, ["Order", "Status", "Saga", "Reason", "Items", "Placed", "Took"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows)));
  }

  // --- one order: the saga timeline --------------------------------------------------------

  function orderView(orderId) {
    const head = h("div", { class: "order-head" });
    const life = h("div", { id: "lifecycle-body" });
    const lifeNote = h("span", { class: "muted" });
    const flow = h("div", { class: "flow", id: "steps" });
    const gantt = h("div", { class: "gantt", id: "gantt" });
    const comps = h("div", { id: "compensations" });
    const compNote = h("span", { class: "muted" });
    const events = h("div", { class: "table-wrap", id: "events" });
    const eventsNote = h("span", { class: "muted" });
    const openDetails = new Set(); // event positions whose data the user expanded

    crumbs(h("a", { href: "#/" }, "Overview"), h("span", { class: "sep" }, "/"), h("span", { class: "mono" }, shortId(orderId)));
    mount(
      h("a", { class: "back", href: "#/" }, "\u2190 All orders"),
      head,
      h("section", { class: "panel", id: "lifecycle" },
        h("div", { class: "panel-head" }, h("h2", {}, "Lifecycle"), lifeNote),
        life),
      h("section", { class: "panel" },
        h("div", { class: "panel-head" }, h("h2", {}, "Saga steps"), h("span", { class: "muted", id: "flow-caption" })),
        flow,
        gantt),
      h("section", { class: "panel" },
        h("div", { class: "panel-head" }, h("h2", {}, "Compensations"), compNote),
        comps),
      h("section", { class: "panel" },
        h("div", { class: "panel-head" }, h("h2", {}, "Event history"), eventsNote),
        events),
    );

    async function refresh() {
      const t = await api(`/api/dashboard/orders/${encodeURIComponent(orderId)}/timeline`);
      renderHead(head, t);
      renderLifecycle(life, lifeNote, t);
      renderFlow(flow, t);
      renderGantt(gantt, t);
      renderCompensations(comps, compNote, t);
      renderEvents(events, eventsNote, t, openDetails);
    }

    function notFound() {
      mount(
        h("a", { class: "back", href: "#/" }, "\u2190 All orders"),
        h("div", { class: "panel" }, h("p", { class: "empty" }, `No order with id ${orderId}.`)));
      setLive("live", "not found");
      generation += 1; // stop polling
    }

    return { refresh, notFound };
  }

  function renderHead(el, t) {
    const o = t.order, s = t.saga;
    const facts = [
      ["Saga", pill(s.status)],
      ["Reason", s.reason ? pretty(s.reason) : "\u2013"],
      ["Customer", o.customer_id],
      ["Items", items(o.items)],
      ["Placed", h("span", {}, timeEl(o.placed_at), ` (${ago(o.placed_at)})`)],
      ["Duration", s.duration_ms === null ? `running for ${formatMs(offsetMs(s.started_at, new Date(Date.now() + clockSkewMs).toISOString()))}` : formatMs(s.duration_ms)],
      ["Verification", verificationPill(o.verification, o.status)],
      ["Shipment", o.shipment ? h("span", {}, h("span", { class: "mono" }, o.shipment.tracking_number), " ", pill(o.shipment.status, TRACKING_LABELS[o.shipment.status])) : "\u2013"],
      ["Lots", lotsText(o.lots)],
    ];
    if (t.job) facts.push(["Job", `${t.job.kind}: ${t.job.status}${t.job.failures ? `, ${plural(t.job.failures, "failure")}` : ""}`]);
    const dead = [...t.steps, ...t.compensation.pending].find((x) => x.action);
    fill(el,
      h("div", { class: "title-row" },
        h("h1", {}, "Order ", h("span", { class: "mono", id: "order-id" }, o.order_id)),
        pill(o.status),
        s.stuck ? h("span", { class: "pill st-failed" }, "stuck") : null),
      s.parked_error ? h("div", { class: "alert" }, h("b", {}, "Parked: "), s.parked_error, h("span", { class: "muted" }, "  \u2014 retry with "), h("code", {}, `fulfillment sagas retry ${o.order_id}`)) : null,
      dead && t.job ? h("div", { class: "alert", id: "dead-job" }, h("b", {}, `Job dead: ${t.job.kind}`), ` failed ${plural(t.job.failures, "time")} with an unexpected error${t.job.last_error ? ` (${t.job.last_error})` : ""}; no worker retries it.`, h("span", { class: "muted" }, "  \u2014 put it back with "), h("code", {}, dead.action)) : null,
      h("dl", { class: "facts" }, facts.map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v)))),
    );
  }

  // --- one order: its pharmacy lifecycle -------------------------------------------------

  const DECISION_TEXT = {
    approve: (d) => `Approved by ${d.pharmacist_id}`,
    reject: (d) => `Rejected by ${d.pharmacist_id}${d.reason ? `: ${d.reason}` : ""}`,
    request_clarification: (d) => `Asked the prescriber (${d.pharmacist_id})`,
    policy: () => "Not required: verified by the policy",
    timeout: () => "No decision in time",
  };

  function noteOf(x) {
    if (x.note) return h("blockquote", { class: "note" }, x.note);
    if (x.note_hidden) return h("p", { class: "muted note-hidden" }, "A note was left; this key's role may not read it (patient data).");
    return null;
  }

  function when(iso, start) {
    return h("span", { class: "mono when" }, timeEl(iso), start ? h("small", { class: "muted" }, ` +${formatMs(offsetMs(start, iso))}`) : null);
  }

  function lifeCard(part, title, ...body) {
    return h("div", { class: "life-card", dataset: { part } }, h("h3", {}, title), ...body);
  }

  function renderLifecycle(el, note, t) {
    const l = t.lifecycle, o = t.order;
    if (!l || !o) { fill(el, h("p", { class: "empty" }, "No order.")); return; }
    const start = o.placed_at;
    const v = l.verification;
    note.textContent = "verification, cancellation, pickup and the carrier's updates, as the events record them";

    const decisions = v.decisions.map((d) => h("li", { class: `decision dec-${d.decision}`, dataset: { decision: d.decision } },
      when(d.at, start), " ", h("b", {}, DECISION_TEXT[d.decision] ? DECISION_TEXT[d.decision](d) : pretty(d.decision)),
      d.by && d.by !== "policy" ? h("small", { class: "muted" }, ` \u00b7 key ${d.by}`) : null,
      noteOf(d)));
    const verification = lifeCard("verification", "Verification",
      h("p", {}, verificationPill(v, o.status)),
      v.waiting ? h("p", { class: "muted" }, "waiting since ", timeEl(v.waiting_since), v.timeout_at ? [` \u00b7 cancels ${until(v.timeout_at)} (`, timeEl(v.timeout_at, fullTime(v.timeout_at)), ")"] : "") : null,
      decisions.length ? h("ol", { class: "decisions" }, decisions) : (v.status === "not_required" ? null : h("p", { class: "muted" }, "No decision yet.")));

    const c = l.cancellation;
    const cancellation = lifeCard("cancellation", "Cancellation",
      c ? [
        h("p", {}, pill("cancelled", `requested: ${pretty(c.reason)}`)),
        h("p", { class: "muted" }, when(c.at, start), ` \u00b7 by ${c.by}`),
        noteOf(c),
        h("p", { class: "muted" }, o.status === "cancelled" ? `The order ended cancelled (${pretty(o.reason || c.reason)}).` : o.status === "pending" ? "Takes effect after the step in progress." : ""),
      ] : h("p", { class: "muted" }, "Not requested."));

    const p = l.pickup;
    let pickupBody;
    if (p) {
      pickupBody = [
        h("p", {}, pill("succeeded", "\u2713 picked up by the carrier")),
        h("p", { class: "muted" }, when(p.picked_up_at), p.location ? ` \u00b7 ${p.location}` : "", p.carrier_event_id ? "" : " \u00b7 confirmed at booking"),
        h("p", { class: "muted" }, "The point of no return: the order can no longer be cancelled."),
      ];
    } else if (l.awaiting_pickup) {
      pickupBody = [
        h("p", {}, pill("waiting", "waiting for the carrier")),
        h("p", { class: "muted" }, "since ", timeEl(l.awaiting_pickup.since), l.awaiting_pickup.timeout_at ? [" \u00b7 ", timeEl(l.awaiting_pickup.timeout_at, `times out ${until(l.awaiting_pickup.timeout_at)}`)] : ""),
      ];
    } else {
      pickupBody = h("p", { class: "muted" }, o.shipment && o.shipment.status === "cancelled" ? "None: the label was voided." : "Not yet: nothing shipped.");
    }
    const pickup = lifeCard("pickup", "Pickup", pickupBody);

    const lots = lifeCard("lots", "Lots reserved",
      l.lots.length
        ? h("ul", { class: "lots" }, l.lots.map((x) => h("li", { dataset: { sku: x.sku, lot: x.lot } }, h("code", {}, x.sku), " \u00b7 lot ", h("code", {}, x.lot), ` \u00d7${x.quantity}`)))
        : h("p", { class: "muted" }, "Nothing reserved yet."));

    const tracking = l.tracking.length
      ? h("table", { class: "tracking", id: "tracking" },
        h("thead", {}, h("tr", {}, ["Carrier update", "Location", "Reported", "Recorded", "Applied", "Carrier event"].map((x) => h("th", {}, x)))),
        h("tbody", {}, l.tracking.map((u) => h("tr", { dataset: { status: u.status, applied: String(u.applied), event: u.event } },
          h("td", {}, pill(u.status, TRACKING_LABELS[u.status] || pretty(u.status)), u.event === "ShipmentPickedUp" ? h("small", { class: "muted" }, " pickup") : null),
          h("td", {}, u.location || "\u2013"),
          h("td", {}, when(u.reported_at)),
          h("td", {}, when(u.at, start)),
          h("td", {}, u.applied ? "yes" : h("span", { class: "warn-text" }, "no: out of order, status kept")),
          h("td", { class: "mono muted" }, u.carrier_event_id || "\u2013")))))
      : h("p", { class: "empty", id: "tracking" }, o.shipment ? "No carrier updates yet." : "No shipment yet.");

    fill(el,
      h("div", { class: "life-grid" }, verification, cancellation, pickup, lots),
      h("div", { class: "panel-head sub" }, h("h3", {}, "Tracking history"), h("span", { class: "muted" }, "each update the carrier sent, in the order it arrived")),
      tracking);
  }

  function renderFlow(el, t) {
    const start = t.saga.started_at;
    const cards = [];
    const caption = document.getElementById("flow-caption");
    if (caption) caption.textContent = t.steps.map((step) => step.name).join(" \u2192 ");
    t.steps.forEach((step, i) => {
      if (i) cards.push(h("div", { class: `arrow ${step.status === "pending" || step.status === "skipped" ? "dim" : ""}`, "aria-hidden": "true" }));
      cards.push(stepCard(step, i + 1, start));
    });
    fill(el, ...cards);
  }

  function stepCard(step, n, start) {
    const compensated = step.compensation;
    const states = [];
    if (compensated || step.status === "compensated") {
      states.push(pill("succeeded", "\u2713 succeeded"), h("span", { class: "then" }, "\u2192"));
      const undo = {
        done: ["compensated", "\u21ba compensated"],
        running: ["running", "\u25cf undoing"],
        pending: ["pending", "\u2026 to undo"],
        failed: ["compensation_failed", "! undo failed"],
        dead: ["dead", "\u2298 undo dead"],
      }[compensated ? compensated.status : "done"];
      states.push(pill(undo[0], undo[1]));
    } else {
      states.push(pill(step.status, `${STATUS_ICONS[step.status] || ""} ${pretty(step.status)}`));
    }
    const stat = (label, value, cls, title) => h("div", { dataset: { stat: cls } }, h("dt", {}, label), h("dd", { class: cls, title }, value));
    // A step's time: in the queue (due, waiting for a worker), then its runs; a wait's,
    // waiting for the world. Without the runs' starts (older events), the whole.
    const split = step.kind !== "wait" && step.queued_ms !== null;
    const stats = h("dl", { class: "stats" },
      stat("attempts", step.attempts, "attempts"),
      stat("started", step.started_at ? `+${formatMs(offsetMs(start, step.started_at))}` : "\u2013", "started",
        step.started_at ? `became due at ${fullTime(step.started_at)} \u00b7 ${localTime(step.started_at)}` : null),
      split ? [
        stat("in queue", formatMs(step.queued_ms), "queued", "how long its job waited for a worker once the step was due"),
        stat("ran", formatMs(step.run_ms), "ran", `how long the worker ran it${step.backoff_ms ? `; ${formatMs(step.backoff_ms)} more backing off between attempts` : ""} (${formatMs(step.duration_ms)} in all)`),
      ] : stat(step.kind === "wait" ? "waited" : "duration", formatMs(step.duration_ms), "duration"));
    const errors = step.attempt_log.filter((a) => a.error).map((a) =>
      h("li", {}, h("b", {}, `attempt ${a.attempt}`), a.outcome === "retried" ? ` (retried in ${formatMs(a.retry_in_seconds * 1000)})` : "", ": ", a.error));
    const undoErrors = compensated ? compensated.attempts.filter((a) => a.error).map((a) =>
      h("li", {}, h("b", {}, `undo ${a.attempt}`), ": ", a.error)) : [];
    const undoWhen = compensated && compensated.at ? ` \u00b7 +${formatMs(offsetMs(start, compensated.at))}` : "";
    const undo = compensated ? h("div", { class: `undo undo-${compensated.status}` },
      h("span", { class: "undo-icon" }, "\u21ba"),
      h("span", { class: "undo-label" },
        h("small", {}, ({ done: "undone by", failed: "undo failing", running: "undoing now", dead: "undo job dead" }[compensated.status] || "to undo") + undoWhen),
        h("code", {}, compensated.event))) : null;
    const job = step.job ? h("div", { class: `job job-${step.job.status}` }, `job ${step.job.status}`, step.job.failures ? ` \u00b7 ${plural(step.job.failures, "failure")}` : "", step.job.last_error ? ` \u00b7 ${step.job.last_error}` : "") : null;
    // A dead job: no worker takes it again until an operator puts it back.
    const action = step.action ? h("div", { class: "action", dataset: { action: step.action } },
      h("b", {}, "Needs an operator: "), "no worker retries a dead job. Put it back with ", h("code", {}, step.action)) : null;
    return h("article", { class: `step st-${step.status}`, dataset: { step: step.name, status: step.status } },
      h("div", { class: "step-top" },
        h("span", { class: "step-num" }, n),
        h("span", { class: "step-icon" }, STATUS_ICONS[step.status] || "")),
      h("h3", {}, step.title || pretty(step.name)),
      h("code", { class: "step-id" }, step.name),
      h("p", { class: "hint" }, step.description || (step.kind === "wait" ? `waits for ${step.signals.join(", ")}` : "")),
      h("div", { class: "states" }, states),
      stats,
      undo,
      errors.length || undoErrors.length ? h("ul", { class: "errors" }, errors, undoErrors) : null,
      job,
      action);
  }

  function renderGantt(el, t) {
    const start = t.saga.started_at;
    if (!start) { fill(el); return; }
    const end = t.saga.finished_at || t.saga.updated_at;
    const total = Math.max(offsetMs(start, end) || 0, 0.001);
    const rows = [];
    const segment = ({ from, to, cls, title }) => {
      const left = (offsetMs(start, from) / total) * 100;
      const width = to ? Math.max(((offsetMs(from, to)) / total) * 100, 0.6) : Math.max(100 - left, 0.6);
      return h("span", { class: `g-bar ${cls}`, style: { left: `${left.toFixed(2)}%`, width: `${Math.min(width, 100 - left).toFixed(2)}%` }, title });
    };
    const row = (label, segments) => {
      const shown = segments.filter((s) => s.from);
      if (shown.length) rows.push(h("div", { class: "g-row" }, h("span", { class: "g-label" }, label), h("span", { class: "g-track" }, shown.map(segment))));
    };
    // Each run of a job: its wait in the queue (hatched) once due, then the run itself.
    const runs = (name, attempts, cls) => attempts.filter((a) => a.due_at && a.started_at).flatMap((a) => [
      { from: a.due_at, to: a.started_at, cls: "g-queue", title: `${name}, attempt ${a.attempt}: ${formatMs(a.queued_ms)} in the queue` },
      { from: a.started_at, to: a.at, cls, title: `${name}, attempt ${a.attempt}: ran ${formatMs(a.run_ms)}` },
    ]);
    for (const step of t.steps) {
      if (step.status === "pending" || step.status === "skipped") continue;
      const cls = { failed: "st-failed", dead: "st-failed", running: "st-running", waiting: "st-waiting" }[step.status] || "st-succeeded";
      const timed = step.kind === "wait" ? [] : runs(step.name, step.attempt_log, cls);
      const whole = { from: step.started_at, to: step.finished_at, cls, title: `${step.name}: ${formatMs(step.duration_ms)}` };
      if (timed.length && !step.finished_at) timed.push({ ...whole, from: step.attempt_log[step.attempt_log.length - 1].at });
      row(step.name, timed.length ? timed : [whole]);
    }
    for (const c of t.compensation.ran) {
      const timed = runs(c.name, c.attempts, "st-compensated");
      row(`\u21ba ${c.name}`, timed.length ? timed : [{ from: c.started_at, to: c.finished_at, cls: "st-compensated", title: `${c.name}: ${formatMs(c.duration_ms)}` }]);
    }
    fill(el,
      h("div", { class: "g-head" }, h("span", {}, "timeline"),
        h("span", { class: "g-legend muted" }, h("span", { class: "key key-queue" }, "in the queue"), h("span", { class: "key key-run" }, "running"), `0 \u2192 ${formatMs(total)}`)),
      ...rows);
  }

  function renderCompensations(el, note, t) {
    const c = t.compensation;
    const start = t.saga.started_at;
    if (!c.started_at) {
      note.textContent = "";
      const text = t.saga.status === "completed" ? "\u2713 None needed: every step succeeded." : "None so far: no step has failed.";
      fill(el, h("p", { class: "empty ok" }, text));
      return;
    }
    note.textContent = `last in, first out \u00b7 started +${formatMs(offsetMs(start, c.started_at))} after ${pretty(t.saga.failed_step || "a step")} failed`;
    const ran = c.ran.map((x) => h("li", { class: "comp done", dataset: { compensation: x.name, event: x.event } },
      h("span", { class: "comp-num" }, x.order),
      h("span", { class: "comp-main" },
        h("code", { class: "comp-event" }, x.event),
        h("span", { class: "muted" }, ` ${pretty(x.name)} \u00b7 undoes `), h("code", {}, x.undoes)),
      h("span", { class: "comp-meta" },
        `+${formatMs(offsetMs(start, x.finished_at))}`, h("span", { class: "muted" }, ` \u00b7 took ${formatMs(x.duration_ms)}`,
          x.queued_ms !== null ? ` (${formatMs(x.queued_ms)} in the queue, ran ${formatMs(x.run_ms)})` : "",
          ` \u00b7 ${plural(x.attempts.filter((a) => a.attempt).length, "attempt")}`))));
    const pending = c.pending.map((x, i) => h("li", { class: `comp ${x.status}`, dataset: { compensation: x.name, event: x.event } },
      h("span", { class: "comp-num" }, c.ran.length + i + 1),
      h("span", { class: "comp-main" },
        h("code", { class: "comp-event" }, x.event),
        h("span", { class: "muted" }, ` ${pretty(x.name)} \u00b7 undoes `), h("code", {}, x.undoes)),
      h("span", { class: "comp-meta" }, x.status === "failed" ? h("span", { class: "bad" }, `failing: ${x.error || "error"}`)
        : x.status === "dead" ? h("span", { class: "bad" }, `job dead: ${x.error || "error"} \u2014 put it back with `, h("code", {}, x.action))
          : h("span", { class: "muted" }, x.status === "running" ? "next" : "waiting"))));
    const nothing = !ran.length && !pending.length ? h("p", { class: "empty" }, "Nothing to undo: the first step failed.") : null;
    fill(el, nothing || h("ol", { class: "comp-list" }, ran, pending));
  }

  function eventTone(type) {
    if (FAILURE_EVENTS.has(type)) return "ev-bad";
    if (COMPENSATION_EVENTS.has(type)) return "ev-warn";
    if (SUCCESS_EVENTS.has(type)) return "ev-ok";
    if (INFO_EVENTS.has(type)) return "ev-info";
    return "";
  }

  function renderEvents(el, note, t, openDetails) {
    const start = t.events.length ? t.events[0].recorded_at : null;
    note.textContent = `${plural(t.events.length, "event")} on order-\u2026 and saga-\u2026 streams, in commit order`;
    const rows = t.events.map((e) => {
      const json = JSON.stringify(e.data);
      const details = h("details", { open: openDetails.has(e.position) },
        h("summary", {}, json.length > 110 ? `${json.slice(0, 110)}\u2026` : json),
        h("pre", {}, JSON.stringify(e.data, null, 2)));
      details.addEventListener("toggle", () => { if (details.open) openDetails.add(e.position); else openDetails.delete(e.position); });
      return h("tr", { dataset: { type: e.type } },
        h("td", { class: "num mono" }, e.position),
        h("td", { class: "mono nowrap" }, timeEl(e.recorded_at), h("small", { class: "muted" }, ` +${formatMs(offsetMs(start, e.recorded_at))}`)),
        h("td", { class: "mono nowrap muted" }, `${e.stream_id.split("-")[0]} #${e.version}`),
        h("td", {}, h("span", { class: `ev ${eventTone(e.type)}` }, e.type), e.title ? h("div", { class: "ev-title" }, e.title) : null),
        h("td", { class: "data" }, details));
    });
    fill(el, h("table", { class: "events" },
      h("thead", {}, h("tr", {}, ["#", "Time", "Stream", "Type", "Data"].map((c) => h("th", {}, c)))),
      h("tbody", {}, rows)));
  }

  route();
})();
