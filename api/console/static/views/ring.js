// Ring: a hash cluster's key-space ownership as every Envoy builds it, a what-if (remove or
// reweight backends and see the share of keys that would move) and a key lookup.

import { ApiError, request } from "../api.js";
import { h, pct, replace, slug } from "../dom.js";

let body;
let picker;
let selected = null;
let ring = null;
let result = null;
let stale = true;

const HASHING = new Set(["maglev", "ring_hash"]);
// The picker offers the hashing clusters of the API's first page of clusters (and ranks them
// by the first page of routes): a page, never every cluster of a large intent.
const LIST_PAGE = 500;
let listed = null; // {names: Set, last: name | null (null: every cluster was on the page)}

export function mount(el, ctx) {
  picker = h("select", { id: "ring-cluster", onchange: () => choose(ctx, picker.value) });
  body = h("div", { id: "ring-body" });
  replace(
    el,
    h("h2", {}, "Ring"),
    h("p", { class: "toolbar" }, h("label", { for: "ring-cluster" }, "Hash cluster "), picker),
    body,
  );
  loadClusters(ctx);
}

async function loadClusters(ctx) {
  try {
    const page = (path) => request("GET", path, { params: { limit: LIST_PAGE } });
    const [clusters, routes] = await Promise.all([page("/v1/clusters"), page("/v1/routes")]);
    const names = clusters.items.filter((c) => HASHING.has(c.load_balancer?.type)).map((c) => c.name).sort();
    const last = clusters.next_page_token && clusters.items.length ? clusters.items[clusters.items.length - 1].name : null;
    listed = { names: new Set(names), last };
    drawPicker();
    if (!names.length) {
      replace(body, h("p", { class: "empty" }, "No cluster hashes its requests (maglev or ring_hash)."));
      return;
    }
    choose(ctx, names.includes(selected) ? selected : await busiest(names, routes.items));
  } catch (err) {
    ctx.notify(`Loading clusters: ${err.message}`, "error");
  }
}

// The ring to open on: one that carries traffic, not the first name in the alphabet. First
// the clusters a route hashes requests to, then those any route sends to, then the rest;
// of those, the first with backends.
async function busiest(names, routes) {
  const rank = new Map(names.map((n) => [n, 2]));
  for (const r of routes) {
    for (const b of r.backends || []) {
      if (rank.has(b.cluster)) rank.set(b.cluster, Math.min(rank.get(b.cluster), r.hash_policies?.length ? 0 : 1));
    }
  }
  const order = [...names].sort((a, b) => rank.get(a) - rank.get(b) || a.localeCompare(b));
  for (const name of order.slice(0, 20)) {
    const doc = await request("GET", `/v1/clusters/${encodeURIComponent(name)}/backends`, { params: { limit: 1 } });
    if (doc.items.length) return name;
  }
  return order[0];
}

async function choose(ctx, name) {
  if (name !== selected) result = null;
  selected = name;
  picker.value = name;
  try {
    ring = await request("GET", `/v1/clusters/${encodeURIComponent(name)}/ring`);
    stale = false;
  } catch (err) {
    ring = null;
    ctx.notify(`Ring of ${name}: ${err.message}`, "error");
  }
  draw(ctx);
}

function drawPicker() {
  replace(picker, [...listed.names].sort().map((n) => h("option", { value: n }, n)));
  if (selected && listed.names.has(selected)) picker.value = selected;
}

// A write to the shown cluster (or its backends) redraws the ring from the API; a cluster
// that starts or stops hashing joins or leaves the picker (if its name is in the page read).
export function apply(ctx, ev) {
  let picked = false;
  for (const c of ev.changes) {
    if ((c.kind === "cluster" && c.name === selected) || (c.kind === "backend" && c.cluster === selected)) stale = true;
    if (c.kind !== "cluster" || !listed || (listed.last !== null && c.name > listed.last)) continue;
    const hashing = !c.deleted && HASHING.has(c.object?.load_balancer?.type);
    if (hashing !== listed.names.has(c.name)) {
      if (hashing) listed.names.add(c.name);
      else listed.names.delete(c.name);
      picked = true;
    }
  }
  if (picked && picker) drawPicker();
  if (picked && !selected) stale = true;
}

export function update(ctx) {
  if (stale && body) {
    stale = false;
    if (selected) choose(ctx, selected);
    else loadClusters(ctx);
  }
}

