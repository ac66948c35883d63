// Building the page: elements from data, never HTML strings (so no value can inject markup).

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "style") Object.assign(el.style, v); // CSSOM: allowed by the page's CSP, unlike style=""
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function replace(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
}

// A table with a caption and header cells; rows are <tr> elements. Each cell gets its
// column's header as `data-label`, so a `cards` table can show each row as a labelled card
// on a narrow screen (console.css).
export function table(caption, headers, rows, attrs = {}) {
  for (const tr of rows) [...tr.children].forEach((cell, i) => headers[i] && (cell.dataset.label ??= headers[i]));
  const cards = String(attrs.class || "").split(" ").includes("cards");
  return h(
    "div",
    { class: cards ? "table-wrap cards-wrap" : "table-wrap", tabindex: "0", role: "region", "aria-label": caption },
    h(
      "table",
      attrs,
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows),
    ),
  );
}

export function field(label, input, errorId) {
  const id = input.id;
  return h(
    "div",
    { class: "field" },
    h("label", { for: id }, label),
    input,
    h("span", { class: "error", id: errorId || `${id}-error`, role: "alert" }),
  );
}

// Show the API's problem on a form: each named field's error next to it, the rest at `fallback`.
export function showProblem(err, fields, fallback) {
  let placed = false;
  for (const [pointer, input] of Object.entries(fields)) {
    const slot = document.getElementById(`${input.id}-error`);
    const msg = err.fieldError ? err.fieldError(pointer) : null;
    if (slot) slot.textContent = msg || "";
    input.setAttribute("aria-invalid", msg ? "true" : "false");
    if (msg) {
      input.setAttribute("aria-describedby", slot.id);
      placed = true;
    }
  }
  if (fallback) fallback.textContent = placed ? "" : `${err.title}: ${err.message}`;
}

export function clearProblem(fields, fallback) {
  for (const input of Object.values(fields)) {
    const slot = document.getElementById(`${input.id}-error`);
    if (slot) slot.textContent = "";
    input.removeAttribute("aria-invalid");
  }
  if (fallback) fallback.textContent = "";
}

export const pct = (x, digits = 1) => (x === null || x === undefined ? "-" : `${(x * 100).toFixed(digits)}%`);
export const num = (x, digits = 1) => (x === null || x === undefined ? "-" : Number(x).toFixed(digits));

export function ago(epochSeconds) {
  if (!epochSeconds) return "-";
  const s = Math.max(0, Date.now() / 1000 - epochSeconds);
  if (s < 60) return `${Math.round(s)}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

// A stable id fragment for any name (node ids may hold characters ids should not).
export const slug = (s) => String(s).replace(/[^A-Za-z0-9_-]/g, (c) => `_${c.charCodeAt(0).toString(16)}`);

// Redraw without losing the keyboard: the focused element (found again by id) keeps focus.
export function keepFocus(redraw) {
  const id = document.activeElement && document.activeElement.id;
  redraw();
  if (id && document.activeElement?.id !== id) document.getElementById(id)?.focus();
}

// A button for a write: disabled, with the reason, when the token may only read.
export function writeButton(ctx, label, attrs, onclick) {
  return h(
    "button",
    {
      type: "button",
      ...attrs,
      disabled: !ctx.canWrite,
      title: ctx.canWrite ? attrs.title : "read-only: this token has the reader role",
      onclick,
    },
    label,
  );
}
