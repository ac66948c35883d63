// Fleet: every connected Envoy, live, with drain / undrain / evacuate (each confirmed in a
// dialog first) and per-fleet rebalance; per fleet, whether its load is even and whether its
// Envoys agree on which upstream hosts are healthy.

import { listAll, request } from "../api.js";
import { confirmWrite } from "../dialog.js";
import { ago, h, keepFocus, num, pct, replace, slug, table, writeButton } from "../dom.js";
import { backendAt } from "./intent.js";

let root;
let body;
let rate;
// The Fleet intent objects (`/v1/fleets`): each fleet's floor and rebalance tolerance.
const fleetObjects = new Map();
let fleetsLoaded = false;
// When each disagreement between Envoys was first seen ("fleet\0cluster\0address" -> ms).
const disagreeSince = new Map();

const DEFAULT_TOLERANCE = 10; // Rebalance.tolerance_percent
const DEFAULT_FLOOR = 1; // Fleet.min_in_service
// The front states that put an Envoy in front of clients (controlplane/frontdoor/render.py).
export const SERVING = new Set(["in", "kept-full"]);

export function mount(el, ctx) {
  root = el;
  rate = h("input", { id: "evacuate-rate", type: "number", min: "1", max: "1000000", value: "100", inputmode: "numeric" });
  body = h("div", { id: "fleet-body" });
  replace(
    root,
    h("h2", {}, "Fleet"),
    h(
      "p",
      { class: "toolbar" },
      h("label", { for: "evacuate-rate" }, "Evacuation rate (connections/s) "),
      rate,
    ),
    body,
  );
  if (!fleetsLoaded) loadFleets(ctx);
}

async function loadFleets(ctx) {
  try {
    const items = await listAll("/v1/fleets");
    fleetObjects.clear();
    for (const f of items) fleetObjects.set(f.name, f);
    fleetsLoaded = true;
  } catch (err) {
    ctx.notify(`Loading fleets: ${err.title}: ${err.message}`, "error");
  }
  update(ctx);
}

// Intent events: a Fleet object written or deleted.
export function apply(ctx, ev) {
  for (const c of ev.changes) {
    if (c.kind !== "fleet") continue;
    if (c.deleted) fleetObjects.delete(c.name);
    else fleetObjects.set(c.name, c.object);
  }
}

const tolerance = (fleet) => fleetObjects.get(fleet)?.rebalance?.tolerance_percent ?? DEFAULT_TOLERANCE;
const floor = (fleet) => fleetObjects.get(fleet)?.min_in_service ?? DEFAULT_FLOOR;

const round = (x) => (Number.isInteger(x) ? String(x) : x.toFixed(1));

const shortType = (t) => t.split(".").pop().replace("Configuration", "").replace("ClusterLoadAssignment", "EDS");

function acked(ctx, n) {
  const r = n.acked_revision || 0;
  const latest = ctx.state.intentRevision;
  return r >= latest ? h("span", { class: "ok" }, `r${r} (latest)`) : h("span", { class: "warn" }, `r${r} of r${latest}`);
}

function nacks(n) {
  const list = Object.entries(n.types || {})
    .filter(([, st]) => st.last_nack && st.last_nack.revision > (n.acked_revision || 0))
    .map(([t, st]) => h("li", {}, h("strong", {}, shortType(t)), ": ", st.last_nack.message));
  return list.length ? h("ul", { class: "nacks" }, list) : "-";
}

// Why an Envoy is (not) in front of clients, in words. A drain is the operator's choice:
// informational, never an alarm.
const FRONT = {
  in: "in service",
  drained: "drained by operator",
  unconfigured: "not configured yet",
  behind: "behind the latest intent",
  rejected: "rejected its config",
  unverified: "front address unverified",
  unhealthy: "front health check failing",
  full: "full (at high water)",
  "kept-full": "in service, full (kept by the fleet's floor)",
};

function front(n) {
  return [
    FRONT[n.front_state] || n.front_state,
    n.drain?.reason ? h("span", { class: "muted" }, ` (${n.drain.reason})`) : null,
  ];
}

function health(n) {
  const fh = n.front_health || {};
  if (n.draining) {
    // A drained Envoy's /healthz fails on purpose: that is how it leaves the front door.
    if (!fh.probed) return h("span", { class: "info" }, "drained (not probed)");
    return fh.ok
      ? h("span", { class: "info" }, "withdrawing (drained)")
      : h("span", { class: "info" }, "withdrawn (drained)");
  }
  if (!fh.probed) return "not probed";
  return fh.ok ? h("span", { class: "ok" }, "passing") : h("span", { class: "bad" }, "failing");
}

