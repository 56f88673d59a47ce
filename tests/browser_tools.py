"""One ComfyUI server and one headless Chromium for every front-end test (``tests/test_*_frontend.py``).

**The front end under test** is the one the host pins in its ``requirements.txt`` (ComfyUI 0.3.75:
1.32.9, 0.33.0: 1.49.6), or ``ACEPP_FRONTEND_VERSION=X``: the setup installs X with ``pip --target``
into ``.cache/frontend/X`` beside the pin (``aceplus_host.ensure_frontend``); the environment's own
package is never touched.

**Renderers.** Every front-end test runs once per renderer the front end has: the classic LiteGraph
canvas, and the Vue node renderer ("Nodes 2.0", the setting ``Comfy.VueNodes.Enabled``, in every front
end since 1.27.1), switched on through the front end's own settings API. ``renderer`` is a
session-scoped parameter, so pytest runs all tests of one renderer, then all of the other, on the same
page.

**Sharing.** The server and the browser start with the first front-end test and stop after the last one
(``conftest.pytest_runtest_teardown``), so the rest of the suite does not run beside an idle browser.
The server is prepared before it starts with everything any front-end test loads: the shipped
workflows' example images, the released graphs' input images, and every released model file name the
graphs name (links to the tiny fixtures, as for a user who downloaded the weights), so each test
passes on its own from a fresh clone.

**Console.** Errors are collected as before (network, script, console); warnings are recorded with
their JavaScript stack (an init script wraps ``console.warn``), so a warning raised by the pack's own
code (its URL is on the stack) or naming it is told apart from the front end's own deprecation notes.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest

from aceplus_host import PACK_NAME, ComfyServer, cache_dir, ensure_frontend, find_comfyui, host_frontend_version
from workflow_tools import RELEASED_FOLDERS, SCREENSHOTS, chromium_path, copy_inputs


TESTS = Path(__file__).resolve().parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
                 "--no-first-run", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1500, "height": 1000}
VUE_NODES_SINCE = (1, 27, 1)  # the setting's own ``versionAdded``; 1.27.0 does not have it
# The Vue renderer folds ``advanced`` inputs behind "Show advanced inputs" from 1.38.2 on (the button first
# ships there); the classic canvas shows them all on every tested front end (1.32.9, 1.49.6, 1.58.1).
VUE_FOLDS_ADVANCED_SINCE = (1, 38, 2)
PACK_URL = f"/extensions/{PACK_NAME}/"  # where ComfyUI serves the pack's web/ folder
UPDATE_SCREENSHOTS = os.environ.get("ACEPP_UPDATE_SCREENSHOTS") == "1"  # into docs/images/workflows
ALL_SCREENSHOTS = UPDATE_SCREENSHOTS or os.environ.get("ACEPP_SCREENSHOTS") == "1"  # else one per run
DOCS_RENDERER = "vue"  # the docs show the face that folds the expert inputs away
MAX_SCREENSHOT_BYTES = 300_000

# Front-end-owned requests that fail offline or on ComfyUI 0.3.75 (by path, on our own server): 1.58.1's
# queue panel polls /api/jobs, which 0.3.75 does not have.
FRONTEND_OWN_PATHS = (re.compile(r"^/(api/)?userdata(/|\?|$)"), re.compile(r"^/(api/)?user\.css$"),
                      re.compile(r"^/favicon\.ico$"), re.compile(r"^/templates/"),
                      re.compile(r"^/(api/)?settings/"), re.compile(r"^/(api/)?i18n"),
                      re.compile(r"^/(api/)?jobs(\?|$)"))
FRONTEND_OWN_MESSAGES = (re.compile(r"^Error loading core workflow templates"),)
# Logged by the front end itself while it starts (1.49.6 on ComfyUI 0.33 logs it with every custom node
# disabled too); allowed during start-up only.
FRONTEND_OWN_STARTUP_MESSAGES = (re.compile(r"^ComfyApp graph accessed before initialization$"),)
# The front end's own list of missing node types, from the extension hook every tested front end calls after
# loading a graph (1.32.9 also opens a "missing nodes" dialog; later ones show their warnings elsewhere).
MISSING_HOOK = ("() => app.registerExtension({name: 'ACEPPTest.MissingNodes', afterConfigureGraph(missing) {"
                " window.__aceppMissing = (missing || []).map(m => typeof m === 'string' ? m : m.type) }})")
# Every console.warn with its stack (Playwright reports a warning's text and top frame only).
WARN_RECORDER = ("(() => { window.__aceppWarnings = []; const warn = console.warn; console.warn = function (...args) {"
                 " window.__aceppWarnings.push([args.map(String).join(' ').slice(0, 2000), new Error().stack || '']);"
                 " return warn.apply(this, args); }; })()")
# Settings for a returning user and readable pictures: no template browser on first start, no minimap, no
# canvas info or zoom menu over the graph, node text kept when zoomed out to fit.
SETTINGS = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False,
            "Comfy.Graph.CanvasMenu": False, "LiteGraph.Canvas.LowQualityRenderingZoomThreshold": 0.2}


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def frontend_version(root: Path) -> str:
    """``ACEPP_FRONTEND_VERSION`` when set, else the version the host pins."""
    return os.environ.get("ACEPP_FRONTEND_VERSION") or host_frontend_version(root)


def renderers(version: str) -> tuple[str, ...]:
    return ("classic", "vue") if version_tuple(version) >= VUE_NODES_SINCE else ("classic",)


def vue_folds_advanced(version: str, renderer: str) -> bool:
    return renderer == "vue" and version_tuple(version) >= VUE_FOLDS_ADVANCED_SINCE


def _version_at_collection() -> str | None:
    try:
        return frontend_version(find_comfyui(bootstrap=False))
    except (FileNotFoundError, ValueError):
        return None


VERSION_UNDER_TEST = _version_at_collection()
RENDERERS = renderers(VERSION_UNDER_TEST) if VERSION_UNDER_TEST else ("classic",)


def missing_tools() -> str | None:
    """Why the front-end tests cannot run here (the front end itself is installed by the setup), or None."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "Python playwright is not installed"
    if VERSION_UNDER_TEST is None:
        try:
            find_comfyui(bootstrap=False)
        except FileNotFoundError as err:
            return str(err)
        return "the host's requirements.txt pins no comfyui-frontend-package"
    if chromium_path() is None:
        return "chromium is not installed (apt-get install chromium)"
    return None


