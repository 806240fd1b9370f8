"""The pack in a real ComfyUI server and the real frontend: node definitions, every example workflow
(loaded and converted by the frontend, then run), cancel, bad input, and the web extension."""
from __future__ import annotations

import io
import json
import re
import time

import pytest
import torch
from PIL import Image

from comfyui_harness import PACK_FOLDER, REPO_ROOT, PromptRejected, sampler_prompt
from emu3_files import write_emu3
from janus_files import write_native_janus
from lumina_files import write_lumina
from llamagen_files import tiny_vq_state, upstream_state

WORKFLOWS = sorted((REPO_ROOT / "workflows").glob("*.json"))
NODE_IDS = ["LineAR_ModelLoader", "LineAR_CacheSettings", "LineAR_ClassSampler", "LineAR_TextSampler",
            "LineAR_CacheMap"]
SAMPLERS = {"LineAR_ClassSampler", "LineAR_TextSampler"}
#: what each workflow must produce: SaveImage pictures (count, side in px) and stats texts
EXPECTED = {
    "linear_ar_demo_digits.json": {"images": (4, 192), "stats": 1},
    "linear_ar_llamagen_c2i.json": {"images": (4, 48), "stats": 1},
    "linear_ar_compare_policies.json": {"images": (12, 192), "stats": 3},
    "linear_ar_janus_pro_t2i.json": {"images": (4, 32), "stats": 1},  # 16×16 tokens, the tiny VQ upsamples ×2
    "linear_ar_lumina_mgpt_t2i.json": {"images": (1, 96), "stats": 1},  # 48×48 codes (+ line ends), VQGAN ×2
    "linear_ar_emu3_gen_t2i.json": {"images": (1, 180), "stats": 1},  # 90×90 codes (+ line ends), tiny VQ-VAE ×2
}


@pytest.fixture(scope="module")
def server(comfy_server):
    """The shared server with model files under the names the workflows use: an XL-width (1280, 20
    heads), one-layer LlamaGen GPT at 384 px (24×24 tokens) with a tiny VQ decoder, and a tiny
    transformers-native Janus-Pro folder (16×16 tokens), a tiny Lumina-mGPT folder named for 768 px and
    a tiny Emu3-Gen folder (720 px by default)."""
    folder = comfy_server.linear_ar_dir
    folder.mkdir(parents=True, exist_ok=True)
    gpt = folder / "c2i_XL_384.pt"
    if not gpt.exists():
        torch.save({"model": upstream_state(dim=1280, heads=20, layers=1, classes=1000)}, gpt)
        torch.save({"model": tiny_vq_state()}, folder / "vq_ds16_c2i.pt")
        write_native_janus(folder / "Janus-Pro-1B", grid=16)  # 1/6 of 256 tokens fits 8 anchors + 2 lines
        write_lumina(folder / "Lumina-mGPT-7B-768")  # tiny weights, the real 768 px layout, VQGAN inside
        write_emu3(folder / "Emu3-Gen-hf", shards=True, vq_levels=2)  # tiny weights, the real 720 px layout
    return comfy_server


def ended_with(entry: dict, message: str) -> dict | None:
    return next((data for kind, data in entry["status"]["messages"] if kind == message), None)


def test_object_info_lists_every_node_and_the_models_folder(server):
    info = server.object_info()
    for node_id in NODE_IDS:
        assert info[node_id]["display_name"].startswith("LineAR") and info[node_id]["category"] == "LineAR"
    loader = info["LineAR_ModelLoader"]["input"]["required"]
    assert {"demo-digits", "c2i_XL_384.pt"} <= set(loader["model"][1]["options"])
    assert loader["vq_tokenizer"][1]["options"] == ["auto", "vq_ds16_c2i.pt"]
    sampler = info["LineAR_ClassSampler"]["input"]
    assert sampler["required"]["seed"][1]["control_after_generate"] is True
    assert "tooltip" in sampler["optional"]["cache"][1]
    assert server.import_failures() == []
    templates = server.get_json("/workflow_templates")
    assert sorted(templates[PACK_FOLDER]) == sorted(p.stem for p in WORKFLOWS)


def fresh_seeds(browser) -> None:
    """A new seed on every sampler, so that no run of the same workflow (in the other node design, or
    on the other frontend) is served from ComfyUI's output cache, which would send no events."""
    browser.evaluate("""(samplers) => {
        for (const node of window.app.graph._nodes.filter(n => samplers.includes(n.comfyClass)))
            node.widgets.find(w => w.name === "seed").value = Math.floor(Math.random() * 2 ** 31);
    }""", sorted(SAMPLERS))


