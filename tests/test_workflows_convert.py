"""The UI -> API converter and the soundness checker, on small stock-node workflows.

Expectations are written out by hand from the front end's rules (see
``aceplus_host.workflows``); the front-end tests compare the converter with the
real front end's ``graphToPrompt`` on these same graphs.
"""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
from PIL import Image

from aceplus_host.workflows import WorkflowError, check_workflow, strip_meta, ui_to_api, widget_layout

pytestmark = pytest.mark.server


def _node(nid, kind, widgets=None, inputs=(), outputs=(), mode=0, **extra):
    node = {"id": nid, "type": kind, "pos": [nid * 40, nid * 30], "size": [300, 120], "flags": {}, "order": nid,
            "mode": mode, "inputs": [dict(i) for i in inputs], "outputs": [dict(o) for o in outputs],
            "properties": {"Node name for S&R": kind}}
    if widgets is not None:
        node["widgets_values"] = widgets
    node.update(extra)
    return node


def _wf(nodes, links):
    return {"last_node_id": max(n["id"] for n in nodes), "last_link_id": max((lk[0] for lk in links), default=0),
            "nodes": nodes, "links": links, "groups": [], "config": {}, "extra": {}, "version": 0.4}


def txt2img_workflow() -> dict:
    """Checkpoint -> encoders -> KSampler -> decode -> save, with every front-end-only construct:
    a Note, a Reroute (VAE), a PrimitiveNode on a converted widget (seed), a bypassed node
    (ImageInvert between decode and save) and a muted node (PreviewImage)."""
    nodes = [
        _node(1, "CheckpointLoaderSimple", ["model.safetensors"],
              outputs=[{"name": "MODEL", "type": "MODEL", "links": [1]}, {"name": "CLIP", "type": "CLIP", "links": [2, 3]},
                       {"name": "VAE", "type": "VAE", "links": [10]}]),
        _node(2, "CLIPTextEncode", ["a cat"], inputs=[{"name": "clip", "type": "CLIP", "link": 2}],
              outputs=[{"name": "CONDITIONING", "type": "CONDITIONING", "links": [4]}]),
        _node(3, "CLIPTextEncode", ["blurry"], inputs=[{"name": "clip", "type": "CLIP", "link": 3}],
              outputs=[{"name": "CONDITIONING", "type": "CONDITIONING", "links": [5]}]),
        _node(4, "EmptyLatentImage", [512, 384, 1], outputs=[{"name": "LATENT", "type": "LATENT", "links": [6]}]),
        _node(5, "KSampler", [42, "fixed", 20, 7.5, "euler", "normal", 1.0],
              inputs=[{"name": "model", "type": "MODEL", "link": 1}, {"name": "positive", "type": "CONDITIONING", "link": 4},
                      {"name": "negative", "type": "CONDITIONING", "link": 5},
                      {"name": "latent_image", "type": "LATENT", "link": 6},
                      {"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": 9}],
              outputs=[{"name": "LATENT", "type": "LATENT", "links": [7]}]),
        _node(6, "VAEDecode", inputs=[{"name": "samples", "type": "LATENT", "link": 7}, {"name": "vae", "type": "VAE", "link": 8}],
              outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [11, 13]}]),
        _node(7, "Reroute", inputs=[{"name": "", "type": "*", "link": 10}], outputs=[{"name": "", "type": "VAE", "links": [8]}]),
        _node(8, "PrimitiveNode", [123, "fixed"],
              outputs=[{"name": "INT", "type": "INT", "links": [9], "widget": {"name": "seed"}}]),
        _node(9, "Note", ["A note is never part of the prompt."]),
        _node(10, "ImageInvert", inputs=[{"name": "image", "type": "IMAGE", "link": 11}],
              outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [12]}], mode=4),
        _node(11, "SaveImage", ["out"], inputs=[{"name": "images", "type": "IMAGE", "link": 12}]),
        _node(12, "PreviewImage", inputs=[{"name": "images", "type": "IMAGE", "link": 13}], mode=2),
    ]
    links = [[1, 1, 0, 5, 0, "MODEL"], [2, 1, 1, 2, 0, "CLIP"], [3, 1, 1, 3, 0, "CLIP"], [4, 2, 0, 5, 1, "CONDITIONING"],
             [5, 3, 0, 5, 2, "CONDITIONING"], [6, 4, 0, 5, 3, "LATENT"], [7, 5, 0, 6, 0, "LATENT"], [8, 7, 0, 6, 1, "VAE"],
             [9, 8, 0, 5, 4, "INT"], [10, 1, 2, 7, 0, "*"], [11, 6, 0, 10, 0, "IMAGE"], [12, 10, 0, 11, 0, "IMAGE"],
             [13, 6, 0, 12, 0, "IMAGE"]]
    return _wf(nodes, links)