def skip_unless_tools() -> None:
    """Module-level skip when a tool is missing and ``CI`` is unset (CI fails instead, in the fixture)."""
    missing = missing_tools()
    if missing and not os.environ.get("CI"):
        pytest.skip(f"front-end checks need chromium, playwright and a ComfyUI: {missing}", allow_module_level=True)


# -- the browser console -----------------------------------------------------------------------------


class Console:
    """Browser errors, each with its source (a URL for network, a stack for script), and the pack's warnings."""

    def __init__(self, base_url: str):
        self.host = urlparse(base_url).netloc
        self.errors: list[tuple[str, str, str]] = []  # (kind, text, source)
        self.page = None

    def attach(self, page) -> None:
        self.page = page
        page.on("console", lambda m: m.type == "error" and self.errors.append(("console", m.text,
                                                                             m.location.get("url", ""))))
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

    def pack_warnings(self) -> list[tuple[str, str, str]]:
        """The warnings since the last call that come from the pack: its script is on the stack or its name in
        the text (a deprecation notice the front end prints about an extension names the extension)."""
        recorded = self.page.evaluate("() => (window.__aceppWarnings || []).splice(0)") if self.page else []
        return [("warning", text, stack) for text, stack in recorded if from_pack(text, stack)]

    def take(self, starting: bool = False) -> list[tuple[str, str, str]]:
        errors, self.errors = self.errors, []
        return [e for e in errors if not self.frontend_own(*e, starting=starting)] + self.pack_warnings()


def from_pack(text: str, stack: str) -> bool:
    return PACK_URL in stack or bool(re.search(r"ACEPP|ACE\+\+|ACEPlusPlus", text))


# -- the shared server and browser ---------------------------------------------------------------------


def link_frontend_models(base: Path, fixture_models: Path) -> None:
    """``base/models``: the tiny fixtures, and every released file name the graphs use, linked to a fixture.

    The front-end server never runs a prompt; with these names it lists what a user who downloaded the
    weights has, so no loader is flagged for a missing file (one test asks for that on purpose)."""
    models = base / "models"
    for folder in fixture_models.iterdir():
        (models / folder.name).mkdir(parents=True, exist_ok=True)
        for file in folder.iterdir():
            _link(models / folder.name / file.name, file.resolve())
    stand_in = next(fixture_models.glob("vae/*.safetensors")).resolve()
    for name, folder in RELEASED_FOLDERS.items():
        (models / folder).mkdir(parents=True, exist_ok=True)
        _link(models / folder / name, stand_in)


