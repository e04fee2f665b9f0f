// The operator UI: routes (the URL hash), loading each view's data from
// the /v1 API, the live refresh, and the actions (pause/resume, replay and
// delete dead letters) behind confirmation dialogs.
//
// Every load is bounded: at most MAX_TOPICS topics and MAX_GROUPS groups
// are described per view (a page of them, by name: the pager reaches the
// rest), one page of dead letters at a time, and a slow call times out
// (api.js). A refresh that fails keeps showing the last good
// data under a notice saying why (the problem's detail) and what to do.

import { ApiError, call, seg, setToken, tenantPath, token } from "./api.js";
import { h, morphChildren } from "./dom.js";
import { sample } from "./chart.js";
import * as views from "./views.js";

/** How often the open view reloads while live. */
const REFRESH_MS = 3000;
/** Most topics described on a tenant's page (by name). */
const MAX_TOPICS = 50;
/** Most groups described on a topic's page. */
const MAX_GROUPS = 50;
/** Dead letters per page. */
const DLQ_PAGE = 25;
/** Most "replay all" requests one click makes (each scans up to 10,000). */
const MAX_REPLAY_CALLS = 20;
/** Most pools or channels watched per tenant. */
const MAX_WATCHED = 20;
const NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

const $ = (id) => document.getElementById(id);
const main = $("main");

const state = {
  route: { name: "tenants" },
  routeKey: "",
  live: true,
  /** Bumped by every refresh: an older one that finishes later is dropped. */
  generation: 0,
  timer: 0,
  /** The last good load of the current route: {key, model, at}. */
  last: null,
  /** Dead-letter paging of the current group: cursor and earlier cursors. */
  dlq: { after: null, stack: [] },
  /** Name paging of the tenant's topics or the topic's groups. */
  names: { after: null, stack: [] },
  /** Where the next "replay all" of this group goes on (its next_after). */
  replayAfter: null,
  /** The operator closed the token dialog: do not reopen it on every 401. */
  tokenDismissed: false,
};

// ---- routes ---------------------------------------------------------------

function parseRoute(hash) {
  let parts;
  try {
    parts = hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
  } catch {
    return { name: "notfound" };
  }
  const valid = (i) => NAME.test(parts[i]);
  if (parts.length === 0) return { name: "tenants" };
  if (parts.length === 1 && parts[0] === "subscriptions") return { name: "subscriptions" };
  if (parts[0] !== "t" || !valid(1)) return { name: "notfound" };
  if (parts.length === 2) return { name: "tenant", tenant: parts[1] };
  if (parts[2] !== "topics" || !valid(3)) return { name: "notfound" };
  if (parts.length === 4) return { name: "topic", tenant: parts[1], topic: parts[3] };
  if (parts.length === 6 && parts[4] === "groups" && valid(5)) {
    return { name: "group", tenant: parts[1], topic: parts[3], group: parts[5] };
  }
  return { name: "notfound" };
}

function groupPath(r, rest = "") {
  return tenantPath(r.tenant, `/topics/${seg(r.topic)}/groups/${seg(r.group)}${rest}`);
}

function crumbs(r) {
  const items = [["Tenants", views.links.tenants()]];
  if (r.name === "subscriptions") items.push(["Subscriptions", views.links.subscriptions()]);
  if (r.tenant) items.push([r.tenant, views.links.tenant(r.tenant)]);
  if (r.topic) items.push([r.topic, views.links.topic(r.tenant, r.topic)]);
  if (r.group) items.push([r.group, views.links.group(r.tenant, r.topic, r.group)]);
  return h("ol", {}, items.map(([label, href], i) =>
    h("li", { "data-key": `crumb:${i}` },
      h("a", { href, "aria-current": i === items.length - 1 ? "page" : null }, label))));
}

// ---- watched pools and channels (the API lists neither) --------------------

function watchKey(kind, tenant) {
  return `streamcar.watch.${kind}.${tenant}`;
}

function watched(kind, tenant) {
  try {
    const list = JSON.parse(localStorage.getItem(watchKey(kind, tenant)) || "[]");
    return Array.isArray(list) ? list.filter((n) => typeof n === "string" && NAME.test(n)).slice(0, MAX_WATCHED) : [];
  } catch {
    return [];
  }
}

function setWatched(kind, tenant, list) {
  try {
    localStorage.setItem(watchKey(kind, tenant), JSON.stringify(list.slice(0, MAX_WATCHED)));
  } catch {
    flash("This browser refused to store the list.", "bad");
  }
}

