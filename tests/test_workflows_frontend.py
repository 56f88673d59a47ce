"""The shipped workflows load in the real front end (comfyui-frontend-package, headless Chromium).

The front end is the one the host pins in its ``requirements.txt`` (ComfyUI 0.3.75: 1.32.9,
0.33.0: 1.49.6), as a user of that ComfyUI gets it, or ``ACEPP_FRONTEND_VERSION=X`` (installed beside
the pin); every test runs with the classic canvas and again with the Vue node renderer where the front
end has it (``browser_tools``: one shared server and browser).

For each workflow: ``app.loadGraphData`` as a drag-and-drop would, then assert that the front end
reported no missing node type (and opened no "missing nodes" dialog), every node has a registered type
and no error flag (the server has every released file name the graphs use; one test takes a model file
away on purpose: front ends from 1.49 on flag its loader, and only that), the browser console showed no
error and no warning from the pack, the front end's own ``graphToPrompt`` equals our converter's output,
no node overlaps another as the renderer draws it, and (Vue) every widget row shows the workflow's
value. The expert inputs of ACE++ Conditioning and Sampler fold away exactly where the front end folds
ComfyUI's own ``advanced`` inputs. Screenshots of the graphs go to docs/images/workflows on request.

Offline, the front end logs its own network failures (release checks on api.comfy.org, the
template index, per-user files ComfyUI 0.3.75 does not have) and one start-up exception of its
own (a settings watcher on 1.32.9, "graph accessed before initialization" on 1.49.6); those are
filtered by their source (URL or stack) or text, and only during start-up for the exceptions.
Everything logged while a workflow loads counts.

Needs Debian's ``chromium`` and Python ``playwright`` (never ``playwright install``); the front end is
installed by the setup. Skipped only when a tool is absent and ``CI`` is unset.
"""

from __future__ import annotations

import json

import pytest

from aceplus_host.workflows import check_workflow, input_specs, strip_meta, ui_to_api, widget_values
from browser_tools import (ALL_SCREENSHOTS, dialogs, flagged, from_pack, load_graph, node_boxes, overlaps,
                           screenshot_graph, shows, skip_unless_tools, vue_folds_advanced, vue_widgets)
from workflow_tools import VIRTUAL_TYPES, shipped_workflows

pytestmark = pytest.mark.server
skip_unless_tools()

SHIPPED = shipped_workflows()
SCREENSHOT_EVERY_RUN = "ace_reference_editing"  # one picture per run keeps the screenshot code running
# The inputs folded behind "show advanced" where the host and front end support it (nodes/compat.py).
EXPERT = {"ACEPP_Conditioning": {"reference_fit", "budget_policy", "target_tokens", "aspect_mode", "hold_references",
                                 "release_parity", "keep_pixels_rate"},
          "ACEPP_Sampler": {"canvas_shift", "composite", "feather"}}
MAX_SHOWN = {"ACEPP_Conditioning": 7, "ACEPP_Sampler": 6}


def test_front_end_starts_clean_with_the_pack(page, frontend):
    assert frontend.startup_errors == []
    registered = page.evaluate("() => Object.keys(LiteGraph.registered_node_types).filter(t => t.startsWith('ACEPP_'))")
    assert {"ACEPP_Loader", "ACEPP_Conditioning", "ACEPP_Sampler", "ACEPP_AddReference"} <= set(registered)


def test_front_end_is_the_one_under_test_in_the_renderer_under_test(page, frontend, renderer):
    """The served front end is the host's pin or ACEPP_FRONTEND_VERSION; the renderer setting took effect."""
    assert page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__") == frontend.version
    assert page.evaluate("() => app.extensionManager.setting.get('Comfy.VueNodes.Enabled')") is (renderer == "vue")
    load_graph(page, SHIPPED["ace_reference_editing"])
    drawn = page.evaluate("() => document.querySelectorAll('[data-node-id]').length")
    assert drawn == (len(SHIPPED["ace_reference_editing"]["nodes"]) if renderer == "vue" else 0)