function moving(n) {
  const e = n.evacuation;
  if (!e) return n.draining && n.drain?.evacuate ? "starting" : "-";
  return `${e.state}: ${e.remaining ?? "?"} left at ${num(e.rate, 0)}/s`;
}

async function act(ctx, what, fn) {
  try {
    await fn();
    ctx.notify("");
  } catch (err) {
    ctx.notify(`${what}: ${err.title}: ${err.message}`, "error");
  }
}

const nodePath = (id) => `/v1/fleet/${encodeURIComponent(id)}/drain`;

function inService(ctx, fleet) {
  return [...ctx.state.nodes.values()].filter((x) => x.fleet === fleet && SERVING.has(x.front_state));
}

// What a drain (or evacuation) will do, said before it is done.
function confirmDrain(ctx, n, evacuate) {
  const id = slug(n.node_id);
  const perSecond = Number(rate.value);
  const conns = n.load?.connections;
  const here = inService(ctx, n.fleet);
  const after = here.filter((x) => x.node_id !== n.node_id).length;
  const body = [];
  if (!n.draining) {
    body.push(
      h("p", {}, h("strong", {}, n.node_id), " leaves the front door: the DNS answer, anycast and L4 renders stop sending it new clients.",
        evacuate ? "" : " Its connections stay: the clients it holds are served until they leave by themselves."),
    );
  }
  if (evacuate) {
    const count = conns === undefined ? "its connections" : `its ${conns} connection${conns === 1 ? "" : "s"}`;
    const time = conns ? ` (about ${Math.max(1, Math.ceil(conns / perSecond))} s)` : "";
    body.push(h("p", { id: "confirm-evacuation" },
      `The evacuation then closes ${count} at ${perSecond}/s${time}; their clients reconnect to the other Envoys of fleet ${n.fleet}.`));
  }
  if (!n.draining) {
    body.push(h("p", { class: "muted" },
      `Fleet ${n.fleet}: ${here.length} Envoy${here.length === 1 ? "" : "s"} in service now, ${after} after this; its floor is ${floor(n.fleet)} (min_in_service).`));
  }
  const what = evacuate ? (n.draining ? "Evacuate" : "Drain and evacuate") : "Drain";
  confirmWrite({
    title: `${what} ${n.node_id}?`,
    body,
    confirm: what,
    focus: [evacuate ? `evacuate-${id}` : `toggle-${id}`, `toggle-${id}`],
    override: {
      code: "min-in-service",
      label: `${what} anyway`,
      note: (p) =>
        `Nothing was drained. “${what} anyway” drains ${n.node_id} all the same and leaves fleet ${p.fleet || n.fleet} ` +
        `below its floor of ${p.min_in_service ?? floor(n.fleet)} Envoy${(p.min_in_service ?? floor(n.fleet)) === 1 ? "" : "s"} in service.`,
    },
    send: (force) =>
      request("POST", nodePath(n.node_id), {
        params: force ? { force: "true" } : {},
        body: {
          ...(n.draining ? {} : { reason: "console" }),
          ...(evacuate ? { evacuate: { connections_per_second: perSecond } } : {}),
        },
      }),
  });
}

// Drain and Undrain share an id, so the keyboard stays on the button as it turns into the other.
function actions(ctx, n) {
  const id = slug(n.node_id);
  if (n.draining) {
    return h(
      "div",
      { class: "actions" },
      writeButton(ctx, "Undrain", { id: `toggle-${id}`, "aria-label": `Undrain ${n.node_id}` }, () =>
        act(ctx, `undrain ${n.node_id}`, () => request("DELETE", nodePath(n.node_id))),
      ),
      n.evacuation || n.drain?.evacuate
        ? null
        : writeButton(ctx, "Evacuate", { id: `evacuate-${id}`, "aria-label": `Evacuate ${n.node_id}` }, () =>
            confirmDrain(ctx, n, true),
          ),
    );
  }
  return h(
    "div",
    { class: "actions" },
    writeButton(ctx, "Drain", { id: `toggle-${id}`, "aria-label": `Drain ${n.node_id}` }, () => confirmDrain(ctx, n, false)),
    writeButton(ctx, "Evacuate", { id: `evacuate-${id}`, "aria-label": `Drain and evacuate ${n.node_id}` }, () =>
      confirmDrain(ctx, n, true),
    ),
  );
}