// ---- loading --------------------------------------------------------------

/**
 * The page of `names` (sorted, as the API lists them) after the name
 * cursor, at most `max`: what the view shows and how to page on.
 */
function namePage(names, max) {
  const { after, stack } = state.names;
  const from = after === null ? 0 : names.findIndex((n) => n > after);
  const start = from < 0 ? names.length : from;
  const shown = names.slice(start, start + max);
  const end = start + shown.length;
  return {
    shown,
    info: { from: start, to: end, total: names.length, page: stack.length,
      next: end < names.length ? shown[shown.length - 1] : null },
  };
}

/** A call's result or its ApiError, without throwing (anything else throws). */
async function settle(promise) {
  try {
    return { value: await promise };
  } catch (error) {
    if (!(error instanceof ApiError)) throw error;
    return { error };
  }
}

const loaders = {
  tenants: () => call("GET", "/v1/tenants"),

  subscriptions: () => call("GET", "/v1/subscriptions"),

  async tenant(r) {
    const [list, limits] = await Promise.all([
      call("GET", tenantPath(r.tenant, "/topics")),
      settle(call("GET", tenantPath(r.tenant, "/limits"))),
    ]);
    const { shown: names, info: topicPage } = namePage(list.topics, MAX_TOPICS);
    const described = await Promise.all(names.map(async (name) => {
      const got = await settle(call("GET", tenantPath(r.tenant, `/topics/${seg(name)}`)));
      if (got.error && got.error.status === 404) return null; // deleted meanwhile
      return got.error ? { name, error: got.error } : got.value;
    }));
    const lookup = (kind, path) => Promise.all(watched(kind, r.tenant).map(async (name) =>
      ({ name, ...(await settle(call("GET", tenantPath(r.tenant, `/${path}/${seg(name)}`)))) })));
    const [pools, channels] = await Promise.all([lookup("pools", "pools"), lookup("channels", "channels")]);
    return {
      tenant: r.tenant,
      topics: described.filter(Boolean),
      topicCount: list.topics.length,
      topicPage,
      limits: { value: limits.value ? limits.value.limits : null, error: limits.error },
      pools,
      channels,
    };
  },

  async topic(r) {
    const info = await call("GET", tenantPath(r.tenant, `/topics/${seg(r.topic)}`));
    const byName = new Map(info.groups.map((g) => [g.name, g]));
    const { shown, info: groupPage } = namePage(info.groups.map((g) => g.name), MAX_GROUPS);
    const groups = await Promise.all(shown.map((name) => byName.get(name)).map(async (g) => {
      const got = await settle(call("GET", groupPath({ ...r, group: g.name })));
      if (got.error) return { name: g.name, error: got.error };
      sample(`${r.tenant}/${r.topic}/${g.name}`, got.value.lag);
      return { name: g.name, info: got.value };
    }));
    return { tenant: r.tenant, topic: r.topic, info, groups, groupPage };
  },

  async group(r) {
    const after = state.dlq.after ? `&after=${seg(state.dlq.after)}` : "";
    const [info, page] = await Promise.all([
      call("GET", groupPath(r)),
      call("GET", groupPath(r, `/dlq?limit=${DLQ_PAGE}${after}`)),
    ]);
    return {
      ...r,
      info,
      lagPoints: sample(`${r.tenant}/${r.topic}/${r.group}`, info.lag),
      dlq: {
        messages: page.messages,
        next: page.next_after,
        hasNext: page.messages.length === DLQ_PAGE && Boolean(page.next_after),
        page: state.dlq.stack.length,
      },
    };
  },
};

const renderers = {
  tenants: views.tenantsView,
  subscriptions: views.subscriptionsView,
  tenant: views.tenantView,
  topic: views.topicView,
  group: views.groupView,
};

function render(nodes) {
  morphChildren(main, h("div", {}, nodes));
}

async function refreshHealth() {
  const pill = $("health");
  const got = await settle(call("GET", "/readyz"));
  const [text, cls, title] = got.error
    ? [got.error.status === 503 ? "Redis unavailable" : "sidecar unreachable", "pill bad", got.error.detail]
    : ["ready", "pill ok", "Redis reachable, scripts loaded"];
  if (pill.textContent !== text) pill.textContent = text;
  pill.className = cls;
  pill.title = title;
}

