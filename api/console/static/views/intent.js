// Intent: clusters and their backends (edit weight and state, add a backend), listeners,
// routes and certificates, with each one's traffic policy in a line per policy (a route's
// retries, redirect, rate limit...; a cluster's slow start and retry budget; a listener's
// access log and tracing), one page of each at a time (the API's own pages: the console never
// reads every object of a kind). A page is read when shown, then kept current from the intent
// events: a write redraws the row (or the one cluster) it changed, nothing else. Each backend
// shows what the Envoys report of it (`.../backends?health=true`), fetched again when node
// events change what the Envoys see, for the clusters on screen only.

import { ApiError, request } from "../api.js";
import { clearProblem, field, h, keepFocus, replace, showProblem, slug, table, writeButton } from "../dom.js";

const KINDS = ["clusters", "listeners", "routes", "certificates"];
const KIND_OF = { cluster: "clusters", listener: "listeners", route: "routes", certificate: "certificates" };
export const PAGE_SIZE = { clusters: 20, listeners: 50, routes: 50, certificates: 50 };
const BACKENDS_PAGE = 1000; // backends shown per cluster (one page of the API's)
// The intent events seen, kept (up to this many changed objects) to bring a page read at an
// older revision up to date: a next page is read at its first page's revision.
const MAX_LOGGED = 10000;

// kind -> the page shown: its objects by name, its token (null: the first page), the tokens
// of the pages before it, the next page's, the revision it was read at, and the names it
// spans (a write between them belongs on it).
const pages = Object.fromEntries(KINDS.map((k) => [k, { items: new Map(), token: null, back: [], next: null, revision: 0, first: null, last: null, loaded: false, seq: 0 }]));
const backends = new Map(); // cluster on the page -> Map(backend name -> backend)
const moreBackends = new Set(); // clusters with more backends than one page
const log = []; // intent events, oldest first
let logged = 0;
let lostAfter = 0; // the newest revision no longer in the log
const dirty = new Set(); // what the next update redraws: a kind's page, a cluster, a row
const drafts = new Map(); // input id -> what the operator typed and has not saved
const status = new Map(); // form id -> {text, revision} shown under it
let root;
let body;

// One page of a kind: read, brought up to date from the events since its revision, drawn.
async function loadPage(ctx, kind, token) {
  const p = pages[kind];
  const seq = ++p.seq; // a later click wins over a slower earlier read
  let doc;
  let lists = [];
  try {
    doc = await request("GET", `/v1/${kind}`, { params: { limit: PAGE_SIZE[kind], page_token: token || undefined } });
    if (kind === "clusters") {
      const sigs = new Map(doc.items.map((c) => [c.name, signature(ctx, c.name)]));
      lists = await Promise.all(
        doc.items.map((c) => request("GET", backendsPath(c.name), { params: { health: "true", limit: BACKENDS_PAGE } }).catch(() => ({ items: [] }))),
      );
      doc.items.forEach((c, i) => keepHealth(c.name, lists[i].items, sigs.get(c.name)));
    }
  } catch (err) {
    if (seq !== p.seq) return;
    if (token && err instanceof ApiError && err.status >= 400 && err.status < 500) {
      // A token too old for etcd's history (compacted): the pages start over.
      p.back = [];
      return loadPage(ctx, kind, null);
    }
    ctx.notify(`Loading ${kind}: ${err.title || "error"}: ${err.message}`, "error");
    return;
  }
  if (seq !== p.seq) return;
  if (token && doc.revision < lostAfter) {
    // Read at a revision older than the events kept: start over at a fresh first page.
    p.back = [];
    return loadPage(ctx, kind, null);
  }
  Object.assign(p, {
    items: new Map(doc.items.map((x) => [x.name, x])),
    token,
    next: doc.next_page_token,
    revision: doc.revision,
    first: doc.items.length ? doc.items[0].name : null,
    last: doc.items.length ? doc.items[doc.items.length - 1].name : null,
    loaded: true,
  });
  if (kind === "clusters") {
    backends.clear();
    moreBackends.clear();
    doc.items.forEach((c, i) => {
      backends.set(c.name, new Map(lists[i].items.map((b) => [b.name, b])));
      if (lists[i].next_page_token) moreBackends.add(c.name);
    });
  }
  for (const ev of log) {
    if (ev.revision <= doc.revision) continue;
    for (const c of ordered(ev.changes)) if (KIND_OF[c.kind] === kind || (kind === "clusters" && c.kind === "backend")) applyChange(c, ev.revision);
  }
  dirty.add(kind);
  update(ctx);
}

