"""Bad input through a real ComfyUI server (one start for every case): each is refused when the prompt
is queued (HTTP 400 naming the node and the input) or fails as a clean node error at run time; after
each, the server still answers ``/object_info`` within a second, and a normal demo prompt succeeds
and saves its run's stats in the PNG."""
from __future__ import annotations

import io
import json
import math
import os

import pytest
import requests
from PIL import Image

from comfyui_harness import sampler_prompt
from janus_files import write_native_janus

MAX_SEED = 2**64 - 1


@pytest.fixture(scope="module")
def server(comfy_server):
    folder = comfy_server.linear_ar_dir
    if not (folder / "Janus-Pro-1B").exists():
        write_native_janus(folder / "Janus-Pro-1B", grid=16)
    for name, content in (("BadConfigArray", "[1, 2]"), ("BadConfigNull", "null"), ("BadConfigTorn", '{"model_type": ')):
        (folder / name).mkdir(exist_ok=True)
        (folder / name / "config.json").write_text(content)
    return comfy_server


def still_serving(server) -> None:
    """The main loop is free: ``/object_info`` answers within a second."""
    response = server.get("/object_info", timeout=1.0)
    assert response.status_code == 200 and "LineAR_ModelLoader" in response.json()


def rejected(server, prompt: dict) -> dict:
    """``node_errors`` of a prompt the server refuses to queue. The body is written with Python's
    ``json`` (NaN and Infinity as bare tokens, which the server's parser accepts; ``requests`` would
    refuse to send them)."""
    body = json.dumps({"prompt": prompt, "client_id": server.client_id})
    response = requests.post(server.url + "/prompt", data=body, headers={"Content-Type": "application/json"},
                             timeout=30)
    assert response.status_code == 400, response.text
    return response.json()["node_errors"]


def with_inputs(prompt: dict, node: str, **inputs) -> dict:
    prompt[node]["inputs"].update(inputs)
    return prompt


def error_text(node_errors: dict, node: str) -> str:
    """The node's validation message (ComfyUI repeats it once for each input ``validate_inputs`` takes)."""
    errors = node_errors[node]["errors"]
    assert {entry["type"] for entry in errors} == {"custom_validation_failed"}, errors
    (details,) = {entry["details"].split(" - ", 1)[1] for entry in errors}
    return details


QUEUE_CASES = [  # (node, inputs, text the node error must hold)
    ("2", {"budget": "1e10000000"}, "Cannot read budget '1e10000000'"),  # once froze the server for 12 s
    ("2", {"budget": "1e309"}, "Cannot read budget '1e309'"),
    ("2", {"budget": "9" * 40}, "is longer than 32 characters"),
    ("2", {"policy": "lru"}, "policy 'lru' is not one of the choices"),
    ("2", {"cfg_mode": "both"}, "cfg_mode 'both' is not one of the choices"),
    ("2", {"head_sharing": "all"}, "head_sharing 'all' is not one of the choices"),
    ("1", {"dtype": "fp64"}, "dtype 'fp64' is not one of the choices: pick one of 'auto', 'fp32', 'bf16', 'fp16'"),
    ("1", {"resolution": "abc"}, "resolution 'abc' is not one of the choices"),
    ("1", {"device": "cuda:7"}, "device 'cuda:7' is not one of the choices: pick one of 'auto', 'cpu'"),
    ("3", {"class_label": "digit 11"}, "class_label 'digit 11' is not one of the choices"),
    ("3", {"cfg": math.nan}, "cfg must be a finite number, got nan"),
    ("3", {"cfg": math.inf}, "cfg must be a finite number, got inf"),
    ("3", {"cfg": 0.5}, "cfg 0.5 is outside 1.0..30.0"),  # its own range check replaces ComfyUI's
    ("3", {"temperature": math.nan}, "temperature must be a finite number, got nan"),
    ("3", {"top_p": -math.inf}, "top_p must be a finite number, got -inf"),
    ("1", {"model": "BadConfigArray/"}, "BadConfigArray/config.json holds an array, not a JSON object"),
    ("1", {"model": "BadConfigNull/"}, "BadConfigNull/config.json holds null"),
    ("1", {"model": "BadConfigTorn/"}, "BadConfigTorn/config.json is not readable JSON"),
    ("1", {"model": "c2i_missing_384.pt"}, "Model 'c2i_missing_384.pt' is not in the linear_ar folder (models/linear_ar)"),
    ("1", {"model": "../../../../etc/passwd"}, "Model '../../../../etc/passwd' is not in the linear_ar folder"),
    ("1", {"vq_tokenizer": "../vq_ds16_c2i.pt"}, "VQ tokenizer '../vq_ds16_c2i.pt' is not in the linear_ar folder"),
]


def test_bad_widget_values_are_refused_when_queued(server):
    for node, inputs, expected in QUEUE_CASES:
        node_errors = rejected(server, with_inputs(sampler_prompt(), node, **inputs))
        assert list(node_errors) == [node], (inputs, node_errors)
        text = error_text(node_errors, node)
        assert expected in text, (inputs, text)
        assert str(server.base_dir) not in text  # no server path reaches the browser
        still_serving(server)


