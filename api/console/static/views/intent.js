// Intent: clusters and their backends (edit weight and state, add a backend), listeners,
// routes and certificates. Loaded once, then kept current from the intent events. Each
// backend shows what the Envoys report of it (`.../backends?health=true`), fetched again when
// node events change what the Envoys see, for the clusters on screen only.

import { ApiError, listAll, request } from "../api.js";
import { clearProblem, field, h, keepFocus, replace, showProblem, slug, table, writeButton } from "../dom.js";

const data = { loaded: false, clusters: new Map(), backends: new Map(), listeners: new Map(), routes: new Map(), certificates: new Map() };
const drafts = new Map(); // input id -> what the operator typed and has not saved
const status = new Map(); // form id -> {text, revision} shown under it
let root;
let body;

async function load(ctx) {
  try {
    const [clusters, listeners, routes, certificates] = await Promise.all(
      ["/v1/clusters", "/v1/listeners", "/v1/routes", "/v1/certificates"].map(listAll),
    );
    data.clusters = new Map(clusters.map((c) => [c.name, c]));
    data.listeners = new Map(listeners.map((x) => [x.name, x]));
    data.routes = new Map(routes.map((x) => [x.name, x]));
    data.certificates = new Map(certificates.map((x) => [x.name, x]));
    const sigs = new Map(clusters.map((c) => [c.name, signature(ctx, c.name)]));
    const lists = await Promise.all(clusters.map((c) => listAll(backendsPath(c.name), { health: "true" })));
    data.backends = new Map(clusters.map((c, i) => [c.name, new Map(lists[i].map((b) => [b.name, b]))]));
    clusters.forEach((c, i) => keepHealth(c.name, lists[i], sigs.get(c.name)));
    data.loaded = true;
  } catch (err) {
    ctx.notify(`Loading intent: ${err.title}: ${err.message}`, "error");
  }
  update(ctx);
}

// One intent event: the objects it wrote (each with the write's revision, its new ETag).
export function apply(ctx, ev) {
  if (!data.loaded) return;
  for (const c of ev.changes) {
    const obj = c.object ? { ...c.object, revision: ev.revision } : null;
    if (c.kind === "backend") {
      healthEntry(c.cluster).sig = null; // a backend changed: its health is due again
      const m = data.backends.get(c.cluster) || new Map();
      data.backends.set(c.cluster, m);
      if (c.deleted) m.delete(c.name);
      else m.set(c.name, obj);
    } else if (c.kind === "cluster" || c.kind === "listener" || c.kind === "route" || c.kind === "certificate") {
      const m = data[`${c.kind}s`];
      if (c.deleted) {
        m.delete(c.name);
        if (c.kind === "cluster") {
          data.backends.delete(c.name);
          health.delete(c.name);
        }
      } else m.set(c.name, obj);
    }
  }
}

export function mount(el, ctx) {
  root = el;
  body = h("div", { id: "intent-body" }, h("p", { class: "muted" }, "Loading ..."));
  replace(root, h("h2", {}, "Intent"), body);
  if (!data.loaded) load(ctx);
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
  const backends = [...(data.backends.get(c.name) || new Map()).values()].sort((a, b) => a.name.localeCompare(b.name));
  const lb = c.load_balancer?.type || "round_robin";
  return h(
    "section",
    { class: "card", id: `cluster-${slug(c.name)}`, "aria-labelledby": `cluster-${slug(c.name)}-title`, dataset: { cluster: c.name } },
    h("h3", { id: `cluster-${slug(c.name)}-title` }, `Cluster ${c.name}`, h("span", { class: "muted" }, ` ${lb}, r${c.revision}`)),
    h("p", { class: "health", id: `health-${slug(c.name)}`, dataset: { cluster: c.name } }),
    table(
      `Backends of ${c.name}`,
      ["Backend", "Address", "Health", "Weight", "Zone", "Priority", "Admin state", ""],
      backends.map((b) => backendRow(ctx, c.name, b)),
    ),
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
    keepHealth(cluster, await listAll(backendsPath(cluster), { health: "true" }), sig);
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
  for (const b of (data.backends.get(cluster) || new Map()).values()) {
    const cell = document.getElementById(`bcell-${slug(cluster)}-${slug(b.name)}`);
    if (cell) replace(cell, badge(cluster, b));
  }
}

// The backend at an Envoy's host address ("127.0.0.1:8080"), if the intent is loaded.
export function backendAt(cluster, address) {
  for (const b of (data.backends.get(cluster) || new Map()).values()) {
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
  if (!data.backends.get(cluster)?.size) return { text: "Envoy health: no backends", level: "" };
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

export function update(ctx) {
  if (!body || !data.loaded) return;
  const clusters = [...data.clusters.values()].sort((a, b) => a.name.localeCompare(b.name));
  const listeners = [...data.listeners.values()].sort((a, b) => a.name.localeCompare(b.name));
  const routes = [...data.routes.values()].sort((a, b) => a.name.localeCompare(b.name));
  const certs = [...data.certificates.values()].sort((a, b) => a.name.localeCompare(b.name));
  keepFocus(() =>
    replace(
      body,
      clusters.length ? clusters.map((c) => clusterSection(ctx, c)) : h("p", { class: "empty" }, "No clusters yet."),
      table(
        "Listeners",
        ["Listener", "Address", "Protocol", "TLS", "Max connections"],
        listeners.map((l) =>
          h("tr", {}, h("th", { scope: "row" }, l.name), h("td", {}, `${l.address}:${l.port}`), h("td", {}, l.protocol),
            h("td", {}, l.tls ? l.tls.certificates.join(", ") : "-"), h("td", { class: "n" }, l.max_connections ?? "-")),
        ),
      ),
      table(
        "Routes",
        ["Route", "Listener", "Domains", "Backends", "Hash policies"],
        routes.map((r) =>
          h("tr", {}, h("th", { scope: "row" }, r.name), h("td", {}, r.listener), h("td", {}, (r.domains || []).join(", ")),
            h("td", {}, r.backends.map((b) => `${b.cluster}${b.weight ? ` (${b.weight})` : ""}`).join(", ")),
            h("td", {}, (r.hash_policies || []).map((p) => `${p.type}${p.name ? ` ${p.name}` : ""}`).join(", ") || "-")),
        ),
      ),
      table(
        "Certificates",
        ["Certificate", "Subject", "Names", "Expires"],
        certs.map((c) =>
          h("tr", {}, h("th", { scope: "row" }, c.name), h("td", {}, c.subject || "-"), h("td", {}, (c.sans || []).join(", ")),
            h("td", {}, expiry(c))),
        ),
      ),
    ),
  );
  watchScreen(ctx);
  updateHealth(ctx);
}