// A write between the page's first and last names (or past either end, at the ends) is on it.
function onPage(p, name) {
  if (p.back.length && p.first !== null && name < p.first) return false;
  if (p.next && p.last !== null && name > p.last) return false;
  return true;
}

// A batch's clusters before their backends: a new cluster on the page takes its new members.
const ordered = (changes) => [...changes].sort((a, b) => (a.kind === "cluster" ? 0 : 1) - (b.kind === "cluster" ? 0 : 1));

function applyChange(c, revision) {
  const obj = c.object ? { ...c.object, revision } : null;
  if (c.kind === "backend") {
    const m = backends.get(c.cluster);
    if (!m) return; // its cluster is not on the page
    healthEntry(c.cluster).sig = null; // a backend changed: its health is due again
    const had = m.has(c.name);
    if (c.deleted) {
      if (had) m.delete(c.name);
      if (had) dirty.add(`cluster\0${c.cluster}`);
    } else {
      m.set(c.name, obj);
      dirty.add(had ? `backend\0${c.cluster}\0${c.name}` : `cluster\0${c.cluster}`);
    }
    return;
  }
  const kind = KIND_OF[c.kind];
  const p = kind && pages[kind];
  if (!p || !p.loaded || !onPage(p, c.name)) return;
  const had = p.items.has(c.name);
  if (c.deleted) {
    if (!had) return;
    p.items.delete(c.name);
    if (kind === "clusters") {
      backends.delete(c.name);
      health.delete(c.name);
    }
    dirty.add(kind);
    return;
  }
  p.items.set(c.name, obj);
  if (kind === "clusters" && !had) backends.set(c.name, new Map());
  dirty.add(!had ? kind : kind === "clusters" ? `cluster\0${c.name}` : `row\0${kind}\0${c.name}`);
}

// One intent event: the objects it wrote (each with the write's revision, its new ETag). Only
// what is on a shown page changes, and only its row (or its cluster) is drawn again.
export function apply(ctx, ev) {
  log.push(ev);
  logged += ev.changes.length;
  while (logged > MAX_LOGGED && log.length > 1) {
    const old = log.shift();
    logged -= old.changes.length;
    lostAfter = old.revision;
  }
  for (const c of ordered(ev.changes)) applyChange(c, ev.revision);
}

// The event stream started over (a reconnect): what it missed meanwhile is not in the log,
// so the pages shown are read again.
export function resync(ctx) {
  log.length = 0;
  logged = 0;
  for (const kind of KINDS) {
    if (!pages[kind].loaded) continue;
    pages[kind].back = [];
    loadPage(ctx, kind, null);
  }
}

export function mount(el, ctx) {
  root = el;
  body = h("div", { id: "intent-body" }, KINDS.map((k) => h("div", { id: `intent-${k}` }, h("p", { class: "muted" }, "Loading ..."))));
  replace(root, h("h2", {}, "Intent"), body);
  for (const kind of KINDS) {
    if (pages[kind].loaded) dirty.add(kind);
    else loadPage(ctx, kind, null);
  }
  update(ctx);
}

// An input that keeps the operator's unsaved text across redraws.
function input(id, value, attrs = {}) {
  const el = h("input", { id, ...attrs, value: drafts.has(id) ? drafts.get(id) : value ?? "" });
  el.addEventListener("input", () => drafts.set(id, el.value));
  return el;
}

function select(id, value, options, attrs = {}) {
  const el = h("select", { id, ...attrs }, options.map((o) => h("option", { value: o }, o)));
  el.value = drafts.has(id) ? drafts.get(id) : value;
  el.addEventListener("change", () => drafts.set(id, el.value));
  return el;
}

