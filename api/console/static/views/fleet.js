// Fleet: every connected Envoy, live, with drain / undrain / evacuate and per-fleet rebalance.

import { request } from "../api.js";
import { ago, h, keepFocus, num, pct, replace, slug, table, writeButton } from "../dom.js";

let root;
let body;
let rate;

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
}

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

function health(n) {
  const fh = n.front_health || {};
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

function actions(ctx, n) {
  const id = slug(n.node_id);
  if (n.draining) {
    return h(
      "div",
      { class: "actions" },
      writeButton(ctx, "Undrain", { id: `undrain-${id}`, "aria-label": `Undrain ${n.node_id}` }, () =>
        act(ctx, `undrain ${n.node_id}`, () => request("DELETE", nodePath(n.node_id))),
      ),
      n.evacuation || n.drain?.evacuate
        ? null
        : writeButton(ctx, "Evacuate", { id: `evacuate-${id}`, "aria-label": `Evacuate ${n.node_id}` }, () =>
            act(ctx, `evacuate ${n.node_id}`, () =>
              request("POST", nodePath(n.node_id), { body: { evacuate: { connections_per_second: Number(rate.value) } } }),
            ),
          ),
    );
  }
  return h(
    "div",
    { class: "actions" },
    writeButton(ctx, "Drain", { id: `drain-${id}`, "aria-label": `Drain ${n.node_id}` }, () =>
      act(ctx, `drain ${n.node_id}`, () => request("POST", nodePath(n.node_id), { body: { reason: "console" } })),
    ),
    writeButton(ctx, "Evacuate", { id: `evacuate-${id}`, "aria-label": `Drain and evacuate ${n.node_id}` }, () =>
      act(ctx, `evacuate ${n.node_id}`, () =>
        request("POST", nodePath(n.node_id), {
          body: { reason: "console", evacuate: { connections_per_second: Number(rate.value) } },
        }),
      ),
    ),
  );
}

function row(ctx, n) {
  const load = n.load || {};
  return h(
    "tr",
    { id: `node-${slug(n.node_id)}`, dataset: { node: n.node_id, front: n.front_state } },
    h("th", { scope: "row" }, n.node_id),
    h("td", {}, n.fleet),
    h("td", {}, n.replica, h("span", { class: "muted" }, ` ${n.protocol || ""}`)),
    h("td", { title: n.connected_since ? new Date(n.connected_since * 1000).toISOString() : "" }, ago(n.connected_since)),
    h("td", {}, acked(ctx, n)),
    h("td", {}, nacks(n)),
    h(
      "td",
      { class: `front front-${n.front_state}`, title: n.drain?.reason ? `drained: ${n.drain.reason}` : "" },
      n.front_state,
      n.drain?.reason ? h("span", { class: "muted" }, ` (${n.drain.reason})`) : null,
    ),
    h("td", {}, health(n)),
    h("td", { class: "n" }, load.connections ?? "-"),
    h("td", { class: "n" }, num(load.connections_per_second)),
    h("td", { class: "n" }, num(load.tls_handshakes_per_second)),
    h("td", { class: "n" }, load.http2_streams ?? "-"),
    h("td", { class: "n" }, load.headroom === undefined ? "-" : pct(load.headroom, 0)),
    h("td", {}, moving(n)),
    h("td", {}, actions(ctx, n)),
  );
}

function fleets(ctx, nodes) {
  const by = new Map();
  for (const n of nodes) {
    const f = by.get(n.fleet) || { nodes: 0, in: 0, connections: 0 };
    f.nodes += 1;
    f.in += n.front_state === "in" ? 1 : 0;
    f.connections += n.load?.connections || 0;
    by.set(n.fleet, f);
  }
  for (const name of Object.keys(ctx.state.rebalances)) if (!by.has(name)) by.set(name, { nodes: 0, in: 0, connections: 0 });
  return [...by.entries()].sort().map(([name, f]) => {
    const st = ctx.state.rebalances[name];
    const progress = st ? `${st.state}: ${st.moved || 0} moved, ${st.remaining || 0} over the mean` : "-";
    return h(
      "tr",
      { id: `fleet-${slug(name)}` },
      h("th", { scope: "row" }, name),
      h("td", { class: "n" }, f.nodes),
      h("td", { class: "n" }, f.in),
      h("td", { class: "n" }, f.connections),
      h("td", {}, progress),
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

export function update(ctx) {
  if (!body) return;
  const nodes = [...ctx.state.nodes.values()].sort((a, b) => (a.fleet + a.node_id).localeCompare(b.fleet + b.node_id));
  const gone = Object.keys(ctx.state.drained).filter((id) => !ctx.state.nodes.has(id));
  keepFocus(() =>
    replace(
      body,
      table("Fleets", ["Fleet", "Envoys", "In service", "Connections", "Rebalance", ""], fleets(ctx, nodes)),
      nodes.length
        ? table(
            `Envoys (${nodes.length})`,
            ["Node", "Fleet", "Replica", "Connected", "Acked", "NACKs", "Front", "Health",
             "Conns", "New/s", "TLS/s", "H2", "Headroom", "Moving", "Actions"],
            nodes.map((n) => row(ctx, n)),
            { id: "fleet-table" },
          )
        : h("p", { class: "empty" }, "No Envoy is connected to any xDS replica."),
      gone.length ? h("p", { class: "muted" }, `Drained but not connected: ${gone.join(", ")}`) : null,
    ),
  );
}
