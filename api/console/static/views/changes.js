// Changes: the recent intent writes (since this API process started) and each one's rollout.

import { h, replace, table } from "../dom.js";

let body;

export function mount(el) {
  body = h("div", { id: "changes-body" });
  replace(
    el,
    h("h2", {}, "Changes"),
    h("p", { class: "muted" }, "The latest intent writes (first from etcd, then live as they land) and, for each, which Envoys have acked it, are pending or rejected it."),
    body,
  );
}

// How many objects a write changed (a snapshot lists the first few of each).
const total = (c) => c.changes_total ?? c.changes.length;

const what = (c) =>
  `${c.deleted ? "deleted" : "wrote"} ${c.kind} ${c.cluster ? `${c.cluster}/` : ""}${c.name}`;

function rollout(r) {
  if (!r) return "-";
  const parts = [h("span", { class: r.complete ? "ok" : "warn" }, `${r.acked.length}/${r.nodes} acked`)];
  if (r.pending.length) parts.push(h("span", { class: "warn" }, ` · pending: ${r.pending.join(", ")}`));
  if (r.rejected.length)
    parts.push(h("span", { class: "bad" }, ` · rejected: ${r.rejected.map((x) => `${x.node_id} (${x.message})`).join("; ")}`));
  return h("span", { dataset: { complete: String(r.complete) } }, parts);
}

export function update(ctx) {
  if (!body) return;
  const rows = [...ctx.state.changes].reverse().map((c) =>
    h(
      "tr",
      { id: `change-${c.revision}`, dataset: { revision: c.revision } },
      h("th", { scope: "row" }, `r${c.revision}`),
      h("td", {}, c.at ? new Date(c.at * 1000).toLocaleTimeString() : "-"),
      h("td", {}, h("ul", { class: "plain" }, c.changes.slice(0, 10).map((x) => h("li", {}, what(x))),
        total(c) > 10 ? h("li", { class: "muted" }, `and ${total(c) - 10} more`) : null)),
      h("td", {}, rollout(c.rollout)),
    ),
  );
  replace(
    body,
    rows.length
      ? table("Recent writes, newest first", ["Revision", "When", "What", "Rollout"], rows, { id: "changes-table" })
      : h("p", { class: "empty" }, "No intent writes yet."),
  );
}