function rolloutText(ctx, revision) {
  const entry = ctx.state.changes.find((c) => c.revision === revision);
  const r = entry?.rollout;
  if (!r) return `r${revision}`;
  if (r.rejected.length) return `r${revision}: rejected by ${r.rejected.map((x) => x.node_id).join(", ")}`;
  return `r${revision}: acked by ${r.acked.length} of ${r.nodes} Envoys${r.complete ? " (complete)" : ""}`;
}

function statusLine(ctx, id) {
  const st = status.get(id);
  const text = st ? (st.revision ? `${st.text} ${rolloutText(ctx, st.revision)}` : st.text) : "";
  return h("p", { class: st?.error ? "error" : "status", id: `${id}-status`, role: "status" }, text);
}

function backendRow(ctx, cluster, b) {
  const id = `${slug(cluster)}-${slug(b.name)}`;
  const weight = input(`weight-${id}`, b.weight, {
    type: "number", min: "1", max: "1000000", inputmode: "numeric", "aria-label": `Weight of ${b.name}`,
    disabled: !ctx.canWrite,
  });
  const state = select(`state-${id}`, b.admin_state, ["ready", "drain", "maint"], {
    "aria-label": `Admin state of ${b.name}`, disabled: !ctx.canWrite,
  });
  const fields = { "/weight": weight, "/admin_state": state };
  const save = writeButton(ctx, "Save", { id: `save-${id}`, "aria-label": `Save ${b.name}` }, async () => {
    clearProblem(fields, null);
    const patch = { weight: Number(weight.value), admin_state: state.value };
    try {
      const res = await request("PATCH", `/v1/clusters/${encodeURIComponent(cluster)}/backends/${encodeURIComponent(b.name)}`, {
        body: patch,
        contentType: "application/merge-patch+json",
        headers: { "if-match": `"${b.revision}"` },
      });
      drafts.delete(weight.id);
      drafts.delete(state.id);
      status.set(`row-${id}`, { text: "saved:", revision: res.revision });
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      status.set(`row-${id}`, { text: err.status === 412 ? "changed meanwhile; see the new value and save again" : "", error: true });
      showProblem(err, fields, document.getElementById(`row-${id}-status`));
      return;
    }
    update(ctx);
  });
  return h(
    "tr",
    { id: `backend-${id}` },
    h("th", { scope: "row" }, b.name),
    h("td", {}, `${b.address}:${b.port}`),
    h("td", { id: `bcell-${id}` }, badge(cluster, b)),
    h("td", {}, h("div", { class: "field inline" }, weight, h("span", { class: "error", id: `weight-${id}-error`, role: "alert" }))),
    h("td", {}, b.zone || "-"),
    h("td", { class: "n" }, b.priority),
    h("td", {}, h("div", { class: "field inline" }, state, h("span", { class: "error", id: `state-${id}-error`, role: "alert" }))),
    h("td", {}, save, statusLine(ctx, `row-${id}`)),
  );
}

function addForm(ctx, cluster) {
  const id = `add-${slug(cluster)}`;
  const f = {
    "/name": input(`${id}-name`, "", { required: true, autocomplete: "off" }),
    "/address": input(`${id}-address`, "", { required: true, autocomplete: "off" }),
    "/port": input(`${id}-port`, "", { type: "number", min: "1", max: "65535", required: true }),
    "/weight": input(`${id}-weight`, "1", { type: "number", inputmode: "numeric" }),
    "/zone": input(`${id}-zone`, "", { autocomplete: "off" }),
    "/priority": input(`${id}-priority`, "0", { type: "number", min: "0", max: "127" }),
  };
  const form = h(
    "form",
    { id, class: "add", "aria-label": `Add a backend to ${cluster}` },
    h("fieldset", { disabled: !ctx.canWrite },
      h("legend", {}, `Add a backend to ${cluster}`),
      field("Name", f["/name"]),
      field("Address", f["/address"]),
      field("Port", f["/port"]),
      field("Weight", f["/weight"]),
      field("Zone (optional)", f["/zone"]),
      field("Priority", f["/priority"]),
      h("button", { type: "submit", id: `${id}-submit` }, "Add backend"),
    ),
    statusLine(ctx, id),
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const out = document.getElementById(`${id}-status`);
    clearProblem(f, out);
    const num = (x) => (x.value.trim() === "" ? undefined : Number(x.value));
    const body = {
      name: f["/name"].value.trim(),
      address: f["/address"].value.trim(),
      port: num(f["/port"]),
      weight: num(f["/weight"]),
      priority: num(f["/priority"]),
      ...(f["/zone"].value.trim() ? { zone: f["/zone"].value.trim() } : {}),
    };
    try {
      const res = await request("POST", `/v1/clusters/${encodeURIComponent(cluster)}/backends`, { body });
      for (const x of Object.values(f)) drafts.delete(x.id);
      status.set(id, { text: `added ${body.name}:`, revision: res.revision });
      update(ctx);
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      status.delete(id);
      showProblem(err, f, out);
    }
  });
  return form;
}