def test_missing_node_is_detected(page):
    """The check itself can fail: an unknown node type is reported and flagged."""
    wf = json.loads(json.dumps(SHIPPED["ace_reference_editing"]))
    wf["nodes"][1]["type"] = "NoSuchNodeType"
    load_graph(page, wf)
    assert page.evaluate("() => window.__aceppMissing") == ["NoSuchNodeType"]
    unregistered, _ = flagged(page)
    assert [t for _, t in unregistered] == ["NoSuchNodeType"]
    page.keyboard.press("Escape")
    page.evaluate("() => document.querySelectorAll('.p-dialog-close-button').forEach(b => b.click())")
    page.console.take()


def test_the_console_check_sees_a_warning_from_the_pack(page):
    """A warning raised from the pack's script URL is attributed to the pack; the front end's own is not."""
    page.console.take()
    page.evaluate("() => { eval(\"console.warn('x is deprecated')\\n//# sourceURL=\" + location.origin +"
                  " '/extensions/ComfyUI-ACEPlusPlus/js/check.js'); console.warn('y is deprecated'); }")
    assert [text for _, text, _ in page.console.take()] == ["x is deprecated"]
    assert from_pack("ACEPP.ConvertReleasedWorkflow uses a deprecated hook", "") and not from_pack("other", "")


def _assert_sound_in_the_front_end(page, wf: dict, object_info: dict, missing_files=()) -> None:
    """No missing type, no flag but on a loader of a file in ``missing_files``, graphToPrompt agrees."""
    assert page.evaluate("() => window.__aceppMissing") == [], "the front end reports missing node types"
    assert not [d for d in dialogs(page) if "missing" in d.lower()], dialogs(page)
    unregistered, flags = flagged(page)
    assert unregistered == []
    missing = check_workflow(wf, object_info, expected_missing=missing_files).missing_models
    assert {str(nid) for nid, _ in flags} <= {str(nid) for nid, _, _ in missing}, (flags, missing)
    assert page.evaluate("() => app.graph._nodes.length") == len(wf["nodes"])
    front = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    assert strip_meta(front) == strip_meta(ui_to_api(wf, object_info))


def _assert_no_overlap(page, name: str, renderer: str) -> None:
    found = overlaps(node_boxes(page))
    titles = {str(n["id"]): n.get("title") or n["type"] for n in SHIPPED[name]["nodes"]}
    assert not found, [f"{titles[a]} overlaps {titles[b]} by {w} x {h} px ({renderer})" for a, b, w, h in found]


def _assert_widgets_show_their_values(page, wf: dict, object_info: dict, folded: bool, only=None) -> None:
    """Vue: every node's widget rows (or those of the node ids in ``only``) show the workflow's values; an
    ``advanced`` input has no row where the front end folds them."""
    shown = vue_widgets(page)
    for node in wf["nodes"]:
        if node["type"] in VIRTUAL_TYPES or (only is not None and node["id"] not in only):
            continue
        info = object_info[node["type"]]
        advanced = {s.name for s in input_specs(info) if s.is_widget and s.options.get("advanced")}
        rows = shown.get(str(node["id"]), {})
        for name, value in widget_values(node, info).items():
            where = f"node {node['id']} ({node.get('title') or node['type']}).{name}"
            if folded and name in advanced:
                assert name not in rows, f"{where} is advanced and should be folded away: {sorted(rows)}"
                continue
            assert name in rows, f"{where} shows no widget row; rows: {sorted(rows)}"
            assert shows(value, rows[name]), f"{where} shows {rows[name]!r} for {value!r}"


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_loads(name, page, frontend, frontend_server, renderer):
    wf = SHIPPED[name]
    object_info = frontend_server.object_info()
    load_graph(page, wf)
    _assert_sound_in_the_front_end(page, wf, object_info)
    _assert_no_overlap(page, name, renderer)
    if renderer == "vue":
        _assert_widgets_show_their_values(page, wf, object_info, vue_folds_advanced(frontend.version, renderer))
    if ALL_SCREENSHOTS or name == SCREENSHOT_EVERY_RUN:
        screenshot_graph(page, name, renderer)  # about 1 s each: all of them on request only
    errors = page.console.take()
    assert errors == [], errors