def test_a_nan_cache_map_opacity_is_refused_when_queued(server):
    graph = sampler_prompt()
    graph["5"] = {"class_type": "LineAR_CacheMap", "inputs": {"run": ["3", 2], "layer": -1, "opacity": math.nan}}
    graph["4"] = {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}}  # the only output: else the rest runs
    node_errors = rejected(server, graph)
    assert error_text(node_errors, "5") == "opacity must be a finite number, got nan."
    still_serving(server)


def linked(cfg: float, budget: str) -> dict:
    """The demo graph with cfg and budget fed over links (values a validator sees only as None)."""
    graph = sampler_prompt()
    graph["10"] = {"class_type": "PrimitiveFloat", "inputs": {"value": cfg}}
    graph["11"] = {"class_type": "PrimitiveString", "inputs": {"value": budget}}
    graph["3"]["inputs"]["cfg"] = ["10", 0]
    graph["2"]["inputs"]["budget"] = ["11", 0]
    return graph


def run_raw(server, prompt: dict) -> dict:
    """Queue and run a prompt written with Python's ``json``; its history entry is then deleted, as a
    NaN in ``/history`` would break the JSON the page of a later test reads."""
    body = json.dumps({"prompt": prompt, "client_id": server.client_id})
    response = requests.post(server.url + "/prompt", data=body, headers={"Content-Type": "application/json"},
                             timeout=30)
    assert response.status_code == 200, response.text
    prompt_id = response.json()["prompt_id"]
    entry = server.wait(prompt_id, timeout=300)
    assert server.post("/history", {"delete": [prompt_id]}).status_code == 200
    assert prompt_id not in server.get_json("/history")
    return entry


@pytest.mark.parametrize("cfg, budget, node, message", [
    (math.nan, "1/4", "3", "cfg must be a finite number, got nan"),
    (2.0, "1e10000000", "2", "Cannot read budget '1e10000000'"),
])
def test_linked_values_pass_the_queue_and_are_checked_when_run(server, cfg, budget, node, message):
    error = node_error(run_raw(server, linked(cfg, budget)))
    assert error["node_id"] == node and message in error["exception_message"]
    still_serving(server)


def test_linked_values_that_are_fine_run(server):
    entry = run_raw(server, linked(2.0, "1/4"))
    assert entry["status"]["status_str"] == "success", entry["status"]


def text_prompt(prompt: str, model: str = "Janus-Pro-1B/") -> dict:
    graph = sampler_prompt(model=model)
    graph["3"] = {"class_type": "LineAR_TextSampler", "inputs": {
        "model": ["1", 0], "cache": ["2", 0], "prompt": prompt, "negative_prompt": "", "batch_size": 1, "seed": 1,
        "cfg": 2.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0}}
    return graph


def node_error(entry: dict) -> dict:
    assert entry["status"]["status_str"] == "error", entry["status"]
    return next(data for kind, data in entry["status"]["messages"] if kind == "execution_error")


def test_a_prompt_longer_than_the_model_is_a_clean_node_error(server):
    entry = server.run(text_prompt("a red fox in the snow " * 9000), timeout=300)  # ~200,000 characters
    error = node_error(entry)
    assert error["node_id"] == "3" and error["exception_type"] == "ValueError"
    assert "but the model covers 1024: shorten the prompt to at most 768 tokens" in error["exception_message"]
    still_serving(server)


def test_a_symlink_loop_in_the_models_folder_does_not_hang_the_listing(server):
    folder = server.linear_ar_dir
    links = [folder / "loop_a", folder / "loop_b"]
    for link in links:
        os.symlink(".", link, target_is_directory=True)
    try:
        still_serving(server)
        options = server.object_info("LineAR_ModelLoader")["input"]["required"]["model"][1]["options"]
        assert "demo-digits" in options and "Janus-Pro-1B/" in options
    finally:
        for link in links:
            link.unlink()


def test_after_the_bad_inputs_a_demo_prompt_runs_and_its_png_says_how(server):
    server.ws.clear()
    entry = server.run(with_inputs(sampler_prompt(seed=MAX_SEED), "3", cfg=2.0),
                       workflow={"nodes": [], "links": []}, timeout=300)
    assert entry["status"]["status_str"] == "success", entry["status"]
    (record,) = server.output_images(entry, "4")
    image = Image.open(io.BytesIO(server.view(**record)))
    assert {"prompt", "workflow", "linear_ar"} <= set(image.info)
    runs = json.loads(image.info["linear_ar"])
    assert list(runs) == ["3"]  # one sampler, under its node id
    run = runs["3"]
    assert (run["policy"], run["seed"], run["cfg"], run["image_tokens"], run["budget_tokens"]) == (
        "linear", MAX_SEED, 2.0, 576, 144)  # 1/4 of the demo's 24x24 tokens
    (event,) = server.ws.of_type("linear_ar.stats")
    assert run["peak_kv_bytes"] == event["peak_kv_bytes"] < event["full_kv_bytes"] == run["full_kv_bytes"]
    assert run["kv_saving"] == event["kv_saving"] and run["tokens_per_s"] > 0
    still_serving(server)
