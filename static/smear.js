// The whole-smear tab: upload one field, show the overlay, counts and grades, a gallery of the
// cells by class (least confident first), a cell's probabilities and heatmap, reclassification,
// CSV and PNG downloads. The page keeps the person's classes; the service counts and grades them
// (POST /analyze/smear/counts) and writes the CSV (POST /analyze/smear/cells.csv), so the rules
// live in one place (core/smear). Text from the service only goes in via textContent.
"use strict";

(function () {
  const { $, el, percent, bars, callApi, download, wireDrop } = window.RBC;
  // tally: the service's counts of the cells as they stand.
  const state = { file: null, result: null, cells: [], classes: [], selected: null, tally: null };

  function showError(message) {
    const box = $("smear-error");
    box.textContent = message;
    box.hidden = !message;
  }

  function setFile(file) {
    state.file = file || null;
    $("smear-chosen").textContent = file ? "Chosen: " + file.name : "";
    $("smear-analyze").disabled = !file;
    $("smear-result").hidden = true;
    showError("");
  }

  function dataUrlToBlob(url) {
    const [head, data] = url.split(",");
    const type = head.slice(5, head.indexOf(";"));
    const bytes = atob(data);
    const array = new Uint8Array(bytes.length);
    for (let i = 0; i < bytes.length; i += 1) array[i] = bytes.charCodeAt(i);
    return new Blob([array], { type });
  }

  // The cells as the person has them, for the service (no crops or heatmaps: it needs none).
  function cellsBody() {
    return {
      cells: state.cells.map((c) => ({
        id: c.id, x: c.x, y: c.y, box: c.box, at_border: c.at_border, counted: c.counted,
        label: c.label, model_label: c.model_label, confidence: c.confidence,
        probabilities: c.probabilities, needs_review: c.needs_review,
      })),
    };
  }

  function renderSummary() {
    const r = state.result;
    const t = state.tally;
    // The learned detector sets white cells and platelets apart; the classical one only
    // knows "other" dark objects.
    const others = r.detector === "classical"
      ? r.other_objects + " other objects (white cells, fibres, debris) left out; "
      : r.white_cells_found + " white cells (blue boxes) and " + r.platelets_found +
        " platelets (purple circles) found, not counted as red cells; ";
    $("smear-summary").textContent =
      t.cells_counted + " red cells counted; " + r.cells_at_border + " cut by the edge (shown, not counted); " +
      others + t.needs_review + " counted cells need review" +
      (t.reclassified ? "; " + t.reclassified + " reclassified by you" : "") +
      ". Analysed in " + Math.round(r.timings_ms.total) + " ms.";
    $("smear-unfamiliar").hidden = !(r.familiarity && r.familiarity.unfamiliar);
    $("smear-unfamiliar-why").textContent = unfamiliarWhy(r.familiarity);
    $("smear-focus-note").hidden = !(r.focus && r.focus.out_of_focus);
    const scaleNote = $("smear-scale-note");
    scaleNote.hidden = !(r.scale && r.scale.estimated);
    if (r.scale && r.scale.estimated) {
      scaleNote.textContent = "Scale estimated from this field's own red cells: " +
        r.scale.microns_per_pixel.toFixed(3) + " µm per pixel. Size classes (macrocyte, " +
        "microcyte) are relative to this field's cells; enter the scale for absolute sizes.";
    }
    const notes = $("smear-notes");
    notes.replaceChildren();
    r.notes.forEach((n) => notes.appendChild(el("li", "", n)));
  }

  function renderTable() {
    const { counts, percentages, grades } = state.tally;
    const tbody = $("smear-table").querySelector("tbody");
    tbody.replaceChildren();
    state.classes
      .slice()
      .sort((a, b) => counts[b] - counts[a])
      .forEach((c) => {
        const tr = el("tr");
        tr.dataset.label = c;
        const name = el("td");
        const swatch = el("span", "swatch");
        swatch.style.background = state.result.class_colours[c] || "#000";
        name.append(swatch, document.createTextNode(c));
        tr.append(name, el("td", "", String(counts[c])), el("td", "", percentages[c].toFixed(1)),
          el("td", "grade", grades[c] || ""));
        tbody.appendChild(tr);
      });
    $("smear-grading").textContent = "Grades: " + state.tally.grading.source + ".";
  }

  function renderGallery() {
    const { counts } = state.tally;
    const gallery = $("smear-gallery");
    gallery.replaceChildren();
    const present = state.classes.filter((c) => state.cells.some((cell) => cell.label === c));
    present
      .sort((a, b) => counts[b] - counts[a])
      .forEach((c) => {
        const members = state.cells
          .filter((cell) => cell.label === c)
          .sort((a, b) => a.confidence - b.confidence);
        const group = el("section", "group");
        group.dataset.label = c;
        group.appendChild(el("h3", "", c + " · " + members.length));
        const box = el("div", "cells");
        members.forEach((cell) => {
          const classes = ["thumb"];
          if (cell.needs_review) classes.push("flagged");
          if (cell.reclassified) classes.push("changed");
          if (state.selected === cell) classes.push("selected");
          const card = el("button", classes.join(" "));
          card.type = "button";
          card.dataset.cellId = String(cell.id);
          const img = el("img");
          if (cell.crop) img.src = cell.crop;
          img.alt = "cell " + cell.id;
          card.append(img, el("div", "", "#" + cell.id + (cell.counted ? "" : " (edge)")),
            el("div", "muted", percent(cell.confidence)));
          if (cell.needs_review) card.appendChild(el("div", "review-mark", "needs review"));
          if (cell.reclassified) card.appendChild(el("div", "muted", "was " + cell.model_label));
          card.addEventListener("click", () => showCell(cell));
          box.appendChild(card);
        });
        group.appendChild(box);
        gallery.appendChild(group);
      });
    // White cells and platelets: shown apart, never counted or classified as red cells.
    const others = [["white_cells", "white cells (not counted)"], ["platelets", "platelets (not counted)"]];
    others.forEach(([key, title]) => {
      const members = state.result[key] || [];
      if (!members.length) return;
      const group = el("section", "group other");
      group.dataset.kind = key;
      group.appendChild(el("h3", "", title + " · " + members.length));
      const box = el("div", "cells");
      members.forEach((obj) => {
        const card = el("div", "thumb");
        const img = el("img");
        if (obj.crop) img.src = obj.crop;
        img.alt = key + " " + obj.id;
        card.append(img, el("div", "muted", "score " + percent(obj.confidence)));
        box.appendChild(card);
      });
      group.appendChild(box);
      gallery.appendChild(group);
    });
  }

  function render() {
    renderSummary();
    renderTable();
    renderGallery();
  }

  async function loadHeatmap(cell) {
    const image = $("smear-cell-heatmap");
    const caption = $("smear-cell-heatmap-caption");
    image.removeAttribute("src");
    caption.textContent = "Where the model looked (LayerCAM): loading…";
    if (!cell.crop) return;
    if (!cell.heatmap) {
      try {
        // One request per cell, however often the cell is shown while it runs.
        if (!cell.heatmapAsked) {
          const form = new FormData();
          form.append("file", dataUrlToBlob(cell.crop), "cell-" + cell.id + ".png");
          cell.heatmapAsked = callApi("predict?heatmap=true", form).then((body) => body.heatmap);
        }
        cell.heatmap = await cell.heatmapAsked;
      } catch (err) {
        cell.heatmapAsked = null; // asked again next time the cell is shown
        caption.textContent = "The heatmap could not be made: " + err.message;
        return;
      }
    }
    if (state.selected !== cell) return;
    if (!cell.heatmap) {
      // A light serving install (no torch) draws no heatmaps: GET /model says served_heatmaps.
      caption.textContent = "No heatmap: this service runs without torch, which heatmaps need.";
      cell.heatmapAsked = null;
      return;
    }
    image.src = cell.heatmap;
    caption.textContent = "Where the model looked (LayerCAM, for " + cell.model_label + ")";
  }

  function showCell(cell) {
    state.selected = cell;
    $("smear-cell-id").textContent = "#" + cell.id + (cell.counted ? "" : " (cut by the edge, not counted)");
    if (cell.crop) $("smear-cell-image").src = cell.crop;
    $("smear-cell-label").textContent = cell.label + (cell.reclassified ? " (you; model: " + cell.model_label + ")" : "");
    $("smear-cell-confidence").textContent = percent(cell.confidence);
    $("smear-cell-review").hidden = !cell.needs_review || cell.reclassified;
    const select = $("smear-cell-reclass");
    select.replaceChildren();
    state.classes.forEach((c) => {
      const option = el("option", "", c);
      option.value = c;
      option.selected = c === cell.label;
      select.appendChild(option);
    });
    bars($("smear-cell-bars"), cell.probabilities);
    $("smear-cell").hidden = false;
    renderGallery();
    loadHeatmap(cell);
  }

  function setLabel(cell, label) {
    cell.label = label;
    cell.reclassified = cell.label !== cell.model_label;
  }

  // The person's class for the selected cell; the service counts and grades the field again.
  // Until it answers, the previous counts stay; if it fails, the cell keeps its previous class
  // and the page says why.
  async function reclassify() {
    const cell = state.selected;
    if (!cell) return;
    const select = $("smear-cell-reclass");
    const before = cell.label;
    const field = state.result;
    setLabel(cell, select.value);
    showError("");
    // One change at a time, so that every answer counts every change made before it.
    select.disabled = true;
    try {
      const tally = await callApi("analyze/smear/counts", cellsBody());
      if (state.result !== field) return; // another field was analysed meanwhile
      state.tally = tally;
    } catch (err) {
      if (state.result !== field) return;
      setLabel(cell, before);
      showError("The counts could not be updated, so cell #" + cell.id + " keeps its class: " +
        err.message);
    } finally {
      select.disabled = false;
    }
    render();
    if (state.selected === cell) showCell(cell);
  }

  async function analyze() {
    if (!state.file) return;
    showError("");
    $("smear-result").hidden = true;
    const button = $("smear-analyze");
    button.disabled = true;
    button.textContent = "Analyzing…";
    try {
      const form = new FormData();
      form.append("file", state.file, state.file.name);
      let query = "analyze/smear?crops=true";
      const mpp = $("smear-mpp").value.trim();
      if (mpp) {
        const value = Number(mpp);
        if (!(value > 0)) throw new Error("The scale must be a positive number of micrometres per pixel.");
        query += "&microns_per_pixel=" + encodeURIComponent(String(value));
      }
      const body = await callApi(query, form);
      state.result = body;
      state.tally = body; // the analysis's own counts until a cell is reclassified
      state.classes = Object.keys(body.counts);
      state.cells = body.cells.map((c) => Object.assign({}, c, { model_label: c.label, reclassified: false }));
      state.selected = null;
      $("smear-overlay").src = body.overlay;
      $("smear-cell").hidden = true;
      render();
      $("smear-result").hidden = false;
    } catch (err) {
      showError(err.message);
    } finally {
      button.disabled = !state.file;
      button.textContent = "Analyze smear";
    }
  }

  // The cells with the person's classes, written by the service (app/sheets.py).
  async function downloadCsv() {
    showError("");
    try {
      download(await callApi("analyze/smear/cells.csv", cellsBody(), { blob: true }),
        "smear-cells.csv");
    } catch (err) {
      showError("The CSV could not be made: " + err.message);
    }
  }

  wireDrop($("smear-drop"), (files) => setFile(files[0]));
  $("smear-file").addEventListener("change", (e) => setFile(e.target.files[0]));
  $("smear-analyze").addEventListener("click", analyze);
  $("smear-cell-reclass").addEventListener("change", reclassify);
  $("smear-csv").addEventListener("click", downloadCsv);
  $("smear-png").addEventListener("click", () => {
    if (state.result) download(dataUrlToBlob(state.result.overlay), "smear-overlay.png");
  });
})();

// Which signals found the field unfamiliar, in words (empty when it is not).
function unfamiliarWhy(familiarity) {
  const because = (familiarity && familiarity.unfamiliar && familiarity.because) || [];
  const words = {
    cells: "its cells look unlike the training cells to the network",
    colours: "its stain and light are unlike every training field's",
  };
  const said = because.map((b) => words[b] || b);
  return said.length ? "Why: " + said.join("; ") + "." : "";
}