function row(ctx, n) {
  const load = n.load || {};
  const c = (col, attrs, ...children) => h("td", { ...attrs, dataset: { col } }, ...children);
  return h(
    "tr",
    { id: `node-${slug(n.node_id)}`, dataset: { node: n.node_id, front: n.front_state } },
    h("th", { scope: "row", dataset: { col: "node" } }, n.node_id),
    c("fleet", {}, n.fleet),
    c("replica", {}, n.replica, h("span", { class: "muted" }, ` ${n.protocol || ""}`)),
    c("connected", { title: n.connected_since ? new Date(n.connected_since * 1000).toISOString() : "" }, ago(n.connected_since)),
    c("acked", {}, acked(ctx, n)),
    c("nacks", {}, nacks(n)),
    c("front", { class: `front front-${n.front_state} wrap`, title: n.drain?.reason ? `drained: ${n.drain.reason}` : "" }, front(n)),
    c("health", { class: "wrap" }, health(n)),
    c("conns", { class: "n" }, load.connections ?? "-"),
    c("new", { class: "n" }, num(load.connections_per_second)),
    c("tls", { class: "n" }, num(load.tls_handshakes_per_second)),
    c("h2", { class: "n" }, load.http2_streams ?? "-"),
    c("headroom", { class: "n" }, load.headroom === undefined ? "-" : pct(load.headroom, 0)),
    c("moving", {}, moving(n)),
    c("actions", {}, actions(ctx, n)),
  );
}

// Uneven load, as the rebalancer sees it: the fleet's Envoys in front of clients, an Envoy
// more than the tolerance above their mean of connections.
export function balance(nodes, tol) {
  const members = nodes.filter(
    (n) => !n.draining && (SERVING.has(n.front_state) || n.front_state === "full") && typeof n.load?.connections === "number",
  );
  if (members.length < 2) return { known: false, members: members.length };
  const mean = members.reduce((s, n) => s + n.load.connections, 0) / members.length;
  const over = members
    .filter((n) => mean > 0 && n.load.connections > mean * (1 + tol / 100))
    .map((n) => ({ node: n.node_id, connections: n.load.connections, above: (n.load.connections - mean) / mean }))
    .sort((a, b) => b.above - a.above);
  return { known: true, mean, over, members: members.length };
}

function balanceCell(name, b, tol) {
  const id = `balance-${slug(name)}`;
  if (!b.known) {
    return h("span", { id, class: "muted", dataset: { uneven: "false" }, title: "fewer than 2 Envoys in service with a load sample" }, "-");
  }
  if (!b.over.length) {
    const what = b.mean > 0 ? `within ${tol}% of the mean of ${round(b.mean)} connections` : "no connections";
    return h("span", { id, class: "ok", dataset: { uneven: "false" } }, `even (${what})`);
  }
  const worst = b.over
    .slice(0, 3)
    .map((o) => `${o.node} has ${o.connections} (${Math.round(o.above * 100)}% above)`)
    .join(", ");
  const more = b.over.length > 3 ? ` and ${b.over.length - 3} more` : "";
  return h(
    "span",
    { id, class: "warn", dataset: { uneven: "true" } },
    `unevenly loaded: ${worst}${more}; the mean is ${round(b.mean)} connections, the tolerance ${tol}%`,
  );
}

function fleets(ctx, nodes) {
  const by = new Map();
  for (const n of nodes) {
    const f = by.get(n.fleet) || { nodes: [], in: 0, connections: 0 };
    f.nodes.push(n);
    f.in += SERVING.has(n.front_state) ? 1 : 0;
    f.connections += n.load?.connections || 0;
    by.set(n.fleet, f);
  }
  for (const name of Object.keys(ctx.state.rebalances)) if (!by.has(name)) by.set(name, { nodes: [], in: 0, connections: 0 });
  return [...by.entries()]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([name, f]) => {
      const st = ctx.state.rebalances[name];
      const progress = st ? `${st.state}: ${st.moved || 0} moved, ${st.remaining || 0} over the mean` : "-";
      const tol = tolerance(name);
      const low = f.in < floor(name);
      return h(
        "tr",
        { id: `fleet-${slug(name)}` },
        h("th", { scope: "row" }, name),
        h("td", { class: "n" }, f.nodes.length),
        h("td", { class: low ? "n warn" : "n", id: `inservice-${slug(name)}` }, `${f.in} (floor ${floor(name)})`),
        h("td", { class: "n" }, f.connections),
        h("td", { class: "wrap" }, balanceCell(name, balance(f.nodes, tol), tol)),
        h("td", { class: "wrap" }, progress),
        h(
          "td",
          {},
          writeButton(ctx, "Rebalance", { id: `rebalance-${slug(name)}`, "aria-label": `Rebalance fleet ${name}` }, () =>
            act(ctx, `rebalance ${name}`, () => request("POST", `/v1/fleets/${encodeURIComponent(name)}/rebalance`, { body: {} })),
          ),
        ),
      );
    });
}

