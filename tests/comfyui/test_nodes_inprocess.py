"""Fast tier: the pack loaded into a real ComfyUI in this process (no server), its nodes' schemas,
and whole graphs run through ComfyUI's own validator and executor."""
from __future__ import annotations

import asyncio
import gc
import random
import sys
import uuid
from pathlib import Path

import pytest
import torch

from comfyui_harness import comfyui_root, sampler_prompt
from janus_files import GRID as JANUS_GRID, write_native_janus
from llamagen_files import tiny_vq_state, upstream_state

REPO = Path(__file__).resolve().parents[2]
NODE_IDS = ["LineAR_ModelLoader", "LineAR_CacheSettings", "LineAR_ClassSampler", "LineAR_TextSampler",
            "LineAR_CacheMap"]


class RecordingServer:
    """Stands in for `PromptServer.instance` while a graph runs: records what nodes send."""

    client_id = "test"
    last_node_id = None
    last_prompt_id = None
    sockets_metadata: dict = {}

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def send_sync(self, event, data, sid=None) -> None:
        self.events.append((event, data))

    def of(self, kind: str) -> list:
        return [data for event, data in self.events if event == kind]


class Comfy:
    """ComfyUI's modules after the pack was loaded, and a way to run an API-format graph."""

    def __init__(self, models: Path) -> None:
        root = comfyui_root()
        sys.path.insert(0, str(root))
        import comfy.options
        comfy.options.enable_args_parsing(False)
        import comfy.cli_args
        comfy.cli_args.args.cpu = True
        import utils.extra_config  # noqa: F401  (ComfyUI's own `utils` package, before `nodes`)
        import server
        self.loop = asyncio.new_event_loop()
        self.server = server.PromptServer(self.loop)
        import nodes
        import execution
        import folder_paths
        import comfy.model_management as mm
        import comfy.utils
        self.nodes, self.execution, self.mm, self.utils, self.server_module = nodes, execution, mm, comfy.utils, server
        self.loop.run_until_complete(nodes.init_extra_nodes(init_custom_nodes=False))
        assert self.loop.run_until_complete(nodes.load_custom_node(str(REPO))), "the pack failed to import"
        folder_paths.add_model_folder_path("linear_ar", str(models))
        self.progress: list[tuple[int, int, object]] = []
        self.interrupt_at: int | None = None
        self.throttled = False
        comfy.utils.set_progress_bar_global_hook(self._hook)

    def _hook(self, value, total, preview, prompt_id=None, node_id=None) -> None:
        """What ComfyUI's server hook does, recorded: every update that gets through is a cancellation
        point. ``throttled``: newer ComfyUI's throttle in front of it (first and last update, previews,
        else ≥ 0.1 s and ≥ 0.5 % since the last one); simulated with a clock that never reaches 0.1 s,
        its strictest case."""
        if self.throttled and not (self.progress == [] or value >= total or preview is not None):
            return
        self.progress.append((value, total, preview))
        if self.interrupt_at is not None and value >= self.interrupt_at:
            self.mm.interrupt_current_processing(True)
        self.mm.throw_exception_if_processing_interrupted()

    def run(self, prompt: dict, interrupt_at: int | None = None, throttled: bool = False):
        recorder = RecordingServer()
        self.server_module.PromptServer.instance = recorder
        self.progress, self.interrupt_at, self.throttled = [], interrupt_at, throttled
        try:
            prompt_id = str(uuid.uuid4())
            valid, error, outputs, node_errors = self.loop.run_until_complete(
                self.execution.validate_prompt(prompt_id, prompt, None))
            if not valid:
                return None, recorder, (error, node_errors)
            executor = self.execution.PromptExecutor(recorder, cache_type=False, cache_args={"lru": 0, "ram": 0})
            self.loop.run_until_complete(executor.execute_async(prompt, prompt_id, {"client_id": recorder.client_id}, outputs))
            return executor, recorder, None
        finally:
            self.server_module.PromptServer.instance = self.server
            self.mm.interrupt_current_processing(False)


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    models = tmp_path_factory.mktemp("linear_ar")
    state = upstream_state(classes=1000)
    from safetensors.torch import save_file
    save_file(state, str(models / "c2i_tiny_256.safetensors"), metadata={"heads": "4"})
    torch.save({"model": tiny_vq_state()}, models / "vq_ds16_c2i.pt")
    write_native_janus(models / "Janus-Pro-tiny")
    return Comfy(models)


