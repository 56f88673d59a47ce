"""The front-end action converts released ACE++ graphs in place, to the same graph as the CLI.

In the real front end (comfyui-frontend-package, headless Chromium; see test_workflows_frontend):
opening each of the nine released graphs (rebuilt from ``released_workflows.py``) shows the
"Convert to ACE++ (this pack)" bar; clicking it replaces the graph in its tab. The result has no
missing node (and the released graph's "missing nodes" dialog, on a front end that opens one, is
closed), no erroring node but a loader of released weights the test server lacks, has the CLI's nodes,
links and widget values, and the front end's own ``graphToPrompt`` equals our converter's prompt. The
command does the same for the open graph, and a graph without released nodes gets no bar and a
message, unchanged. Runs on the host's pinned front end: 1.32.9 (ComfyUI 0.3.75) or 1.49.6 (0.33).
"""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image

from aceplus_host.convert_release import RELEASED_TYPES, convert
from aceplus_host.workflows import check_workflow, strip_meta, ui_to_api
from released_workflows import released_workflows
from test_convert_release import MODEL_FILES, _images, as_loaded
from test_workflows_frontend import _dialogs, _flagged, frontend_server, page, screenshot_graph  # noqa: F401 (fixtures)

pytestmark = pytest.mark.server

RELEASED = released_workflows()
LABEL = "Convert to ACE++ (this pack)"
SCREENSHOT_OF = "ACE_Plus_LoRA_workflow_reference_editing"  # the README gallery's converted graph
GRAPH_STATE = ("() => { const g = app.graph.serialize(); return {types: g.nodes.map(n => [n.id, n.type]), "
               "links: g.links.map(l => Array.isArray(l) ? l.slice(0, 5) : [l.id, l.origin_id, l.origin_slot, "
               "l.target_id, l.target_slot]), widgets: Object.fromEntries(g.nodes.map(n => [n.id, n.widgets_values ?? "
               "null])), groups: g.groups.map(gr => gr.title)} }")


@pytest.fixture(scope="module")
def inputs(frontend_server):  # noqa: F811
    for name, array in _images().items():
        Image.fromarray(array).save(frontend_server.base_dir / "input" / name)
    return frontend_server


def _load(page, wf):  # noqa: F811
    page.console.take()
    page.evaluate("async (wf) => { window.__aceppMissing = null; await window.app.loadGraphData(wf, true, true, null) }",
                  wf)
    page.wait_for_timeout(500)


def _shows_missing_dialog(page) -> bool:  # noqa: F811
    """Whether this front end opens a "missing nodes" dialog on load: 1.32.9 does, 1.49.6 reports the missing
    types only to extensions (``afterConfigureGraph``) and shows no dialog."""
    version = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__")
    return tuple(int(p) for p in version.split(".")[:2]) < (1, 49)


def _released_graph_is_missing_its_nodes(page) -> None:  # noqa: F811
    """The front end reports the released types as missing; where it opens the dialog, wait until it is open."""
    page.wait_for_function("() => window.__aceppMissing !== null", timeout=10_000)
    missing = page.evaluate("() => window.__aceppMissing")
    assert set(missing) & set(RELEASED_TYPES), f"the released nodes are missing here: {missing}"
    if _shows_missing_dialog(page):
        page.wait_for_function(f"() => Array.from(document.querySelectorAll('.p-dialog')).some(d => "
                               f"{json.dumps(list(RELEASED_TYPES))}.some(t => d.innerText.includes(t)))", timeout=10_000)