function clusterSection(ctx, c) {
  const members = [...(backends.get(c.name) || new Map()).values()].sort((a, b) => a.name.localeCompare(b.name));
  const lb = c.load_balancer?.type || "round_robin";
  return h(
    "section",
    { class: "card", id: `cluster-${slug(c.name)}`, "aria-labelledby": `cluster-${slug(c.name)}-title`, dataset: { cluster: c.name } },
    h("h3", { id: `cluster-${slug(c.name)}-title` }, `Cluster ${c.name}`, h("span", { class: "muted" }, ` ${lb}, r${c.revision}`)),
    policyList(`cpolicy-${slug(c.name)}`, clusterPolicy(c)),
    h("p", { class: "health", id: `health-${slug(c.name)}`, dataset: { cluster: c.name } }),
    table(
      `Backends of ${c.name}`,
      ["Backend", "Address", "Health", "Weight", "Zone", "Priority", "Admin state", ""],
      members.map((b) => backendRow(ctx, c.name, b)),
    ),
    moreBackends.has(c.name) ? h("p", { class: "muted" }, `The first ${BACKENDS_PAGE} backends (the API lists the rest).`) : null,
    addForm(ctx, c.name),
  );
}

// -- what the Envoys see of each backend ----------------------------------------------------

const backendsPath = (cluster) => `/v1/clusters/${encodeURIComponent(cluster)}/backends`;
const HEALTH_EVERY = 2000; // at most one health fetch per cluster on screen per 2 s
const HEALTH_STALE = 10000; // ... and one at least this often while node events come in
// cluster -> {byName: Map(backend -> health), at: ms of the last fetch, sig, timer, busy, again}
const health = new Map();
const onScreen = new Set(); // clusters whose section is on screen
let observer = null;

function healthEntry(cluster) {
  let e = health.get(cluster);
  if (!e) health.set(cluster, (e = { byName: new Map(), at: 0, sig: null, timer: null, busy: false, again: false }));
  return e;
}

// What the node events say about a cluster's backends: a health fetch is due when it changes.
function signature(ctx, cluster) {
  const nodes = [...ctx.state.nodes.values()].sort((a, b) => a.node_id.localeCompare(b.node_id));
  return JSON.stringify(nodes.map((n) => [n.node_id, n.acked_revision || 0, typeof n.hosts_at === "number", n.hosts?.[cluster] || null]));
}

function keepHealth(cluster, items, sig) {
  const e = healthEntry(cluster);
  e.byName = new Map();
  for (const b of items) {
    if (b.health) e.byName.set(b.name, b.health);
    delete b.health; // the intent objects stay intent; health lives here
  }
  e.at = Date.now();
  e.sig = sig;
}

async function fetchHealth(ctx, cluster) {
  const e = healthEntry(cluster);
  if (e.busy) {
    e.again = true;
    return;
  }
  e.busy = true;
  const sig = signature(ctx, cluster);
  e.at = Date.now();
  try {
    const doc = await request("GET", backendsPath(cluster), { params: { health: "true", limit: BACKENDS_PAGE } });
    keepHealth(cluster, doc.items, sig);
  } catch {
    // The cluster may be gone (its intent event redraws) or the API away: keep the last.
  }
  e.busy = false;
  drawHealth(ctx, cluster);
  if (e.again) {
    e.again = false;
    wantHealth(ctx, cluster);
  }
}

// Fetch a cluster's health soon: now if the last fetch is 2 s old, else when it will be.
function wantHealth(ctx, cluster) {
  const e = healthEntry(cluster);
  if (e.timer) return;
  e.timer = setTimeout(() => {
    e.timer = null;
    fetchHealth(ctx, cluster);
  }, Math.max(0, e.at + HEALTH_EVERY - Date.now()));
}