def graph(model="demo-digits", label="digit 3", policy="linear", budget="1/4", batch=2, anchors=8, cfg=2.0):
    """The sampler graph plus a cache map, its preview and the stats as text."""
    prompt = sampler_prompt(model, label, policy, budget, batch, anchors, cfg, seed=5)
    prompt.update({
        "5": {"class_type": "LineAR_CacheMap", "inputs": {"run": ["3", 2], "layer": -1, "opacity": 1.0}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
        "7": {"class_type": "PreviewAny", "inputs": {"source": ["3", 1]}},
    })
    return prompt


def live_cache_buffers() -> int:
    from linear_core.cache import LineARLayer  # the same module object only if imported the same way
    gc.collect()
    return sum(1 for obj in gc.get_objects()
               if type(obj).__name__ == LineARLayer.__name__ and getattr(obj, "keys", None) is not None)


def test_every_node_is_registered_with_names_and_tooltips(comfy):
    for node_id in NODE_IDS:
        info = comfy.nodes.NODE_CLASS_MAPPINGS[node_id].GET_NODE_INFO_V1()
        assert info["display_name"].startswith("LineAR ") and info["category"] == "LineAR" and info["description"]
    sampler = comfy.nodes.NODE_CLASS_MAPPINGS["LineAR_ClassSampler"].GET_NODE_INFO_V1()
    assert sampler["input"]["required"]["model"][0] == "LINEAR_AR_MODEL"
    assert sampler["input"]["optional"]["cache"][0] == "LINEAR_AR_CACHE"
    labels = sampler["input"]["required"]["class_label"][1]["options"]
    assert labels[:10] == [f"digit {d}" for d in range(10)] and "207: golden retriever" in labels
    assert sampler["output"] == ["IMAGE", "STRING", "LINEAR_AR_RUN"]
    loader = comfy.nodes.NODE_CLASS_MAPPINGS["LineAR_ModelLoader"].GET_NODE_INFO_V1()
    listed = loader["input"]["required"]["model"][1]["options"]
    assert listed[0] == "demo-digits" and "c2i_tiny_256.safetensors" in listed and "vq_ds16_c2i.pt" not in listed
    assert loader["input"]["required"]["vq_tokenizer"][1]["options"] == ["auto", "vq_ds16_c2i.pt"]
    settings = comfy.nodes.NODE_CLASS_MAPPINGS["LineAR_CacheSettings"].GET_NODE_INFO_V1()
    assert all("tooltip" in spec[1] for spec in settings["input"]["required"].values())


def test_demo_graph_runs_with_progress_previews_stats_and_cache_map(comfy):
    executor, server, _ = comfy.run(graph())
    assert executor.success, server.events
    outputs = executor.history_result["outputs"]
    assert len(outputs["4"]["images"]) == 2 and len(outputs["6"]["images"]) == 2
    text = outputs["7"]["text"][0]
    assert "policy linear: 144 of 576 image tokens cached" in text and "% saved" in text
    lines = server.of("linear_ar.progress")
    assert [m["line"] for m in lines] == list(range(1, 25)) and {m["node"] for m in lines} == {"3"}
    (stats,) = server.of("linear_ar.stats")
    assert stats["node"] == "3" and stats["batch"] == 2 and stats["kv_saving"] > 0.5
    assert stats["peak_kv_bytes"] < stats["full_kv_bytes"]
    values = [value for value, _, _ in comfy.progress]
    assert values[-1] == 576 and all(b >= a for a, b in zip(values, values[1:]))
    previews = [p for _, _, p in comfy.progress if p is not None]
    assert len(previews) == 8 and previews[0][0] == "JPEG" and previews[0][1].size == (192, 192)
    assert live_cache_buffers() == 0


def test_sampler_outputs_comfy_images_and_a_map_of_the_kept_tokens(comfy):
    cls = comfy.nodes.NODE_CLASS_MAPPINGS
    model = cls["LineAR_ModelLoader"].execute("demo-digits", "auto", "auto", "auto", "auto").result[0]
    settings = cls["LineAR_CacheSettings"].execute("linear", "1/4", 8, 2, 4, "independent", "per_head").result[0]
    comfy.server_module.PromptServer.instance = RecordingServer()
    try:
        images, text, run = cls["LineAR_ClassSampler"].execute(model, "digit 1", 3, 7, 2.0, 0.8, 0, 1.0, settings).result
    finally:
        comfy.server_module.PromptServer.instance = comfy.server
    assert images.shape == (3, 192, 192, 3) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1 and torch.equal(images[..., 0], images[..., 2])  # grey digits
    (cache_map,) = cls["LineAR_CacheMap"].execute(run, -1, 1.0).result
    assert cache_map.shape == images.shape
    cell = lambda img, row, col: img[row * 8 + 4, col * 8 + 4]  # noqa: E731  (8 px per token)
    kept, evicted = torch.tensor([0.99, 0.91, 0.14]), torch.tensor([0.27, 0.00, 0.33])
    is_colour = lambda px, colour: bool((px - colour).abs().max() < 1e-3)  # noqa: E731
    for img in cache_map:
        assert all(is_colour(cell(img, 0, c), kept) for c in range(8))  # the 8 anchors: every head, every layer
        assert all(is_colour(cell(img, r, c), kept) for r in (21, 22) for c in range(24))  # the recent lines
        assert is_colour(cell(img, 23, 23), evicted)  # the last token is drawn, never fed back
        middle = [cell(img, r, c) for r in range(1, 21) for c in range(24)]
        # B = 144 = 8 anchors + 48 recent + 88 middle tokens per head out of 480: few kept everywhere
        assert sum(is_colour(px, kept) for px in middle) < 88


def test_speculative_widget_runs_jacobi_windows_and_reports_them(comfy):
    prompt = graph(batch=1)
    prompt["3"]["inputs"].update(speculative="jacobi", window=8)
    executor, server, _ = comfy.run(prompt)
    assert executor.success, server.events
    (stats,) = server.of("linear_ar.stats")
    assert stats["speculative_window"] == 8 and stats["forwards"] < 575
    assert stats["accepted_per_forward"] == pytest.approx(575 / stats["forwards"])
    assert "speculative window 8:" in executor.history_result["outputs"]["7"]["text"][0]
    assert [value for value, _, _ in comfy.progress][-1] == 576  # progress still reaches every token
    prompt["3"]["inputs"]["speculative"] = "medusa"
    executor, _, refused = comfy.run(prompt)  # refused when queued: nothing runs
    assert executor is None and "speculative 'medusa' is not one of the choices" in str(refused)
    assert live_cache_buffers() == 0


def test_interrupt_stops_the_run_and_frees_its_cache(comfy):
    executor, server, _ = comfy.run(graph(batch=1), interrupt_at=40)
    assert not executor.success
    assert any(event == "execution_interrupted" for event, _ in server.events)
    assert max(value for value, _, _ in comfy.progress) < 576
    assert server.of("linear_ar.stats") == []
    assert live_cache_buffers() == 0
    executor, server, _ = comfy.run(graph(batch=1, label="digit 4"))
    assert executor.success


@pytest.mark.parametrize("throttled", [False, True], ids=["hook-0.3.75", "throttled-hook"])
def test_cancel_at_a_random_token_stops_before_the_next_one(comfy, monkeypatch, throttled):
    """Cancel pressed while token k is computed (the flag is set inside the k-th decode forward): no
    further token is fed, whether or not the progress hook lets that update through."""
    sampler = sys.modules[comfy.nodes.NODE_CLASS_MAPPINGS["LineAR_ClassSampler"].__module__]
    session_class = sys.modules[sampler.Callbacks.__module__].DecodeSession
    fed: list[int] = []
    cancel_at = random.Random().randrange(1, 575)  # of the 575 decode forwards of a 24×24 image

    def counted(step):
        def wrapper(self, *args, **kwargs):
            fed.append(len(fed) + 1)
            if len(fed) == cancel_at:
                comfy.mm.interrupt_current_processing(True)  # what POST /interrupt does
            return step(self, *args, **kwargs)
        return wrapper

    for name in ("feed", "sample_next"):
        monkeypatch.setattr(session_class, name, counted(getattr(session_class, name)))
    executor, server, _ = comfy.run(graph(batch=1), throttled=throttled)
    assert not executor.success and any(event == "execution_interrupted" for event, _ in server.events)
    assert len(fed) == cancel_at, f"Cancel during forward {cancel_at} let {len(fed) - cancel_at} more run"
    assert server.of("linear_ar.stats") == [] and live_cache_buffers() == 0


def test_progress_bar_is_thinned_to_about_a_hundred_updates(comfy):
    executor, server, _ = comfy.run(graph(batch=1))
    assert executor.success
    values = [value for value, _, _ in comfy.progress]
    assert values[0] == 1 and values[-1] == 576  # the first and the last token are always shown
    assert 80 <= len(values) <= 110, len(values)  # 576 tokens, not a message each: every 6th + 8 previews
    assert max(b - a for a, b in zip(values, values[1:])) <= 6


def test_budget_too_small_is_a_node_error_that_names_the_fix(comfy):
    executor, server, _ = comfy.run(graph(budget="2 lines", anchors=8))
    assert not executor.success
    (error,) = server.of("execution_error")
    assert error["node_id"] == "3" and "anchors" in error["exception_message"]
    assert live_cache_buffers() == 0


def test_bad_budget_text_and_wrong_label_kind_are_rejected_clearly(comfy):
    _, _, (error, node_errors) = comfy.run(graph(budget="a sixth"))
    assert "Cannot read budget 'a sixth'" in str(node_errors["2"])
    executor, server, _ = comfy.run(graph(label="207: golden retriever"))
    assert not executor.success
    assert "draws digits" in server.of("execution_error")[0]["exception_message"]


def test_llamagen_file_from_the_models_folder_with_its_tokenizer(comfy):
    prompt = graph(model="c2i_tiny_256.safetensors", label="207: golden retriever", budget="1/6", batch=2, cfg=4.0)
    executor, server, _ = comfy.run(prompt)
    assert executor.success, server.of("execution_error")
    (stats,) = server.of("linear_ar.stats")
    assert stats["family"] == "llamagen" and stats["labels"] == [207, 207] and stats["image_tokens"] == 256
    assert stats["budget_tokens"] == 42 and stats["kv_saving"] > 0.6
    executor, server, _ = comfy.run(graph(model="c2i_tiny_256.safetensors", label="digit 2"))
    assert "draws ImageNet classes" in server.of("execution_error")[0]["exception_message"]


def test_text_sampler_draws_a_janus_folder_with_a_negative_prompt(comfy):
    prompt = sampler_prompt(model="Janus-Pro-tiny/", budget="1/4", batch=2)
    prompt["3"] = {"class_type": "LineAR_TextSampler", "inputs": {
        "model": ["1", 0], "cache": ["2", 0], "prompt": "a red fox in the snow", "negative_prompt": "blurry",
        "batch_size": 2, "seed": 1, "cfg": 5.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0}}
    executor, server, _ = comfy.run(prompt)
    assert executor.success, server.of("execution_error")
    (stats,) = server.of("linear_ar.stats")
    assert stats["family"] == "janus-pro" and stats["prompt"] == "a red fox in the snow"
    tokens = JANUS_GRID * JANUS_GRID
    assert stats["negative_prompt"] == "blurry" and stats["image_tokens"] == tokens
    assert stats["budget_tokens"] == tokens // 4
    assert [m["line"] for m in server.of("linear_ar.progress")] == list(range(1, JANUS_GRID + 1))
    assert len(executor.history_result["outputs"]["4"]["images"]) == 2
    prompt["3"]["inputs"]["prompt"] = " "
    executor, server, _ = comfy.run(prompt)
    assert "prompt is empty" in server.of("execution_error")[0]["exception_message"]


def test_int8_loader_reports_its_quantized_size_to_comfyui_and_survives_unloading(comfy):
    from linear_core.quantize import linear_bytes
    prompt = graph(batch=1)
    prompt["1"]["inputs"]["quantize"] = "int8"
    executor, server, _ = comfy.run(prompt)
    assert executor.success, server.of("execution_error")
    (stats,) = server.of("linear_ar.stats")
    assert stats["quantize"] == "int8"
    patcher = next(m.model for m in comfy.mm.current_loaded_models if stats["weight_bytes"] == m.model.model_size())
    layers = [m for m in patcher.model.modules() if isinstance(m, torch.nn.Linear)]
    quantized = [m for m in layers if type(m.weight).__name__ == "Int8Tensor"]
    assert len(quantized) == 4 * 7 == len(layers) - 1  # every decoder linear; the head stays as it was
    layers = quantized
    plain = sum(p.numel() * p.element_size() for p in patcher.model.parameters())  # logical (fp32) sizes
    shrunk = sum(m.weight.numel() * m.weight.element_size() - linear_bytes(m.in_features, m.out_features, False, "int8",
                                                                           "cpu", m.weight.dtype) for m in layers)
    assert patcher.model_size() == plain - shrunk
    comfy.mm.unload_all_models()  # ComfyUI's own offload of every model, then the same graph again
    executor, server, _ = comfy.run(prompt)
    assert executor.success, server.of("execution_error")


def test_a_run_the_planner_says_does_not_fit_is_a_node_error_before_sampling(comfy, monkeypatch):
    prompt = graph(batch=1)
    monkeypatch.setattr(comfy.mm, "get_total_memory", lambda *args, **kwargs: 2 ** 20)  # a 1 MiB device
    executor, server, _ = comfy.run(prompt)
    assert not executor.success
    message = server.of("execution_error")[0]["exception_message"]
    assert "does not fit" in message and "batch_size" in message
    assert comfy.progress == [] or max(v for v, _, _ in comfy.progress) == 0
