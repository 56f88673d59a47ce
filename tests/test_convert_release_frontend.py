"""The front-end action converts released ACE++ graphs in place, to the same graph as the CLI.

In the real front end (comfyui-frontend-package, headless Chromium; see test_workflows_frontend):
opening each of the nine released graphs (rebuilt from ``released_workflows.py``) shows the
"Convert to ACE++ (this pack)" bar; clicking it replaces the graph in its tab. The result has no
missing node (and the released graph's "missing nodes" dialog, on a front end that opens one, is
closed), no erroring node but a loader of released weights the test server lacks, has the CLI's nodes,
links and widget values, and the front end's own ``graphToPrompt`` equals our converter's prompt. The
command does the same for the open graph, and a graph without released nodes gets no bar and a
message, unchanged. Runs on the front end under test (the host's pin, 1.32.9 on ComfyUI 0.3.75 and
1.49.6 on 0.33, or ``ACEPP_FRONTEND_VERSION``), with the classic canvas and the Vue node renderer
(``browser_tools``); the bar is clicked as a user clicks it, so it must be visible and on top in both.
"""

from __future__ import annotations

import json
import re

import pytest

from aceplus_host.convert_release import RELEASED_TYPES, convert
from aceplus_host.workflows import check_workflow, strip_meta, ui_to_api
from browser_tools import dialogs, flagged, load_graph, screenshot_graph, skip_unless_tools
from released_workflows import released_workflows
from test_convert_release import as_loaded

pytestmark = pytest.mark.server
skip_unless_tools()

RELEASED = released_workflows()
LABEL = "Convert to ACE++ (this pack)"
SCREENSHOT_OF = "ACE_Plus_LoRA_workflow_reference_editing"  # the README gallery's converted graph
GRAPH_STATE = ("() => { const g = app.graph.serialize(); return {types: g.nodes.map(n => [n.id, n.type]), "
               "links: g.links.map(l => Array.isArray(l) ? l.slice(0, 5) : [l.id, l.origin_id, l.origin_slot, "
               "l.target_id, l.target_slot]), widgets: Object.fromEntries(g.nodes.map(n => [n.id, n.widgets_values ?? "
               "null])), groups: g.groups.map(gr => gr.title)} }")


def _shows_missing_dialog(page) -> bool:
    """Whether this front end opens a "missing nodes" dialog on load: 1.32.9 does, 1.49.6 reports the missing
    types only to extensions (``afterConfigureGraph``) and shows no dialog."""
    version = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__")
    return tuple(int(p) for p in version.split(".")[:2]) < (1, 49)


def _released_graph_is_missing_its_nodes(page) -> None:
    """The front end reports the released types as missing; where it opens the dialog, wait until it is open."""
    page.wait_for_function("() => window.__aceppMissing !== null", timeout=10_000)
    missing = page.evaluate("() => window.__aceppMissing")
    assert set(missing) & set(RELEASED_TYPES), f"the released nodes are missing here: {missing}"
    if _shows_missing_dialog(page):
        page.wait_for_function(f"() => Array.from(document.querySelectorAll('.p-dialog')).some(d => "
                               f"{json.dumps(list(RELEASED_TYPES))}.some(t => d.innerText.includes(t)))", timeout=10_000)


