// The console's shell: sign-in, tabs, the live state from /v1/events, and which view to redraw.

import { ApiError, follow, get, setToken, token } from "./api.js";
import * as changes from "./views/changes.js";
import * as fleet from "./views/fleet.js";
import * as frontdoor from "./views/frontdoor.js";
import * as intent from "./views/intent.js";
import * as ring from "./views/ring.js";

const VIEWS = { fleet, intent, changes, ring, frontdoor };
const MAX_CHANGES = 50;
const CHANGE_OBJECTS = 10; // of each write, the objects the changes view lists (the rest are counted)
let snapshots = 0;

// Everything the views read. Only the event stream and the views' own writes change it.
const state = {
  role: null,
  devMode: false,
  live: "connecting",
  etcd: "ok",
  revision: 0,
  intentRevision: 0,
  nodes: new Map(),
  drained: {},
  rebalances: {},
  changes: [], // newest last: {revision, at, changes: [...], rollout}
};

const ctx = {
  state,
  get canWrite() {
    return state.role === "writer";
  },
  notify,
  redraw: schedule,
};

let stopEvents = null;
let current = null;
const pending = new Set();

function notify(message, kind = "info") {
  const el = document.getElementById("notice");
  el.textContent = message;
  el.dataset.kind = kind;
  el.hidden = !message;
}

function schedule(...names) {
  for (const n of names.length ? names : Object.keys(VIEWS)) pending.add(n);
  requestAnimationFrame(() => {
    for (const n of pending) if (n === current) VIEWS[n].update(ctx);
    pending.clear();
  });
}

function onEvent(name, d) {
  switch (name) {
    case "snapshot":
      state.revision = d.revision;
      state.intentRevision = d.intent_revision;
      state.etcd = d.etcd;
      state.nodes = new Map(d.nodes.map((n) => [n.node_id, n]));
      state.drained = d.drained;
      state.rebalances = d.rebalances;
      state.changes = d.changes;
      // A snapshot after the first: the stream started over, and the views read again what
      // they show (what changed meanwhile came in no event).
      if (snapshots++) intent.resync(ctx);
      schedule();
      break;
    case "node":
      state.nodes.set(d.node_id, d);
      if (d.drain) state.drained[d.node_id] = d.drain;
      else delete state.drained[d.node_id];
      // A drain is intent about one Envoy: its write is the newest revision to ack, too.
      state.intentRevision = Math.max(state.intentRevision, d.drain?.revision || 0);
      intent.updateHealth(ctx);
      schedule("fleet", "frontdoor", "changes");
      break;
    case "node-gone":
      state.nodes.delete(d.node_id);
      if (d.drain) state.drained[d.node_id] = d.drain;
      else delete state.drained[d.node_id];
      schedule("fleet", "frontdoor");
      break;
    case "intent":
      // Kept for the changes view, as the snapshot lists a write: its first objects, counted.
      state.changes.push({ ...d, changes: d.changes.slice(0, CHANGE_OBJECTS), changes_total: d.changes_total ?? d.changes.length });
      if (state.changes.length > MAX_CHANGES) state.changes.shift();
      state.intentRevision = Math.max(state.intentRevision, d.revision);
      intent.apply(ctx, d);
      fleet.apply(ctx, d);
      ring.apply(ctx, d);
      schedule("changes", "intent", "fleet", "ring");
      break;
    case "rollout": {
      const entry = state.changes.find((c) => c.revision === d.revision);
      if (entry) entry.rollout = d;
      schedule("changes", "intent");
      break;
    }
    case "rebalance":
      state.rebalances[d.fleet] = d.status;
      schedule("fleet");
      break;
    case "etcd":
      state.etcd = d.state;
      setLive();
      break;
  }
}

function setLive(live) {
  if (live) state.live = live;
  const el = document.getElementById("live");
  const down = state.live === "live" && state.etcd !== "ok";
  el.textContent = down ? "etcd unavailable: showing the last state" : state.live;
  el.dataset.state = down ? "degraded" : state.live;
}

function showTab() {
  const name = VIEWS[location.hash.slice(1)] ? location.hash.slice(1) : "fleet";
  for (const n of Object.keys(VIEWS)) {
    const tab = document.getElementById(`tab-${n}`);
    const panel = document.getElementById(`view-${n}`);
    if (n === name) tab.setAttribute("aria-current", "page");
    else tab.removeAttribute("aria-current");
    panel.hidden = n !== name || state.role === null;
  }
  if (state.role === null) return;
  if (current !== name) {
    current = name;
    VIEWS[name].mount(document.getElementById(`view-${name}`), ctx);
  }
  VIEWS[name].update(ctx);
}

async function signIn() {
  try {
    const me = await get("/v1/whoami");
    state.role = me.role;
    state.devMode = me.dev_mode;
  } catch (err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) return showLogin(token() ? err.message : "");
    notify(`The admin API does not answer: ${err.message}`, "error");
    setTimeout(signIn, 2000);
    return;
  }
  document.getElementById("login").hidden = true;
  document.getElementById("role").textContent = state.devMode ? "dev mode (no tokens)" : state.role;
  document.getElementById("role").dataset.role = state.role;
  document.getElementById("logout").hidden = state.devMode;
  document.body.dataset.role = state.role;
  if (stopEvents) stopEvents();
  stopEvents = follow(onEvent, (s) => {
    if (s === "unauthorized") return signOut("The token is no longer accepted.");
    setLive(s);
  });
  current = null;
  showTab();
}

function showLogin(message) {
  state.role = null;
  showTab();
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message || "";
  document.getElementById("token").focus();
}

function signOut(message) {
  setToken("");
  if (stopEvents) stopEvents();
  stopEvents = null;
  document.getElementById("logout").hidden = true;
  document.getElementById("role").textContent = "";
  setLive("signed out");
  showLogin(message);
}

document.getElementById("login-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const input = document.getElementById("token");
  setToken(input.value.trim());
  input.value = "";
  signIn();
});
document.getElementById("logout").addEventListener("click", () => signOut(""));
window.addEventListener("hashchange", showTab);
// Ages ("12s ago") move on by themselves.
setInterval(() => current && schedule(current), 5000);
signIn();