TXT2IMG_API = {
    "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "model.safetensors"}},
    "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["1", 1]}},
    "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
    "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 512, "height": 384, "batch_size": 1}},
    "5": {"class_type": "KSampler", "inputs": {"seed": 123, "steps": 20, "cfg": 7.5, "sampler_name": "euler",
                                               "scheduler": "normal", "denoise": 1.0, "model": ["1", 0],
                                               "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0]}},
    "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
    "11": {"class_type": "SaveImage", "inputs": {"filename_prefix": "out", "images": ["6", 0]}},
}


def image_workflow(name: str) -> dict:
    """LoadImage -> SaveImage twice: once through a bypassed ImageInvert, once through a live one."""
    nodes = [
        _node(1, "LoadImage", [name, "image"],
              outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [1, 3]}, {"name": "MASK", "type": "MASK", "links": []}]),
        _node(2, "ImageInvert", inputs=[{"name": "image", "type": "IMAGE", "link": 1}],
              outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [2]}], mode=4),
        _node(3, "SaveImage", ["wf_test/bypassed"], inputs=[{"name": "images", "type": "IMAGE", "link": 2}]),
        _node(4, "ImageInvert", inputs=[{"name": "image", "type": "IMAGE", "link": 3}],
              outputs=[{"name": "IMAGE", "type": "IMAGE", "links": [4]}]),
        _node(5, "SaveImage", ["wf_test/inverted"], inputs=[{"name": "images", "type": "IMAGE", "link": 4}]),
    ]
    links = [[1, 1, 0, 2, 0, "IMAGE"], [2, 2, 0, 3, 0, "IMAGE"], [3, 1, 0, 4, 0, "IMAGE"], [4, 4, 0, 5, 0, "IMAGE"]]
    return _wf(nodes, links)


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.object_info()


def test_widget_layout_counts_the_front_ends_helper_widgets(object_info):
    names = lambda kind: [s.name if s else None for s in widget_layout(object_info[kind])]  # noqa: E731
    assert names("KSampler") == ["seed", None, "steps", "cfg", "sampler_name", "scheduler", "denoise"]
    assert names("LoadImage") == ["image", None]  # the upload button
    assert names("CLIPTextEncode") == ["text"]  # clip is a socket
    assert names("VAEDecode") == []


def test_txt2img_converts_to_the_hand_written_prompt(object_info):
    assert strip_meta(ui_to_api(txt2img_workflow(), object_info)) == TXT2IMG_API


def test_linked_widget_takes_the_link_not_its_stored_value(object_info):
    wf = txt2img_workflow()
    # Feed KSampler.steps from the primitive as well: the stored 20 must give way.
    wf["nodes"][4]["inputs"].append({"name": "steps", "type": "INT", "widget": {"name": "steps"}, "link": 14})
    wf["nodes"][7]["outputs"][0]["links"].append(14)
    wf["links"].append([14, 8, 0, 5, 5, "INT"])
    assert ui_to_api(wf, object_info)["5"]["inputs"]["steps"] == 123