function maybeRefresh(ctx, cluster) {
  const e = healthEntry(cluster);
  if (e.sig !== signature(ctx, cluster) || Date.now() - e.at > HEALTH_STALE) wantHealth(ctx, cluster);
}

function watchScreen(ctx) {
  if (observer) observer.disconnect();
  onScreen.clear();
  observer = new IntersectionObserver((entries) => {
    for (const en of entries) {
      const cluster = en.target.dataset.cluster;
      if (en.isIntersecting) {
        onScreen.add(cluster);
        maybeRefresh(ctx, cluster);
      } else onScreen.delete(cluster);
    }
  });
  for (const el of body.querySelectorAll("section[data-cluster]")) observer.observe(el);
}

const STATE_TEXT = {
  healthy: "healthy",
  failing: "failing",
  ejected: "ejected",
  degraded: "degraded",
  draining: "draining",
  pending: "pending",
  unknown: "unknown",
  mixed: "mixed",
};
const STATE_HELP = {
  healthy: "every Envoy that reports it sees it healthy",
  failing: "its active health check fails",
  ejected: "outlier detection ejected it",
  degraded: "it reports itself degraded",
  draining: "being drained",
  pending: "not checked yet",
  unknown: "no Envoy reports it",
  mixed: "the Envoys disagree",
};

function badge(cluster, b) {
  const id = `bhealth-${slug(cluster)}-${slug(b.name)}`;
  const hl = healthEntry(cluster).byName.get(b.name);
  if (!hl) {
    const why = "not read yet: it is read for the clusters on screen, again as the Envoys' reports change";
    return h("span", { id, class: "badge", dataset: { state: "none" }, title: why }, "-");
  }
  const per = Object.entries(hl.envoys || {}).sort(([a], [c]) => a.localeCompare(c));
  const title = `${STATE_HELP[hl.state] || hl.state}${per.length ? `: ${per.map(([n, st]) => `${n} ${st}`).join(", ")}` : ""}`;
  const out = [h("span", { id, class: `badge hstate-${hl.state}`, dataset: { state: hl.state }, title }, STATE_TEXT[hl.state] || hl.state)];
  if (hl.state === "mixed") {
    // Who sees what: each Envoy for a few, counts for many.
    const detail = per.length <= 6
      ? per.map(([n, st]) => `${n} ${st}`).join(" · ")
      : Object.entries(hl.counts || {}).map(([st, k]) => `${k} ${st}`).join(" · ");
    out.push(h("span", { class: "hdetail", id: `${id}-detail` }, detail));
  }
  return h("span", { class: "health-cell" }, out);
}

function drawHealth(ctx, cluster) {
  for (const b of (backends.get(cluster) || new Map()).values()) {
    const cell = document.getElementById(`bcell-${slug(cluster)}-${slug(b.name)}`);
    if (cell) replace(cell, badge(cluster, b));
  }
}

// The backend at an Envoy's host address ("127.0.0.1:8080"), if the intent is loaded.
export function backendAt(cluster, address) {
  for (const b of (backends.get(cluster) || new Map()).values()) {
    if (`${b.address}:${b.port}` === address || `[${b.address}]:${b.port}` === address) return b.name;
  }
  return null;
}

const BAD = new Set(["failing", "ejected"]);

