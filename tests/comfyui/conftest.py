"""Fixtures for the ComfyUI tier: a real ComfyUI 0.3.75 server with this pack, and headless Chromium.

Every test in ``tests/comfyui/`` gets the ``comfyui`` marker (``pytest -m "not comfyui"`` skips the
tier); ``LINEAR_SKIP_COMFYUI=1`` skips it too. Otherwise a server that cannot be provisioned or started
is an error, not a skip. ``browser`` skips only when no Chromium is installed; every test that uses it
runs twice, on the classic canvas and in Nodes 2.0, and gets the ``browser`` marker (``pytest -m
browser`` runs only those, e.g. against another frontend: see ``LINEAR_FRONTEND_ROOT``).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from browser_harness import Browser, chromium_executable
from comfyui_harness import REPO_ROOT, ComfyServer

_HERE = Path(__file__).resolve().parent
#: where browser screenshots go (git-ignored)
SCREENSHOT_DIR = REPO_ROOT / "out" / "comfyui"


def pytest_configure(config):
    config.addinivalue_line("markers", "comfyui: runs a real ComfyUI server (tests/comfyui/)")
    config.addinivalue_line("markers", "browser: drives the real frontend in headless Chromium")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.comfyui)
            if "browser" in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def comfy_server():
    """One ComfyUI server for the whole session. Tests share it: put model folders under
    ``comfy_server.linear_ar_dir`` (listed on every ``/object_info``), call ``comfy_server.ws.clear()``
    before asserting on websocket messages, or start a private ``ComfyServer(...)`` when needed."""
    if os.environ.get("LINEAR_SKIP_COMFYUI") == "1":
        pytest.skip("LINEAR_SKIP_COMFYUI=1")
    server = ComfyServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["classic", "nodes2"])
def browser(comfy_server, request):
    """A fresh headless Chromium with the ComfyUI page open (``app.graph`` exists), on the classic
    canvas or with Nodes 2.0 (``Comfy.VueNodes.Enabled``), where nodes are DOM elements."""
    if chromium_executable() is None:
        pytest.skip("no Chromium: install the Debian package `chromium` (or set LINEAR_CHROMIUM)")
    with Browser(comfy_server) as b:
        b.open(vue_nodes=request.param == "nodes2")
        assert b.vue_nodes == (request.param == "nodes2"), "the frontend ignored Comfy.VueNodes.Enabled"
        yield b


@pytest.fixture
def screenshot_dir() -> Path:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    return SCREENSHOT_DIR
