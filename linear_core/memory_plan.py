"""Will a request fit on a device, and what would make it fit: the ``plan`` command and the node check.

Peak = weights + max(LineAR cache + decoder activations, image decoder work). The weights are
counted from the module tree after quantization (`quantize.linear_bytes`, no weight is read: a
random-weight shape or a real folder is built on the meta device); the cache is the exact
`session.planned_cache_bytes`; activations are an estimate from the shapes (prefill hidden and
FFN states, attention scores, the line-boundary scoring and the logits work). When it does not
fit, the plan lists what does: a smaller budget, a smaller batch, int8/int4, or offloading the last
decoder layers to CPU RAM with accelerate (with the PCIe traffic that costs per token).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn

from .layout import Budget, LineLayout
from .pipeline import LOGIT_WORK_BYTES
from .quantize import MODES, linear_bytes, tensor_bytes
from .session import planned_cache_bytes
from .settings import CacheSettings

GIB = 2 ** 30
#: host → device copy speed assumed for offloaded layers (PCIe 4.0 x16 in practice); ``--pcie-gbps``
PCIE_BYTES_PER_S = 25e9
#: budgets tried, largest first, when the asked one does not fit
BUDGETS = ("1/4", "1/6", "1/8", "1/12", "1/16")


@dataclass(frozen=True)
class PlanModel:
    """What the planner needs of a model: its modules (meta or real), the request's geometry."""

    name: str
    weights: nn.Module  # every weight the run holds on the device (decoder stack, embeddings, head, VQ)
    adapter: nn.Module  # has ``.backbone``: the decoder stack
    layout: LineLayout  # the raster, prefix length included
    rows_per_image: int  # batched rows of one image (2 with CFG)
    vocab: int
    image_work_bytes: int = 0  # the image decoder's activations for one image
    backbone_path: str = "backbone"  # the decoder stack's module name inside ``weights``


@dataclass
class MemoryPlan:
    model: str
    device: str
    device_memory: int
    batch: int
    policy: str
    budget: str
    quantize: str
    weight_bytes: int
    cache_bytes: int
    activation_bytes: int
    image_decode_bytes: int
    peak_bytes: int
    fits: bool
    suggestions: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def message(self) -> str:
        """One paragraph: the verdict, the parts, and each suggestion."""
        gib = lambda n: f"{n / GIB:.2f} GiB"  # noqa: E731
        head = (f"{self.model}, batch {self.batch}, {self.policy} {self.budget}, weights {self.quantize}: needs "
                f"{gib(self.peak_bytes)} of {gib(self.device_memory)} on {self.device} (weights "
                f"{gib(self.weight_bytes)}, cache {gib(self.cache_bytes)}, activations {gib(self.activation_bytes)})")
        if self.fits:
            return head + ": fits."
        fixes = "; ".join(s["text"] for s in self.suggestions) or "no single change makes it fit"
        return f"{head}: does not fit. To fit: {fixes}."


def planned_weight_bytes(weights: nn.Module, backbone: nn.Module, mode: str, device_type: str) -> int:
    """Bytes of ``weights`` once ``backbone``'s linear layers are quantized with ``mode`` for that
    device type (layers already quantized count as they are)."""
    linears = {id(m.weight): m for m in backbone.modules() if isinstance(m, nn.Linear)}
    total, seen = 0, set()
    for tensor in [*weights.parameters(), *weights.buffers()]:
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        layer = linears.get(id(tensor))
        if layer is not None and not hasattr(tensor, "__tensor_flatten__") and mode != "none":
            total += linear_bytes(layer.in_features, layer.out_features, False, mode, device_type, tensor.dtype)
        else:
            total += tensor_bytes(tensor)
    return total