/** Loads and shows the current route; a newer refresh supersedes this one. */
async function refresh() {
  const generation = ++state.generation;
  clearTimeout(state.timer);
  const route = state.route;
  const key = state.routeKey;
  try {
    if (route.name === "notfound") {
      render([views.heading("Not found"), views.problem(new ApiError(404, {
        code: "no_such_page", detail: `there is no page at ${location.hash}`,
      }), "No such page")]);
      return;
    }
    const [got] = await Promise.all([settle(loaders[route.name](route)), refreshHealth()]);
    if (generation !== state.generation) return;
    if (got.error) {
      if (got.error.status === 401) askToken(got.error);
      const stale = state.last && state.last.key === key;
      render(stale
        ? [views.staleNotice(got.error, state.last.at), ...renderers[route.name](state.last.model)]
        : [views.heading(title(route)), views.problem(got.error)]);
    } else {
      state.last = { key, model: got.value, at: Date.now() };
      render(renderers[route.name](got.value));
    }
  } finally {
    if (generation === state.generation) schedule();
  }
}

function schedule() {
  clearTimeout(state.timer);
  if (state.live && !document.hidden) state.timer = setTimeout(refresh, REFRESH_MS);
}

function title(r) {
  return { tenants: "Tenants", subscriptions: "Subscriptions", tenant: `Tenant ${r.tenant}`,
    topic: `Topic ${r.topic}`, group: `Group ${r.group}`, notfound: "Not found" }[r.name];
}

function navigate() {
  const route = parseRoute(location.hash);
  const key = JSON.stringify(route);
  if (key === state.routeKey) return refresh();
  state.route = route;
  state.routeKey = key;
  state.last = null;
  state.dlq = { after: null, stack: [] };
  state.names = { after: null, stack: [] };
  state.replayAfter = null;
  document.title = `${title(route)} · streamcar`;
  morphChildren($("crumbs"), h("div", {}, crumbs(route)));
  for (const a of document.querySelectorAll("[data-nav]")) {
    const current = a.dataset.nav === (route.name === "subscriptions" ? "subscriptions" : "tenants");
    if (current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  render([views.heading(title(route)), h("p", { class: "muted", "data-key": "loading" }, "Loading…")]);
  main.focus({ preventScroll: true });
  return refresh();
}

// ---- feedback and dialogs --------------------------------------------------

let flashTimer = 0;
function flash(text, kind = "ok") {
  const el = $("flash");
  el.textContent = text;
  el.className = `flash ${kind}`;
  clearTimeout(flashTimer);
  flashTimer = setTimeout(() => {
    el.textContent = "";
    el.className = "flash";
  }, 6000);
}

/** Asks before a change; resolves true when the operator confirmed. */
function confirmDialog(heading, text, okLabel) {
  const dialog = $("confirm");
  $("confirm-title").textContent = heading;
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = okLabel;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.showModal();
    $("confirm-cancel").focus();
  });
}

function askToken(err) {
  const dialog = $("token");
  if (dialog.open || (err && state.tokenDismissed)) return;
  const error = $("token-error");
  error.hidden = !err;
  error.textContent = err ? (token() ? `The token was refused: ${err.detail}` : err.detail) : "";
  $("token-input").value = "";
  dialog.returnValue = "";
  dialog.showModal();
  $("token-input").focus();
}

$("token").addEventListener("close", () => {
  const value = $("token").returnValue;
  if (value === "save") {
    setToken($("token-input").value.trim());
    state.tokenDismissed = false;
  } else if (value === "clear") {
    setToken("");
  } else {
    state.tokenDismissed = true;
  }
  $("token-input").value = "";
  refresh();
});

// ---- actions --------------------------------------------------------------

/** Runs an API change, says how it went, and refreshes the view. */
async function act(button, change, done) {
  button.disabled = true;
  try {
    const result = await change();
    flash(done(result), "ok");
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    if (err.status === 401) askToken(err);
    flash(`Failed: ${err.detail || err.message}. ${views.hint(err)}`, "bad");
  } finally {
    button.disabled = false;
    await refresh();
    if (!document.activeElement || document.activeElement === document.body) main.focus({ preventScroll: true });
  }
}

const num = views.num;

/**
 * Replays every dead letter of the group: one request scans at most 10,000,
 * so go on from each answer's next_after while it says `more` (without it
 * every request starts again at the oldest, and 10,000 that stay, such as
 * those whose topic entry was trimmed, would hide the rest for good). Past
 * MAX_REPLAY_CALLS requests the next click goes on from where this stopped.
 */