// What the Envoys see of a cluster's hosts (their health checks and outlier ejections), from
// the live load each replica reads off its Envoys and the hosts each does not see healthy.
function healthLine(ctx, cluster) {
  const nodes = [...ctx.state.nodes.values()].sort((a, b) => a.node_id.localeCompare(b.node_id));
  const reporting = nodes.filter((n) => n.load?.clusters || typeof n.hosts_at === "number");
  if (!reporting.length) return { text: "Envoy health: not reported (no Envoy's load is read)", level: "" };
  let level = "";
  const said = [];
  for (const n of reporting) {
    const d = n.load?.clusters?.degraded?.[cluster];
    const hosts = Object.entries(n.hosts?.[cluster] || {}).sort(([a], [b]) => a.localeCompare(b));
    if (!d && !hosts.length) continue;
    level ||= "warn";
    let text = d ? `${n.node_id} sees ${d.healthy} of ${d.total} hosts healthy` : `${n.node_id} sees hosts not healthy`;
    if (hosts.length) {
      text += `: ${hosts.map(([addr, st]) => `${backendAt(cluster, addr) || addr} ${st}`).join(", ")}`;
      if (hosts.some(([, st]) => BAD.has(st))) level = "bad";
    }
    said.push(text);
  }
  if (said.length) return { text: `Envoy health: ${said.join("; ")}`, level };
  if (!backends.get(cluster)?.size) return { text: "Envoy health: no backends", level: "" };
  return { text: `Envoy health: every host healthy on ${reporting.length} Envoy${reporting.length > 1 ? "s" : ""}`, level: "" };
}

// Node events: only the health lines and badges change, so the forms being typed into stay
// as they are; the clusters on screen fetch their backends' health again when it is due.
export function updateHealth(ctx) {
  for (const el of document.querySelectorAll("#intent-body .health")) {
    const { text, level } = healthLine(ctx, el.dataset.cluster);
    el.textContent = text;
    el.classList.toggle("warn", level === "warn");
    el.classList.toggle("bad", level === "bad");
  }
  for (const cluster of onScreen) maybeRefresh(ctx, cluster);
}

function expiry(cert) {
  if (cert.expires_in_seconds === undefined) return "-";
  const days = Math.floor(cert.expires_in_seconds / 86400);
  const cls = days < 14 ? "bad" : days < 30 ? "warn" : "ok";
  return h("span", { class: cls }, `${cert.not_after} (${days} days)`);
}

const TITLES = { clusters: "Clusters", listeners: "Listeners", routes: "Routes", certificates: "Certificates" };

// Previous / next page of a kind, as the API pages it.
function pagerNav(ctx, kind) {
  const p = pages[kind];
  if (!p.back.length && !p.next) return null;
  const go = (token, back) => () => {
    p.back = back;
    loadPage(ctx, kind, token);
  };
  const first = p.items.size ? `${p.first} … ${p.last}` : "none";
  return h(
    "nav",
    { class: "toolbar pager", id: `${kind}-pager`, "aria-label": `Pages of ${kind}` },
    h("button", { type: "button", class: "secondary", id: `${kind}-prev`, disabled: !p.back.length, onclick: go(p.back[p.back.length - 1], p.back.slice(0, -1)) }, `Previous ${kind}`),
    h("span", { class: "muted", id: `${kind}-page` }, `page ${p.back.length + 1}: ${first}`),
    h("button", { type: "button", class: "secondary", id: `${kind}-next`, disabled: !p.next, onclick: go(p.next, [...p.back, p.token]) }, `Next ${kind}`),
  );
}

const sorted = (kind) => [...pages[kind].items.values()].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));

const ROWS = {
  listeners: ["Listener", "Address", "Protocol", "TLS", "Max connections", "Logs and tracing"],
  routes: ["Route", "Listener", "Domains", "Backends", "Hash policies", "Policy"],
  certificates: ["Certificate", "Subject", "Names", "Expires"],
};
// Listeners and routes become one card per row on a narrow screen (console.css), as the fleet does.
const TABLE_ATTRS = { listeners: { class: "cards" }, routes: { class: "cards" }, certificates: {} };

// -- traffic policy, one line per policy (docs/api.md, "Traffic policy") ----------------------

const list = (xs) => (xs || []).join(", ");
const origin = (o) => (typeof o === "string" ? o : `/${o.regex}/`);

function headerChanges(c) {
  const out = [];
  if (c.set && Object.keys(c.set).length) out.push(`set ${list(Object.keys(c.set))}`);
  if (c.add && Object.keys(c.add).length) out.push(`add ${list(Object.keys(c.add))}`);
  if (c.remove?.length) out.push(`remove ${list(c.remove)}`);
  return out.join("; ");
}

function redirectText(d) {
  const where = `${d.scheme ? `${d.scheme}://` : ""}${d.host || ""}${d.port ? `:${d.port}` : ""}`;
  const path = d.path ? d.path : d.prefix ? `${d.prefix}… (prefix)` : "";
  return `redirect ${d.status} → ${where}${path}` + (where || path ? "" : "the same URL") + (d.strip_query ? ", query dropped" : "");
}