def activation_bytes(backbone: nn.Module, layout: LineLayout, rows: int, vocab: int, quantize: str = "none",
                     device_type: str = "cuda") -> int:
    """Estimated transient bytes of a run besides the cache: the prefill's per-layer states and
    attention scores, or the line boundary's scores and a line's states, plus the logits work;
    quantized weights add one linear layer's weight in the compute dtype (torchao's int8 and CPU
    int4 matmuls widen the codes first; CUDA's int4 kernel reads them packed)."""
    config = backbone.config
    item = next((m.weight.dtype for m in backbone.modules() if isinstance(m, nn.Linear)), None)
    item = torch.empty((), dtype=item).element_size() if item is not None else 4
    widen = quantize == "int8" or (quantize == "int4" and device_type != "cuda")
    widened = max((m.in_features * m.out_features * item for m in backbone.modules() if isinstance(m, nn.Linear)),
                  default=0) if widen else 0
    hidden, ffn, heads = config.hidden_size, config.intermediate_size, config.num_attention_heads
    prefix = layout.prefix_len
    states = lambda tokens: rows * tokens * (4 * hidden + 3 * ffn) * item  # noqa: E731
    prefill = states(prefix) + rows * heads * prefix * prefix * 4
    boundary = states(layout.line_tokens) + rows * heads * layout.line_tokens * layout.capacity * 4
    return max(prefill, boundary) + rows * vocab * LOGIT_WORK_BYTES + widened


def _layer_bytes(backbone: nn.Module, index: int) -> int:
    return sum(tensor_bytes(t) for t in backbone.layers[index].parameters())


def plan(target: PlanModel, device_memory: int, batch: int = 1, settings: CacheSettings = CacheSettings(),
         quantize: str = "none", device: str = "cuda", suggest: bool = True,
         pcie_bytes_per_s: float = PCIE_BYTES_PER_S) -> MemoryPlan:
    """The memory of ``batch`` images of ``target`` on a device with ``device_memory`` free bytes."""
    if quantize not in MODES:
        raise ValueError(f"Unknown quantize {quantize!r}: use one of {', '.join(MODES)}.")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}.")
    device_type = torch.device(device).type
    backbone = target.adapter.backbone
    rows = batch * target.rows_per_image
    weights = planned_weight_bytes(target.weights, backbone, quantize, device_type)
    cache = planned_cache_bytes(target.adapter, target.layout, settings, rows)
    work = activation_bytes(backbone, target.layout.with_budget(settings.budget), rows, target.vocab, quantize,
                            device_type)
    peak = weights + max(cache + work, target.image_work_bytes)
    result = MemoryPlan(target.name, device, device_memory, batch, settings.policy, str(settings.budget), quantize,
                        weights, cache, work, target.image_work_bytes, peak, peak <= device_memory)
    if suggest and not result.fits:
        result.suggestions = _suggestions(target, device_memory, batch, settings, quantize, device, pcie_bytes_per_s)
    return result


def _fits(target: PlanModel, memory: int, batch: int, settings: CacheSettings, quantize: str, device: str) -> MemoryPlan:
    return plan(target, memory, batch, settings, quantize, device, suggest=False)


def _suggestions(target: PlanModel, memory: int, batch: int, settings: CacheSettings, quantize: str, device: str,
                 pcie: float) -> list[dict]:
    found = []
    image_tokens, line = target.layout.image_tokens, target.layout.line_tokens
    current = target.layout.with_budget(settings.budget).budget_tokens
    for budget in BUDGETS:
        if Budget.parse(budget).tokens(image_tokens, line) >= current:
            continue
        smaller = replace(settings, policy="linear" if settings.policy == "full" else settings.policy, budget=budget)
        try:
            smaller.make_policy().validate(target.layout.with_budget(budget))
        except ValueError:
            continue
        trial = _fits(target, memory, batch, smaller, quantize, device)
        if trial.fits:
            found.append({"change": "budget", "policy": smaller.policy, "budget": budget, "peak_bytes": trial.peak_bytes,
                          "text": f"{smaller.policy} at budget {budget} ({trial.peak_bytes / GIB:.2f} GiB)"})
            break
    for fewer in range(batch - 1, 0, -1):
        trial = _fits(target, memory, fewer, settings, quantize, device)
        if trial.fits:
            found.append({"change": "batch", "batch": fewer, "peak_bytes": trial.peak_bytes,
                          "text": f"batch {fewer} ({trial.peak_bytes / GIB:.2f} GiB)"})
            break
    for mode in MODES[MODES.index(quantize) + 1:]:
        if mode == "int4" and torch.device(device).type not in ("cpu", "cuda"):
            continue
        trial = _fits(target, memory, batch, settings, mode, device)
        if trial.fits:
            found.append({"change": "quantize", "quantize": mode, "peak_bytes": trial.peak_bytes,
                          "text": f"quantize {mode} ({trial.peak_bytes / GIB:.2f} GiB)"})
            break
    offload = _offload(target, memory, batch, settings, quantize, device, pcie)
    if offload is not None:
        found.append(offload)
    return found


