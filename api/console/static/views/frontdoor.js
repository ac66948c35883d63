// Front door: which Envoys are in front of clients (the DNS answer) and the BIRD / nftables
// renders for that set. The set comes from the live fleet; the renders are fetched from the
// API only when the set (or a setting) changes.

import { request } from "../api.js";
import { h, replace } from "../dom.js";

let body;
let answer;
let renders;
let lastKey = null;
const opts = { zone: "lbcp.test", name: "www", vip: "198.51.100.1", port: "443", node: "" };

export function mount(el, ctx) {
  const inputs = Object.entries({ zone: "DNS zone", name: "Name", vip: "Virtual IP", port: "Port" }).map(([k, label]) => {
    const input = h("input", { id: `fd-${k}`, value: opts[k], autocomplete: "off" });
    input.addEventListener("change", () => {
      opts[k] = input.value.trim();
      lastKey = null;
      update(ctx);
    });
    return h("span", { class: "field inline" }, h("label", { for: input.id }, `${label} `), input);
  });
  answer = h("div", { id: "fd-answer" });
  renders = h("div", { id: "fd-renders" });
  body = h("div", {}, answer, renders);
  lastKey = null;
  replace(el, h("h2", {}, "Front door"), h("form", { class: "toolbar", "aria-label": "Render settings" }, inputs), body);
}

function inService(ctx) {
  return [...ctx.state.nodes.values()]
    .filter((n) => n.front_state === "in" || n.front_state === "kept-full") // render.py's SERVING
    .map((n) => ({ node: n.node_id, address: n.front?.address }))
    .sort((a, b) => a.node.localeCompare(b.node));
}

async function fetchRenders(ctx, members) {
  const node = opts.node || members[0]?.node || [...ctx.state.nodes.keys()][0] || "";
  const common = { vip: opts.vip, port: opts.port };
  try {
    const [dns, nft, bird] = await Promise.all([
      request("GET", "/v1/frontdoor/dns", { params: { zone: opts.zone, name: opts.name } }),
      request("GET", "/v1/frontdoor/nftables", { params: common }),
      node ? request("GET", "/v1/frontdoor/bird", { params: { node, vip: opts.vip } }) : Promise.resolve({ text: "" }),
    ]);
    const pick = h("select", { id: "fd-node" }, [...ctx.state.nodes.keys()].sort().map((n) => h("option", { value: n }, n)));
    pick.value = node;
    pick.addEventListener("change", () => {
      opts.node = pick.value;
      lastKey = null;
      update(ctx);
    });
    replace(
      renders,
      h("section", { class: "card" }, h("h3", {}, "DNS zone fragment"), h("pre", { id: "fd-dns", tabindex: "0" }, dns.text)),
      h("section", { class: "card" }, h("h3", {}, "nftables"), h("pre", { id: "fd-nftables", tabindex: "0" }, nft.text)),
      h("section", { class: "card" }, h("h3", {}, "BIRD (anycast) for ", h("label", { for: "fd-node", class: "sr-only" }, "node"), pick),
        h("pre", { id: "fd-bird", tabindex: "0" }, bird.text)),
    );
  } catch (err) {
    replace(renders, h("p", { class: "error" }, `${err.title}: ${err.message}`));
  }
}

export function update(ctx) {
  if (!body) return;
  const members = inService(ctx);
  replace(
    answer,
    h("section", { class: "card" },
      h("h3", {}, `DNS answer for ${opts.name}.${opts.zone}`),
      members.length
        ? h("ul", { id: "fd-members", class: "plain" }, members.map((m) => h("li", { dataset: { node: m.node } }, `${m.address}  (${m.node})`)))
        : h("p", { id: "fd-members", class: "bad" }, "No Envoy is in service: the answer is empty."),
    ),
  );
  const key = JSON.stringify([members, opts]);
  if (key !== lastKey) {
    lastKey = key;
    fetchRenders(ctx, members);
  }
}