// [key, text] for each policy a route has.
export function routePolicy(r) {
  const out = [];
  if (r.redirect) out.push(["redirect", redirectText(r.redirect)]);
  if (r.direct_response) {
    const d = r.direct_response;
    out.push(["direct_response", `answered by Envoy: ${d.status} ${d.content_type}, ${new TextEncoder().encode(d.body || "").length} bytes`]);
  }
  if (r.retries) {
    const t = r.retries;
    let text = `retries ${t.attempts} on ${list(t.on)}`;
    if (t.status_codes?.length) text += ` (${list(t.status_codes)})`;
    if (t.per_try_timeout) text += `, ${t.per_try_timeout} per try`;
    if (t.backoff) text += `, back-off ${t.backoff.base}${t.backoff.max ? `-${t.backoff.max}` : ""}`;
    out.push(["retries", text]);
  }
  if (r.rewrite) {
    const w = r.rewrite;
    const parts = [];
    if (w.prefix !== null && w.prefix !== undefined) parts.push(`prefix → ${w.prefix}`);
    if (w.regex) parts.push(`${w.regex.pattern} → ${w.regex.substitution}`);
    if (w.host) parts.push(`host → ${w.host}`);
    out.push(["rewrite", `rewrite ${parts.join(", ")}`]);
  }
  if (r.request_headers) out.push(["request_headers", `request headers: ${headerChanges(r.request_headers)}`]);
  if (r.response_headers) out.push(["response_headers", `response headers: ${headerChanges(r.response_headers)}`]);
  if (r.mirror?.length) out.push(["mirror", `mirror ${r.mirror.map((m) => `${m.percent}% to ${m.cluster}`).join(", ")}`]);
  if (r.fault) {
    const f = [];
    if (r.fault.delay) f.push(`delay ${r.fault.delay.duration} on ${r.fault.delay.percent}%`);
    if (r.fault.abort) f.push(`abort ${r.fault.abort.status} on ${r.fault.abort.percent}%`);
    out.push(["fault", `fault: ${f.join(", ")}`]);
  }
  if (r.cors) {
    const c = r.cors;
    out.push(["cors", `CORS ${c.allow_origins.map(origin).join(", ")}${c.allow_credentials ? ", with credentials" : ""}`]);
  }
  if (r.rate_limit) {
    const l = r.rate_limit;
    let text = `rate limit ${l.requests}/${l.per}`;
    if (l.burst) text += ` + ${l.burst} burst`;
    if (l.key) text += l.key.header ? ` per ${l.key.header}` : " per client address";
    text += l.scope === "fleet" ? ", fleet-wide (divided over the Envoys)" : ", per Envoy";
    out.push(["rate_limit", text]);
  }
  return out;
}

export function clusterPolicy(c) {
  const out = [];
  if (c.slow_start) {
    const s = c.slow_start;
    out.push(["slow_start", `slow start over ${s.window}, aggression ${s.aggression}, from ${s.min_weight_percent}%`]);
  }
  const budget = c.circuit_breakers?.retry_budget;
  if (budget) out.push(["retry_budget", `retry budget ${budget.percent}% of active requests, at least ${budget.min_concurrency}`]);
  return out;
}

export function listenerPolicy(l) {
  const out = [];
  if (l.access_log) {
    const a = l.access_log;
    out.push(["access_log", `access log ${a.format}${a.format === "json" ? ` (${Object.keys(a.fields || {}).length} fields)` : ""} → ${a.path}`]);
  }
  if (l.tracing) {
    const t = l.tracing;
    const to = t.cluster ? `cluster ${t.cluster}` : `${t.collector.address}:${t.collector.port}`;
    out.push(["tracing", `tracing ${t.sampling_percent}% → ${to} as ${t.service_name}`]);
  }
  return out;
}

function policyList(id, items) {
  if (!items.length) return null;
  return h("ul", { class: "plain policy", id }, items.map(([key, text]) => h("li", { dataset: { policy: key } }, text)));
}

const policyCell = (id, items) => h("td", { class: "policy" }, policyList(id, items) || "-");

