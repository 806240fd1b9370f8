// LineAR: shows, under each LineAR sampler, the token line being generated during a run and,
// after it, the KV memory used against what the full cache would need, the saving and tokens/s.
// The server sends "linear_ar.progress" once per finished line and "linear_ar.stats" once per run.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const SAMPLERS = new Set(["LineAR_ClassSampler", "LineAR_TextSampler"]);
const STRIP = 22; // px below the node

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

function drawStrip(node, ctx) {
  const progress = node.linearProgress;
  const stats = node.linearStats;
  if (!progress && !stats) return;
  const width = node.size[0];
  const y = node.size[1] + 4;
  ctx.save();
  ctx.fillStyle = "rgba(20, 20, 24, 0.85)";
  ctx.beginPath();
  ctx.roundRect(0, y, width, STRIP, 5);
  ctx.fill();
  if (progress) {
    ctx.fillStyle = "#2a9d8f";
    ctx.beginPath();
    ctx.roundRect(0, y, (width * progress.line) / progress.lines, STRIP, 5);
    ctx.fill();
  }
  ctx.fillStyle = "#f1f1f1";
  ctx.font = "12px sans-serif";
  ctx.textBaseline = "middle";
  const text = progress ? `line ${progress.line} / ${progress.lines}` : statsLine(stats);
  ctx.fillText(text, 8, y + STRIP / 2, width - 16);
  ctx.restore();
}

app.registerExtension({
  name: "LineAR.KVStats",

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!SAMPLERS.has(nodeData.name)) return;
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDrawForeground?.apply(this, arguments);
      drawStrip(this, ctx);
    };
  },

  setup() {
    api.addEventListener("linear_ar.progress", ({ detail }) => {
      const node = samplerNode(detail.node);
      if (!node) return;
      node.linearProgress = { line: detail.line, lines: detail.lines };
      node.setDirtyCanvas(true, false);
    });
    api.addEventListener("linear_ar.stats", ({ detail }) => {
      const node = samplerNode(detail.node);
      if (!node) return;
      node.linearProgress = null;
      node.linearStats = detail;
      node.setDirtyCanvas(true, false);
    });
    // A run that ends early (Cancel, error) leaves no half-filled bar behind.
    for (const event of ["execution_interrupted", "execution_error"]) {
      api.addEventListener(event, () => {
        for (const node of app.graph?._nodes ?? []) {
          if (SAMPLERS.has(node.comfyClass) && node.linearProgress) {
            node.linearProgress = null;
            node.setDirtyCanvas(true, false);
          }
        }
      });
    }
  },
});