def _offload(target: PlanModel, memory: int, batch: int, settings: CacheSettings, quantize: str, device: str,
             pcie: float) -> dict | None:
    """The fewest last decoder layers to keep in CPU RAM (accelerate brings each in for its forward,
    in the checkpoint dtype) so the rest fits, and what moving them costs per token."""
    backbone = target.adapter.backbone
    base = _fits(target, memory, batch, settings, quantize, device)
    layers = len(backbone.layers)
    device_type = torch.device(device).type
    kept = lambda i: planned_weight_bytes(backbone.layers[i], backbone.layers[i], quantize, device_type)  # noqa: E731
    freed, moved = 0, 0
    for count in range(1, layers):
        index = layers - count
        freed += kept(index)
        moved += _layer_bytes(backbone, index)
        peak = base.peak_bytes - freed + _layer_bytes(backbone, index)  # one offloaded layer is on the device at a time
        if peak <= memory:
            seconds = moved / pcie
            offloaded = [f"{target.backbone_path}.layers.{i}" for i in range(index, layers)]
            return {"change": "offload", "offload_layers": count, "peak_bytes": peak, "bytes_per_token": moved,
                    "seconds_per_token": seconds,
                    "seconds_per_image": seconds * target.layout.image_tokens,
                    "device_map": device_map(target.weights, target.backbone_path, offloaded),
                    "text": f"offload the last {count} of {layers} decoder layers to CPU RAM with --device-map "
                            f"({peak / GIB:.2f} GiB on the device; {moved / GIB:.2f} GiB over PCIe per token, "
                            f"~{seconds * 1e3:.0f} ms/token at {pcie / 1e9:.0f} GB/s)"}
    return None


def device_map(weights: nn.Module, backbone_path: str, offloaded: list[str], main: int | str = 0) -> dict:
    """An accelerate device map: ``offloaded`` module names on ``cpu``, every other branch of the
    tree on ``main`` (each named once, so the map covers the model exactly)."""
    placement: dict[str, int | str] = {}
    parts = backbone_path.split(".")
    for depth in range(len(parts)):
        parent = ".".join(parts[:depth])
        module = weights.get_submodule(parent) if parent else weights
        own = [name for name, _ in module.named_parameters(recurse=False)]
        own += [name for name, _ in module.named_buffers(recurse=False)]
        for name in own:  # tensors held by the module itself, not by a child
            placement[f"{parent}.{name}" if parent else name] = main
        for name, _ in module.named_children():
            full = f"{parent}.{name}" if parent else name
            if full != ".".join(parts[:depth + 1]):
                placement[full] = main
    backbone = weights.get_submodule(backbone_path)
    for name, _ in backbone.named_children():
        if name != "layers":
            placement[f"{backbone_path}.{name}"] = main
    for index in range(len(backbone.layers)):
        full = f"{backbone_path}.layers.{index}"
        placement[full] = "cpu" if full in offloaded else main
    return placement


#: channels × fp32 bytes × live feature maps of a VQ decoder's last stage, per output pixel (estimate)
DECODER_BYTES_PER_PIXEL = 128 * 4 * 3