function hashText(p) {
  if (p.type === "path") return p.query === false ? "path (no query)" : "path";
  return `${p.type}${p.name ? ` ${p.name}` : ""}`;
}

function row(kind, x) {
  const cells = {
    listeners: (l) => [h("td", {}, `${l.address}:${l.port}`), h("td", {}, l.protocol), h("td", {}, l.tls ? l.tls.certificates.join(", ") : "-"),
      h("td", { class: "n" }, l.max_connections ?? "-"), policyCell(`lpolicy-${slug(l.name)}`, listenerPolicy(l))],
    routes: (r) => [h("td", {}, r.listener), h("td", {}, (r.domains || []).join(", ")),
      h("td", {}, r.backends.length ? r.backends.map((b) => `${b.cluster}${b.weight ? ` (${b.weight})` : ""}`).join(", ") : "- (answered by Envoy)"),
      h("td", {}, (r.hash_policies || []).map(hashText).join(", ") || "-"),
      policyCell(`rpolicy-${slug(r.name)}`, routePolicy(r))],
    certificates: (c) => [h("td", {}, c.subject || "-"), h("td", {}, (c.sans || []).join(", ")), h("td", {}, expiry(c))],
  }[kind](x);
  const tr = h("tr", { id: `${kind}-row-${slug(x.name)}` }, h("th", { scope: "row" }, x.name), cells);
  [...tr.children].forEach((cell, i) => (cell.dataset.label = ROWS[kind][i]));
  return tr;
}

function drawKind(ctx, kind) {
  const el = document.getElementById(`intent-${kind}`);
  if (!el || !pages[kind].loaded) return;
  if (kind === "clusters") {
    const clusters = sorted(kind);
    replace(el, pagerNav(ctx, kind), clusters.length ? clusters.map((c) => clusterSection(ctx, c)) : h("p", { class: "empty" }, "No clusters yet."));
  } else {
    replace(el, table(TITLES[kind], ROWS[kind], sorted(kind).map((x) => row(kind, x)), TABLE_ATTRS[kind]), pagerNav(ctx, kind));
  }
}

// Swap one element for a new one; false when it is not on the page (its table is drawn).
function swap(id, make) {
  const old = document.getElementById(id);
  if (!old) return false;
  old.replaceWith(make());
  return true;
}

function drawOne(ctx, what) {
  const [type, a, b] = what.split("\0");
  if (type === "cluster") {
    const c = pages.clusters.items.get(a);
    if (c) swap(`cluster-${slug(a)}`, () => clusterSection(ctx, c));
  } else if (type === "backend") {
    const m = backends.get(a)?.get(b);
    if (m && !swap(`backend-${slug(a)}-${slug(b)}`, () => backendRow(ctx, a, m))) dirty.add(`cluster\0${a}`);
  } else if (type === "row") {
    const x = pages[a].items.get(b);
    if (x && !swap(`${a}-row-${slug(b)}`, () => row(a, x))) dirty.add(a);
  }
}

// Draw what changed since the last update (a kind's page, one cluster, one row), and the
// rollout of each write the operator made here.
export function update(ctx) {
  if (!body) return;
  let clustersDrawn = false;
  keepFocus(() => {
    for (let pass = 0; pass < 2 && dirty.size; pass++) {
      const work = [...dirty];
      dirty.clear();
      for (const kind of KINDS) {
        if (!work.includes(kind)) continue;
        drawKind(ctx, kind);
        clustersDrawn ||= kind === "clusters";
      }
      for (const what of work) {
        if (KINDS.includes(what)) continue;
        if (what.startsWith("cluster\0") && work.includes("clusters")) continue;
        if (what.startsWith("backend\0") && (work.includes("clusters") || work.includes(`cluster\0${what.split("\0")[1]}`))) continue;
        if (what.startsWith("row\0") && work.includes(what.split("\0")[1])) continue;
        drawOne(ctx, what);
        clustersDrawn ||= what.startsWith("cluster\0");
      }
    }
  });
  for (const [id, st] of status) {
    const el = document.getElementById(`${id}-status`);
    if (el) el.replaceWith(statusLine(ctx, id));
  }
  if (clustersDrawn) watchScreen(ctx);
  updateHealth(ctx);
}
