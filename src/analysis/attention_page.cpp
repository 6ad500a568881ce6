// The interactive attention viewer (self-contained HTML + canvas + JS; no network).
#include "mlxterp/analysis_attention.hpp"
#include "mlxterp/error.hpp"
#include "mlxterp/util.hpp"

namespace mlxterp {

namespace {

const char* kCss = R"CSS(
.mx-att { display: flex; flex-wrap: wrap; gap: 20px; align-items: flex-start; }
.mx-att-controls { margin: 8px 0 12px; font-size: 14px; }
.mx-att-controls label { margin-right: 14px; }
.mx-thumbs { display: grid; grid-template-columns: repeat(4, 74px); gap: 6px; }
.mx-thumb { text-align: center; font-size: 11px; cursor: pointer; }
.mx-thumb canvas { border: 2px solid #ddd; border-radius: 3px; display: block; }
.mx-thumb.sel canvas { border-color: #d62728; }
.mx-main { position: relative; }
.mx-main canvas { border: 1px solid #ccc; }
.mx-tip { position: absolute; pointer-events: none; background: rgba(20,20,20,.88); color: #fff; font-size: 12px;
          padding: 3px 6px; border-radius: 3px; white-space: pre; display: none; }
.mx-tokens { max-width: 900px; line-height: 2; font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: 13px; }
.mx-tok { padding: 2px 1px; margin: 0 1px; border-radius: 2px; cursor: pointer; white-space: pre; }
.mx-tok.locked { outline: 2px solid #d62728; }
.mx-info { font-size: 13px; min-height: 1.4em; margin: 4px 0; }
)CSS";

const char* kJs = R"JS(
const D = JSON.parse(document.getElementById("mx-att-data").textContent);
const L = D.layers.length, H = D.weights[0].length, T = D.tokens.length;
let layer = 0, head = 0, lockedHead = false, tokLock = -1, dirFrom = true;
const slider = document.getElementById("mx-layer"), layerLabel = document.getElementById("mx-layer-label");
const thumbs = document.getElementById("mx-thumbs"), main = document.getElementById("mx-main-canvas");
const tip = document.getElementById("mx-tip"), info = document.getElementById("mx-info");
const toks = document.getElementById("mx-tokens"), dirSel = document.getElementById("mx-dir");
slider.max = String(L - 1);
function color(v) { const r = Math.round(247 - 200 * v), g = Math.round(251 - 150 * v), b = Math.round(255 - 50 * v);
                    return "rgb(" + r + "," + g + "," + b + ")"; }
function shown(s) { return s.replace(/\n/g, "\u23CE").replace(/^ /, "\u2423"); }
function draw(canvas, A, size) {
  const ctx = canvas.getContext("2d"), c = size / T;
  ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, size, size);
  for (let i = 0; i < T; i++) for (let j = 0; j <= i && j < A[i].length; j++) {
    ctx.fillStyle = color(Math.min(1, Math.max(0, A[i][j]))); ctx.fillRect(j * c, i * c, Math.ceil(c), Math.ceil(c)); }
}
const MAIN = Math.max(240, Math.min(560, T * 22));
main.width = MAIN; main.height = MAIN;
function buildThumbs() {
  thumbs.innerHTML = "";
  for (let h = 0; h < H; h++) {
    const d = document.createElement("div"); d.className = "mx-thumb" + (h === head ? " sel" : "");
    const cv = document.createElement("canvas"); cv.width = 64; cv.height = 64; draw(cv, D.weights[layer][h], 64);
    d.appendChild(cv); d.appendChild(document.createTextNode("L" + D.layers[layer] + "H" + h));
    d.addEventListener("mouseenter", () => { if (!lockedHead) { head = h; render(false); } });
    d.addEventListener("click", () => { head = h; lockedHead = true; render(true); });
    thumbs.appendChild(d);
  }
}
function renderTokens() {
  const A = D.weights[layer][head];
  [...toks.children].forEach((el, k) => {
    let v = 0;
    if (tokLock >= 0) v = dirFrom ? (k <= tokLock ? A[tokLock][k] : 0) : (k >= tokLock ? A[k][tokLock] : 0);
    el.style.background = tokLock >= 0 ? color(v) : "";
    el.classList.toggle("locked", k === tokLock);
    el.title = tokLock >= 0 ? (100 * v).toFixed(1) + "%" : "position " + k;
  });
  if (tokLock >= 0) {
    const row = [];
    for (let k = 0; k < T; k++) { const v = dirFrom ? (k <= tokLock ? A[tokLock][k] : 0) : (k >= tokLock ? A[k][tokLock] : 0); if (v > 0.05) row.push([v, k]); }
    row.sort((a, b) => b[0] - a[0]);
    info.textContent = (dirFrom ? "'" + shown(D.tokens[tokLock]) + "' attends to: " : "attending to '" + shown(D.tokens[tokLock]) + "': ") +
      row.slice(0, 5).map(([v, k]) => "'" + shown(D.tokens[k]) + "'@" + k + " " + (100 * v).toFixed(1) + "%").join(", ");
  }
}
function render(rebuild) {
  layerLabel.textContent = "layer " + D.layers[layer] + " (" + (layer + 1) + " of " + L + "), head " + head + (lockedHead ? " [locked]" : "");
  if (rebuild) buildThumbs(); else [...thumbs.children].forEach((d, h) => d.classList.toggle("sel", h === head));
  draw(main, D.weights[layer][head], MAIN);
  renderTokens();
}
D.tokens.forEach((t, k) => {
  const s = document.createElement("span"); s.className = "mx-tok"; s.textContent = shown(t);
  s.addEventListener("click", () => { tokLock = tokLock === k ? -1 : k; renderTokens(); });
  toks.appendChild(s);
});
main.addEventListener("mousemove", (e) => {
  const r = main.getBoundingClientRect(), c = MAIN / T;
  const j = Math.floor((e.clientX - r.left) / c), i = Math.floor((e.clientY - r.top) / c);
  if (i < 0 || j < 0 || i >= T || j >= T || j > i) { tip.style.display = "none"; return; }
  const v = D.weights[layer][head][i][j];
  tip.textContent = "'" + shown(D.tokens[i]) + "'@" + i + " \u2192 '" + shown(D.tokens[j]) + "'@" + j + ": " + (100 * v).toFixed(1) + "%";
  tip.style.left = (e.clientX - r.left + 12) + "px"; tip.style.top = (e.clientY - r.top + 12) + "px"; tip.style.display = "block";
});
main.addEventListener("mouseleave", () => { tip.style.display = "none"; });
main.addEventListener("click", () => { lockedHead = !lockedHead; render(false); });
slider.addEventListener("input", () => { layer = Number(slider.value); render(true); });
dirSel.addEventListener("change", () => { dirFrom = dirSel.value === "from"; renderTokens(); });
render(true);
document.body.dataset.mxReady = "1";
)JS";

}  // namespace

report::Page attention_page(const AttentionPatterns& p, const HeadScores* scores) {
  MLXTERP_CHECK(p.weights.defined() && p.weights.dim() == 4 && p.weights.size(0) > 0, "attention page: no patterns");
  report::Page page("Attention patterns");
  std::string text;
  for (const auto& t : p.tokens) text += t;
  page.html("<p class=\"mx-meta\">Input (" + std::to_string(p.ids.size()) + " tokens): <code>" + report::html_escape(text) +
            "</code></p>");
  page.style(kCss);
  page.paragraph("Rows are queries, columns keys (lower triangle: causal). Hover a head thumbnail to preview it, click to "
                 "lock it; hover the large pattern for exact weights; click a token to colour the strip by its attention.");
  page.html(
      "<div class=\"mx-att-controls\"><label>Layer <input type=\"range\" id=\"mx-layer\" min=\"0\" max=\"0\" value=\"0\"></label>"
      "<span id=\"mx-layer-label\"></span> &nbsp; <label>Token strip: <select id=\"mx-dir\"><option value=\"from\">"
      "attention from the clicked token</option><option value=\"to\">attention to the clicked token</option></select></label></div>"
      "<div class=\"mx-att\"><div class=\"mx-thumbs\" id=\"mx-thumbs\"></div><div class=\"mx-main\"><canvas id=\"mx-main-canvas\">"
      "</canvas><div class=\"mx-tip\" id=\"mx-tip\"></div></div></div>"
      "<div class=\"mx-info\" id=\"mx-info\"></div><div class=\"mx-tokens\" id=\"mx-tokens\"></div>");
  if (scores) {
    page.heading("Head scores");
    report::Table t;
    t.header = {"head"};
    for (const auto& [name, _] : scores->scores) t.header.push_back(name);
    for (size_t li = 0; li < scores->layers.size(); ++li)
      for (int64_t h = 0; h < scores->n_heads; ++h) {
        std::vector<std::string> row = {"L" + std::to_string(scores->layers[li]) + "H" + std::to_string(h)};
        for (const auto& [name, s] : scores->scores) row.push_back(report::fmt(s[int64_t(li)][h].item<double>(), "%.3f"));
        t.rows.push_back(row);
      }
    page.table(t);
    for (const auto& [name, s] : scores->scores) {
      report::Heatmap hm;
      hm.title = name;
      hm.values = report::Matrix::from(s);
      for (int l : scores->layers) hm.row_labels.push_back("L" + std::to_string(l));
      for (int64_t h = 0; h < scores->n_heads; ++h) hm.col_labels.push_back("H" + std::to_string(h));
      hm.show_values = true;
      hm.diverging = name == "copying";
      page.html(report::heatmap_svg(hm));
    }
  }
  page.data("mx-att-data", p.to_json(3));
  page.script(kJs);
  return page;
}

}  // namespace mlxterp
