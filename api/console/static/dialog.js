// A confirmation inside the page (one modal <dialog>): what a write will do, then the API's
// answer. When the API refuses with a named override (a drain below the fleet's floor of
// Envoys in service answers 409 `min-in-service`, override `force`), the dialog shows the
// API's own detail and offers the override as a separate button the operator has to choose;
// nothing is ever resent with the override by itself.

import { ApiError } from "./api.js";
import { h, replace } from "./dom.js";

let dlg = null;
let returnTo = null;

function dialog() {
  if (!dlg) {
    dlg = h("dialog", { id: "confirm", "aria-labelledby": "confirm-title", "aria-describedby": "confirm-body" });
    // Back to the control that opened it (or what replaced it: the row redraws while open).
    dlg.addEventListener("close", () => {
      const back = returnTo && returnTo.map((id) => document.getElementById(id)).find((el) => el && !el.disabled);
      if (back) back.focus();
    });
    document.body.append(dlg);
  }
  return dlg;
}

export const isOpen = () => Boolean(dlg && dlg.open);

// `send(override)` does the write (override: false first, true only after the operator chose
// it); `override` = {code, label, note}: a refusal with that problem code offers `label`.
// `focus`: element ids to focus after the dialog closes, the first one that exists.
export function confirmWrite({ title, body, confirm, send, override, focus }) {
  const d = dialog();
  returnTo = focus || [];
  const error = h("div", { id: "confirm-error", class: "refusal", role: "alert" });
  const cancel = h("button", { type: "button", class: "secondary", id: "confirm-cancel" }, "Cancel");
  const go = h("button", { type: "button", id: "confirm-ok" }, confirm);
  const buttons = h("div", { class: "dialog-actions" }, go, cancel);
  cancel.addEventListener("click", () => d.close("cancel"));

  async function run(withOverride) {
    const all = [...buttons.querySelectorAll("button")];
    for (const b of all) b.disabled = true;
    replace(error);
    try {
      await send(withOverride);
      d.close("done");
      return;
    } catch (err) {
      const problem = err instanceof ApiError ? err : new ApiError(0, { title: "Error", detail: String(err) });
      if (!withOverride && override && problem.code === override.code) {
        replace(
          error,
          h("p", { class: "refusal-title" }, `The API refused: ${problem.title}`),
          h("p", { id: "confirm-refusal", dataset: { code: problem.code } }, problem.message),
          override.note ? h("p", {}, override.note(problem.problem || {})) : null,
        );
        const anyway = h("button", { type: "button", class: "danger", id: "confirm-override" }, override.label);
        anyway.addEventListener("click", () => run(true));
        replace(buttons, anyway, cancel);
      } else {
        replace(error, h("p", { id: "confirm-refusal", dataset: { code: problem.code } }, `${problem.title}: ${problem.message}`));
      }
    }
    for (const b of buttons.querySelectorAll("button")) b.disabled = false;
    cancel.focus();
  }

  go.addEventListener("click", () => run(false));
  replace(d, h("h2", { id: "confirm-title" }, title), h("div", { id: "confirm-body" }, body), error, buttons);
  d.showModal();
  cancel.focus();
}
