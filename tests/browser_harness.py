"""Headless Chromium (the distribution's package, driven by Playwright) against a running ComfyUI
started by `comfyui_harness.ComfyServer`: load the frontend, load / convert / queue workflows, read
console errors and custom websocket events seen by the page, take screenshots."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

from comfyui_harness import ComfyServer, PromptRejected

#: Chromium flags for a sandbox with no network and no GPU
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)



#: console errors that ComfyUI 0.3.75 + frontend 1.32.9 print on every page load in this setup (fresh
#: user dir, no network), whatever the custom nodes do; :meth:`Browser.unexpected_console_errors` drops them
BASELINE_CONSOLE_ERRORS = (
    # files a fresh user directory does not have yet, and the favicon
    r"^Failed to load resource: the server responded with a status of 404 \(Not Found\) \(https?://[^/]+/"
    r"(user\.css|favicon\.ico|api/userdata/user\.css|api/userdata/comfy\.templates\.json"
    r"|api/userdata\?dir=(workflows|subgraphs)[^ ]*):",
    # frontend 1.32.9 settings store: onChange() on a setting id with no registered definition
    r"^TypeError: Cannot read properties of undefined \(reading 'id'\)\s+at onChange ",
    # the page's Content-Security-Policy blocks calls to the comfy.org registry (no network anyway)
    r"violates the following Content Security Policy directive",
)

#: what frontends from 1.58 (here 1.58.1) add on the 0.3.75 backend, whatever the pack does: they poll the
#: jobs API, which 0.3.75 does not have yet, and fetch a template's model metadata from outside the page's
#: Content-Security-Policy. Dropped only while such a frontend is served (:attr:`Browser.frontend_version`).
NEWER_FRONTEND_BASELINE = (
    r"^Failed to load resource: the server responded with a status of 404 \(Not Found\) \(https?://[^/]+/"
    r"api/jobs[?/ :]",
    r"^(\[Jobs API\] Error fetching jobs|Failed to fetch (queue|history)[^:]*): JobsApiError: Failed to fetch jobs: 404",
    r"^Fetch API cannot load .* Refused to connect because it violates the document's Content Security Policy",
    r"^Refused to connect to '[^']+' because it violates the following Content Security Policy directive",
)
NEWER_FRONTEND = (1, 58)

#: the frontend setting behind "Modern Node Design (Nodes 2.0)": nodes drawn as DOM elements, not on the canvas
VUE_NODES_SETTING = "Comfy.VueNodes.Enabled"


def chromium_executable() -> str | None:
    """``$LINEAR_CHROMIUM``, ``/usr/bin/chromium`` or ``chromium`` / ``chromium-browser`` on PATH."""
    for candidate in (os.environ.get("LINEAR_CHROMIUM"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """Headless system Chromium driven by Playwright (sync API) against a running :class:`ComfyServer`.

    :meth:`open` marks the tutorial as completed (so the canvas, not the template dialog, shows), loads the
    page and waits for ``window.comfyAPI.app.app.graph`` and for the app's setup to finish. ``console_errors`` / ``page_errors`` collect
    console messages of type error and uncaught page exceptions from the moment the browser starts.
    ``page`` is the Playwright page for anything else.
    """

    def __init__(self, server: ComfyServer | str, *, executable: str | None = None,
                 viewport: tuple[int, int] = (1600, 1000), extra_args: Iterable[str] = (),
                 timeout: float = 60.0):
        self.url = server.url if isinstance(server, ComfyServer) else str(server)
        self.executable = executable or chromium_executable()
        self.viewport = viewport
        self.extra_args = list(extra_args)
        self.timeout = timeout
        self.console_errors: list[str] = []
        self.console: list[tuple[str, str]] = []
        self.page_errors: list[str] = []
        self.startup_seconds: float | None = None
        #: (major, minor) of the frontend the page runs, and whether Nodes 2.0 is on: known after :meth:`open`
        self.frontend_version: tuple[int, int] | None = None
        self.vue_nodes = False
        self._pw = None
        self._context = None
        self._profile: str | None = None
        self.page = None

    def __enter__(self) -> "Browser":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> "Browser":
        from playwright.sync_api import sync_playwright

        if not self.executable:
            raise RuntimeError("no Chromium found (install the Debian package `chromium` or set LINEAR_CHROMIUM)")
        t0 = time.monotonic()
        self._profile = tempfile.mkdtemp(prefix="linear-chromium-")
        self._pw = sync_playwright().start()
        try:
            # Playwright owns --headless / --user-data-dir / --remote-debugging-*; pass the rest.
            args = [a for a in CHROMIUM_ARGS if a != "--headless"] + self.extra_args
            self._context = self._pw.chromium.launch_persistent_context(
                self._profile, executable_path=self.executable, headless=True, args=args,
                viewport={"width": self.viewport[0], "height": self.viewport[1]})
            self._context.set_default_timeout(self.timeout * 1000)
            self.page = self._context.pages[0] if self._context.pages else self._context.new_page()
            self.page.on("console", self._on_console)
            self.page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        except BaseException:
            self.close()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def _on_console(self, msg) -> None:
        location = msg.location or {}
        text = f"{msg.text} ({location.get('url', '')}:{location.get('lineNumber', '')})"
        self.console.append((msg.type, text))
        if msg.type == "error":
            self.console_errors.append(text)

    def unexpected_console_errors(self) -> list[str]:
        """``console_errors`` minus :data:`BASELINE_CONSOLE_ERRORS` (what the pack may have caused), and
        minus :data:`NEWER_FRONTEND_BASELINE` while a frontend from :data:`NEWER_FRONTEND` on is served."""
        import re

        baseline = BASELINE_CONSOLE_ERRORS
        if self.frontend_version is not None and self.frontend_version >= NEWER_FRONTEND:
            baseline += NEWER_FRONTEND_BASELINE
        return [e for e in self.console_errors if not any(re.search(p, e) for p in baseline)]

    def open(self, path: str = "/", vue_nodes: bool = False) -> "Browser":
        """Set ``Comfy.TutorialCompleted`` and the node design (``vue_nodes``: Nodes 2.0, else the classic
        canvas; the setting is stored on the server, so it is always set), load the page, wait until the
        app's graph exists and ``app.setup()`` has finished."""
        import requests

        for setting, value in (("Comfy.TutorialCompleted", True), (VUE_NODES_SETTING, vue_nodes)):
            requests.post(f"{self.url}/settings/{setting}", json=value, timeout=30).raise_for_status()
        self.page.goto(self.url + path, wait_until="load")
        # `app.graph` exists long before the page is usable; the frontend sets `window.app` only after
        # `await app.setup()` (extensions' setup hooks run, the startup workflow loaded, spinner gone)
        self.page.wait_for_function(
            "() => !!window.comfyAPI?.app?.app?.graph && window.app === window.comfyAPI.app.app",
            timeout=self.timeout * 1000)
        version = self.page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ ?? null")
        self.frontend_version = tuple(int(part) for part in version.split(".")[:2]) if version else None
        self.vue_nodes = bool(self.page.evaluate(
            "(id) => window.app.extensionManager?.setting?.get(id)", VUE_NODES_SETTING))
        return self

    def evaluate(self, js: str, arg: Any = None) -> Any:
        """``page.evaluate(js, arg)``; inside, ``window.comfyAPI.app.app`` is the app."""
        return self.page.evaluate(js, arg)

    def load_workflow(self, ui_json: dict) -> None:
        """``await app.loadGraphData(ui_json)``."""
        self.page.evaluate("async (wf) => { await window.comfyAPI.app.app.loadGraphData(wf); }", ui_json)

    def graph_to_prompt(self) -> dict:
        """The API-format prompt the frontend would queue: ``(await app.graphToPrompt()).output``."""
        return self.page.evaluate("async () => (await window.comfyAPI.app.app.graphToPrompt()).output")

    def graph_to_workflow(self) -> dict:
        """The UI-format workflow of the current graph: ``(await app.graphToPrompt()).workflow``."""
        return self.page.evaluate("async () => (await window.comfyAPI.app.app.graphToPrompt()).workflow")

    def queue(self, timeout: float | None = None) -> str:
        """``app.queuePrompt(0, 1)``; returns the prompt id from the server's answer to ``POST /api/prompt``
        (raises :class:`PromptRejected` when the server rejected it)."""
        with self.page.expect_response(lambda r: r.request.method == "POST" and r.url.rstrip("/").endswith("/prompt"),
                                       timeout=(timeout or self.timeout) * 1000) as info:
            self.page.evaluate("() => { window.comfyAPI.app.app.queuePrompt(0, 1); }")
        response = info.value
        body = response.json()
        if response.status != 200:
            raise PromptRejected(response.status, body)
        return body["prompt_id"]

    @property
    def client_id(self) -> str:
        """The frontend's websocket client id (progress/previews for prompts it queues go there)."""
        return self.page.evaluate("() => window.comfyAPI.api.api.clientId")

    def record_events(self, *types: str) -> None:
        """Subscribe in the page (``api.addEventListener``) to websocket event types, e.g. custom
        ``send_sync`` ones; read them back with :meth:`events`."""
        self.page.evaluate("""(types) => {
            window.__linearEvents = window.__linearEvents || [];
            for (const t of types) window.comfyAPI.api.api.addEventListener(t,
                e => window.__linearEvents.push({type: t, detail: e.detail ?? null}));
        }""", list(types))

    def events(self, type_: str | None = None) -> list[dict]:
        got = self.page.evaluate("() => window.__linearEvents || []")
        return [e for e in got if type_ is None or e["type"] == type_]

    def screenshot(self, path: str | Path, full_page: bool = False) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def close(self) -> None:
        if self._context is not None:
            with contextlib.suppress(Exception):
                self._context.close()
            self._context = None
        if self._pw is not None:
            with contextlib.suppress(Exception):
                self._pw.stop()
            self._pw = None
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None
