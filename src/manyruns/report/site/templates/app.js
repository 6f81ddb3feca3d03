// The report's page: galleries drawn from sprite sheets, the example panel, browsing by class.
// Data come as script files (data/meta.js, then data/<split>-<chunk>.js on demand): fetch()
// is refused from file:// pages.
"use strict";

const META = window.MR_META;
const MR = (window.MR = { chunks: {}, waiting: {} });
const THUMB = 56; // displayed thumbnail size in CSS pixels
const BIG = 168;

MR.chunk = function (split, c, data) {
  const key = split + "-" + c;
  MR.chunks[key] = data;
  (MR.waiting[key] || []).forEach((f) => f(data));
  delete MR.waiting[key];
};

function loadChunk(split, c, done) {
  const key = split + "-" + c;
  if (MR.chunks[key]) return done(MR.chunks[key]);
  if (MR.waiting[key]) return MR.waiting[key].push(done);
  MR.waiting[key] = [done];
  const s = document.createElement("script");
  s.src = "data/" + key + ".js";
  s.onerror = () => showError("could not load " + s.src);
  document.head.appendChild(s);
}

function row(split, index, done) {
  const c = Math.floor(index / META.chunk);
  loadChunk(split, c, (data) => {
    const i = index - c * META.chunk;
    const out = {};
    for (const name in data) out[name] = data[name][i];
    done(out);
  });
}

function showError(text) {
  const p = document.createElement("p");
  p.className = "warning";
  p.textContent = text;
  document.querySelector("main").prepend(p);
}

// ---------------------------------------------------------------------------- thumbnails

function thumb(split, index, caption, size) {
  size = size || THUMB;
  const a = document.createElement("a");
  a.className = "thumb";
  a.href = "#" + split + "/" + index;
  a.dataset.split = split;
  a.dataset.index = index;
  a.title = split + " #" + index;
  const img = document.createElement("div");
  img.className = "img";
  img.style.width = img.style.height = size + "px";
  const sp = META.sprites[split];
  if (sp) {
    const sheet = Math.floor(index / sp.per_sheet);
    const k = index - sheet * sp.per_sheet;
    const scale = size / Math.max(sp.width, sp.height);
    const rows = Math.ceil(Math.min(sp.per_sheet, META.sizes[split] - sheet * sp.per_sheet) / sp.cols);
    img.style.backgroundImage = "url(" + sp.files[sheet] + ")";
    img.style.backgroundSize = sp.cols * sp.width * scale + "px " + rows * sp.height * scale + "px";
    img.style.backgroundPosition = -(k % sp.cols) * sp.width * scale + "px " + -Math.floor(k / sp.cols) * sp.height * scale + "px";
  } else {
    img.textContent = "#" + index;
  }
  a.appendChild(img);
  const cap = document.createElement("span");
  cap.className = "caption";
  cap.textContent = caption || "#" + index;
  a.appendChild(cap);
  a.addEventListener("click", (e) => {
    e.preventDefault();
    openPanel(split, index);
  });
  return a;
}

function drawGallery(el, items) {
  el.textContent = "";
  if (!items || !items.length) {
    el.textContent = "none";
    return;
  }
  for (const item of items) {
    if (item.pair) {
      const box = document.createElement("div");
      box.className = "pair";
      item.pair.forEach((p) => box.appendChild(thumb(p.split, p.index, p.caption)));
      const cap = document.createElement("div");
      cap.className = "pair-caption";
      cap.textContent = item.caption;
      box.appendChild(cap);
      el.appendChild(box);
    } else {
      el.appendChild(thumb(item.split, item.index, item.caption));
    }
  }
}

// --------------------------------------------------------------------------------- panel

function fmt(x, digits) {
  return x === null || x === undefined ? "n/a" : Number(x).toFixed(digits === undefined ? 3 : digits);
}

function field(table, name, value, id) {
  const tr = document.createElement("tr");
  const th = document.createElement("th");
  th.textContent = name;
  const td = document.createElement("td");
  td.textContent = value;
  if (id) td.id = id;
  tr.append(th, td);
  table.appendChild(tr);
}

function list(title, split, indices, values, label, positive) {
  // positive: only entries with a value above 0 (an influence of 0 names no influencer)
  const keep = (j, k) => j >= 0 && (!positive || (values[k] !== null && values[k] > 0));
  if (!indices.some(keep)) return;
  const box = document.getElementById("panel-lists");
  const h = document.createElement("h3");
  h.textContent = title;
  const g = document.createElement("div");
  g.className = "gallery small";
  indices.forEach((j, k) => {
    if (keep(j, k)) g.appendChild(thumb(split, j, label + " " + fmt(values[k], 3), 40));
  });
  box.append(h, g);
}