def _link(link: Path, target: Path) -> None:
    if link.is_symlink() or link.exists():
        if link.is_symlink() and link.resolve() == target:
            return
        link.unlink()
    link.symlink_to(target)


def _write_inputs(input_dir: Path) -> None:
    """The shipped workflows' example images and the released graphs' generated ones."""
    from PIL import Image

    from test_convert_release import _images

    copy_inputs(input_dir)
    for name, array in _images().items():
        Image.fromarray(array).save(input_dir / name)


class FrontEnd:
    """The server, the browser and its one page; started on first use, switched between renderers."""

    active: "FrontEnd | None" = None  # the session's instance, for conftest's teardown hook

    def __init__(self, comfy_root: Path, fixture_models: Path):
        self.comfy_root, self.fixture_models = comfy_root, fixture_models
        self.version = frontend_version(comfy_root)
        self.server = self.page = self.renderer = None
        self.startup_errors: list = []
        self._pw = self._context = self._profile = None

    def start(self) -> None:
        from playwright.sync_api import sync_playwright

        base = cache_dir() / "frontend_server"
        link_frontend_models(base, self.fixture_models)
        _write_inputs(base / "input")
        static = ensure_frontend(self.comfy_root, self.version)  # installs X beside the pin when asked for
        self.server = ComfyServer(base, comfy_dir=self.comfy_root, extra_packs=(TESTS / "comfy_test_pack",),
                                  frontend_root=static)
        self.server.start()
        self.server.post("/settings", SETTINGS)
        self._profile = tempfile.TemporaryDirectory(prefix="acepp-chromium-")
        self._pw = sync_playwright().start()
        self._context = self._pw.chromium.launch_persistent_context(
            self._profile.name, executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS, viewport=VIEWPORT)
        self._context.add_init_script(WARN_RECORDER)
        page = self._context.new_page()
        page.console = Console(self.server.url)
        page.console.attach(page)
        page.goto(self.server.url)
        page.wait_for_function("() => window.app?.graph && window.LiteGraph?.registered_node_types?.ACEPP_Sampler",
                               timeout=180_000)
        time.sleep(2)  # let start-up requests settle
        page.evaluate(MISSING_HOOK)
        self.startup_errors = page.console.take(starting=True)
        self.page, self.renderer = page, None  # the server keeps the setting between runs: always set it once

    def page_for(self, renderer: str):
        if self.page is None:
            self.start()
        if renderer != self.renderer:
            self.page.evaluate("async (on) => await app.extensionManager.setting.set('Comfy.VueNodes.Enabled', on)",
                               renderer == "vue")
            self.page.wait_for_function("(on) => app.extensionManager.setting.get('Comfy.VueNodes.Enabled') === on",
                                        arg=renderer == "vue")
            self.renderer = renderer
            self.page.wait_for_timeout(500)
            self.page.console.take()  # switching logs nothing of the pack's; the next load starts clean
        return self.page

    def close(self) -> None:
        if self._context is not None:
            self._context.close()
            self._pw.stop()
            self._profile.cleanup()
        if self.server is not None:
            self.server.stop()
        self.server = self.page = self.renderer = self._context = self._pw = self._profile = None


@pytest.fixture(scope="session")
def frontend(comfy_root, fixture_paths):
    missing = missing_tools()
    if missing:
        pytest.fail(f"CI is set but the front-end check cannot run: {missing}")
    shared = FrontEnd(comfy_root, fixture_paths["models"])
    FrontEnd.active = shared
    yield shared
    shared.close()
    FrontEnd.active = None


@pytest.fixture(scope="session", params=RENDERERS)
def renderer(request) -> str:
    return request.param


@pytest.fixture
def page(frontend, renderer):
    return frontend.page_for(renderer)


@pytest.fixture
def frontend_server(frontend, page):
    return frontend.server


def close_after_last_test(item, nextitem) -> None:
    """conftest's ``pytest_runtest_teardown``: stop the browser and server when no front-end test follows."""
    if FrontEnd.active is not None and "frontend" in item.fixturenames and (
            nextitem is None or "frontend" not in nextitem.fixturenames):
        FrontEnd.active.close()


# -- reading the page ---------------------------------------------------------------------------------