def strip_of(browser, node_id: str) -> dict:
    """The KV strip of a sampler as the user sees it, after centring the view on the node: its text,
    whether it is rendered (`checkVisibility`: laid out, not hidden, not transparent), whether it is
    what the page shows at its centre (nothing, the canvas included, covers it) and whether it sits
    inside the node's DOM element (Nodes 2.0) rather than over the canvas (classic)."""
    browser.evaluate("(id) => { const app = window.app; app.canvas.centerOnNode(app.graph.getNodeById(Number(id)));"
                     " app.canvas.setDirty(true, true); }", node_id)
    browser.page.wait_for_timeout(400)  # a few frames: the canvas (classic) or Vue (Nodes 2.0) places it
    return browser.evaluate("""(id) => {
        const el = window.app.graph.getNodeById(Number(id)).linearStrip?.element;
        const count = [...document.querySelectorAll(".linear-ar-strip")].filter(other => other === el).length;
        if (count !== 1) return {count};
        const box = el.getBoundingClientRect();
        const hit = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
        return {count: 1, text: el.textContent, width: box.width, height: box.height,
                rendered: el.checkVisibility({checkOpacity: true, checkVisibilityCSS: true}),
                on_top: !!hit && el.contains(hit), in_node: !!el.closest("[data-node-id]")};
    }""", node_id)


def assert_strip_shows(browser, node_id: str, pattern: str) -> dict:
    strip = strip_of(browser, node_id)
    assert strip["count"] == 1, strip
    assert strip["rendered"] and strip["on_top"] and strip["width"] > 100 and strip["height"] >= 14, strip
    assert strip["in_node"] == browser.vue_nodes, strip  # Nodes 2.0 mounts it in the node's element
    assert re.fullmatch(pattern, strip["text"]), strip
    return strip


#: the strip after a run: "KV 0.02 / 0.06 MiB full · −68.2% · 123.4 tok/s"
STATS_STRIP = r"KV [0-9.]+ / [0-9.]+ MiB full · −([0-9.]+)% · [0-9.]+ tok/s"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_example_workflow_loads_converts_and_runs(server, browser, path):
    """Every example, in both node designs: loaded and converted by the frontend, queued from the page,
    run; its images carry the graph and the run, and each sampler's strip shows the saving its stats
    text reports."""
    workflow = json.loads(path.read_text())
    assert any(node["type"] == "Note" for node in workflow["nodes"]), "every example explains itself in a note"
    browser.load_workflow(workflow)
    fresh_seeds(browser)
    prompt = browser.graph_to_prompt()
    used = {node["type"] for node in workflow["nodes"] if node["type"] != "Note"}
    assert {node["class_type"] for node in prompt.values()} == used
    samplers = [node_id for node_id, node in prompt.items() if node["class_type"] in SAMPLERS]
    for node_id in samplers:
        assert_strip_shows(browser, node_id, "KV stats appear here after a run")
    assert browser.unexpected_console_errors() == [] and browser.page_errors == []

    entry = server.wait(browser.queue(), timeout=600)
    assert entry["status"]["status_str"] == "success", entry["status"]
    expected = EXPECTED[path.name]
    saved = [(img, node["inputs"]["images"][0]) for node_id, node in prompt.items()
             if node["class_type"] == "SaveImage" for img in server.output_images(entry, node_id)]
    count, side = expected["images"]
    assert len(saved) == count
    for record, sampler in saved:
        image = Image.open(io.BytesIO(server.view(**record)))
        assert image.size == (side, side) and "workflow" in image.info  # the graph travels in the PNG
        run = json.loads(image.info["linear_ar"])[sampler]  # and so does the run of the sampler it shows
        inputs = prompt[sampler]["inputs"]
        policy = prompt[inputs["cache"][0]]["inputs"]["policy"] if "cache" in inputs else "linear"
        assert (run["policy"], run["seed"], run["batch"]) == (policy, inputs["seed"], inputs["batch_size"])
    stats = {node["inputs"]["source"][0]: entry["outputs"][node_id]["text"][0] for node_id, node in prompt.items()
             if node["class_type"] == "PreviewAny"}
    assert len(stats) == expected["stats"] and all("KV cache" in text and "% saved" in text for text in stats.values())
    for node_id in samplers:
        saving = re.fullmatch(STATS_STRIP, assert_strip_shows(browser, node_id, STATS_STRIP)["text"]).group(1)
        assert f"({saving}% saved)" in stats[node_id]  # the page's figure is the server's, formatted by the JS
    if path.name == "linear_ar_compare_policies.json":
        by_policy = {text.split("policy ")[1].split(":")[0]: text for text in stats.values()}
        assert "(0.0% saved)" in by_policy["full"]
        assert "144 of 576 image tokens" in by_policy["linear"] and "144 of 576" in by_policy["streaming"]
    assert browser.unexpected_console_errors() == [] and browser.page_errors == []


