"""Fixtures for the ComfyUI tier: a real ComfyUI 0.3.75 server with this pack, and headless Chromium.

Every test in ``tests/comfyui/`` gets the ``comfyui`` marker (``pytest -m "not comfyui"`` skips the
tier); ``LINEAR_SKIP_COMFYUI=1`` skips it too. Otherwise a server that cannot be provisioned or started
is an error, not a skip. ``browser`` skips only when no Chromium is installed.
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


def pytest_collection_modifyitems(config, items):
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.comfyui)


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


@pytest.fixture
def browser(comfy_server):
    """A fresh headless Chromium with the ComfyUI page open (``app.graph`` exists)."""
    if chromium_executable() is None:
        pytest.skip("no Chromium: install the Debian package `chromium` (or set LINEAR_CHROMIUM)")
    with Browser(comfy_server) as b:
        b.open()
        yield b


@pytest.fixture
def screenshot_dir() -> Path:
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
    return SCREENSHOT_DIR