def test_a_missing_model_file_flags_its_loader_only(page, frontend_server, renderer):
    """A user who has not downloaded a file yet: front ends from 1.49 on flag that loader (the Vue renderer
    adds an "Issues" footer to it); nothing else changes, and the footer overlaps no other node."""
    wf = json.loads(json.dumps(SHIPPED["ace_reference_editing"]))
    loader = next(n for n in wf["nodes"] if n["type"] == "ACEPP_Loader")
    loader["widgets_values"][0] = "not_downloaded_yet.safetensors"
    load_graph(page, wf)
    _assert_sound_in_the_front_end(page, wf, frontend_server.object_info(),
                                   missing_files=("not_downloaded_yet.safetensors",))
    _assert_no_overlap(page, "ace_reference_editing", renderer)
    assert page.console.take() == []


def _visible_widgets(page, node_id: int, renderer: str) -> list[str]:
    if renderer == "vue":
        return list(vue_widgets(page).get(str(node_id), {}))
    return page.evaluate("(id) => { const n = app.graph.getNodeById(id); return n.widgets.filter(w =>"
                         " (n.isWidgetVisible ? n.isWidgetVisible(w) : !w.hidden) && w.type !== 'button')"
                         ".map(w => w.name) }", node_id)


def test_expert_inputs_fold_away_where_the_front_end_folds_its_own(page, frontend, frontend_server, renderer):
    """ACE++ Conditioning and Sampler mark their expert inputs ``advanced`` where the host's schema has the flag
    (ComfyUI 0.33; not 0.3.75: nothing changes there), as ComfyUI marks its own (VAE Decode (Tiled)). They fold
    exactly where the stock node's do: on the Vue renderer from 1.38.2 on; the classic canvas shows every
    widget. Folded, Conditioning shows at most 7 widgets; the node's own "Show advanced inputs" button brings
    the rest back with their values, and the prompt does not change."""
    wf = SHIPPED["ace_reference_editing"]
    object_info = frontend_server.object_info()
    load_graph(page, wf)
    tiled = page.evaluate("() => { const n = LiteGraph.createNode('VAEDecodeTiled'); n.pos = [0, 1500];"
                          " app.graph.add(n); return n.id }")
    if renderer == "vue":
        page.wait_for_selector(f'[data-node-id="{tiled}"]')
    host_marks = {k: {s.name for s in input_specs(object_info[k]) if s.options.get("advanced")} for k in EXPERT}
    stock_marked = any(s.options.get("advanced") for s in input_specs(object_info["VAEDecodeTiled"]))
    assert host_marks == (EXPERT if stock_marked else {k: set() for k in EXPERT}), "marked as the host marks its own"
    stock_folds = "tile_size" not in _visible_widgets(page, tiled, renderer)
    assert stock_folds == (stock_marked and vue_folds_advanced(frontend.version, renderer))
    before = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    ours = {kind: next(n["id"] for n in wf["nodes"] if n["type"] == kind) for kind in EXPERT}
    for kind, expert in EXPERT.items():
        names = [s.name for s in input_specs(object_info[kind]) if s.is_widget]
        visible = _visible_widgets(page, ours[kind], renderer)
        if stock_folds:
            assert set(visible) & set(names) == set(names) - expert and len(visible) <= MAX_SHOWN[kind], visible
            page.locator(f'[data-node-id="{ours[kind]}"] [data-testid=advanced-inputs-button]').click()
            page.wait_for_timeout(300)
            visible = _visible_widgets(page, ours[kind], renderer)
        assert set(names) <= set(visible), f"{kind} hides {set(names) - set(visible)}"
    if renderer == "vue":
        _assert_widgets_show_their_values(page, wf, object_info, folded=False, only=set(ours.values()))
    assert page.evaluate("async () => (await window.app.graphToPrompt()).output") == before
    if stock_folds and ALL_SCREENSHOTS:
        page.evaluate("(id) => app.graph.remove(app.graph.getNodeById(id))", tiled)
        screenshot_graph(page, "ace_reference_editing_advanced", renderer)
    errors = page.console.take()
    assert errors == [], errors


def test_front_end_converts_the_stock_graph_like_the_hand_written_prompt(page):
    """Reroute, PrimitiveNode, bypass, mute, Note and a seed control: the rules the converter copies."""
    from test_workflows_convert import TXT2IMG_API, txt2img_workflow

    page.evaluate("async (wf) => { await window.app.loadGraphData(wf) }", txt2img_workflow())
    front = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    assert strip_meta(front) == TXT2IMG_API
    page.console.take()  # the stock checkpoint file is absent here; not the shipped workflows' concern

