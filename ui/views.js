// Views: pure functions from what the API answered to DOM trees (see
// dom.js). They hold no state and call nothing; buttons carry a
// data-action that app.js handles by delegation, so no listener is lost
// when the page is morphed. Rows and sections carry data-key so a refresh
// updates them in place.

import { h } from "./dom.js";
import { lagChart } from "./chart.js";

/** How much of a payload is shown when opened (the preview is shorter). */
const PAYLOAD_SHOW_CHARS = 10000;
const PAYLOAD_PREVIEW_CHARS = 80;

const enc = encodeURIComponent;

export const links = {
  tenants: () => "#/",
  tenant: (t) => `#/t/${enc(t)}`,
  topic: (t, p) => `#/t/${enc(t)}/topics/${enc(p)}`,
  group: (t, p, g) => `#/t/${enc(t)}/topics/${enc(p)}/groups/${enc(g)}`,
  subscriptions: () => "#/subscriptions",
};

// ---- formatting -----------------------------------------------------------

export const num = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : "—");

/** A duration in ms as people say it: 1.5 s, 30 s, 5 min, 24 h, 7 d. */
export function duration(ms) {
  if (typeof ms !== "number") return "—";
  if (ms < 1000) return `${ms} ms`;
  const units = [
    [86400000, "d"],
    [3600000, "h"],
    [60000, "min"],
    [1000, "s"],
  ];
  for (const [size, unit] of units) {
    if (ms >= size) {
      const v = ms / size;
      return `${Number.isInteger(v) ? v : v.toFixed(1)} ${unit}`;
    }
  }
  return `${ms} ms`;
}

/** A Redis-clock time (ms) as a local date and time. */
export function when(ms) {
  if (typeof ms !== "number" || ms <= 0) return "—";
  const d = new Date(ms);
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString("en-GB") : d.toLocaleString("en-GB");
}

function payloadText(payload) {
  let text;
  try {
    text = JSON.stringify(payload, null, 2);
  } catch {
    text = String(payload);
  }
  return text === undefined ? "null" : text;
}