// Envoys of one fleet that see the same upstream host differently (each Envoy's `hosts`:
// the hosts it does not see as healthy, per cluster; a host it does not list is healthy).
export function disagreements(nodes) {
  const sampled = nodes.filter((n) => typeof n.hosts_at === "number").sort((a, b) => a.node_id.localeCompare(b.node_id));
  if (sampled.length < 2) return [];
  const keys = new Map();
  for (const n of sampled) {
    for (const [cluster, hosts] of Object.entries(n.hosts || {})) {
      for (const address of Object.keys(hosts || {})) keys.set(`${cluster}\u0000${address}`, { cluster, address });
    }
  }
  const out = [];
  for (const { cluster, address } of keys.values()) {
    const states = sampled.map((n) => ({ node: n.node_id, state: n.hosts?.[cluster]?.[address] || "healthy" }));
    if (new Set(states.map((s) => s.state)).size > 1) out.push({ cluster, address, states });
  }
  return out.sort((a, b) => a.cluster.localeCompare(b.cluster) || a.address.localeCompare(b.address));
}

const MAX_LISTED = 20;

function disagreementSection(name, list) {
  const now = Date.now();
  const keys = new Set(list.map((d) => `${name}\u0000${d.cluster}\u0000${d.address}`));
  for (const k of disagreeSince.keys()) if (k.startsWith(`${name}\u0000`) && !keys.has(k)) disagreeSince.delete(k);
  if (!list.length) return null;
  const items = list.slice(0, MAX_LISTED).map((d) => {
    const k = `${name}\u0000${d.cluster}\u0000${d.address}`;
    if (!disagreeSince.has(k)) disagreeSince.set(k, now);
    const backend = backendAt(d.cluster, d.address);
    return h(
      "li",
      { dataset: { cluster: d.cluster, address: d.address } },
      h("strong", {}, `${d.cluster} ${d.address}`),
      backend ? ` (${backend})` : "",
      ": ",
      d.states.flatMap((s, i) => [i ? ", " : "", `${s.node} `, h("span", { class: `hstate hstate-${s.state}` }, s.state)]),
      h("span", { class: "muted" }, ` (for ${ago(disagreeSince.get(k) / 1000).replace(" ago", "")})`),
    );
  });
  return h(
    "section",
    { class: "card alert-card", id: `disagree-${slug(name)}`, "aria-labelledby": `disagree-${slug(name)}-title` },
    h("h3", { id: `disagree-${slug(name)}-title` },
      `Envoys of fleet ${name} disagree about ${list.length} upstream host${list.length === 1 ? "" : "s"}`),
    h("p", { class: "muted" }, "Each Envoy's own health checks and outlier detection; a host an Envoy does not list is healthy to it."),
    h("ul", { class: "plain disagree" }, items, list.length > MAX_LISTED ? h("li", { class: "muted" }, `and ${list.length - MAX_LISTED} more`) : null),
  );
}

export function update(ctx) {
  if (!body) return;
  const nodes = [...ctx.state.nodes.values()].sort((a, b) => (a.fleet + a.node_id).localeCompare(b.fleet + b.node_id));
  const gone = Object.keys(ctx.state.drained).filter((id) => !ctx.state.nodes.has(id));
  const names = [...new Set(nodes.map((n) => n.fleet))].sort();
  keepFocus(() =>
    replace(
      body,
      table("Fleets", ["Fleet", "Envoys", "In service", "Connections", "Load", "Rebalance", ""], fleets(ctx, nodes),
        { id: "fleets-table", class: "cards" }),
      names.map((name) => disagreementSection(name, disagreements(nodes.filter((n) => n.fleet === name)))),
      nodes.length
        ? table(
            `Envoys (${nodes.length})`,
            ["Node", "Fleet", "Replica", "Connected", "Acked", "NACKs", "Front", "Health",
             "Conns", "New/s", "TLS/s", "H2", "Headroom", "Moving", "Actions"],
            nodes.map((n) => row(ctx, n)),
            { id: "fleet-table", class: "cards" },
          )
        : h("p", { class: "empty" }, "No Envoy is connected to any xDS replica."),
      gone.length ? h("p", { class: "muted" }, `Drained but not connected: ${gone.join(", ")}`) : null,
    ),
  );
}
