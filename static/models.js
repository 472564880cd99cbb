// The Models panel of the Slides tab: the classifier versions the service can serve (GET
// /models), an adapted model's before -> after on the laboratory's held-out test cells, which
// one is active, Activate per version and Roll back (docs/service.md, "Model versions"); and
// Teach the model (POST /models/teach), whose job the page follows (GET /models/teach) with a
// progress bar until the new version is listed or the failure is shown; a version's report and
// an adapted one's before / after figure below the table. The page shows what the service
// says; text from the service goes in only through textContent.
"use strict";

(function () {
  const { $, el } = window.RBC;
  const TEACH_POLL_MS = 2000;
  let teachTimer = null;
  let teachBusy = false; // the newest job was queued or running when last seen
  let teachLooks = 0; // counts the looks at the newest job, so that only the newest is shown

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

  function sayTeach(text, failed) {
    const status = $("teach-status");
    status.textContent = text;
    status.classList.toggle("error", Boolean(failed));
  }

  async function load() {
    await loadVersions();
    await loadTeach();
  }

  async function loadVersions() {
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
      if (v.adaptation) {
        name.appendChild(el("div", "note", "adapted from " + v.adaptation.base_model));
        const fit = v.adaptation.fit_chosen;
        // Whether the classifier itself changed, or only its calibration.
        if (fit === "base") name.appendChild(el("div", "note", "last layer kept: only the calibration is the laboratory's"));
        else if (fit) name.appendChild(el("div", "note", "last layer refitted (" + fit + ")"));
        (v.adaptation.warnings || []).forEach((w) => name.appendChild(el("div", "warning", "Warning: " + w)));
      }
      if (v.error) name.appendChild(el("div", "error", v.error));
      const action = el("td");
      if (v.active) action.appendChild(el("strong", "", "active"));
      else if (body.switchable && !v.error) {
        const button = el("button", "secondary activate", "Activate");
        button.type = "button";
        button.addEventListener("click", () => switchTo("models/" + encodeURIComponent(v.id) + "/activate"));
        action.appendChild(button);
      }
      // What the laboratory compares versions by, shown below the table on demand.
      const figureUrl = v.adaptation && v.adaptation.figure_url;
      if (figureUrl) action.appendChild(showButton("Before / after", "figure", () => showFigure(v.id, figureUrl)));
      if (v.report_url) action.appendChild(showButton("Report", "report", () => showReport(v.id, v.report_url)));
      const accuracy = el("td", "", change(v, "accuracy"));
      const a = v.adaptation;
      // The test cells weighed to stand for their slides' cells (reviews by the queue are
      // mostly doubtful ones); absent for folders written before it.
      if (a && a.before.accuracy_weighed != null && a.after.accuracy_weighed != null) {
        accuracy.appendChild(el("div", "note", "weighed to the slides: " + change(v, "accuracy_weighed")));
      }
      tr.append(el("td", "", v.id), name, accuracy,
        el("td", "", change(v, "macro_f1")), el("td", "", change(v, "unflagged_share")),
        el("td", "", change(v, "called_normal")), el("td", "", change(v, "abnormal_missed")), action);
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

  function showButton(text, kind, show) {
    const button = el("button", "secondary show-" + kind, text);
    button.type = "button";
    button.addEventListener("click", show);
    return button;
  }

  // A version's file, fetched with the token (an <img src> or a link would not send it).
  async function fetchShown(url) {
    const response = await fetch(url.replace(/^\//, ""), { headers: headers() });
    if (!response.ok) throw new Error("Refused (" + response.status + ")");
    return response;
  }

  function showDetail(title, content) {
    const detail = $("models-detail");
    if (detail.dataset.url) URL.revokeObjectURL(detail.dataset.url);
    delete detail.dataset.url;
    detail.replaceChildren(el("h3", "", title), content);
    detail.hidden = false;
  }

  async function showFigure(id, url) {
    try {
      const blob = await (await fetchShown(url)).blob();
      const img = el("img");
      img.alt = "each class's recall before and after, " + id;
      img.id = "models-figure";
      const objectUrl = URL.createObjectURL(blob);
      img.src = objectUrl;
      showDetail("Before / after: " + id, img);
      $("models-detail").dataset.url = objectUrl;
    } catch (err) {
      say(err.message, true);
    }
  }

  async function showReport(id, url) {
    try {
      const text = await (await fetchShown(url)).text();
      const pre = el("pre", "report-text");
      pre.id = "models-report";
      pre.textContent = text; // Markdown as written: text, never HTML
      showDetail("Report: " + id, pre);
    } catch (err) {
      say(err.message, true);
    }
  }

  // The newest teach job: a progress bar while it is queued or running (polled), the new
  // version once done (the versions are listed again), the reason when it failed.
  async function loadTeach() {
    clearTimeout(teachTimer);
    // Only the newest look counts: an answer to an older one (say, before the token was typed)
    // that arrives late must not overwrite it.
    const mine = ++teachLooks;
    let body;
    try {
      body = await call("GET", "models/teach?limit=1");
    } catch (err) {
      if (mine !== teachLooks) return;
      $("models-teach").disabled = true; // until a look says teaching is available
      sayTeach(err.message, true);
      return;
    }
    if (mine !== teachLooks) return;
    const job = body.items[0];
    const busy = Boolean(job) && (job.state === "queued" || job.state === "running");
    const button = $("models-teach");
    button.disabled = !body.available || busy;
    button.title = body.available ? "" : body.reason;
    $("teach-running").hidden = !busy;
    if (busy) {
      $("teach-progress").value = job.progress;
      $("teach-stage").textContent = (job.state === "queued" ? "queued" : job.stage) +
        " (" + Math.round(100 * job.progress) + " %)";
      sayTeach("Teaching version " + job.name + "\u2026" + (job.message ? " " + job.message : ""), false);
    } else if (!body.available) {
      sayTeach("Teaching is not available here: " + body.reason, false);
    } else if (job && job.state === "done") {
      sayTeach("Taught version " + job.version_id + " (" + new Date(job.finished_at).toLocaleString() +
        "): compare it above, then activate it.", false);
    } else if (job && job.state === "failed") {
      sayTeach("Teaching failed: " + (job.message || "no reason given"), true);
    } else {
      sayTeach("Teaching makes a new version from the reviewed cells of the signed-off slides; " +
        "it is not activated.", false);
    }
    if (teachBusy && !busy) await loadVersions(); // the new version, listed
    teachBusy = busy;
    if (busy && !$("panel-slides").hidden) teachTimer = setTimeout(loadTeach, TEACH_POLL_MS);
  }

  async function teach() {
    $("models-teach").disabled = true;
    sayTeach("Asking the service to teach the model\u2026", false);
    try {
      await call("POST", "models/teach");
    } catch (err) {
      await loadTeach();
      sayTeach(err.message, true);
      return;
    }
    await loadTeach();
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
  $("models-teach").addEventListener("click", teach);
  $("slides-token").addEventListener("change", () => {
    if (!$("panel-slides").hidden) load();
  });
  document.addEventListener("rbc:tab", (e) => {
    if (e.detail === "slides") load();
  });
  if (!$("panel-slides").hidden) load();
})();