def _no_missing_dialog(page) -> None:  # noqa: F811
    """No "missing nodes" dialog stays open: the released graph's one is closed by the conversion (waits out
    the dialog's closing animation, then asserts)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function("() => !Array.from(document.querySelectorAll('.p-dialog'))"
                               ".some(d => /missing/i.test(d.innerText))", timeout=5_000)
    except PlaywrightTimeout:
        pass  # the assertion below says what stayed open
    assert not [d for d in _dialogs(page) if "missing" in d.lower()], _dialogs(page)


def _expected(name: str, object_info: dict) -> tuple[dict, dict]:
    converted = as_loaded(convert(RELEASED[name]).workflow, object_info)
    links = sorted(lk[:5] for lk in converted["links"])
    state = {"types": sorted([n["id"], n["type"]] for n in converted["nodes"]), "links": links,
             "widgets": {str(n["id"]): _values(n.get("widgets_values")) for n in converted["nodes"]},
             "groups": [g["title"] for g in converted["groups"]]}
    return state, _dynamic_prompts(strip_meta(ui_to_api(converted, object_info)))


def _dynamic_prompts(prompt: dict) -> dict:
    """The front end's dynamic-prompt pass on multiline prompts: ``{a|b}`` picks one option, so a lone
    ``{image}`` (the released prompts' token) is sent as ``image``. Applied to our prompt to compare."""
    for node in prompt.values():
        text = node["inputs"].get("text")
        if node["class_type"] == "CLIPTextEncode" and isinstance(text, str):
            node["inputs"]["text"] = re.sub(r"\{([^{}|]*)\}", r"\1", text)
    return prompt


def _values(widgets_values):
    """A node without widgets (PreviewImage): 1.32.9 serializes ``widgets_values: []``, 1.49.6 leaves it out."""
    return None if widgets_values == [] else widgets_values


def _state(page) -> dict:  # noqa: F811
    got = page.evaluate(GRAPH_STATE)
    return {"types": sorted(got["types"]), "links": sorted(got["links"]),
            "widgets": {nid: _values(v) for nid, v in got["widgets"].items()},
            "groups": got["groups"]}


def _check_converted(page, name: str, object_info: dict) -> None:  # noqa: F811
    types = page.evaluate("() => app.graph._nodes.map(n => n.type)")
    assert not set(types) & set(RELEASED_TYPES)
    unregistered, flagged = _flagged(page)
    assert unregistered == []
    # As for the shipped graphs: only a loader whose released weights the test server lacks may carry the error
    # flag (1.49.6 flags a model file the server does not list; 1.32.9 flags none).
    converted = as_loaded(convert(RELEASED[name]).workflow, object_info)
    report = check_workflow(converted, object_info, expected_missing=MODEL_FILES)
    assert report.errors == []
    missing = report.missing_models
    assert {str(nid) for nid, _ in flagged} <= {str(nid) for nid, _, _ in missing}, (flagged, missing)
    assert page.evaluate("() => window.__aceppMissing") == [], "the front end reports missing types after converting"
    _no_missing_dialog(page)
    want_state, want_prompt = _expected(name, object_info)
    assert _state(page) == want_state
    front = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    assert strip_meta(front) == want_prompt


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_opening_a_released_graph_offers_the_conversion_and_it_matches_the_cli(name, page, inputs):  # noqa: F811
    _load(page, RELEASED[name])
    _released_graph_is_missing_its_nodes(page)
    button = page.get_by_role("button", name=LABEL)
    button.wait_for(timeout=10_000)
    button.click()
    page.wait_for_function(f"() => !app.graph._nodes.some(n => {json.dumps(list(RELEASED_TYPES))}.includes(n.type))",
                           timeout=30_000)
    page.wait_for_timeout(400)
    assert page.locator("#acepp-convert-release-bar").count() == 0
    _check_converted(page, name, inputs.object_info())
    if name == SCREENSHOT_OF:
        screenshot_graph(page, "converted_release_reference_editing")
    errors = page.console.take()
    assert errors == [], errors


def test_the_command_converts_the_open_graph(page, inputs):  # noqa: F811
    name = "ACE_Plus_LoRA_workflow_redux_reference_editing"
    _load(page, RELEASED[name])
    _released_graph_is_missing_its_nodes(page)  # and its dialog is open: the conversion must close it
    page.evaluate("async () => await app.extensionManager.command.execute('ACEPP.ConvertReleasedWorkflow')")
    page.wait_for_function("() => app.graph._nodes.some(n => n.type === 'ACEPP_Conditioning')", timeout=30_000)
    _check_converted(page, name, inputs.object_info())
    page.console.take()


def test_a_graph_without_released_nodes_gets_no_offer_and_stays(page, inputs):  # noqa: F811
    from test_workflows_convert import txt2img_workflow

    _load(page, txt2img_workflow())
    assert page.locator("#acepp-convert-release-bar").count() == 0
    before = _state(page)
    message = page.evaluate("async () => { const r = await fetch('/acepp/convert_release', {method: 'POST', "
                            "body: JSON.stringify({workflow: app.graph.serialize()})}); return [r.status, await r.json()] }")
    assert message[0] == 400 and "nothing to convert" in message[1]["error"]
    page.evaluate("async () => await app.extensionManager.command.execute('ACEPP.ConvertReleasedWorkflow')")
    page.wait_for_timeout(500)
    assert _state(page) == before
    page.console.take()


def test_damaged_graphs_that_convert_load_in_the_front_end(page, inputs):  # noqa: F811
    """A few conversions of damaged released graphs (tests/test_convert_release_fuzz.py) load in the real front
    end with every node and link, and the front end turns them into a prompt."""
    from test_convert_release_fuzz import converted_samples

    for seed, what, wf in converted_samples(4):
        _load(page, wf)
        got = page.evaluate(GRAPH_STATE)
        assert sorted(got["types"]) == sorted([n["id"], n["type"]] for n in wf["nodes"]), (seed, what)
        assert sorted(got["links"]) == sorted(lk[:5] for lk in wf["links"]), (seed, what)
        page.evaluate("async () => (await window.app.graphToPrompt()).output")
        page.console.take()