async function replayAll(r) {
  const total = { replayed: 0, missing: 0, more: false };
  let after = state.replayAfter;
  for (let i = 0; i < MAX_REPLAY_CALLS; i++) {
    const out = await call("POST", groupPath(r, "/dlq/replay"), after ? { after } : {});
    total.replayed += out.replayed.length;
    total.missing += out.missing.length;
    total.more = Boolean(out.more && out.next_after);
    after = total.more ? out.next_after : null;
    state.replayAfter = after;
    if (!total.more) break;
  }
  return total;
}

const actions = {
  token: () => askToken(null),

  pause: (button, r) => act(button, () => call("POST", groupPath(r, "/pause")),
    () => `Paused ${r.group}: no new deliveries until it is resumed.`),

  resume: (button, r) => act(button, () => call("POST", groupPath(r, "/resume")),
    () => `Resumed ${r.group}.`),

  async replay(button, r) {
    const id = button.dataset.id;
    if (!(await confirmDialog("Replay this dead letter?",
      `Message ${id} goes back to group ${r.group} with its attempts reset. Other groups are not affected.`, "Replay"))) return;
    await act(button, () => call("POST", groupPath(r, "/dlq/replay"), { ids: [id] }),
      (out) => (out.replayed.length
        ? `Replayed ${id}.`
        : `${id} was not replayed: its topic entry is gone (trimmed by retention) or it is being delivered.`));
  },

  async "replay-all"(button, r) {
    if (!(await confirmDialog("Replay all dead letters?",
      `Every dead letter of group ${r.group} goes back to it with attempts reset. Other groups are not affected.`, "Replay all"))) return;
    await act(button, () => replayAll(r),
      (out) => `Replayed ${num(out.replayed)}` +
        (out.missing ? `; ${num(out.missing)} could not be (topic entry gone)` : "") +
        (out.more ? "; more are left: replay all again to go on." : "."));
  },

  async delete(button, r) {
    const id = button.dataset.id;
    if (!(await confirmDialog("Delete this dead letter?",
      `Message ${id} is removed from the dead letters of ${r.group} for good.`, "Delete"))) return;
    await act(button, () => call("DELETE", groupPath(r, `/dlq/${seg(id)}`)), () => `Deleted ${id}.`);
  },

  "dlq-next": () => {
    const next = state.last && state.last.model.dlq ? state.last.model.dlq.next : null;
    if (!next) return;
    state.dlq.stack.push(state.dlq.after);
    state.dlq.after = next;
    refresh();
  },

  "names-next": () => {
    const model = state.last && state.last.model;
    const page = model && (model.topicPage || model.groupPage);
    if (!page || !page.next) return;
    state.names.stack.push(state.names.after);
    state.names.after = page.next;
    refresh();
  },

  "names-first": () => {
    state.names = { after: null, stack: [] };
    refresh();
  },

  "dlq-first": () => {
    state.dlq = { after: null, stack: [] };
    refresh();
  },

  unwatch: (button, r) => {
    const { kind, name } = button.dataset;
    setWatched(kind, r.tenant, watched(kind, r.tenant).filter((n) => n !== name));
    refresh();
  },
};

document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button || !actions[button.dataset.action]) return;
  event.preventDefault();
  actions[button.dataset.action](button, state.route);
});

document.addEventListener("submit", (event) => {
  const form = event.target.closest("form[data-form]");
  if (!form) return;
  event.preventDefault();
  const name = new FormData(form).get("name").trim();
  if (!NAME.test(name)) {
    flash(`"${name}" is not a valid name: letters, digits, '.', '_' and '-', up to 128, starting with a letter or digit.`, "bad");
    return;
  }
  if (form.dataset.form === "open-tenant") {
    location.hash = views.links.tenant(name);
  } else if (form.dataset.form === "watch") {
    const { kind } = form.dataset;
    const list = watched(kind, state.route.tenant).filter((n) => n !== name);
    if (list.length >= MAX_WATCHED) {
      flash(`At most ${MAX_WATCHED} ${kind} can be watched; stop watching one first.`, "bad");
      return;
    }
    setWatched(kind, state.route.tenant, [...list, name]);
    form.reset();
    refresh();
  }
});

$("live").addEventListener("click", () => {
  state.live = !state.live;
  const live = $("live");
  live.setAttribute("aria-pressed", String(state.live));
  live.textContent = state.live ? "Live" : "Paused";
  if (state.live) refresh();
  else clearTimeout(state.timer);
});

$("token-button").addEventListener("click", () => askToken(null));

document.addEventListener("visibilitychange", () => {
  if (!document.hidden && state.live) refresh();
  else clearTimeout(state.timer);
});

window.addEventListener("hashchange", navigate);
navigate();
