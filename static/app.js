// The upload page: plain JavaScript, no build step. User-supplied text (file names, class names,
// error messages) only ever goes into the page through textContent, never as HTML. Counts and
// CSV files come from the server (the batch's summary, POST /predict/batch/results.csv): the
// page shows them, it never counts.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const maxFiles = parseInt(document.body.dataset.maxFiles, 10) || 1;
  const tokenRequired = document.body.dataset.tokenRequired === "true";
  const state = { files: [], urls: [], rows: [], summary: null };

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function percent(p) {
    return (100 * p).toFixed(1) + " %";
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = !message;
  }

  function headers() {
    const h = {};
    if (tokenRequired) {
      const token = $("token").value.trim();
      sessionStorage.setItem("rbc-token", token);
      if (token) h.Authorization = "Bearer " + token;
    }
    return h;
  }

  // POST to the API with the token when the page has one: `body` is a FormData (uploads) or a
  // plain object (sent as JSON). The answer's JSON, or with { blob: true } its bytes (a CSV).
  async function callApi(path, body, options) {
    const upload = body instanceof FormData;
    const h = headers();
    if (!upload) h["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method: "POST", body: upload ? body : JSON.stringify(body), headers: h,
      });
    } catch (err) {
      throw new Error("The service could not be reached. Check your connection and try again.");
    }
    if (response.ok && options && options.blob) return response.blob();
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      const detail = data && typeof data.detail === "string" ? data.detail : response.statusText;
      throw new Error(explain(response.status, detail, upload));
    }
    return data;
  }

  function explain(status, detail, upload) {
    const lead = {
      400: "The request was not understood",
      401: "The API token is missing or wrong",
      413: "Too large",
      415: "This file type is not accepted",
      422: upload ? "This file could not be read as an image" : "Not accepted",
      503: "The model is not ready yet",
    }[status] || "The service answered with an error (" + status + ")";
    return lead + ": " + detail;
  }

  function clearResults() {
    $("single").hidden = true;
    $("batch").hidden = true;
    showError("");
    showNotes([]);
  }

  // What the answers rest on (no scale given, no cell found...), in the service's own words.
  function showNotes(notes) {
    const box = $("cells-notes");
    box.textContent = notes.join(" ");
    box.hidden = notes.length === 0;
  }

  // The optional scale, sent as the form field microns_per_pixel.
  function addScale(form) {
    const mpp = $("cells-mpp").value.trim();
    if (mpp) form.append("microns_per_pixel", mpp);
  }

  function setFiles(list) {
    state.urls.forEach((u) => URL.revokeObjectURL(u));
    state.files = Array.from(list);
    state.urls = state.files.map((f) => URL.createObjectURL(f));
    const box = $("previews");
    box.replaceChildren();
    state.files.forEach((file, i) => {
      const img = el("img");
      img.src = state.urls[i];
      img.alt = file.name;
      img.title = file.name;
      box.appendChild(img);
    });
    $("analyze").disabled = state.files.length === 0;
    $("clear").disabled = state.files.length === 0;
    clearResults();
  }

  function bars(target, probabilities) {
    target.replaceChildren();
    Object.entries(probabilities)
      .sort((a, b) => b[1] - a[1])
      .forEach(([name, p]) => {
        const li = el("li");
        const bar = el("span", "bar");
        const fill = el("span");
        fill.style.width = (100 * p).toFixed(2) + "%";
        bar.appendChild(fill);
        li.append(el("span", "name", name), bar, el("span", "value", percent(p)));
        target.appendChild(li);
      });
  }

  function showSingle(prediction, imageUrl) {
    $("single-image").src = imageUrl;
    const heat = $("single-heatmap");
    if (prediction.heatmap) heat.src = prediction.heatmap;
    heat.parentElement.hidden = !prediction.heatmap;
    $("single-label").textContent = prediction.label;
    $("single-confidence").textContent = percent(prediction.confidence);
    $("single-review").hidden = !prediction.needs_review;
    $("single-unfamiliar").hidden = !prediction.unfamiliar;
    bars($("single-bars"), prediction.probabilities);
    $("single").hidden = false;
  }

  async function analyzeOne() {
    const form = new FormData();
    form.append("file", state.files[0], state.files[0].name);
    addScale(form);
    const body = await callApi("predict?heatmap=true", form);
    showNotes(body.notes || []);
    state.rows = [{ filename: state.files[0].name, prediction: body, url: state.urls[0] }];
    showSingle(body, state.urls[0]);
  }

  // The results as the service answered them, for POST /predict/batch/summary and
  // /predict/batch/results.csv (without the heatmaps, which only the page needs).
  function resultsBody() {
    return {
      results: state.rows.map((r) => {
        const p = r.prediction;
        return {
          filename: r.filename,
          prediction: p ? { label: p.label, confidence: p.confidence,
            probabilities: p.probabilities, needs_review: p.needs_review } : null,
          error: r.error,
        };
      }),
    };
  }

  async function analyzeMany() {
    const rows = [];
    const notes = new Set();
    const summaries = [];
    for (let start = 0; start < state.files.length; start += maxFiles) {
      const form = new FormData();
      state.files.slice(start, start + maxFiles).forEach((f) => form.append("files", f, f.name));
      addScale(form);
      const body = await callApi("predict/batch?heatmap=true", form);
      (body.notes || []).forEach((n) => notes.add(n));
      summaries.push(body.summary);
      body.results.forEach((r) => {
        rows.push({
          filename: state.files[start + r.index].name,
          prediction: r.prediction || null,
          error: r.error || null,
          url: state.urls[start + r.index],
        });
      });
    }
    state.rows = rows;
    // Files sent in several requests: the service sums their results as it sums one batch.
    state.summary = summaries.length === 1
      ? summaries[0] : await callApi("predict/batch/summary", resultsBody());
    showBatch(rows, state.summary);
    showNotes(Array.from(notes));
  }

  // The rows and the service's summary of them (counts, percentages, how many need review).
  function showBatch(rows, summary) {
    const done = rows.filter((r) => r.prediction);
    const failed = rows.filter((r) => !r.prediction);
    $("batch-summary").textContent =
      summary.classified + " of " + summary.total + " cells classified; " + summary.needs_review +
      " need review" + (summary.failed ? "; " + summary.failed + " could not be analysed." : ".");
    const tbody = $("batch-table").querySelector("tbody");
    tbody.replaceChildren();
    const counts = summary.counts;
    const ranked = Object.keys(counts).sort((a, b) => counts[b] - counts[a]);
    ranked.forEach((c) => {
      const tr = el("tr");
      tr.dataset.label = c;
      tr.append(el("td", "", c), el("td", "", String(counts[c])),
        el("td", "", summary.percentages[c].toFixed(1)));
      tbody.appendChild(tr);
    });
    const list = $("failed-list");
    list.replaceChildren();
    failed.forEach((r) => list.appendChild(el("li", "", r.error ? r.error.detail : "")));
    $("failed").hidden = failed.length === 0;

    const gallery = $("gallery");
    gallery.replaceChildren();
    ranked
      .filter((c) => counts[c] > 0)
      .forEach((c) => {
        const group = el("section", "group");
        group.dataset.label = c;
        const share = summary.percentages[c].toFixed(1);
        group.appendChild(el("h3", "", c + " · " + counts[c] + " (" + share + " %)"));
        const cells = el("div", "cells");
        done
          .filter((r) => r.prediction.label === c)
          .forEach((r) => {
            const card = el("button", "thumb" + (r.prediction.needs_review ? " flagged" : ""));
            card.type = "button";
            const img = el("img");
            img.src = r.url;
            img.alt = r.filename;
            card.append(img, el("div", "", r.filename), el("div", "muted", percent(r.prediction.confidence)));
            if (r.prediction.needs_review) card.appendChild(el("div", "review-mark", "needs review"));
            card.addEventListener("click", () => showSingle(r.prediction, r.url));
            cells.appendChild(card);
          });
        group.appendChild(cells);
        gallery.appendChild(group);
      });
    $("batch").hidden = false;
  }

  // The CSV is written by the service (app/sheets.py), from the results the page holds.
  async function downloadCsv() {
    showError("");
    try {
      download(await callApi("predict/batch/results.csv", resultsBody(), { blob: true }),
        "rbc-results.csv");
    } catch (err) {
      showError("The CSV could not be made: " + err.message);
    }
  }

  function download(blob, name) {
    const link = el("a");
    link.href = URL.createObjectURL(blob);
    link.download = name;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  }

  // A drop zone: highlighted while a file is dragged over it; `onFiles` gets the dropped files.
  function wireDrop(zone, onFiles) {
    ["dragenter", "dragover"].forEach((type) =>
      zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("over"); }));
    ["dragleave", "drop"].forEach((type) =>
      zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.remove("over"); }));
    zone.addEventListener("drop", (e) => {
      if (e.dataTransfer && e.dataTransfer.files.length) onFiles(e.dataTransfer.files);
    });
  }

  async function analyze() {
    clearResults();
    const button = $("analyze");
    button.disabled = true;
    button.textContent = "Analyzing…";
    try {
      if (state.files.length === 1) await analyzeOne();
      else await analyzeMany();
    } catch (err) {
      showError(err.message);
    } finally {
      button.disabled = state.files.length === 0;
      button.textContent = "Analyze";
    }
  }

  async function checkModel() {
    const status = $("model-status");
    try {
      const response = await fetch("readyz");
      const body = await response.json();
      status.textContent = response.ok
        ? "Model: " + body.model + " (ready)"
        : "The model is not ready: " + body.detail;
      if (!response.ok) setTimeout(checkModel, 2000);
    } catch (err) {
      status.textContent = "The service could not be reached.";
    }
  }

  function selectTab(name) {
    ["cells", "smear", "slides"].forEach((t) => {
      $("tab-" + t).setAttribute("aria-selected", String(t === name));
      $("panel-" + t).hidden = t !== name;
    });
    document.dispatchEvent(new CustomEvent("rbc:tab", { detail: name }));
  }
  $("tab-cells").addEventListener("click", () => selectTab("cells"));
  $("tab-smear").addEventListener("click", () => selectTab("smear"));
  $("tab-slides").addEventListener("click", () => selectTab("slides"));

  // Shared with smear.js (the whole-smear tab) and slides.js (the slides tab).
  window.RBC = { $, el, percent, bars, callApi, download, wireDrop, selectTab };

  wireDrop($("drop"), setFiles);
  $("file").addEventListener("change", (e) => setFiles(e.target.files));
  $("analyze").addEventListener("click", analyze);
  $("clear").addEventListener("click", () => { $("file").value = ""; setFiles([]); });
  $("csv").addEventListener("click", downloadCsv);
  if (tokenRequired) $("token").value = sessionStorage.getItem("rbc-token") || "";
  checkModel();
})();
