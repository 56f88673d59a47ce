"""A headless ComfyUI server on a loopback port: start, submit, wait, fetch, stop.

Used by the end-to-end tests, the workflow checks and the main-job script. The
server is a child process; ``ComfyServer`` is a context manager that always stops
it, even when the body raises.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from .locate import find_comfyui, link_pack

log = logging.getLogger(__name__)


class ComfyError(RuntimeError):
    """ComfyUI refused a prompt or the prompt failed; ``details`` holds the server's JSON."""

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details or {}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ComfyServer:
    """Run ``main.py`` headless with its own base directory.

    ``base_dir`` receives ``models/``, ``input/``, ``output/`` and ``custom_nodes/``
    (ComfyUI's ``--base-directory``); the pack is linked into its ``custom_nodes``,
    and so is every folder in ``extra_packs``.
    """

    def __init__(self, base_dir: Path, comfy_dir: Path | None = None, extra_packs: tuple[Path, ...] = (),
                 cpu: bool = True, start_timeout: float = 180.0, extra_args: tuple[str, ...] = (),
                 frontend_root: Path | None = None):
        self.base_dir = Path(base_dir)
        self.frontend_root = frontend_root  # a front end's static folder; default $ACEPP_FRONTEND_ROOT or none
        self.comfy_dir = Path(comfy_dir) if comfy_dir else find_comfyui()
        self.extra_packs = extra_packs
        self.cpu = cpu
        self.start_timeout = start_timeout
        self.extra_args = extra_args
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log_path = self.base_dir / "server.log"

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> "ComfyServer":
        for sub in ("models", "input", "output", "custom_nodes", "user", "temp", "frontend"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        custom = self.base_dir / "custom_nodes"
        link_pack(custom)
        for pack in self.extra_packs:
            link_pack(custom, name=Path(pack).name, source=Path(pack))
        frontend = str(self.frontend_root or os.environ.get("ACEPP_FRONTEND_ROOT", self.base_dir / "frontend"))
        self.port = free_port()
        cmd = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--base-directory", str(self.base_dir),
               "--database-url", "sqlite:///:memory:", "--front-end-root", frontend,
               "--preview-method", "none", *self.extra_args]
        if self.cpu:
            cmd.append("--cpu")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=self.comfy_dir, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI exited with {self.proc.returncode} at start-up:\n{self.log_tail()}")
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout):
                time.sleep(0.3)
        self.stop()
        raise ComfyError(f"ComfyUI did not answer within {self.start_timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_log", None):
            self._log.close()
            self._log = None

    def __enter__(self) -> "ComfyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no server log)"

    # -- HTTP -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            body = resp.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def get_bytes(self, path: str, timeout: float = 30) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as resp:
            return resp.read()

    def post(self, path: str, payload: dict, timeout: float = 30) -> tuple[int, dict]:
        data = json.dumps(payload).encode()
        req = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as err:
            body = err.read()
            try:
                return err.code, json.loads(body)
            except json.JSONDecodeError:
                return err.code, {"error": body.decode(errors="replace")}

    def object_info(self, node_id: str | None = None) -> dict:
        return self.get("/object_info" + (f"/{node_id}" if node_id else ""))

    # -- prompts ----------------------------------------------------------------------
    def submit(self, prompt: dict) -> str:
        """POST an API-format prompt; returns the prompt id or raises ComfyError with node_errors."""
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": "aceplus-tests"})
        if status != 200 or "prompt_id" not in body:
            raise ComfyError(f"ComfyUI rejected the prompt (HTTP {status}): {json.dumps(body)[:4000]}", body)
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600) -> dict:
        """Poll /history until the prompt finished; raise ComfyError if it failed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            entry = history.get(prompt_id) if isinstance(history, dict) else None
            if entry and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") == "error" or not status.get("completed"):
                    raise ComfyError(f"prompt {prompt_id} failed: {self.error_message(entry)}", entry)
                return entry
            if self.proc is not None and self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            time.sleep(0.2)
        raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 600) -> dict:
        return self.wait(self.submit(prompt), timeout=timeout)

    @staticmethod
    def error_message(entry: dict) -> str:
        for kind, data in entry.get("status", {}).get("messages", []):
            if kind == "execution_error":
                return f"{data.get('node_type')}: {data.get('exception_type')}: {data.get('exception_message')}"
        return json.dumps(entry.get("status", {}))[:2000]

    def output_images(self, entry: dict, node_id: str | None = None) -> list[bytes]:
        """PNG bytes of every image a finished prompt saved (optionally of one node)."""
        images = []
        for nid, out in entry.get("outputs", {}).items():
            if node_id is not None and nid != str(node_id):
                continue
            for img in out.get("images", []):
                query = urllib.parse.urlencode({"filename": img["filename"], "subfolder": img.get("subfolder", ""),
                                                "type": img.get("type", "output")})
                images.append(self.get_bytes(f"/view?{query}"))
        return images