def load_graph(page, workflow: dict) -> None:
    """``app.loadGraphData`` as a drag-and-drop would; waits until every node and image preview is drawn."""
    page.console.take()
    page.evaluate("async (wf) => { window.__aceppMissing = null;"
                  " await window.app.loadGraphData(wf, true, true, null) }", workflow)
    page.wait_for_function(
        "() => { const vue = app.extensionManager.setting.get('Comfy.VueNodes.Enabled');"
        " const drawn = !vue || document.querySelectorAll('[data-node-id]').length >= app.graph._nodes.length;"
        " const previews = app.graph._nodes.flatMap(n => n.imgs || []);"
        " return drawn && [...document.images, ...previews].every(i => i.complete) }", timeout=15_000)
    page.wait_for_timeout(300)  # dialogs, the size of nodes with previews


def flagged(page) -> tuple[list[list], list[list]]:
    """([id, type] of nodes whose type is not registered, [id, type] of registered nodes with ``has_errors``)."""
    return page.evaluate("() => { const n = app.graph._nodes, known = t => !!LiteGraph.registered_node_types[t];"
                         " return [n.filter(x => !known(x.type)).map(x => [x.id, x.type]),"
                         " n.filter(x => known(x.type) && x.has_errors).map(x => [x.id, x.type])]; }")


def dialogs(page) -> list[str]:
    return page.evaluate("() => Array.from(document.querySelectorAll('.p-dialog')).map(d => d.innerText)")


# Each node's box on screen: the Vue node's element and its visible children (the "Issues" footer hangs
# below it; the resize handles are transparent), or the canvas node's bounding box (title included).
NODE_BOXES = """() => {
  const vue = app.extensionManager.setting.get('Comfy.VueNodes.Enabled');
  if (!vue) {
    const ds = app.canvas.ds, c = app.canvas.canvas.getBoundingClientRect();
    const x = v => (v + ds.offset[0]) * ds.scale + c.left, y = v => (v + ds.offset[1]) * ds.scale + c.top;
    return app.graph._nodes.map(n => { const b = n.getBounding();
      return [String(n.id), x(b[0]), y(b[1]), x(b[0] + b[2]), y(b[1] + b[3])]; });
  }
  return Array.from(document.querySelectorAll('[data-node-id]')).map(el => {
    let [l, t, r, b] = [Infinity, Infinity, -Infinity, -Infinity];
    for (const e of [el, ...el.children]) {
      if (e !== el && getComputedStyle(e).opacity === '0') continue;
      const x = e.getBoundingClientRect(); if (!x.width || !x.height) continue;
      l = Math.min(l, x.left); t = Math.min(t, x.top); r = Math.max(r, x.right); b = Math.max(b, x.bottom);
    }
    return [el.dataset.nodeId, l, t, r, b];
  });
}"""


GROUP_BOXES = """() => { const ds = app.canvas.ds, c = app.canvas.canvas.getBoundingClientRect();
  const x = v => (v + ds.offset[0]) * ds.scale + c.left, y = v => (v + ds.offset[1]) * ds.scale + c.top;
  return (app.graph._groups || app.graph.groups || []).map(g => [x(g.pos[0]), y(g.pos[1]), x(g.pos[0] + g.size[0]),
                                                              y(g.pos[1] + g.size[1])]); }"""


def node_boxes(page) -> dict[str, tuple[float, float, float, float]]:
    """{node id: (left, top, right, bottom)} in screen pixels, as the current renderer draws the graph."""
    return {nid: (l, t, r, b) for nid, l, t, r, b in page.evaluate(NODE_BOXES)}


def overlaps(boxes: dict[str, tuple], slack: float = 0.5) -> list[tuple[str, str, float, float]]:
    """Pairs of boxes that overlap by more than ``slack`` px both ways: (id, id, width, height of the overlap)."""
    found = []
    ids = sorted(boxes, key=lambda k: (len(k), k))
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            (al, at, ar, ab), (bl, bt, br, bb) = boxes[a], boxes[b]
            w, h = min(ar, br) - max(al, bl), min(ab, bb) - max(at, bt)
            if w > slack and h > slack:
                found.append((a, b, round(w, 1), round(h, 1)))
    return found