function shares() {
  return h(
    "figure",
    { class: "shares", "aria-labelledby": "ring-caption" },
    h("figcaption", { id: "ring-caption" }, `Share of the key space per backend (${ring.algorithm}, r${ring.revision})`),
    h(
      "ul",
      { class: "bars" },
      ring.backends.map((b) =>
        h(
          "li",
          { id: `share-${slug(b.name)}`, dataset: { share: b.share } },
          h("span", { class: "bar-label" }, b.name),
          h(
            "span",
            { class: "bar", role: "img", "aria-label": `${b.name}: ${pct(b.share)} of keys, ideal ${pct(b.ideal_share)}` },
            h("span", { class: "fill", style: { width: `${(b.share * 100).toFixed(2)}%` } }),
            b.ideal_share ? h("span", { class: "ideal", style: { left: `${(b.ideal_share * 100).toFixed(2)}%` } }) : null,
          ),
          h("span", { class: "bar-value" }, `${pct(b.share)} (ideal ${pct(b.ideal_share)})`),
        ),
      ),
    ),
  );
}

function whatIf(ctx) {
  const rows = ring.backends.map((b) => {
    const id = slug(b.name);
    return h(
      "tr",
      {},
      h("th", { scope: "row" }, b.name),
      h("td", {}, h("input", { type: "checkbox", id: `remove-${id}`, dataset: { backend: b.name }, "aria-label": `Remove ${b.name}` })),
      h("td", {}, h("input", { type: "number", id: `reweight-${id}`, min: "1", max: "1000000", placeholder: "same", "aria-label": `New weight of ${b.name}`, dataset: { backend: b.name } })),
    );
  });
  const out = h("div", { id: "whatif-result", role: "status" });
  const form = h(
    "form",
    { id: "whatif", "aria-label": "What-if" },
    h("div", { class: "table-wrap" }, h("table", {}, h("caption", {}, "What if: remove or reweight backends"),
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Backend"), h("th", { scope: "col" }, "Remove"), h("th", { scope: "col" }, "New weight"))),
      h("tbody", {}, rows))),
    h("button", { type: "submit", id: "whatif-run" }, "Simulate"),
    out,
  );
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const remove = [...form.querySelectorAll("input[type=checkbox]:checked")].map((x) => x.dataset.backend);
    const reweight = {};
    for (const x of form.querySelectorAll("input[type=number]")) if (x.value) reweight[x.dataset.backend] = Number(x.value);
    try {
      result = await request("POST", `/v1/clusters/${encodeURIComponent(selected)}/ring/simulate`, { body: { remove, reweight } });
      drawResult(out);
    } catch (err) {
      if (!(err instanceof ApiError)) throw err;
      result = null;
      replace(out, h("p", { class: "error" }, err.errors.length ? err.errors.map((e) => `${e.pointer}: ${e.detail}`).join("; ") : err.message));
    }
  });
  if (result) drawResult(out);
  return form;
}

function drawResult(out) {
  const per = Object.entries(result.per_backend);
  replace(
    out,
    h("p", { class: "big" }, "Keys that would move: ",
      h("strong", { id: "moved", dataset: { fraction: result.moved_fraction } }, pct(result.moved_fraction, 2)),
      ` (the least any placement could move: ${pct(result.minimum_fraction, 2)}; ${result.method})`),
    h("ul", { class: "plain" }, per.map(([n, p]) => h("li", {}, `${n}: ${pct(p.share_before)} → ${pct(p.share_after)}`))),
  );
}

function lookup() {
  const key = h("input", { id: "lookup-key", autocomplete: "off", required: true });
  const out = h("p", { id: "lookup-result", role: "status" });
  const form = h("form", { id: "lookup", class: "toolbar", "aria-label": "Look up a key" },
    h("label", { for: "lookup-key" }, "Key (the hash policy's value) "), key,
    h("button", { type: "submit" }, "Look up"), out);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      const r = await request("GET", `/v1/clusters/${encodeURIComponent(selected)}/ring/lookup`, { params: { key: key.value } });
      out.textContent = `${r.key} → ${r.backend ?? "no backend"} (hash ${r.hash}, r${r.revision})`;
    } catch (err) {
      out.textContent = err.message;
    }
  });
  return form;
}

function draw(ctx) {
  if (!ring) return;
  replace(body, shares(), h("div", { class: "cols" }, h("section", { class: "card" }, whatIf(ctx)), h("section", { class: "card" }, lookup())));
}
