// The Models panel of the Slides tab: the classifier versions the service can serve (GET
// /models), an adapted model's before -> after on the laboratory's held-out test cells, which
// one is active, Activate per version and Roll back (docs/service.md, "Model versions"). The
// page shows what the service says; text from the service goes in only through textContent.
"use strict";

(function () {
  const { $, el } = window.RBC;

  function headers() {
    const t = $("slides-token").value.trim();
    return t ? { Authorization: "Bearer " + t } : {};
  }

  async function call(method, path) {
    let response;
    try {
      response = await fetch(path, { method, headers: headers() });
    } catch (err) {
      throw new Error("the service could not be reached");
    }
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      const detail = data && typeof data.detail === "string" ? data.detail : response.statusText;
      throw new Error("Refused (" + response.status + "): " + detail);
    }
    return data;
  }

  function share(value) {
    return typeof value === "number" ? (100 * value).toFixed(1) + " %" : "?";
  }

  // "60.0 % -> 90.0 %" for an adapted model; blank otherwise.
  function change(version, key) {
    const a = version.adaptation;
    return a ? share(a.before[key]) + " \u2192 " + share(a.after[key]) : "";
  }

  function say(text, failed) {
    const status = $("models-status");
    status.textContent = text;
    status.classList.toggle("error", Boolean(failed));
  }

  async function load() {
    let body;
    try {
      body = await call("GET", "models");
    } catch (err) {
      say(err.message, true);
      return;
    }
    const tbody = $("models-table").querySelector("tbody");
    tbody.replaceChildren();
    body.items.forEach((v) => {
      const tr = el("tr");
      tr.dataset.modelId = v.id;
      if (v.active) tr.classList.add("active");
      const name = el("td", "", v.name || "");
      if (v.adaptation) name.appendChild(el("div", "note", "adapted from " + v.adaptation.base_model));
      if (v.error) name.appendChild(el("div", "error", v.error));
      const action = el("td");
      if (v.active) action.appendChild(el("strong", "", "active"));
      else if (body.switchable && !v.error) {
        const button = el("button", "secondary", "Activate");
        button.type = "button";
        button.addEventListener("click", () => switchTo("models/" + encodeURIComponent(v.id) + "/activate"));
        action.appendChild(button);
      }
      tr.append(el("td", "", v.id), name, el("td", "", change(v, "accuracy")),
        el("td", "", change(v, "macro_f1")), el("td", "", change(v, "unflagged_share")),
        el("td", "", change(v, "called_normal")), action);
      tbody.appendChild(tr);
    });
    $("models-rollback").disabled = !body.switchable || !body.activation;
    if (!body.switchable) say("Switching needs RBC_MODELS_DIR on the service.", false);
    else if (body.activation) {
      const a = body.activation;
      say("Active: " + a.model_id + " (" + a.action + " by " + a.user + ", " +
        new Date(a.at).toLocaleString() + ")", false);
    } else say("Active: " + body.active + " (the service's own model)", false);
  }

  async function switchTo(path) {
    say("Loading and checking the model\u2026", false);
    document.querySelectorAll("#models-panel button").forEach((b) => { b.disabled = true; });
    try {
      await call("POST", path);
    } catch (err) {
      await load();
      say(err.message, true);
      return;
    }
    await load();
  }

  $("models-rollback").addEventListener("click", () => switchTo("models/rollback"));
  $("slides-token").addEventListener("change", () => {
    if (!$("panel-slides").hidden) load();
  });
  document.addEventListener("rbc:tab", (e) => {
    if (e.detail === "slides") load();
  });
  if (!$("panel-slides").hidden) load();
})();
