"""`python -m linear_core sample` on the demo model: two accelerate processes against one, a killed run
resumed, the evaluators' formats, and bad input."""
from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from linear_core.cli import main
from linear_core.images import to_pil
from linear_core.loading import load_pipeline
from linear_core.progress import Progress
from linear_core.settings import CacheSettings
from linear_core.worklist import read_prompts

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["--device", "cpu", "--policy", "linear", "--budget", "1/4", "--seed", "5"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def pngs(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: pixels(p) for p in sorted(folder.glob("*.png"))}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    """The reference: 40 images drawn by one process (this one), batches of 8."""
    out = tmp_path_factory.mktemp("one") / "run"
    assert main(["sample", "--out", str(out), "--num-images", "40", "--batch", "8", *COMMON]) == 0
    return out


def test_an_image_of_a_batch_equals_it_drawn_alone():
    """Per-image seeds: image 1 of a batch of 4 is the image drawn alone with its seed, also under
    the random policy, whose eviction draws then come from the image's own generator."""
    pipeline = load_pipeline("demo-digits", device="cpu")
    for policy in ("linear", "random"):
        settings = CacheSettings(policy=policy, budget="1/4")
        four = pipeline.generate(["2", "3", "4", "5"], settings, seed=[12, 13, 14, 15])
        alone = pipeline.generate(["3"], settings, seed=[13])
        assert torch.equal(four.tokens[1], alone.tokens[0]), policy
        assert not torch.equal(four.tokens[0], four.tokens[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_draw_what_one_draws(one_process, tmp_path):
    out = tmp_path / "two"
    # accelerate's multi-process launcher (torchrun); `--device cpu` makes the group gloo on CPU
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--num_cpu_threads_per_process", "1", "--main_process_port", str(free_port()),
              "-m", "linear_core", "sample", "--out", str(out), "--num-images", "40", "--batch", "8", "--json", *COMMON]
    done = subprocess.run(launch, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout[done.stdout.index("{"):])
    assert report["processes"] == 2 and report["drawn"] == 40
    assert report["main_process"]["images"] == 20  # each process drew its half

    ours, reference = pngs(out), pngs(one_process)
    assert len(reference) == 40 and sorted(ours) == sorted(reference)
    for name in reference:
        assert np.array_equal(ours[name], reference[name]), name

    arrays = np.load(out / "samples.npz")
    assert arrays.files == ["arr_0"]
    arr = arrays["arr_0"]
    assert arr.dtype == np.uint8 and arr.shape == (40, 192, 192, 3)
    for i, name in enumerate(sorted(reference)):
        assert np.array_equal(arr[i], reference[name])

    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(40))
    for i, line in enumerate(lines):
        assert line["seed"] == 5 + i and line["label"] == i % 10 and line["file"] == f"{i:06d}_{i % 10}.png"
        assert (line["policy"], line["budget"], line["model"]) == ("linear", "1/4", "demo-digits")

    # the manifest says how to draw an image again: label and seed, alone
    pipeline = load_pipeline("demo-digits", device="cpu")
    again = pipeline.generate([str(lines[17]["label"])], CacheSettings(policy="linear", budget="1/4"),
                              seed=[lines[17]["seed"]])
    assert np.array_equal(np.asarray(to_pil(again.images[0])), reference[lines[17]["file"]])


def test_a_killed_run_resumed_equals_an_uninterrupted_one(one_process, tmp_path, capsys):
    """12 images, killed (SIGKILL) once the first batch is on disk, then resumed: the set equals the
    first 12 images of the uninterrupted run (same seeds and labels), with no leftovers. The run to
    kill is the real command in its own process (a fork of this one could deadlock in torch's
    thread pool)."""
    out = tmp_path / "killed"
    argv = ["sample", "--out", str(out), "--num-images", "12", "--batch", "4", *COMMON]
    process = subprocess.Popen([sys.executable, "-m", "linear_core", *argv], cwd=ROOT, env=ENV,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(out.glob("0*.png")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = sorted(p.name for p in out.glob("0*.png"))
    assert 1 <= len(before) < 12, "the kill should land partway"
    for name in before:  # every file under its final name is whole
        with Image.open(out / name) as image:
            image.load()
    (out / ".000011_1.png.deadbeef.tmp").write_bytes(b"\x89PNG half")  # what a kill mid-write leaves

    assert main(argv) == 2  # the same run again, without --resume
    assert "add --resume to finish it" in capsys.readouterr().err
    assert main(argv + ["--resume", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["skipped"] == len(before) and report["drawn"] == 12 - len(before)

    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([f"{i:06d}_{i % 10}.png" for i in range(12)] + ["manifest.jsonl", "run.json", "samples.npz"])
    reference = pngs(one_process)
    for name, image in pngs(out).items():
        assert np.array_equal(image, reference[name]), name
    indices = [json.loads(line)["index"] for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert indices == list(range(12))


def test_another_runs_folder_is_refused(one_process, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    settings = json.loads((one_process / "run.json").read_text())
    (other / "run.json").write_text(json.dumps({**settings, "seed": 6}))
    argv = ["sample", "--out", str(other), "--num-images", "40", *COMMON]
    assert main(argv + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "another run with other settings" in err and "seed: 6 there, 5 now" in err
    assert not list(other.glob("*.png"))


def test_quantize_reaches_the_model_and_the_run_record(tmp_path, monkeypatch):
    """``sample --quantize int8`` draws with int8 decoder weights, and a resume must repeat it."""
    pytest.importorskip("torchao")
    from linear_core import cli_sample

    loaded = []

    def recording(*args, **kwargs):
        loaded.append(load_pipeline(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(cli_sample, "load_pipeline", recording)
    out = tmp_path / "run"
    argv = ["sample", "--out", str(out), "--num-images", "2", *COMMON]
    assert main(argv + ["--dtype", "bf16", "--quantize", "int8"]) == 0
    linears = [m for m in loaded[0].model.backbone.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m.weight).__name__ == "Int8Tensor" for m in linears)
    assert json.loads((out / "run.json").read_text())["quantize"] == "int8"
    assert [json.loads(line)["quantize"] for line in (out / "manifest.jsonl").read_text().splitlines()] == ["int8"] * 2
    assert main(argv + ["--dtype", "bf16", "--resume"]) == 2  # the same run without --quantize is another run


def test_bad_sampling_input_is_a_clear_error(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["sample", "--out", out, "--prompts", str(tmp_path / "missing.txt"), *COMMON]) == 2
    assert "missing.txt' does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert main(["sample", "--out", out, "--prompts", str(empty), *COMMON]) == 2
    assert "holds no prompts" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "--out", out, "--num-images", "0"])
    assert exit_.value.code == 2 and "--num-images: must be at least 1, got 0" in capsys.readouterr().err
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red bird\n")
    assert main(["sample", "--out", out, "--prompts", str(prompts), *COMMON]) == 2  # demo-digits has classes
    assert "give --classes instead of --prompts" in capsys.readouterr().err
    assert main(["sample", "--out", out, "--classes", "11", *COMMON]) == 2
    assert "11" in capsys.readouterr().err
    assert main(["sample", "--out", out, "--speculative", "jacobi", *COMMON]) == 2
    assert "drop --speculative" in capsys.readouterr().err
    assert not (tmp_path / "run").exists() or not list((tmp_path / "run").iterdir())


def test_prompt_lists_in_the_formats_they_ship_in(tmp_path):
    text = tmp_path / "coco.txt"
    text.write_text("a cat on a mat\n\na dog in the fog\n")
    assert [(p.id, p.text) for p in read_prompts(text)] == [("0", "a cat on a mat"), ("1", "a dog in the fog")]
    table = tmp_path / "coco.csv"
    table.write_text('image_id,caption\n391895,"A man, with a red helmet"\n522418,A woman\n')
    assert [(p.id, p.text) for p in read_prompts(table)] == [("391895", "A man, with a red helmet"), ("522418", "A woman")]
    listed = tmp_path / "dpg.json"
    listed.write_text(json.dumps([{"item_id": "partiprompts12", "prompt": "a tall tree"}]))
    assert [(p.id, p.text) for p in read_prompts(listed)] == [("partiprompts12", "a tall tree")]
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"x1": "one", "x2": "two"}))
    assert [p.id for p in read_prompts(mapping)] == ["x1", "x2"]
    for name, body, message in [("dup.json", json.dumps({"a b": "x", "a_b": "y"}), "appears twice"),
                                ("cols.csv", "id,title\n1,x\n", "needs a prompt column"),
                                ("bad.json", "[1, 2", "not valid JSON")]:
        (tmp_path / name).write_text(body)
        with pytest.raises(ValueError, match=message):
            read_prompts(tmp_path / name)


def test_progress_is_a_bar_on_a_terminal_and_a_line_every_n_images_elsewhere():
    log = io.StringIO()
    progress = Progress(250, start=10, every=100, stream=log, interactive=False)
    for done in range(10, 251, 15):
        progress.update(done)
    progress.update(250)
    progress.close()
    lines = log.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == ["115/250", "220/250", "250/250"]
    assert all("images/s" in line and "left" in line for line in lines)
    bar = io.StringIO()
    progress = Progress(250, stream=bar, interactive=True)
    progress.update(125)
    progress.close()
    assert bar.getvalue().startswith("\r 50.0% |###############") and "125/250" in bar.getvalue()
    quiet = io.StringIO()
    Progress(250, stream=quiet, interactive=False, enabled=False).update(250)  # the other processes
    assert quiet.getvalue() == ""


def test_text_to_image_prompts_file(tmp_path, capsys):
    """A tiny Janus-Pro folder and a CSV with ids: 3 images per prompt, batches of 2 that never mix
    prompts; an image equals the one drawn alone with its prompt and seed."""
    from janus_files import write_native_janus

    folder = write_native_janus(tmp_path / "Janus-Pro-tiny")
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("id,prompt\nfox-1,a red fox\n42,a blue whale in the sea\n")
    out = tmp_path / "t2i"
    argv = ["sample", "--model", str(folder), "--prompts", str(prompts), "--images-per-prompt", "3", "--batch", "2",
            "--out", str(out), "--json", "--device", "cpu", "--budget", "1/4", "--seed", "9"]
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["images"] == 6
    names = [f"{i:06d}_{tag}.png" for i, tag in enumerate(["fox-1"] * 3 + ["42"] * 3)]
    assert sorted(p.name for p in out.glob("*.png")) == names
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(line["prompt_id"], line["prompt"], line["seed"]) for line in lines] == \
        [("fox-1", "a red fox", 9 + i) for i in range(3)] + [("42", "a blue whale in the sea", 9 + i) for i in range(3, 6)]
    assert np.load(out / "samples.npz")["arr_0"].shape[0] == 6
    pipeline = load_pipeline(folder, device="cpu")
    alone = pipeline.generate("a blue whale in the sea", "", 1, CacheSettings(policy="linear", budget="1/4"), seed=[13])
    assert np.array_equal(np.asarray(to_pil(alone.images[0])), pixels(out / names[4]))
    assert not np.array_equal(pixels(out / names[3]), pixels(out / names[4]))