def test_muted_source_leaves_the_input_out_and_bypass_without_match_drops_it(object_info):
    wf = txt2img_workflow()
    wf["nodes"][5]["mode"] = 2  # mute VAEDecode: the bypassed invert has nothing to forward
    prompt = ui_to_api(wf, object_info)
    assert "6" not in prompt and "images" not in prompt["11"]["inputs"]


def test_unknown_node_type_and_wrong_widget_count_are_refused(object_info):
    wf = txt2img_workflow()
    wf["nodes"][3]["type"] = "NoSuchNode"
    with pytest.raises(WorkflowError, match="NoSuchNode"):
        ui_to_api(wf, object_info)
    wf = txt2img_workflow()
    wf["nodes"][4]["widgets_values"] = [42, 20, 7.5, "euler", "normal", 1.0]  # saved without the control value
    with pytest.raises(WorkflowError, match="6 widget values"):
        ui_to_api(wf, object_info)


def test_sound_workflow_reports_nothing_but_the_expected_model_file(object_info):
    report = check_workflow(txt2img_workflow(), object_info, expected_missing={"model.safetensors"})
    assert report.errors == []
    assert report.missing_models == [(1, "ckpt_name", "model.safetensors")]
    # Not declared as an expected download: an ordinary invalid combo value.
    report = check_workflow(txt2img_workflow(), object_info)
    assert any("ckpt_name" in e and "model.safetensors" in e for e in report.errors)


@pytest.mark.parametrize("breakage, message", [
    (lambda wf: wf["nodes"][4]["widgets_values"].__setitem__(2, 0), "'steps': 0 is below the minimum 1"),
    (lambda wf: wf["nodes"][4]["widgets_values"].__setitem__(4, "no_such_sampler"), "'no_such_sampler' is not one of"),
    (lambda wf: wf["nodes"][4]["widgets_values"].__setitem__(3, "high"), "'cfg': 'high' is not a number"),
    (lambda wf: wf["nodes"][3]["widgets_values"].__setitem__(0, 64.5), "'width': 64.5 is not an integer"),
    (lambda wf: wf["nodes"][3].__setitem__("type", "NoSuchNode"), "NoSuchNode): node type is not registered"),
    # A LATENT into VAEDecode's VAE socket.
    (lambda wf: wf["links"].__setitem__(7, [8, 4, 0, 6, 1, "LATENT"]), "EmptyLatentImage output 0 (LATENT) -> VAEDecode.vae (VAE)"),
    # The KSampler's positive input left unconnected.
    (lambda wf: wf["nodes"][4]["inputs"][1].__setitem__("link", None), "required input 'positive'"),
])
def test_soundness_catches(object_info, breakage, message):
    wf = txt2img_workflow()
    breakage(wf)
    report = check_workflow(wf, object_info, expected_missing={"model.safetensors"})
    assert any(message in e for e in report.errors), report.errors


def test_converted_prompt_runs_on_the_server(comfy_server):
    """Bypass forwards the image untouched; the live invert really runs."""
    rgb = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(comfy_server.base_dir / "input" / "wf_convert_test.png")
    wf = image_workflow("wf_convert_test.png")
    info = comfy_server.object_info()
    assert check_workflow(wf, info).errors == []
    prompt = ui_to_api(wf, info)
    assert prompt["3"]["inputs"]["images"] == ["1", 0]
    entry = comfy_server.run(prompt, timeout=120)
    (bypassed,) = comfy_server.output_images(entry, "3")
    (inverted,) = comfy_server.output_images(entry, "5")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(bypassed)).convert("RGB")), rgb)
    inverted = np.asarray(Image.open(io.BytesIO(inverted)).convert("RGB")).astype(int)
    assert np.abs(inverted - (255 - rgb.astype(int))).max() <= 1  # SaveImage truncates 255 * (1 - x)


def test_check_does_not_mutate_the_workflow(object_info):
    wf = txt2img_workflow()
    before = copy.deepcopy(wf)
    check_workflow(wf, object_info)
    ui_to_api(wf, object_info)
    assert wf == before