def test_demo_workflow_runs_from_the_page_and_shows_kv_stats(server, browser, screenshot_dir):
    """During the run the strip counts the lines, after it shows the stats: recorded from the DOM."""
    browser.record_events("linear_ar.progress", "linear_ar.stats")
    browser.load_workflow(json.loads((REPO_ROOT / "workflows" / "linear_ar_demo_digits.json").read_text()))
    fresh_seeds(browser)
    (sampler,) = [node_id for node_id, node in browser.graph_to_prompt().items() if node["class_type"] in SAMPLERS]
    browser.evaluate("""(id) => {
        window.__linearStripTexts = [];
        const el = window.app.graph.getNodeById(Number(id)).linearStrip.element;
        new MutationObserver(() => window.__linearStripTexts.push(el.textContent))
            .observe(el, {subtree: true, childList: true, characterData: true});
    }""", sampler)
    started = time.perf_counter()
    entry = server.wait(browser.queue(), timeout=600)
    seconds = time.perf_counter() - started
    assert entry["status"]["status_str"] == "success", entry["status"]
    lines = [event["detail"]["line"] for event in browser.events("linear_ar.progress")]
    assert lines == list(range(1, 25))
    (stats,) = [event["detail"] for event in browser.events("linear_ar.stats")]
    shown = browser.evaluate("() => window.__linearStripTexts")
    assert [text for text in shown if text.startswith("line ")] == [f"line {n} / 24" for n in range(1, 25)]
    assert re.fullmatch(STATS_STRIP, shown[-1])
    strip = assert_strip_shows(browser, sampler, STATS_STRIP)
    assert f"−{stats['kv_saving'] * 100:.1f}%" in strip["text"] and stats["kv_saving"] > 0.5
    mode = "nodes2" if browser.vue_nodes else "classic"
    shot = browser.screenshot(screenshot_dir / f"demo_workflow_{mode}.png")
    assert shot.stat().st_size > 20_000
    assert browser.unexpected_console_errors() == [] and browser.page_errors == []
    print(f"\ndemo workflow in ComfyUI (CPU, {mode}): {seconds:.1f} s, KV saving {stats['kv_saving']:.1%}, "
          f"{stats['peak_kv_bytes']} of {stats['full_kv_bytes']} bytes; strip: {strip['text']}")


def test_interrupt_during_sampling_then_the_next_prompt_runs(server):
    server.ws.clear()
    prompt_id = server.queue(sampler_prompt(batch=4, seed=11))
    server.ws.wait_for(lambda m: m.type == "linear_ar.progress" and m.data["line"] >= 2, timeout=120)
    server.interrupt()
    entry = server.wait(prompt_id, timeout=120)
    assert ended_with(entry, "execution_interrupted") is not None, entry["status"]
    assert max(m["line"] for m in server.ws.of_type("linear_ar.progress")) < 24
    assert server.ws.of_type("linear_ar.stats") == []
    entry = server.run(sampler_prompt(seed=12))
    assert entry["status"]["status_str"] == "success", entry["status"]


def test_progress_and_previews_reach_the_client(server):
    server.ws.clear()
    entry = server.run(sampler_prompt(seed=21))
    assert entry["status"]["status_str"] == "success"
    progress = [m for m in server.ws.of_type("progress") if m.get("node") == "3"]
    assert progress[-1]["value"] == progress[-1]["max"] == 576
    assert server.ws.preview_count >= 8  # a partial image every three of the 24 lines


def test_bad_inputs_give_clear_node_errors_and_the_server_keeps_serving(server):
    with pytest.raises(PromptRejected) as rejected:
        server.queue(sampler_prompt(model="c2i_missing_384.pt"))
    message = json.dumps(rejected.value.body["node_errors"]["1"])
    assert "c2i_missing_384.pt" in message and "is not in the linear_ar folder" in message
    with pytest.raises(PromptRejected) as rejected:
        server.queue(sampler_prompt(budget="a sixth"))
    assert "Cannot read budget 'a sixth'" in json.dumps(rejected.value.body["node_errors"]["2"])

    entry = server.run(sampler_prompt(budget="2 lines", anchors=8))
    error = ended_with(entry, "execution_error")
    assert error["node_id"] == "3" and "raise the budget or lower the anchors" in error["exception_message"]
    entry = server.run(sampler_prompt(label="207: golden retriever"))
    assert "draws digits" in ended_with(entry, "execution_error")["exception_message"]
    assert server.alive() and server.get_json("/system_stats")["system"]["comfyui_version"]
    assert server.run(sampler_prompt(seed=4))["status"]["status_str"] == "success"


def test_model_folder_of_an_unsupported_family_is_named(server):
    folder = server.linear_ar_dir / "Qwen2-VL-2B"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    options = server.object_info()["LineAR_ModelLoader"]["input"]["required"]["model"][1]["options"]
    assert "Qwen2-VL-2B/" in options and "Janus-Pro-1B/" in options
    entry = server.run(sampler_prompt(model="Qwen2-VL-2B/"))
    assert "Qwen2-VL-2B is a qwen2_vl folder" in ended_with(entry, "execution_error")["exception_message"]


def test_a_text_model_in_the_class_sampler_points_to_the_text_sampler(server):
    for model in ("Janus-Pro-1B/", "Lumina-mGPT-7B-768/", "Emu3-Gen-hf/"):
        entry = server.run(sampler_prompt(model=model))
        assert "use LineAR Text Sampler" in ended_with(entry, "execution_error")["exception_message"]
