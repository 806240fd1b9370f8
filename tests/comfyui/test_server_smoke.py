"""The ComfyUI harness itself: a real ComfyUI 0.3.75 starts with this pack and a real browser renders it."""
from __future__ import annotations

from comfyui_harness import PACK_FOLDER, REPO_ROOT


def test_server_starts_with_pack(comfy_server):
    log = comfy_server.log_text()
    assert "ComfyUI version: 0.3.75" in log
    # the pack was found in custom_nodes/ and its import did not fail
    assert f"custom_nodes/{PACK_FOLDER}" in log, comfy_server.log_tail()
    assert comfy_server.import_failures() == [], comfy_server.log_tail()

    stats = comfy_server.get_json("/system_stats")
    assert stats["system"]["comfyui_version"] == "0.3.75"
    assert stats["devices"][0]["type"] == "cpu"

    info = comfy_server.object_info()
    assert "SaveImage" in info and "EmptyImage" in info

    extensions = comfy_server.get_json("/extensions")
    assert isinstance(extensions, list) and extensions
    for js in sorted((REPO_ROOT / "web").glob("*.js")):  # WEB_DIRECTORY is served under the folder name
        assert f"/extensions/{PACK_FOLDER}/{js.name}" in extensions


def test_prompt_runs_over_http_and_websocket(comfy_server):
    """A core-only graph queued over HTTP: history, websocket events and /view all answer."""
    comfy_server.ws.clear()
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 16, "batch_size": 1, "color": 0xFF0000}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "harness"}},
    }
    prompt_id = comfy_server.queue(prompt, workflow={"nodes": [], "links": []})
    entry = comfy_server.wait(prompt_id, timeout=60)
    assert entry["status"]["status_str"] == "success", entry["status"]
    images = comfy_server.output_images(entry, "2")
    assert len(images) == 1
    png = comfy_server.view(**images[0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    comfy_server.ws.wait_for(lambda m: m.type == "execution_success" and m.data.get("prompt_id") == prompt_id,
                             timeout=30)
    types = comfy_server.ws.types()
    assert "execution_start" in types and "executing" in types


def test_browser_renders_canvas(comfy_server, browser, screenshot_dir):
    assert browser.evaluate("() => window.comfyAPI.app.app.graph !== null")
    # the default graph (or an empty one) is in place and converts to an API prompt
    assert isinstance(browser.graph_to_prompt(), dict)
    shot = browser.screenshot(screenshot_dir / "smoke.png")
    assert shot.stat().st_size > 10_000
    assert browser.page_errors == [], browser.page_errors
    # console errors beyond the frontend's own baseline noise (see BASELINE_CONSOLE_ERRORS)
    assert browser.unexpected_console_errors() == [], browser.console_errors


def test_browser_builds_and_queues_a_core_graph(comfy_server, browser):
    """load_workflow / graph_to_prompt / queue through the real frontend, then the server runs it."""
    assert browser.evaluate("() => window.comfyAPI.app.app.graph._nodes.length") > 0  # the default graph
    browser.evaluate("""() => {
        const app = window.comfyAPI.app.app, LiteGraph = window.LiteGraph;
        app.graph.clear();
        const a = LiteGraph.createNode("EmptyImage"); app.graph.add(a);
        const b = LiteGraph.createNode("SaveImage"); app.graph.add(b);
        for (const [name, v] of [["width", 24], ["height", 8]]) a.widgets.find(w => w.name === name).value = v;
        b.widgets.find(w => w.name === "filename_prefix").value = "browser";
        a.connect(0, b, 0);
    }""")
    workflow = browser.graph_to_workflow()
    browser.load_workflow(workflow)  # UI JSON round trip through app.loadGraphData
    prompt = browser.graph_to_prompt()
    assert sorted(n["class_type"] for n in prompt.values()) == ["EmptyImage", "SaveImage"]
    entry = comfy_server.wait(browser.queue(), timeout=60)
    assert entry["status"]["status_str"] == "success", entry["status"]
    (image,) = comfy_server.output_images(entry)
    assert image["filename"].startswith("browser")
    assert browser.page_errors == [] and browser.unexpected_console_errors() == [], browser.console_errors