# Each Vue node's widget rows: [node id, label, shown value]. 1.49.6 and later mark rows and labels with
# data-testid; 1.32.9 uses the lg-node-widget class and a <p> label. The value: a switch's state, an
# input's text, else the row's text after its label (a combo).
VUE_WIDGETS = """() => {
  const out = [];
  for (const node of document.querySelectorAll('[data-node-id]')) {
    let rows = node.querySelectorAll('[data-testid=node-widget]');
    if (!rows.length) rows = node.querySelectorAll('.lg-node-widget');
    for (const row of rows) {
      const text = (row.innerText || '').split('\\n').map(s => s.trim()).filter(Boolean);
      const field = row.querySelector('input:not([type=file]):not([role=switch]), textarea');
      const label = row.querySelector('[data-testid=widget-layout-field-label]')?.innerText?.trim()
        ?? row.querySelector('p')?.innerText?.trim() ?? field?.getAttribute('aria-label') ?? text[0] ?? null;
      const toggle = row.querySelector('[role=switch]');
      const value = toggle ? String(toggle.getAttribute('aria-checked') === 'true')
        : field ? field.value : text.filter(s => s !== label).join(' ');
      out.push([node.dataset.nodeId, label, value]);
    }
  }
  return out;
}"""


def vue_widgets(page) -> dict[str, dict[str, str]]:
    """{node id: {widget label: value as shown}} of the Vue renderer's widget rows."""
    rows: dict[str, dict[str, str]] = {}
    for nid, label, value in page.evaluate(VUE_WIDGETS):
        rows.setdefault(nid, {})[label] = value
    return rows


def shows(value, shown: str) -> bool:
    """Whether a widget row showing ``shown`` shows ``value`` (numbers as rounded to the digits shown)."""
    if isinstance(value, bool):
        return shown == str(value).lower()
    if isinstance(value, (int, float)):
        try:
            number = float(shown.replace(",", ""))
        except ValueError:
            return False
        digits = len(shown.split(".")[1]) if "." in shown else 0
        return round(float(value), digits) == number
    return shown == str(value)


# -- pictures -------------------------------------------------------------------------------------------


def screenshot_graph(page, stem: str, renderer: str) -> None:
    """A picture of the whole open graph and nothing else, ``<stem>.png``.

    The front end's focus mode (its own API) hides the menus, tabs and side bar, its toast API clears the
    notifications, nothing stays selected (no selection toolbox); the graph is fitted to the view with a
    margin from the node boxes the renderer draws, and the picture is cut to those boxes (so the focus
    mode's own exit button stays out). docs/images/workflows is updated on request only
    (ACEPP_UPDATE_SCREENSHOTS=1, from the Vue renderer); otherwise the picture goes to the cache."""
    page.evaluate("() => { app.extensionManager.focusMode = true; const t = app.extensionManager.toast;"
                  " (t.dismissAll ?? t.removeAll)?.call(t); app.canvas.deselectAll(); }")
    page.wait_for_timeout(300)
    left, top, right, bottom = _union([*node_boxes(page).values(), *page.evaluate(GROUP_BOXES)])
    pad = 0.06 * max(right - left, bottom - top)
    page.evaluate("([l, t, r, b]) => { const ds = app.canvas.ds, s = ds.scale;"
                  " const c = app.canvas.canvas.getBoundingClientRect();"
                  " const g = (x, y) => [(x - c.left) / s - ds.offset[0], (y - c.top) / s - ds.offset[1]];"
                  " const [x0, y0] = g(l, t), [x1, y1] = g(r, b); ds.fitToBounds([x0, y0, x1 - x0, y1 - y0]);"
                  " app.canvas.setDirty(true, true); }", [left - pad, top - pad, right + pad, bottom + pad])
    page.mouse.move(VIEWPORT["width"] - 2, VIEWPORT["height"] - 2)  # no tooltip
    page.wait_for_timeout(500)
    left, top, right, bottom = _union([*node_boxes(page).values(), *page.evaluate(GROUP_BOXES)])
    clip = {"x": max(0, left - 16), "y": max(0, top - 16)}
    clip.update(width=min(VIEWPORT["width"], right + 16) - clip["x"],
                height=min(VIEWPORT["height"], bottom + 16) - clip["y"])
    png = page.screenshot(clip=clip)
    page.evaluate("() => { app.extensionManager.focusMode = false; }")
    docs = UPDATE_SCREENSHOTS and renderer == DOCS_RENDERER
    version = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__")
    folder = SCREENSHOTS if docs else cache_dir() / "screenshots" / f"{version}-{renderer}"
    save_screenshot(png, folder / f"{stem}.png")


def _union(boxes) -> tuple[float, float, float, float]:
    boxes = list(boxes)
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def save_screenshot(png: bytes, path: Path) -> None:
    """Quantised to a 128-colour palette: the graph is flat colours, and the file stays small."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.open(io.BytesIO(png)).convert("RGB")
    img.thumbnail((1400, 1400))
    img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    assert path.stat().st_size < MAX_SCREENSHOT_BYTES, f"{path.name} is {path.stat().st_size} bytes"
