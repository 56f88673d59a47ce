"""The shipped workflows load in the real front end (comfyui-frontend-package, headless Chromium).

The front end is the one the host pins in its ``requirements.txt`` (ComfyUI 0.3.75: 1.32.9,
0.33.0: 1.49.6), as a user of that ComfyUI gets it; ``python -m aceplus_host bootstrap`` installs it.

For each workflow: ``app.loadGraphData`` as a drag-and-drop would, then assert that the front end
reported no missing node type (and opened no "missing nodes" dialog), every node has a registered
type and no error flag
(newer front ends, 1.49.6 among them, flag loaders whose model file the server lacks: the released
weights, which the test server never has; those are allowed, an unregistered type never is),
the browser console showed no error from the pack or the workflow, and the front end's own
``graphToPrompt`` equals our converter's output. A screenshot of each graph goes to
docs/images/workflows/.

Offline, the front end logs its own network failures (release checks on api.comfy.org, the
template index, per-user files ComfyUI 0.3.75 does not have) and one start-up exception of its
own (a settings watcher on 1.32.9, "graph accessed before initialization" on 1.49.6); those are
filtered by their source (URL or stack) or text, and only during start-up for the exceptions.
Everything logged while a workflow loads counts.

Needs Debian's ``chromium``, Python ``playwright`` (never ``playwright install``) and the host's
``comfyui-frontend-package``; skipped only when they are absent and ``CI`` is unset.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from aceplus_host import ComfyServer, cache_dir, find_comfyui, host_frontend_version
from aceplus_host.workflows import check_workflow, strip_meta, ui_to_api
from workflow_tools import RELEASED_FILES, SCREENSHOTS, chromium_path, copy_inputs, frontend_root, shipped_workflows

pytestmark = pytest.mark.server

TESTS = Path(__file__).resolve().parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]
SHIPPED = shipped_workflows()
MAX_SCREENSHOT_BYTES = 300_000
UPDATE_SCREENSHOTS = os.environ.get("ACEPP_UPDATE_SCREENSHOTS") == "1"  # into docs/images/workflows
ALL_SCREENSHOTS = UPDATE_SCREENSHOTS or os.environ.get("ACEPP_SCREENSHOTS") == "1"  # else one per run:
SCREENSHOT_EVERY_RUN = "ace_reference_editing"

# Front-end-owned requests that fail offline or on ComfyUI 0.3.75 (by path, on our own server).
FRONTEND_OWN_PATHS = (re.compile(r"^/(api/)?userdata(/|\?|$)"), re.compile(r"^/(api/)?user\.css$"),
                      re.compile(r"^/favicon\.ico$"), re.compile(r"^/templates/"),
                      re.compile(r"^/(api/)?settings/"), re.compile(r"^/(api/)?i18n"))
FRONTEND_OWN_MESSAGES = (re.compile(r"^Error loading core workflow templates"),)
# Logged by the front end itself while it starts (1.49.6 on ComfyUI 0.33 logs it with every custom node
# disabled too); allowed during start-up only.
FRONTEND_OWN_STARTUP_MESSAGES = (re.compile(r"^ComfyApp graph accessed before initialization$"),)
# The front end's own list of missing node types, from the extension hook both 1.32.9 and 1.49.6 call after
# loading a graph (1.32.9 also opens a "missing nodes" dialog; 1.49.6 shows its warnings elsewhere).
MISSING_HOOK = ("() => app.registerExtension({name: 'ACEPPTest.MissingNodes', afterConfigureGraph(missing) {"
                " window.__aceppMissing = (missing || []).map(m => typeof m === 'string' ? m : m.type) }})")


def _missing_tools() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "Python playwright is not installed"
    try:
        root = find_comfyui(bootstrap=False)
    except FileNotFoundError as err:
        return str(err)
    if frontend_root(root) is None:
        return (f"comfyui-frontend-package=={host_frontend_version(root)} (the version ComfyUI at {root} pins) "
                "is not installed: run `python -m aceplus_host bootstrap`")
    if chromium_path() is None:
        return "chromium is not installed (apt-get install chromium)"
    return None


_MISSING = _missing_tools()
if _MISSING and not os.environ.get("CI"):
    pytest.skip(f"front-end checks need chromium, playwright and the front end: {_MISSING}", allow_module_level=True)


class Console:
    """Browser errors, each with its source: a URL (network) or a stack (script)."""

    def __init__(self, base_url: str):
        self.host = urlparse(base_url).netloc
        self.errors: list[tuple[str, str, str]] = []  # (kind, text, source)

    def attach(self, page) -> None:
        page.on("console", lambda m: m.type == "error" and self.errors.append(("console", m.text, m.location.get("url", ""))))
        page.on("pageerror", lambda e: self.errors.append(("pageerror", str(e), getattr(e, "stack", "") or "")))
        page.on("requestfailed", lambda r: self.errors.append(("request", r.failure or "failed", r.url)))
        page.on("response", lambda r: r.status >= 400 and self.errors.append(("http", str(r.status), r.url)))

    def frontend_own(self, kind: str, text: str, source: str, starting: bool) -> bool:
        url = urlparse(source)
        is_network = kind in ("request", "http") or text.startswith("Failed to load resource")
        if is_network and url.netloc and url.netloc != self.host:
            return True  # api.comfy.org and other hosts: unreachable offline by design
        if is_network and url.netloc == self.host:
            path = url.path + (f"?{url.query}" if url.query else "")
            return any(p.search(path) for p in FRONTEND_OWN_PATHS)
        if any(p.search(text) for p in FRONTEND_OWN_MESSAGES):
            return True
        if starting and any(p.search(text) for p in FRONTEND_OWN_STARTUP_MESSAGES):
            return True
        # A script error raised inside the front end's own bundle before any workflow loaded.
        return starting and url.netloc == self.host and url.path.startswith("/assets/") and "/assets/" in text

    def take(self, starting: bool = False) -> list[tuple[str, str, str]]:
        errors, self.errors = self.errors, []
        return [e for e in errors if not self.frontend_own(*e, starting=starting)]


@pytest.fixture(scope="module")
def frontend_server(fixture_paths, comfy_root):
    from aceplus_host import link_models

    if _MISSING:
        pytest.fail(f"CI is set but the front-end check cannot run: {_MISSING}")
    base = cache_dir() / "frontend_server"
    link_models(base, fixture_paths["models"])
    copy_inputs(base / "input")
    old = os.environ.get("ACEPP_FRONTEND_ROOT")
    os.environ["ACEPP_FRONTEND_ROOT"] = str(frontend_root(comfy_root))
    try:
        server = ComfyServer(base, comfy_dir=comfy_root, extra_packs=(TESTS / "comfy_test_pack",))
        server.start()
    finally:
        if old is None:
            os.environ.pop("ACEPP_FRONTEND_ROOT")
        else:
            os.environ["ACEPP_FRONTEND_ROOT"] = old
    # A returning user: no template browser popping up over the graph on first start.
    # Readable screenshots: node text even when zoomed out to fit, no minimap.
    server.post("/settings", {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False,
                              "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.2})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def page(frontend_server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="acepp-chromium-") as profile:
        context = pw.chromium.launch_persistent_context(profile, executable_path=chromium_path(), headless=True,
                                                        args=CHROMIUM_ARGS, viewport={"width": 1500, "height": 1000})
        page = context.new_page()
        console = Console(frontend_server.url)
        console.attach(page)
        page.goto(frontend_server.url)
        page.wait_for_function("() => window.app?.graph && window.LiteGraph?.registered_node_types?.ACEPP_Sampler",
                               timeout=180_000)
        time.sleep(2)  # let start-up requests settle
        page.evaluate(MISSING_HOOK)
        page.console = console
        page.startup_errors = console.take(starting=True)
        yield page
        context.close()


def test_front_end_starts_clean_with_the_pack(page):
    assert page.startup_errors == []
    registered = page.evaluate("() => Object.keys(LiteGraph.registered_node_types).filter(t => t.startsWith('ACEPP_'))")
    assert {"ACEPP_Loader", "ACEPP_Conditioning", "ACEPP_Sampler", "ACEPP_AddReference"} <= set(registered)


def test_front_end_is_the_one_the_host_pins(page, comfy_root):
    """A user of this ComfyUI gets the front end its requirements.txt pins: test that one."""
    served = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__")
    assert served == host_frontend_version(comfy_root)


def _flagged(page) -> tuple[list[list], list[list]]:
    """([id, type] of nodes whose type is not registered, [id, type] of registered nodes with ``has_errors``)."""
    return page.evaluate("() => { const n = app.graph._nodes, known = t => !!LiteGraph.registered_node_types[t];"
                         " return [n.filter(x => !known(x.type)).map(x => [x.id, x.type]),"
                         " n.filter(x => known(x.type) && x.has_errors).map(x => [x.id, x.type])]; }")


def _dialogs(page) -> list[str]:
    return page.evaluate("() => Array.from(document.querySelectorAll('.p-dialog')).map(d => d.innerText)")


def test_missing_node_is_detected(page):
    """The check itself can fail: an unknown node type opens the dialog and is flagged."""
    wf = json.loads(json.dumps(SHIPPED["ace_reference_editing"]))
    wf["nodes"][1]["type"] = "NoSuchNodeType"
    page.evaluate("async (wf) => { window.__aceppMissing = null; await window.app.loadGraphData(wf) }", wf)
    page.wait_for_timeout(500)
    assert page.evaluate("() => window.__aceppMissing") == ["NoSuchNodeType"]
    unregistered, _ = _flagged(page)
    assert [t for _, t in unregistered] == ["NoSuchNodeType"]
    page.keyboard.press("Escape")
    page.evaluate("() => document.querySelectorAll('.p-dialog-close-button').forEach(b => b.click())")
    page.console.take()


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_loads(name, page, frontend_server):
    wf = SHIPPED[name]
    page.console.take()
    page.evaluate("async (wf) => { window.__aceppMissing = null;"
                  " await window.app.loadGraphData(wf, true, true, null) }", wf)
    page.wait_for_timeout(600)  # image previews, dialogs
    assert page.evaluate("() => window.__aceppMissing") == [], "the front end reports missing node types"
    assert not [d for d in _dialogs(page) if "missing" in d.lower()], _dialogs(page)
    unregistered, flagged = _flagged(page)
    assert unregistered == []
    # Only a loader whose released weights the test server lacks may carry the error flag (newer front ends).
    missing = check_workflow(wf, frontend_server.object_info(), expected_missing=RELEASED_FILES).missing_models
    assert {str(nid) for nid, _ in flagged} <= {str(nid) for nid, _, _ in missing}, (flagged, missing)
    assert page.evaluate("() => app.graph._nodes.length") == len(wf["nodes"])

    # The front end's own conversion agrees with ours.
    front = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    ours = strip_meta(ui_to_api(wf, frontend_server.object_info()))
    assert strip_meta(front) == ours

    if ALL_SCREENSHOTS or name == SCREENSHOT_EVERY_RUN:
        screenshot_graph(page, name)  # about 1 s each: all of them on request only

    errors = page.console.take()
    assert errors == [], errors


def screenshot_graph(page, stem: str) -> None:
    """A picture of the whole open graph, ``<stem>.png``.

    docs/images/workflows is updated on request only (ACEPP_UPDATE_SCREENSHOTS=1): a test run leaves
    the committed pictures alone; otherwise they go to the cache for inspection."""
    page.evaluate("() => { const c = app.canvas; const b = app.graph._nodes.reduce((a, n) => [Math.min(a[0], n.pos[0]),"
                  " Math.min(a[1], n.pos[1] - 40), Math.max(a[2], n.pos[0] + n.size[0]), Math.max(a[3], n.pos[1] +"
                  " n.size[1])], [1e9, 1e9, -1e9, -1e9]); c.ds.fitToBounds([b[0], b[1], b[2] - b[0], b[3] - b[1]]);"
                  " c.setDirty(true, true); }")
    page.wait_for_timeout(400)
    # The graph only: the overlay (banner, tabs, side bar, run button) is hidden for the picture.
    page.evaluate("() => document.querySelectorAll('.splitter-overlay-root').forEach(e => e.style.visibility = 'hidden')")
    png = page.locator("#graph-canvas-container").screenshot()
    page.evaluate("() => document.querySelectorAll('.splitter-overlay-root').forEach(e => e.style.visibility = '')")
    folder = SCREENSHOTS if UPDATE_SCREENSHOTS else cache_dir() / "screenshots"
    _save_screenshot(png, folder / f"{stem}.png")


def _save_screenshot(png: bytes, path: Path) -> None:
    """Quantised to a 256-colour palette: the graph is flat colours, and the file stays small."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.open(io.BytesIO(png)).convert("RGB")
    img.thumbnail((1400, 1400))
    img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    assert path.stat().st_size < MAX_SCREENSHOT_BYTES, f"{path.name} is {path.stat().st_size} bytes"


def test_front_end_converts_the_stock_graph_like_the_hand_written_prompt(page):
    """Reroute, PrimitiveNode, bypass, mute, Note and a seed control: the rules the converter copies."""
    from test_workflows_convert import TXT2IMG_API, txt2img_workflow

    page.evaluate("async (wf) => { await window.app.loadGraphData(wf) }", txt2img_workflow())
    front = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    assert strip_meta(front) == TXT2IMG_API
    page.console.take()  # the stock checkpoint file is absent here; not the shipped workflows' concern