function clip(text, max) {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

// ---- building blocks ------------------------------------------------------

function stat(name, label, value, hint) {
  return h("div", { class: "stat", "data-key": `stat:${name}` },
    h("dt", {}, label),
    h("dd", { "data-stat": name, title: hint || null }, value));
}

function section(key, title, ...body) {
  const id = `h-${key}`;
  return h("section", { class: "card", "data-key": `section:${key}`, "aria-labelledby": id },
    h("h2", { id }, title),
    ...body);
}

function table(key, caption, head, rows, empty) {
  if (!rows.length) return h("div", { class: "empty", "data-key": `empty:${key}` }, empty);
  return h("div", { class: "table-wrap", "data-key": `table:${key}` },
    h("table", {},
      h("caption", { class: "sr-only" }, caption),
      h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col", class: c.num ? "num" : null }, c.label ?? c)))),
      h("tbody", {}, rows)));
}

const col = (label, isNum = false) => ({ label, num: isNum });

function numCell(field, value, cls) {
  return h("td", { class: `num${cls ? " " + cls : ""}`, "data-field": field }, num(value));
}

function code(text) {
  return h("code", {}, text);
}

function button(label, action, data = {}, cls = "") {
  const attrs = { type: "button", "data-action": action, class: cls || null };
  for (const [k, v] of Object.entries(data)) attrs[`data-${k}`] = v;
  return h("button", attrs, label);
}

export function heading(title, sub, ...extra) {
  return h("div", { class: "page-head", "data-key": "head" },
    h("h1", {}, title, sub ? h("small", {}, ` ${sub}`) : null),
    ...extra);
}

// ---- problems -------------------------------------------------------------

/** What an operator should do about a failed call. */
export function hint(err) {
  if (err.status === 0) {
    return "Check that streamcar is running and that this page was opened from its listener address. The page keeps retrying.";
  }
  if (err.status === 401) return "This sidecar needs its API token: use the API token button above.";
  if (err.status === 404) return "It may have been deleted, or the name is mistyped. Go back up with the breadcrumb above.";
  if (err.status === 429) {
    return `The server asked to slow down${err.retryAfter ? `; retry after ${err.retryAfter} s` : ""}.`;
  }
  if (err.status === 503) {
    return "Redis is unreachable or still loading. streamcar reconnects by itself once Redis is back; this page retries every few seconds.";
  }
  if (err.status >= 500) return "The sidecar failed to answer; its log says why. The page keeps retrying.";
  return "";
}

/** A failed load: what happened (the problem's detail) and what to do. */
export function problem(err, title = "Could not load this view") {
  return h("section", { class: "card problem", role: "alert", "data-key": "problem" },
    h("h2", {}, title),
    h("p", { class: "detail" },
      err.status ? h("span", { class: "pill bad" }, `${err.status} ${err.code}`) : h("span", { class: "pill bad" }, err.code),
      " ", err.detail || err.message),
    h("p", {}, hint(err)),
    err.status === 401 ? button("Enter API token", "token") : null);
}

/** Shown above a view whose latest refresh failed (the data is older). */
export function staleNotice(err, since) {
  return h("div", { class: "banner warn", role: "status", "data-key": "stale" },
    h("strong", {}, "Refresh failed: "), err.detail || err.message, ". ",
    `Showing what was loaded at ${new Date(since).toLocaleTimeString("en-GB")}. `, hint(err));
}

// ---- views ----------------------------------------------------------------

export function tenantsView(model) {
  const rows = model.tenants.map((t) =>
    h("li", { "data-key": `tenant:${t}` }, h("a", { href: links.tenant(t) }, t)));
  return [
    heading("Tenants"),
    section("tenants", "Tenants with topics",
      rows.length
        ? h("ul", { class: "link-list", "data-key": "list" }, rows)
        : h("div", { class: "empty", "data-key": "empty" },
          h("p", {}, "No tenant has a topic yet. A topic appears with its first publish:"),
          h("pre", {}, `curl -s ${location.origin}/v1/tenants/acme/topics/orders/messages --json '{"payload": {"hello": "world"}}'`))),
    section("open", "Open a tenant by name",
      h("p", { class: "muted" }, "Tenants that only have pools, quotas or channels are not listed: open them by name."),
      h("form", { class: "inline", "data-form": "open-tenant" },
        h("label", { for: "open-tenant-name" }, "Tenant"),
        h("input", { id: "open-tenant-name", name: "name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,127}", autocomplete: "off" }),
        h("button", { type: "submit" }, "Open"))),
  ];
}

export function tenantView(model) {
  const { tenant } = model;
  const topicRows = model.topics.map((t) => {
    if (t.error) {
      return h("tr", { "data-key": `topic:${t.name}` },
        h("th", { scope: "row" }, h("a", { href: links.topic(tenant, t.name) }, t.name)),
        h("td", { colspan: 6, class: "error-text" }, t.error.detail || t.error.message));
    }
    const lag = t.groups.reduce((sum, g) => sum + g.lag, 0);
    return h("tr", { "data-key": `topic:${t.name}` },
      h("th", { scope: "row" }, h("a", { href: links.topic(tenant, t.name) }, t.name)),
      numCell("length", t.length),
      numCell("last_seq", t.last_seq),
      numCell("groups", t.groups.length),
      numCell("lag", lag, lag > 0 ? "hot" : ""),
      h("td", { class: "num", "data-field": "retention" }, t.retention_ms ? duration(t.retention_ms) : "no limit"),
      h("td", { class: "num", "data-field": "max_backlog" }, t.max_backlog ? num(t.max_backlog) : "no limit"));
  });
  const more = namePager("topics", model.topicPage);
  return [
    heading(`Tenant ${tenant}`),
    section("topics", "Topics",
      table("topics", "Topics of this tenant",
        [col("Topic"), col("Length", true), col("Last seq", true), col("Groups", true), col("Total lag", true), col("Retention", true), col("Max backlog", true)],
        topicRows,
        [h("p", {}, "This tenant has no topics. Publishing to a topic declares it:"),
          h("pre", {}, `curl -s ${location.origin}/v1/tenants/${tenant}/topics/orders/messages --json '{"payload": {}}'`)]),
      more),
    quotaSection(model),
    watchSection("pools", "Pools", model.pools, "pool", poolRow,
      [col("Pool"), col("In use", true), col("Capacity", true), col("Default lease", true), col("Holders"), col("")],
      "The API has no list of pools: add the pools to watch by name (kept in this browser)."),
    watchSection("channels", "Channels", model.channels, "channel", channelRow,
      [col("Channel"), col("Top offset", true), col("Epoch"), col("History size", true), col("History TTL", true), col("")],
      "The API has no list of channels: add the channels to watch by name (kept in this browser)."),
  ];
}

function quotaSection(model) {
  let body;
  if (model.limits.error) body = h("p", { class: "error-text" }, model.limits.error.detail || model.limits.error.message);
  else if (!model.limits.value) {
    body = h("p", { class: "empty" }, "No publish quota: this tenant's publishes are not rate-limited. Set one with ",
      code(`PUT /v1/tenants/${model.tenant}/limits {"publish_per_sec": 100, "burst": 200}`), ".");
  } else {
    body = h("dl", { class: "stats" },
      stat("publish_per_sec", "Publishes per second", num(model.limits.value.publish_per_sec)),
      stat("burst", "Burst", num(model.limits.value.burst)));
  }
  return section("quota", "Publish quota", body);
}

function poolRow(tenant, p) {
  const holders = p.value.holders.length
    ? h("ul", { class: "holders" }, p.value.holders.map((x) =>
      h("li", { "data-key": `holder:${x.reservation_id}` },
        `${x.holder} (token ${x.fencing_token}, expires ${when(x.expires_at)})`)))
    : h("span", { class: "muted" }, "none");
  return [
    numCell("in_use", p.value.in_use, p.value.in_use >= p.value.capacity ? "hot" : ""),
    numCell("capacity", p.value.capacity),
    h("td", { class: "num" }, duration(p.value.lease_ms)),
    h("td", {}, holders),
  ];
}

function channelRow(tenant, c) {
  return [
    numCell("top_offset", c.value.top_offset),
    h("td", {}, code(c.value.epoch)),
    numCell("history_size", c.value.history_size),
    h("td", { class: "num" }, duration(c.value.history_ttl_ms)),
  ];
}

function watchSection(kind, title, items, noun, row, head, note) {
  const rows = items.map((item) =>
    h("tr", { "data-key": `${noun}:${item.name}` },
      h("th", { scope: "row" }, item.name),
      item.error
        ? h("td", { colspan: head.length - 2, class: "error-text" }, item.error.detail || item.error.message)
        : row(null, item),
      h("td", {}, button("Stop watching", "unwatch", { kind, name: item.name }, "secondary small"))));
  return section(kind, title,
    h("p", { class: "muted" }, note),
    h("form", { class: "inline", "data-form": "watch", "data-kind": kind },
      h("label", { for: `watch-${kind}` }, `${title.slice(0, -1)} name`),
      h("input", { id: `watch-${kind}`, name: "name", required: true, pattern: "[A-Za-z0-9][A-Za-z0-9._\\-]{0,127}", autocomplete: "off" }),
      h("button", { type: "submit" }, "Watch")),
    table(kind, title, head, rows, h("p", {}, `No ${kind} watched.`)));
}

/** "Topics 51–100 of 5,000 (by name)" with First/Next page, when they do not fit one page. */
function namePager(noun, page) {
  if (!page || (page.page === 0 && !page.next)) return null;
  const range = page.to > page.from ? `${num(page.from + 1)}–${num(page.to)}` : "none";
  return h("div", { class: "pager", "data-key": `pager:${noun}` },
    h("span", { class: "muted small" }, `${noun[0].toUpperCase()}${noun.slice(1)} ${range} of ${num(page.total)} (by name)`),
    page.page > 0 ? button("First page", "names-first", {}, "secondary small") : null,
    page.next ? button("Next page", "names-next", {}, "secondary small") : null);
}

function groupStats(g) {
  return [
    numCell("lag", g.lag, g.lag > 0 ? "hot" : ""),
    numCell("parked", g.parked),
    numCell("pending", g.pending),
    numCell("delayed", g.delayed),
    numCell("dead_lettered", g.dead_lettered, g.dead_lettered > 0 ? "bad" : ""),
    numCell("consumers", g.consumers.length),
  ];
}

export function topicView(model) {
  const { tenant, topic } = model;
  const t = model.info;
  const rows = model.groups.map((g) =>
    h("tr", { "data-key": `group:${g.name}` },
      h("th", { scope: "row" }, h("a", { href: links.group(tenant, topic, g.name) }, g.name)),
      g.error
        ? h("td", { colspan: 7, class: "error-text" }, g.error.detail || g.error.message)
        : [...groupStats(g.info), h("td", { "data-field": "paused" }, g.info.paused ? h("span", { class: "pill warn" }, "paused") : "running")]));
  return [
    heading(`Topic ${t.name}`, `in ${tenant}`),
    h("dl", { class: "stats card", "data-key": "topic-stats" },
      stat("length", "Length", num(t.length), "Entries stored in the stream"),
      stat("last_seq", "Last seq", num(t.last_seq)),
      stat("retention", "Retention", t.retention_ms ? duration(t.retention_ms) : "no limit"),
      stat("max_backlog", "Max backlog", t.max_backlog ? num(t.max_backlog) : "no limit"),
      stat("dedup", "Dedup window", duration(t.dedup_window_ms)),
      stat("created", "Created", when(t.created_at))),
    section("groups", "Consumer groups",
      table("groups", "Consumer groups of this topic",
        [col("Group"), col("Lag", true), col("Parked", true), col("Pending", true), col("Delayed", true), col("Dead letters", true), col("Consumers", true), col("State")],
        rows,
        [h("p", {}, "No consumer group reads this topic yet. Declare one:"),
          h("pre", {}, `curl -s -X PUT ${location.origin}/v1/tenants/${tenant}/topics/${t.name}/groups/workers --json '{"lease_ms": 30000}'`)]),
      namePager("groups", model.groupPage)),
    h("p", { class: "muted", "data-key": "ids" }, "Stream ids: first ", code(t.first_id ?? "—"), ", last ", code(t.last_id ?? "—"), "."),
  ];
}

/** Messages the group has yet to ack, whatever their state. */
export const owed = (g) => g.lag + g.parked + g.pending + g.delayed;

export function groupView(model) {
  const { tenant, topic, group, info: g, lagPoints, dlq } = model;
  const pauseButton = g.paused
    ? button("Resume deliveries", "resume", {}, "")
    : button("Pause deliveries", "pause", {}, "secondary");
  const consumers = g.consumers.map((c) =>
    h("tr", { "data-key": `consumer:${c.name}` },
      h("th", { scope: "row" }, c.name),
      numCell("pending", c.pending),
      h("td", { class: "num", "data-field": "idle" }, duration(c.idle_ms))));
  const b = g.backoff;
  return [
    heading(`Group ${group}`, `on ${topic}`,
      h("span", { class: `pill ${g.paused ? "warn" : "ok"}`, "data-stat": "paused" }, g.paused ? "paused" : "running"),
      pauseButton),
    h("dl", { class: "stats card", "data-key": "group-stats" },
      stat("lag", "Lag", num(g.lag), "Entries not yet delivered to the group"),
      stat("parked", "Parked", num(g.parked), "Waiting behind an earlier message of their key"),
      stat("pending", "Pending", num(g.pending), "Delivered and not yet acked"),
      stat("delayed", "Delayed", num(g.delayed), "Waiting for a scheduled retry"),
      stat("dead_lettered", "Dead letters", num(g.dead_lettered)),
      stat("owed", "Owed", num(owed(g)), "Not yet acked: lag + parked + pending + delayed (a replayed dead letter waits as delayed)"),
      stat("consumers", "Consumers", num(g.consumers.length))),
    section("chart", "Lag over time",
      lagChart(lagPoints, `Lag of ${group}`),
      h("p", { class: "muted small" }, "Sampled by this page on every refresh while it is open; for history, graph streamcar_group_lag from /metrics.")),
    dlqSection(model, dlq, g),
    section("consumers", "Consumers",
      table("consumers", "Consumers of this group", [col("Consumer"), col("Pending", true), col("Idle", true)], consumers,
        h("p", {}, "No consumer has fetched from this group yet."))),
    section("config", "Configuration",
      h("dl", { class: "stats" },
        stat("start", "Start", g.start),
        stat("lease_ms", "Lease", duration(g.lease_ms)),
        stat("max_deliveries", "Max deliveries", num(g.max_deliveries)),
        stat("backoff", "Backoff", `${duration(b.initial_ms)} × ${b.multiplier} up to ${duration(b.max_ms)}, jitter ${b.jitter}`),
        stat("ordering", "Ordering", g.ordering),
        stat("created", "Created", when(g.created_at)))),
    h("p", { class: "muted", "data-key": "back" }, "Back to ", h("a", { href: links.topic(tenant, topic) }, `topic ${topic}`), "."),
  ];
}

function dlqSection(model, dlq, g) {
  const rows = dlq.messages.map((m) => {
    const text = payloadText(m.payload);
    // Keyed by the dead letter, not the message: one message id can have
    // several dead letters, and rows sharing a key are rebuilt on every
    // refresh (an opened payload would close).
    return h("tr", { "data-key": `dlq:${m.dlq_id}`, "data-id": m.id },
      h("th", { scope: "row" },
        h("code", { class: "id" }, m.id),
        h("div", { class: "muted small" }, `seq ${m.seq}`, m.key ? ` · key ${m.key}` : "")),
      h("td", { "data-field": "reason" }, h("span", { class: "pill bad" }, m.reason)),
      numCell("attempts", m.attempts),
      h("td", { "data-field": "last_error", class: "wrap" }, m.last_error ?? h("span", { class: "muted" }, "—")),
      h("td", { "data-field": "dead_lettered_at" }, when(m.dead_lettered_at)),
      h("td", { class: "payload" },
        h("details", {},
          h("summary", {}, clip(JSON.stringify(m.payload) ?? "null", PAYLOAD_PREVIEW_CHARS)),
          h("pre", {}, clip(text, PAYLOAD_SHOW_CHARS)))),
      h("td", { class: "row-actions" },
        button("Replay", "replay", { id: m.id }, "small"),
        button("Delete", "delete", { id: m.id }, "danger small")));
  });
  const pager = h("div", { class: "pager", "data-key": "pager" },
    dlq.page > 0 ? button("First page", "dlq-first", {}, "secondary small") : null,
    dlq.hasNext ? button("Next page", "dlq-next", {}, "secondary small") : null,
    dlq.page > 0 ? h("span", { class: "muted small" }, `page ${dlq.page + 1}`) : null);
  return section("dlq", `Dead letters (${num(g.dead_lettered)})`,
    h("div", { class: "toolbar", "data-key": "dlq-tools" },
      g.dead_lettered > 0 ? button("Replay all", "replay-all", {}, "") : null,
      h("span", { class: "muted small" }, "Replay sends messages back to this group only, attempts reset; other groups are unaffected.")),
    table("dlq", "Dead letters of this group",
      [col("Message"), col("Reason"), col("Attempts", true), col("Last error"), col("Dead-lettered"), col("Payload"), col("Actions")],
      rows,
      dlq.page > 0
        ? [h("p", {}, "No more dead letters past this point."), button("First page", "dlq-first", {}, "secondary small")]
        : h("p", {}, "No dead letters. Messages land here after max_deliveries failed attempts, a reject, or an expired ttl_ms.")),
    rows.length ? pager : null);
}

export function subscriptionsView(model) {
  const rows = model.subscriptions.map((s) =>
    h("tr", { "data-key": `sub:${s.name}` },
      h("th", { scope: "row" }, s.name),
      h("td", {}, h("a", { href: links.group(s.tenant, s.topic, s.group) }, `${s.tenant} / ${s.topic} / ${s.group}`)),
      h("td", { "data-field": "state" }, h("span", { class: `pill ${s.state === "running" ? "ok" : "warn"}` }, s.state.replace("_", " "))),
      numCell("in_flight", s.in_flight),
      numCell("delivered", s.delivered),
      numCell("acked", s.acked),
      numCell("nacked", s.nacked, s.nacked ? "hot" : ""),
      numCell("rejected", s.rejected, s.rejected ? "bad" : ""),
      h("td", { class: "wrap" }, s.last_error ?? h("span", { class: "muted" }, "—"))));
  return [
    heading("Push subscriptions", "of this sidecar"),
    section("subscriptions", "Subscriptions",
      table("subscriptions", "Push subscriptions",
        [col("Name"), col("Tenant / topic / group"), col("State"), col("In flight", true), col("Delivered", true), col("Acked", true), col("Nacked", true), col("Rejected", true), col("Last error")],
        rows,
        [h("p", {}, "This sidecar pushes to no app. Start it with ", code("--subscriptions FILE"),
          " to have it POST each message to your app's URL and ack on 2xx.")])),
  ];
}
