// LineAR: a strip at the bottom of each LineAR sampler shows the token line being generated during a
// run and, after it, the KV memory used against what the full cache would need, the saving and tokens/s.
// The server sends "linear_ar.progress" once per finished line and "linear_ar.stats" once per run.
//
// The strip is a DOM widget (`node.addDOMWidget`, the frontend's API for HTML inside a node): the
// classic canvas lays it over the node, and "Nodes 2.0" (Comfy.VueNodes.Enabled), where nodes are DOM
// elements and `onDrawForeground` never runs, mounts the same element inside the node.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const SAMPLERS = new Set(["LineAR_ClassSampler", "LineAR_TextSampler"]);
const STRIP = 22; // px
const IDLE = "KV stats appear here after a run";

function samplerNode(id) {
  const node = app.graph?.getNodeById(Number(String(id).split(":").pop()));
  return SAMPLERS.has(node?.comfyClass) ? node : null;
}

function mib(bytes) {
  return (bytes / 2 ** 20).toFixed(bytes < 10 * 2 ** 20 ? 2 : 1);
}

export function statsLine(stats) {
  const saved = (stats.kv_saving * 100).toFixed(1);
  return `KV ${mib(stats.peak_kv_bytes)} / ${mib(stats.full_kv_bytes)} MiB full · −${saved}% · ` +
    `${stats.tokens_per_s.toFixed(1)} tok/s`;
}

function makeStrip() {
  const element = document.createElement("div");
  element.className = "linear-ar-strip";
  Object.assign(element.style, {
    position: "relative", boxSizing: "border-box", height: `${STRIP}px`, minHeight: `${STRIP}px`,
    borderRadius: "5px", overflow: "hidden", background: "rgba(20, 20, 24, 0.85)",
    font: "12px sans-serif", color: "#f1f1f1",
  });
  const bar = document.createElement("div");
  Object.assign(bar.style, { position: "absolute", inset: "0 auto 0 0", width: "0", background: "#2a9d8f" });
  const text = document.createElement("span");
  text.className = "linear-ar-strip-text";
  Object.assign(text.style, {
    position: "relative", display: "block", padding: "0 8px", lineHeight: `${STRIP}px`,
    whiteSpace: "nowrap", overflow: "hidden", textOverflow: "ellipsis", opacity: "0.6",
  });
  text.textContent = IDLE;
  element.append(bar, text);
  return { element, bar, text };
}

function addStrip(node) {
  const strip = makeStrip();
  const widget = node.addDOMWidget("linear_ar_strip", "linear_ar_strip", strip.element, {
    serialize: false, // never in widgets_values nor in the prompt: saved workflows keep their layout
    hideOnZoom: false,
    margin: 4,
    getMinHeight: () => STRIP + 8,
    getMaxHeight: () => STRIP + 8,
    getValue: () => "",
    setValue: () => {},
  });
  widget.serialize = false;
  node.linearStrip = strip;
}

/** Show ``progress`` ({line, lines}) or, when it is null, ``stats`` (or the idle hint). */
function show(node, progress, stats) {
  node.linearProgress = progress;
  if (stats !== undefined) node.linearStats = stats;
  const strip = node.linearStrip;
  if (!strip) return;
  const done = node.linearStats;
  strip.bar.style.width = progress ? `${(100 * progress.line) / progress.lines}%` : "0";
  strip.text.textContent = progress ? `line ${progress.line} / ${progress.lines}` : done ? statsLine(done) : IDLE;
  strip.text.style.opacity = progress || done ? "1" : "0.6";
  node.setDirtyCanvas?.(true, false);
}

app.registerExtension({
  name: "LineAR.KVStats",

  nodeCreated(node) {
    if (SAMPLERS.has(node.comfyClass)) addStrip(node);
  },

  setup() {
    api.addEventListener("linear_ar.progress", ({ detail }) => {
      const node = samplerNode(detail.node);
      if (node) show(node, { line: detail.line, lines: detail.lines });
    });
    api.addEventListener("linear_ar.stats", ({ detail }) => {
      const node = samplerNode(detail.node);
      if (node) show(node, null, detail);
    });
    // A run that ends early (Cancel, error) leaves no half-filled bar behind.
    for (const event of ["execution_interrupted", "execution_error"]) {
      api.addEventListener(event, () => {
        for (const node of app.graph?._nodes ?? []) {
          if (SAMPLERS.has(node.comfyClass) && node.linearProgress) show(node, null);
        }
      });
    }
  },
});