function openPanel(split, index) {
  const n = META.sizes[split];
  if (!(index >= 0 && index < n)) return showError(split + " index " + index + " is not in 0.." + (n - 1));
  row(split, index, (r) => {
    const panel = document.getElementById("panel");
    const cls = (c) => (c === null || c === undefined ? "n/a" : META.classes[c]);
    document.getElementById("panel-title").textContent = split + " example #" + index;
    const img = document.getElementById("panel-image");
    img.textContent = "";
    img.appendChild(thumb(split, index, "", BIG));
    const t = document.getElementById("panel-fields");
    t.textContent = "";
    field(t, "label", cls(r.label), "panel-label");
    if (split === "train") {
      if (r.given !== undefined) field(t, "label the runs saw", cls(r.given), "panel-given");
      if (r.acc !== undefined) field(t, "runs correct", fmt(r.acc), "panel-acc");
      if (r.acc_out !== undefined) field(t, "held-out accuracy", fmt(r.acc_out) + (r.n_out !== undefined ? " (" + r.n_out + " runs held it out)" : ""), "panel-acc-out");
      if (r.mem !== undefined) field(t, "memorization", fmt(r.mem) + " ± " + fmt(r.mem_se), "panel-memorization");
      if (r.cscore !== undefined) field(t, "C-score", fmt(r.cscore), "panel-cscore");
      if (r.issue !== undefined) field(t, "label issue", r.issue ? "yes: suggested " + cls(r.suggested) : "no", "panel-issue");
      if (r.quality !== undefined) field(t, "label quality", fmt(r.quality), "panel-quality");
      if (r.dup !== undefined) field(t, "near-duplicate", r.dup ? "yes" : "no", "panel-dup");
      if (r.outlier !== undefined) field(t, "outlier", r.outlier ? "yes" : "no", "panel-outlier");
    } else {
      if (r.acc !== undefined) field(t, "runs correct", fmt(r.acc), "panel-acc");
      if (r.leak !== undefined) field(t, "leak (copy in training set)", r.leak ? "yes" : "no", "panel-leak");
    }
    const stale = Object.keys(META.stale);
    if (stale.length) field(t, "computed on other runs", stale.join(", "), "panel-stale");
    document.getElementById("panel-lists").textContent = "";
    if (r.nn) list("Nearest training examples (kernel)", "train", r.nn, r.nn_k, "k");
    if (r.infl_train) list("Top influencers (training examples)", "train", r.infl_train, r.infl_value, "infl", true);
    if (r.infl_test) list("Most influenced test examples", "test", r.infl_test, r.infl_value, "infl", true);
    panel.hidden = false;
    history.replaceState(null, "", "#" + split + "/" + index);
  });
}

// -------------------------------------------------------------------------------- browse

const browse = { page: 0, per: 120, indices: null };

function browseIndices(split, cls, done) {
  if (cls === "") return done(null);
  const n = META.sizes[split];
  const chunks = Math.ceil(n / META.chunk);
  const found = [];
  let left = chunks;
  for (let c = 0; c < chunks; c++) {
    loadChunk(split, c, (data) => {
      data.label.forEach((y, i) => {
        if (String(y) === cls) found.push(c * META.chunk + i);
      });
      if (--left === 0) done(found.sort((a, b) => a - b));
    });
  }
}

function drawBrowse() {
  const split = document.getElementById("browse-split").value;
  const n = browse.indices ? browse.indices.length : META.sizes[split];
  const pages = Math.max(1, Math.ceil(n / browse.per));
  browse.page = Math.min(Math.max(browse.page, 0), pages - 1);
  const start = browse.page * browse.per;
  const items = [];
  for (let k = start; k < Math.min(n, start + browse.per); k++) {
    const i = browse.indices ? browse.indices[k] : k;
    items.push({ split: split, index: i, caption: "#" + i });
  }
  drawGallery(document.getElementById("browse-gallery"), items);
  document.getElementById("page-info").textContent = "page " + (browse.page + 1) + " of " + pages + " (" + n + " examples)";
}

function refreshBrowse() {
  const split = document.getElementById("browse-split").value;
  const cls = document.getElementById("browse-class").value;
  browseIndices(split, cls, (indices) => {
    browse.indices = indices;
    browse.page = 0;
    drawBrowse();
  });
}

// ---------------------------------------------------------------------------------- start

document.querySelectorAll(".gallery[data-gallery]").forEach((el) => drawGallery(el, META.galleries[el.dataset.gallery]));
const classSelect = document.getElementById("browse-class");
META.classes.forEach((name, c) => {
  const o = document.createElement("option");
  o.value = String(c);
  o.textContent = name;
  classSelect.appendChild(o);
});
document.getElementById("browse-split").addEventListener("change", refreshBrowse);
classSelect.addEventListener("change", refreshBrowse);
document.getElementById("prev").addEventListener("click", () => { browse.page--; drawBrowse(); });
document.getElementById("next").addEventListener("click", () => { browse.page++; drawBrowse(); });
document.getElementById("lookup").addEventListener("submit", (e) => {
  e.preventDefault();
  const v = document.getElementById("browse-index").value;
  if (v !== "") openPanel(document.getElementById("browse-split").value, parseInt(v, 10));
});
document.getElementById("panel-close").addEventListener("click", () => { document.getElementById("panel").hidden = true; });
drawBrowse();
const m = /^#(train|test)\/(\d+)$/.exec(location.hash);
if (m) openPanel(m[1], parseInt(m[2], 10));