def target_of(pipeline, cfg: float | None = None, prompt: str = "an image") -> PlanModel:
    """A loaded (or meta-built) pipeline as a `PlanModel` for one request of its defaults."""
    model = pipeline.model
    cfg = pipeline.defaults.cfg if cfg is None else cfg
    with torch.inference_mode():
        if hasattr(model, "request"):  # text-to-image
            conditioning, _, layout = model.request(prompt, "", 1, cfg)
            vocab = model.vocab
        else:
            guidance = model.guidance(cfg)
            conditioning, layout = model.conditioning(torch.zeros(1, dtype=torch.long), guidance), pipeline.layout
            vocab = model.spec.vocab
    prefix = conditioning.batched()[0]
    weights = pipeline.weights()
    path = next(name for name, module in weights.named_modules() if module is model.backbone)
    decoder = getattr(pipeline, "decoder", None) or getattr(model, "vq", None) or getattr(model, "decoder", None)
    pixels = layout.grid_h * layout.grid_w * 16 * 16
    return PlanModel(pipeline.name, weights, model, layout.with_prefix(prefix.shape[1]), prefix.shape[0], vocab,
                     pixels * DECODER_BYTES_PER_PIXEL if decoder is not None else 0, path)


def target_of_arch(name: str, layers: int | None = None, dtype: torch.dtype = torch.bfloat16,
                   cfg: float = 4.0, grid: int | None = None) -> PlanModel:
    """A random-weight shape of `archs` (``grid`` overrides its square token grid, as the bench's
    ``--grid``) built on the meta device (no memory, no initialisation)."""
    from .archs import get_arch
    from .guidance import Guidance

    shape = get_arch(name)
    shape = replace(shape, grid=grid) if grid else shape
    with torch.device("meta"):
        model = shape.build(layers=layers, dtype=dtype, device="meta")
    guidance = Guidance(cfg, shape.cfg_layout)
    prefix = model.conditioning(torch.zeros(1, dtype=torch.long, device="meta"), guidance).batched()[0]
    return PlanModel(name, model, model, shape.layout().with_prefix(prefix.shape[1]), prefix.shape[0], shape.vocab)


def load_target(model: str, vq: str | None = None, resolution: int | None = None, layers: int | None = None,
                dtype: str = "bf16", cfg: float | None = None, prompt: str = "an image") -> PlanModel:
    """A bench shape name (meta, random weights) or anything `load_pipeline` reads, built on the meta
    device where the family allows it (no weight is read), else in CPU RAM."""
    from .archs import ARCHS
    from .devices import parse_dtype
    from .loading import load_pipeline

    if model in ARCHS:
        return target_of_arch(model, layers, parse_dtype(dtype), 4.0 if cfg is None else cfg)
    if layers is not None:
        raise ValueError("--layers cuts the depth of a bench shape only; a real model plans at its depth.")
    grid = resolution // 16 if resolution else None
    try:
        pipeline = load_pipeline(model, vq, grid, dtype, "meta", resolution=resolution)
    except (RuntimeError, NotImplementedError, ValueError, TypeError) as error:
        if "not found" in str(error) or "this version runs" in str(error):
            raise
        pipeline = load_pipeline(model, vq, grid, dtype, "cpu", resolution=resolution)
    return target_of(pipeline, cfg, prompt)


def plan_command(args, settings: CacheSettings) -> tuple[dict, str]:
    """The ``plan`` command: its JSON report and its text."""
    target = load_target(args.model, args.vq, args.resolution, args.layers, args.dtype, args.cfg, args.prompt)
    result = plan(target, args.device_memory, args.batch, settings, args.quantize, args.device,
                  pcie_bytes_per_s=args.pcie_gbps * 1e9)
    lines = [result.message()] + [f"  - {s['text']}" for s in result.suggestions]
    return result.as_dict(), "\n".join(lines)