def _no_missing_dialog(page) -> None:
    """No "missing nodes" dialog stays open: the released graph's one is closed by the conversion (waits out
    the dialog's closing animation, then asserts)."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function("() => !Array.from(document.querySelectorAll('.p-dialog'))"
                               ".some(d => /missing/i.test(d.innerText))", timeout=5_000)
    except PlaywrightTimeout:
        pass  # the assertion below says what stayed open
    assert not [d for d in dialogs(page) if "missing" in d.lower()], dialogs(page)


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


def _state(page) -> dict:
    got = page.evaluate(GRAPH_STATE)
    return {"types": sorted(got["types"]), "links": sorted(got["links"]),
            "widgets": {nid: _values(v) for nid, v in got["widgets"].items()},
            "groups": got["groups"]}


def _check_converted(page, name: str, object_info: dict) -> None:
    types = page.evaluate("() => app.graph._nodes.map(n => n.type)")
    assert not set(types) & set(RELEASED_TYPES)
    unregistered, flags = flagged(page)
    assert unregistered == []
    # The server has every released file name (browser_tools), so the converted graph is sound as it stands
    # and no node carries the error flag (front ends from 1.49 on flag a loader of a file the server lacks).
    converted = as_loaded(convert(RELEASED[name]).workflow, object_info)
    assert check_workflow(converted, object_info).errors == []
    assert flags == []
    assert page.evaluate("() => window.__aceppMissing") == [], "the front end reports missing types after converting"
    _no_missing_dialog(page)
    want_state, want_prompt = _expected(name, object_info)
    assert _state(page) == want_state
    front = page.evaluate("async () => (await window.app.graphToPrompt()).output")
    assert strip_meta(front) == want_prompt


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_opening_a_released_graph_offers_the_conversion_and_it_matches_the_cli(name, page, frontend_server, renderer):
    load_graph(page, RELEASED[name])
    _released_graph_is_missing_its_nodes(page)
    button = page.get_by_role("button", name=LABEL)
    button.wait_for(timeout=10_000)
    button.click()
    page.wait_for_function(f"() => !app.graph._nodes.some(n => {json.dumps(list(RELEASED_TYPES))}.includes(n.type))",
                           timeout=30_000)
    page.wait_for_timeout(400)
    assert page.locator("#acepp-convert-release-bar").count() == 0
    _check_converted(page, name, frontend_server.object_info())
    if name == SCREENSHOT_OF:
        screenshot_graph(page, "converted_release_reference_editing", renderer)
    errors = page.console.take()
    assert errors == [], errors


def test_the_command_converts_the_open_graph(page, frontend_server):
    name = "ACE_Plus_LoRA_workflow_redux_reference_editing"
    load_graph(page, RELEASED[name])
    _released_graph_is_missing_its_nodes(page)  # and its dialog is open: the conversion must close it
    page.evaluate("async () => await app.extensionManager.command.execute('ACEPP.ConvertReleasedWorkflow')")
    page.wait_for_function("() => app.graph._nodes.some(n => n.type === 'ACEPP_Conditioning')", timeout=30_000)
    _check_converted(page, name, frontend_server.object_info())
    errors = page.console.take()
    assert errors == [], errors


def test_a_graph_without_released_nodes_gets_no_offer_and_stays(page):
    from test_workflows_convert import txt2img_workflow

    load_graph(page, txt2img_workflow())
    assert page.locator("#acepp-convert-release-bar").count() == 0
    before = _state(page)
    message = page.evaluate("async () => { const r = await fetch('/acepp/convert_release', {method: 'POST', "
                            "body: JSON.stringify({workflow: app.graph.serialize()})}); return [r.status, await r.json()] }")
    assert message[0] == 400 and "nothing to convert" in message[1]["error"]
    page.evaluate("async () => await app.extensionManager.command.execute('ACEPP.ConvertReleasedWorkflow')")
    page.wait_for_timeout(500)
    assert _state(page) == before
    page.console.take()


def test_damaged_graphs_that_convert_load_in_the_front_end(page):
    """A few conversions of damaged released graphs (tests/test_convert_release_fuzz.py) load in the real front
    end with every node and link, and the front end turns them into a prompt."""
    from test_convert_release_fuzz import converted_samples

    for seed, what, wf in converted_samples(4):
        load_graph(page, wf)
        got = page.evaluate(GRAPH_STATE)
        assert sorted(got["types"]) == sorted([n["id"], n["type"]] for n in wf["nodes"]), (seed, what)
        assert sorted(got["links"]) == sorted(lk[:5] for lk in wf["links"]), (seed, what)
        page.evaluate("async () => (await window.app.graphToPrompt()).output")
        page.console.take()


# The pack's module as the front end imported it (the path ComfyUI's /extensions lists: the same module instance).
PACK_MODULE = ("async () => import((await (await fetch('/extensions')).json())"
               ".find(n => n.endsWith('/js/acepp_convert_release.js')))")


def test_the_bar_says_which_front_end_it_needs_where_the_api_is_missing(page):
    """Every tested front end has the extension API the bar uses; one without it gets a bar that says which
    front end the action needs and how to convert on the command line, with no button that cannot work."""
    load_graph(page, RELEASED["ACE_Plus_LoRA_workflow_reference_editing"])
    assert page.evaluate(f"async () => (await ({PACK_MODULE})()).missingApi()") == []
    page.evaluate(f"async () => (await ({PACK_MODULE})()).showBar(['app.extensionManager.workflow'])")
    bar = page.locator("#acepp-convert-release-bar")
    text = bar.inner_text()
    assert "needs ComfyUI front end 1.32.9 or later" in text and "app.extensionManager.workflow" in text, text
    assert "python -m aceplus_host convert-release" in text
    assert bar.get_by_role("button", name=LABEL).count() == 0
    bar.get_by_role("button", name="×").click()
    assert page.locator("#acepp-convert-release-bar").count() == 0
    errors = page.console.take()
    assert errors == [], errors
