// The Slides tab: a sample's fields kept by the service (the /slides API, docs/slides.md).
// List and create slides; add fields one at a time with progress; the counts over the whole
// slide; review the red cells (least confident first, or in the review queue's order: what
// teaches the classifier most) with the mouse or the keyboard; accept the rest of a field's
// proposals at once; sign off, reopen, report and CSV. Text typed by users or sent by the
// service only goes into the page through textContent, never as HTML.
"use strict";

(function () {
  const { $, el, download, wireDrop, selectTab } = window.RBC;
  // "1 white cell", "2 white cells".
  const plural = (n, word) => n + " " + word + (n === 1 ? "" : "s");
  const KEYS = "123456789abcdefghijklmnopqrstuvwxyz";
  const PAGE = 200;
  const TOKEN_KEY = "rbc-user-token";
  const state = {
    slide: null, // GET /slides/{id}
    cells: [], // the review list as loaded (least confident first)
    total: 0,
    index: -1, // the selected cell in state.cells
    images: new Map(), // field id -> Promise<ImageBitmap>
    urls: new Map(), // field id -> blob: URL
    boxes: null, // Promise<Map field id -> red cells' boxes> (the fields' thumbnails)
    boxesKey: "", // the slide and field ids state.boxes was read for
    busy: false,
    uploading: false,
  };

  // --- talking to the service -------------------------------------------------------------

  function token() {
    return $("slides-token").value.trim();
  }

  function authHeaders() {
    const t = token();
    return t ? { Authorization: "Bearer " + t } : {};
  }

  class ApiError extends Error {
    constructor(status, detail) {
      super(explain(status, detail));
      this.status = status;
      this.detail = detail;
    }
  }

  function explain(status, detail) {
    const lead = {
      400: "The request was not understood",
      401: "A valid user token is needed",
      403: "Not allowed",
      404: "Not found",
      409: "Refused",
      413: "Too large",
      415: "This file type is not accepted",
      422: "Not accepted",
      503: "The service is not ready",
    }[status] || "The service answered with an error (" + status + ")";
    return detail ? lead + ": " + detail : lead + ".";
  }

  async function api(method, path, body) {
    const init = { method, headers: authHeaders() };
    if (body instanceof FormData) init.body = body;
    else if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, "the service could not be reached; check the connection and try again");
    }
    if (response.status === 204) return null;
    let data = null;
    try {
      data = await response.json();
    } catch (err) {
      data = null;
    }
    if (!response.ok) {
      let detail = data && data.detail;
      if (Array.isArray(detail)) detail = detail.map((d) => d.msg || String(d)).join("; ");
      throw new ApiError(response.status, typeof detail === "string" ? detail : response.statusText);
    }
    return data;
  }

  async function blob(path) {
    const response = await fetch(path, { headers: authHeaders() });
    if (!response.ok) throw new ApiError(response.status, response.statusText);
    return response.blob();
  }

  function showError(message) {
    const box = $("slides-error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  // --- the list ---------------------------------------------------------------------------

  function statusWords(slide) {
    return slide.status === "signed_off" ? "signed off" : "open";
  }

  async function loadList() {
    showError("");
    try {
      const list = await api("GET", "slides?limit=50");
      const details = await Promise.all(
        list.items.map((s) => api("GET", "slides/" + s.id).catch(() => null)));
      const tbody = $("slides-table").querySelector("tbody");
      tbody.replaceChildren();
      list.items.forEach((s, i) => {
        const d = details[i];
        const tr = el("tr");
        tr.dataset.slideId = String(s.id);
        const open = el("button", "secondary", "Open");
        open.type = "button";
        open.addEventListener("click", () => openSlide(s.id));
        const cell = el("td");
        cell.appendChild(open);
        tr.append(el("td", "", s.sample_id), el("td", "", statusWords(s)),
          el("td", "", String(s.field_count)), el("td", "", d ? String(d.cells_counted) : "?"), cell);
        tbody.appendChild(tr);
      });
      $("slides-empty").hidden = list.items.length > 0;
    } catch (err) {
      showError(err.message);
    }
  }

  async function createSlide(event) {
    event.preventDefault();
    showError("");
    const sample = $("slide-sample").value.trim();
    if (!sample) {
      showError("Give the sample id.");
      return;
    }
    const body = { sample_id: sample };
    const mpp = $("slide-mpp").value.trim();
    if (mpp) {
      const value = Number(mpp);
      if (!(value >= 0.01 && value <= 5)) {
        showError("The scale must be between 0.01 and 5 micrometres per pixel, or left empty.");
        return;
      }
      body.microns_per_pixel = value;
    }
    try {
      const slide = await api("POST", "slides", body);
      $("slide-sample").value = "";
      $("slide-mpp").value = "";
      await openSlide(slide.id);
    } catch (err) {
      showError(err.message);
    }
  }

  function showHome() {
    state.slide = null;
    $("slide-view").hidden = true;
    $("slides-home").hidden = false;
    if (location.hash.startsWith("#slide=")) history.replaceState(null, "", location.pathname + location.search);
    loadList();
  }

  // --- one slide --------------------------------------------------------------------------

  function signedOff() {
    return !!state.slide && state.slide.status === "signed_off";
  }

  async function openSlide(id) {
    showError("");
    state.images.clear();
    state.urls.forEach((u) => URL.revokeObjectURL(u));
    state.urls.clear();
    state.boxes = null;
    state.boxesKey = "";
    state.cells = [];
    state.index = -1;
    $("slide-progress").replaceChildren();
    $("review-message").textContent = "";
    $("slide-fields-message").textContent = "";
    $("review-label").value = "";
    $("review-needs").checked = false;
    try {
      state.slide = await api("GET", "slides/" + id);
    } catch (err) {
      showError(err.message);
      return;
    }
    history.replaceState(null, "", "#slide=" + id);
    $("slides-home").hidden = true;
    $("slide-view").hidden = false;
    renderSlide();
    await loadCells();
  }

  async function refreshSlide() {
    if (!state.slide) return;
    try {
      state.slide = await api("GET", "slides/" + state.slide.id);
      renderSlide();
    } catch (err) {
      showError(err.message);
    }
  }

  function keyFor(i) {
    return i < KEYS.length ? KEYS[i] : "";
  }

  function renderSlide() {
    const s = state.slide;
    $("slide-title").textContent = s.sample_id;
    const status = $("slide-status");
    status.textContent = statusWords(s) +
      (s.status === "signed_off" && s.signed_off_by ? " by " + s.signed_off_by + " at " +
        new Date(s.signed_off_at).toLocaleString() : "");
    status.className = "status " + s.status;
    $("slide-summary").textContent =
      s.cells_counted + " red cells counted in " + s.fields.length + " field" +
      (s.fields.length === 1 ? "" : "s") + " (" + s.red_cells + " found; " +
      plural(s.white_cells, "white cell") + " and " + plural(s.platelets, "platelet") +
      " not counted); " + s.reviewed +
      " reviewed, " + s.relabelled + " reclassified, " + s.needs_review_remaining +
      " flagged cells still to review." +
      (s.microns_per_pixel ? " Scale: " + s.microns_per_pixel + " µm per pixel." : "");
    const warnings = $("slide-warnings");
    warnings.replaceChildren();
    s.warnings.forEach((w) => warnings.appendChild(el("li", "warning", w)));

    const tbody = $("slide-table").querySelector("tbody");
    tbody.replaceChildren();
    s.classes
      .slice()
      .sort((a, b) => (s.counts[b] || 0) - (s.counts[a] || 0))
      .forEach((c) => {
        const tr = el("tr");
        tr.dataset.label = c;
        const pct = s.percentages[c] || 0;
        tr.append(el("td", "", c), el("td", "", String(s.counts[c] || 0)),
          el("td", "", pct.toFixed(1)), el("td", "grade", s.grades[c] || ""));
        tbody.appendChild(tr);
      });
    $("slide-grading").textContent = "Grades: " + s.grading.source + ". Cells counted: " +
      s.cells_counted + " (grading needs at least " + s.min_cells_for_grading + ").";

    const fields = $("slide-fields").querySelector("tbody");
    fields.replaceChildren();
    s.fields.forEach((f) => {
      const tr = el("tr");
      tr.dataset.fieldId = String(f.id);
      const name = el("td", "field-name");
      // The field with its red cells outlined (their boxes, as the review gallery cuts them).
      const thumb = el("canvas", "field-thumb");
      thumb.width = 160;
      thumb.height = 120;
      thumb.setAttribute("role", "img");
      thumb.setAttribute("aria-label", f.filename + ", red cells outlined");
      drawFieldThumb(thumb, f);
      name.append(thumb, el("span", "", f.filename));
      const remove = el("button", "secondary remove", "Remove");
      remove.type = "button";
      remove.disabled = signedOff();
      remove.addEventListener("click", () => removeField(f));
      // Every red cell of the field nobody has reviewed yet, confirmed at its proposed class.
      const accept = el("button", "secondary accept-rest", "Accept the rest");
      accept.type = "button";
      accept.disabled = signedOff();
      accept.title = "confirm every red cell of this field not reviewed yet at its proposed class";
      accept.addEventListener("click", () => acceptRest(f));
      const cell = el("td", "field-actions");
      cell.append(accept, remove);
      const scale = f.microns_per_pixel
        ? f.microns_per_pixel.toFixed(3) + (f.scale_estimated ? " (estimated)" : "") : "";
      tr.append(el("td", "", String(f.ordinal)), name, el("td", "", String(f.cells_counted)),
        el("td", "", scale), cell);
      fields.appendChild(tr);
    });

    // The class filter and the class buttons, with the key that assigns each class.
    const filter = $("review-label");
    const chosen = filter.value;
    filter.replaceChildren(el("option", "", "all classes"));
    filter.firstChild.value = "";
    s.classes.forEach((c) => {
      const option = el("option", "", c);
      option.value = c;
      filter.appendChild(option);
    });
    filter.value = s.classes.includes(chosen) ? chosen : "";
    const buttons = $("review-classes");
    buttons.replaceChildren();
    s.classes.forEach((c, i) => {
      const b = el("button", "class-button");
      b.type = "button";
      b.dataset.label = c;
      const key = keyFor(i);
      if (key) b.appendChild(el("kbd", "", key));
      b.appendChild(document.createTextNode(" " + c));
      b.addEventListener("click", () => review(c));
      buttons.appendChild(b);
    });

    const locked = signedOff();
    $("slide-signoff").disabled = locked;
    $("slide-reopen-box").hidden = !locked;
    $("slide-files").disabled = locked;
    $("slide-files-label").classList.toggle("disabled", locked);
    $("slide-drop").classList.toggle("disabled", locked);
    const base = "slides/" + s.id;
    $("slide-report").href = base + "/report";
    $("slide-csv").href = base + "/cells.csv";
    $("slide-csv").setAttribute("download", "slide-" + s.id + "-cells.csv");
    renderSelection();
  }

  // --- fields -----------------------------------------------------------------------------

  // Every red cell's box of the open slide, by field id: read once per set of fields (the
  // boxes do not change with a review), all pages of GET /slides/{id}/cells.
  function slideBoxes() {
    const slideId = state.slide.id;
    const key = slideId + ":" + state.slide.fields.map((f) => f.id).join(",");
    if (state.boxesKey !== key || !state.boxes) {
      state.boxesKey = key;
      state.boxes = (async () => {
        const byField = new Map();
        let offset = 0;
        for (;;) {
          const q = new URLSearchParams({ offset: String(offset), limit: "1000" });
          const page = await api("GET", "slides/" + slideId + "/cells?" + q.toString());
          page.items.forEach((c) => {
            if (!byField.has(c.field_id)) byField.set(c.field_id, []);
            byField.get(c.field_id).push(c.box);
          });
          offset += page.items.length;
          if (!page.items.length || offset >= page.total) break;
        }
        return byField;
      })();
      const failed = state.boxes;
      failed.catch(() => { if (state.boxes === failed) state.boxes = null; });
    }
    return state.boxes;
  }

  function drawFieldThumb(canvas, f) {
    const ctx = canvas.getContext("2d");
    Promise.all([fieldImage(f.id), slideBoxes()]).then(([image, byField]) => {
      const scale = Math.min(canvas.width / image.width, canvas.height / image.height);
      const w = Math.max(1, Math.round(image.width * scale));
      const h = Math.max(1, Math.round(image.height * scale));
      canvas.width = w;
      canvas.height = h;
      ctx.drawImage(image, 0, 0, w, h);
      const boxes = byField.get(f.id) || [];
      ctx.strokeStyle = "#1f7a1f";
      ctx.lineWidth = 1;
      boxes.forEach(([x0, y0, x1, y1]) => {
        ctx.strokeRect(x0 * scale + 0.5, y0 * scale + 0.5, (x1 - x0) * scale, (y1 - y0) * scale);
      });
      canvas.dataset.outlines = String(boxes.length);
    }).catch(() => {
      canvas.dataset.outlines = "failed";
    });
  }

  function fieldImage(fieldId) {
    if (!state.images.has(fieldId)) {
      const slideId = state.slide.id;
      const promise = blob("slides/" + slideId + "/fields/" + fieldId + "/image").then((b) => {
        state.urls.set(fieldId, URL.createObjectURL(b));
        return createImageBitmap(b);
      });
      promise.catch(() => state.images.delete(fieldId));
      state.images.set(fieldId, promise);
    }
    return state.images.get(fieldId);
  }

  async function addFields(files) {
    if (!state.slide || signedOff() || state.uploading) return;
    const list = Array.from(files);
    if (!list.length) return;
    state.uploading = true;
    showError("");
    const progress = $("slide-progress");
    progress.replaceChildren();
    const items = list.map((f, i) => {
      const li = el("li", "pending", "field " + (i + 1) + " of " + list.length + ", " + f.name + ": waiting");
      progress.appendChild(li);
      return li;
    });
    const slideId = state.slide.id;
    let added = 0;
    for (let i = 0; i < list.length; i += 1) {
      const file = list[i];
      const lead = "field " + (i + 1) + " of " + list.length + ", " + file.name + ": ";
      items[i].textContent = lead + "analysing…";
      items[i].className = "running";
      try {
        const form = new FormData();
        form.append("file", file, file.name);
        const body = await api("POST", "slides/" + slideId + "/fields", form);
        added += 1;
        items[i].textContent = lead + "added, " + body.field.cells_counted + " red cells counted" +
          (body.white_cells.length ? ", " + body.white_cells.length + " white cells" : "") +
          (body.scale && body.scale.estimated ? " (scale estimated)" : "");
        items[i].className = "done";
      } catch (err) {
        items[i].textContent = lead + "not added. " + err.message;
        items[i].className = "failed";
      }
      if (!state.slide || state.slide.id !== slideId) break;
      await refreshSlide();
    }
    state.uploading = false;
    $("slide-files").value = "";
    if (added && state.slide && state.slide.id === slideId) await loadCells();
  }

  async function acceptRest(f) {
    if (!state.slide || signedOff() || state.busy) return;
    showError("");
    const message = $("slide-fields-message");
    message.textContent = "";
    const lead = "Field " + f.ordinal + " (" + f.filename + "): ";
    const selected = state.cells[state.index];
    state.busy = true;
    renderSelection();
    let said = "";
    let refused = false;
    try {
      // The slide's version as shown: 409 if anything changed since (nothing is accepted).
      const done = await api("POST", "slides/" + state.slide.id + "/fields/" + f.id +
        "/accept-proposals", { version: state.slide.version });
      said = done.accepted
        ? plural(done.accepted, "cell") + " accepted at the proposed class."
        : "no cell left to review.";
    } catch (err) {
      refused = err.status === 409;
      said = "not accepted. " + err.message;
    }
    state.busy = false;
    await refreshSlide();
    if (refused) {
      said = signedOff()
        ? "the slide is signed off: nothing was changed."
        : "not accepted: the slide changed since it was shown (reloaded; look again).";
    }
    message.textContent = lead + said;
    await loadCells(selected && selected.id);
  }

  async function removeField(f) {
    if (signedOff()) return;
    showError("");
    try {
      await api("DELETE", "slides/" + state.slide.id + "/fields/" + f.id);
      state.images.delete(f.id);
      if (state.urls.has(f.id)) URL.revokeObjectURL(state.urls.get(f.id));
      state.urls.delete(f.id);
    } catch (err) {
      showError("Field " + f.ordinal + " (" + f.filename + ") was not removed. " + err.message);
    }
    await refreshSlide();
    await loadCells();
  }

  // --- review -----------------------------------------------------------------------------

  function queueOrder() {
    return $("review-order").value === "queue";
  }

  function cellQuery(offset, limit) {
    const q = new URLSearchParams({ offset: String(offset), limit: String(limit || PAGE) });
    if (queueOrder()) return "slides/" + state.slide.id + "/review-queue?" + q.toString();
    const label = $("review-label").value;
    if (label) q.set("label", label);
    if ($("review-needs").checked) q.set("needs_review", "true");
    return "slides/" + state.slide.id + "/cells?" + q.toString();
  }

  async function loadCells(keepId) {
    if (!state.slide) return;
    const slideId = state.slide.id;
    try {
      const page = await api("GET", cellQuery(0));
      if (!state.slide || state.slide.id !== slideId) return;
      state.cells = page.items;
      state.total = page.total;
      const at = keepId ? state.cells.findIndex((c) => c.id === keepId) : -1;
      state.index = at >= 0 ? at : (state.cells.length ? 0 : -1);
      renderGallery();
      renderSelection();
    } catch (err) {
      showError(err.message);
    }
  }

  // The next page. The queue loses the cells reviewed since it was read, and its order moves up
  // with them: read it again from the start, up to the cells still to review shown plus a page,
  // and add those not shown yet.
  async function loadMore() {
    try {
      let page;
      if (queueOrder()) {
        const pending = state.cells.filter((c) => !c.reviewed).length;
        const want = pending + PAGE;
        page = await api("GET", cellQuery(Math.max(0, want - 1000), Math.min(want, 1000)));
        const shown = new Set(state.cells.map((c) => c.id));
        page.items = page.items.filter((c) => !shown.has(c.id));
        page.total += state.cells.length - pending;
      } else {
        page = await api("GET", cellQuery(state.cells.length));
      }
      state.cells = state.cells.concat(page.items);
      state.total = page.total;
      renderGallery();
      renderSelection();
    } catch (err) {
      showError(err.message);
    }
  }

  function drawCell(canvas, cell) {
    const ctx = canvas.getContext("2d");
    ctx.fillStyle = "#f3f3f3";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    fieldImage(cell.field_id).then((image) => {
      const [x0, y0, x1, y1] = cell.box;
      const side = Math.max(x1 - x0, y1 - y0) * 1.25 + 4;
      const cx = (x0 + x1) / 2;
      const cy = (y0 + y1) / 2;
      ctx.imageSmoothingEnabled = true;
      ctx.drawImage(image, cx - side / 2, cy - side / 2, side, side, 0, 0, canvas.width, canvas.height);
    }).catch(() => {
      ctx.fillStyle = "#9b1c1c";
      ctx.font = "10px system-ui";
      ctx.fillText("no image", 4, canvas.height / 2);
    });
  }

  function thumbClasses(cell, i) {
    const classes = ["thumb"];
    if (cell.needs_review && !cell.reviewed) classes.push("flagged");
    if (cell.final_label && cell.final_label !== cell.proposed_label) classes.push("changed");
    if (cell.reviewed) classes.push("reviewed");
    if (cell.spot_check) classes.push("spot");
    if (i === state.index) classes.push("selected");
    return classes.join(" ");
  }

  function fillThumb(card, cell, i) {
    card.className = thumbClasses(cell, i);
    card.dataset.cellId = String(cell.id);
    card.dataset.label = cell.label || "";
    const text = card.querySelector(".label");
    text.textContent = cell.label + (cell.counted ? "" : " (edge)");
    card.querySelector(".conf").textContent =
      cell.confidence === null ? "" : (100 * cell.confidence).toFixed(0) + " %";
    const mark = card.querySelector(".mark");
    mark.textContent = cell.reviewed
      ? (cell.final_label !== cell.proposed_label ? "was " + cell.proposed_label : "confirmed")
      : (cell.needs_review ? "needs review" : (cell.spot_check ? "random check" : ""));
    mark.className = "mark " + (cell.reviewed ? "muted" : "review-mark");
  }

  function renderGallery() {
    const gallery = $("review-gallery");
    gallery.replaceChildren();
    state.cells.forEach((cell, i) => {
      const card = el("button");
      card.type = "button";
      card.tabIndex = -1;
      const canvas = el("canvas");
      canvas.width = canvas.height = 64;
      card.append(canvas, el("div", "label"), el("div", "conf muted"), el("div", "mark"));
      fillThumb(card, cell, i);
      drawCell(canvas, cell);
      card.addEventListener("click", () => select(i));
      gallery.appendChild(card);
    });
    $("review-count").textContent = state.total
      ? "showing " + state.cells.length + " of " + state.total + " cells"
      : "no cells to show";
    $("review-more").hidden = state.cells.length >= state.total;
  }

  function select(i) {
    if (i < 0 || i >= state.cells.length) return;
    const old = state.index;
    state.index = i;
    const cards = $("review-gallery").children;
    if (cards[old]) fillThumb(cards[old], state.cells[old], old);
    if (cards[i]) {
      fillThumb(cards[i], state.cells[i], i);
      if (cards[i].scrollIntoView) cards[i].scrollIntoView({ block: "nearest" });
    }
    renderSelection();
  }

  function renderSelection() {
    const cell = state.cells[state.index];
    const locked = signedOff() || !cell || state.busy;
    $("review-classes").querySelectorAll("button").forEach((b) => {
      b.disabled = locked;
      b.classList.toggle("current", !!cell && b.dataset.label === cell.label);
    });
    $("review-confirm").disabled = locked;
    const text = $("review-cell-text");
    const canvas = $("review-cell-canvas");
    if (!cell) {
      text.textContent = state.cells.length ? "Select a cell." : "No cells to review here.";
      canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
      return;
    }
    drawCell(canvas, cell);
    const field = state.slide.fields.find((f) => f.id === cell.field_id);
    text.textContent = "Cell #" + cell.id + (field ? " in field " + field.ordinal : "") + ": " +
      cell.label + (cell.confidence === null ? "" : " (" + (100 * cell.confidence).toFixed(1) +
      " % confident)") + "; proposed " + cell.proposed_label +
      (typeof cell.margin === "number" ? ", ahead of the next class by " +
        (100 * cell.margin).toFixed(1) + " points" : "") +
      (cell.spot_check ? "; a random check" : "") +
      (cell.reviewed ? "; reviewed by " + cell.reviewed_by : "") +
      (cell.counted ? "" : "; cut by the edge, not counted");
  }

  async function review(label) {
    const cell = state.cells[state.index];
    if (!cell || signedOff() || state.busy) return;
    state.busy = true;
    renderSelection();
    const message = $("review-message");
    message.textContent = "";
    const body = { version: cell.version };
    if (label) body.label = label;
    const at = state.index;
    try {
      // The queue's marks (margin, random check) stay with the cell.
      const updated = Object.assign({}, cell,
        await api("PATCH", "slides/" + state.slide.id + "/cells/" + cell.id, body));
      state.cells[at] = updated;
      const card = $("review-gallery").children[at];
      if (card) fillThumb(card, updated, at);
      state.busy = false;
      await refreshSlide();
      message.textContent = "Cell #" + cell.id + (label && label !== cell.label
        ? ": " + cell.label + " → " + label : ": " + updated.label + " confirmed");
      if (at + 1 < state.cells.length) select(at + 1);
      else renderSelection();
    } catch (err) {
      state.busy = false;
      if (err.status === 409) {
        await refreshSlide();
        if (signedOff()) {
          message.textContent = "The slide is signed off: nothing was changed. " + err.detail;
        } else {
          message.textContent = "This cell was changed by someone else: reloaded.";
          await loadCells(cell.id);
        }
      } else {
        message.textContent = err.message;
      }
      renderSelection();
    }
  }

  function onKey(event) {
    if ($("panel-slides").hidden || $("slide-view").hidden || !state.slide) return;
    const target = event.target;
    if (target && target.closest && target.closest("input, select, textarea")) return;
    if (event.altKey || event.ctrlKey || event.metaKey) return;
    const key = event.key;
    if (key === "ArrowRight" || key === "ArrowDown") {
      event.preventDefault();
      select(Math.min(state.index + 1, state.cells.length - 1));
    } else if (key === "ArrowLeft" || key === "ArrowUp") {
      event.preventDefault();
      select(Math.max(state.index - 1, 0));
    } else if (key === "Enter") {
      if (target && target.closest && target.closest("button, a") &&
        !target.closest("#review-gallery")) return; // Enter on a button presses it
      event.preventDefault();
      review(null);
    } else if (key.length === 1) {
      const i = KEYS.indexOf(key.toLowerCase());
      if (i >= 0 && i < state.slide.classes.length) {
        event.preventDefault();
        review(state.slide.classes[i]);
      }
    }
  }

  // --- sign-off, reopen, exports ----------------------------------------------------------

  async function signOff() {
    if (!state.slide) return;
    showError("");
    try {
      state.slide = Object.assign(state.slide,
        await api("POST", "slides/" + state.slide.id + "/sign-off", { version: state.slide.version }));
    } catch (err) {
      showError(err.status === 409
        ? "Not signed off: the slide changed since it was shown (reloaded; look again). " + err.detail
        : err.message);
    }
    await refreshSlide();
  }

  async function reopenSlide() {
    const reason = $("slide-reopen-reason").value.trim();
    if (!reason) {
      showError("Give the reason for reopening: it goes into the audit trail.");
      $("slide-reopen-reason").focus();
      return;
    }
    showError("");
    try {
      await api("POST", "slides/" + state.slide.id + "/reopen", { reason });
      $("slide-reopen-reason").value = "";
    } catch (err) {
      showError(err.message);
    }
    await refreshSlide();
  }

  // A plain link carries no Authorization header: with a token, fetch and save the file.
  function withToken(name) {
    return async (event) => {
      if (!token() || !state.slide) return;
      event.preventDefault();
      try {
        const b = await blob(event.currentTarget.getAttribute("href"));
        download(b, "slide-" + state.slide.id + "-" + name);
      } catch (err) {
        showError(err.message);
      }
    };
  }

  // --- wiring -----------------------------------------------------------------------------

  $("slides-token").value = sessionStorage.getItem(TOKEN_KEY) || "";
  $("slides-token").addEventListener("change", () => {
    sessionStorage.setItem(TOKEN_KEY, token());
    if (!$("panel-slides").hidden) {
      if (state.slide) openSlide(state.slide.id);
      else loadList();
    }
  });
  $("slide-create-form").addEventListener("submit", createSlide);
  $("slide-back").addEventListener("click", showHome);
  $("slide-files").addEventListener("change", (e) => addFields(e.target.files));
  wireDrop($("slide-drop"), addFields);
  // The queue has its own order and no filters.
  function showOrder() {
    const queue = queueOrder();
    $("review-label").disabled = queue;
    $("review-needs").disabled = queue;
    $("review-order-note").textContent = queue
      ? "(red cells not reviewed yet: within each proposed class the least sure first, the " +
        "classes in turn, and one cell in ten drawn at random)"
      : "(red cells of the whole slide, least confident first)";
  }

  showOrder();
  $("review-order").addEventListener("change", () => {
    showOrder();
    loadCells();
  });
  $("review-label").addEventListener("change", () => loadCells());
  $("review-needs").addEventListener("change", () => loadCells());
  $("review-confirm").addEventListener("click", () => review(null));
  $("review-more").addEventListener("click", loadMore);
  $("slide-signoff").addEventListener("click", signOff);
  $("slide-reopen").addEventListener("click", reopenSlide);
  $("slide-report").addEventListener("click", withToken("report.html"));
  $("slide-csv").addEventListener("click", withToken("cells.csv"));
  document.addEventListener("keydown", onKey);
  document.addEventListener("rbc:tab", (e) => {
    if (e.detail === "slides" && !state.slide) loadList();
  });

  // A reload keeps the open slide (its review is kept by the service).
  const match = /^#slide=(\d+)$/.exec(location.hash);
  if (match) {
    selectTab("slides");
    openSlide(Number(match[1]));
  }
})();
