"""Released ACE++ workflows convert to this pack's nodes: CLI, mapping, soundness and a run on the server.

The nine released graphs are rebuilt from a spec (``released_workflows.py``: same node types,
widget values, links and group; our own prompts and generated images). Each converted graph must be
sound against the server's ``/object_info`` (no missing node, every value valid), keep everything
of the user's graph that is not an ACE++ node, carry the mapped widgets, and run on the headless
server with the tiny stand-in models: as converted (``release_parity`` on: the release's output
size, computed here from the released processors' formula) and with the Note's switch to the
full-resolution defaults (the edit image's exact size, every pixel outside the mask unchanged).

CPU budget as in test_workflows_shipped: 1 step, 128x128 for generation from scratch. One test-only
edit of a converted graph, what the Note asks the user to do: the contour workflows get a control
image (LoadImage) in their empty ``control_image`` input. The Redux graphs run with the tiny Redux and
SigCLIP stand-ins (tests/fixtures.py).
"""

from __future__ import annotations

import copy
import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from aceplus_host.convert_release import (EMITTED_NODES, RELEASED_TYPES, ConversionError, NotAReleasedGraph, convert,
                                          load_emitted_nodes)
from aceplus_host.workflows import check_workflow, widget_values
from released_workflows import EDIT_FILE, FACE_FILE, REF_FILE, RELEASED_GROUP, SPEC_BY_NAME, released_workflows
from workflow_tools import RELEASED_TO_FIXTURE, for_tiny_models

pytestmark = pytest.mark.server

RELEASED = released_workflows()
CONVERTED = {name: convert(wf) for name, wf in RELEASED.items()}
CPU_STEPS, CPU_SIZE = 1, 128
EDIT_HW, REF_HW, FACE_HW = (96, 128), (80, 64), (112, 80)
MASK_BOX = (slice(24, 72), slice(40, 104))
CONTROL_FILE = "released_control.png"
TINY = dict(RELEASED_TO_FIXTURE, **{"comfyui_face_lora64.safetensors": "tiny_lora_r16.safetensors"})
MODEL_FILES = set(TINY) | {"clip_l.safetensors", "t5xxl_fp16.safetensors", "flux1-redux-dev.safetensors",
                           "sigclip_vision_patch14_384.safetensors"}
# Host-dependent combos left out of the emitted-node snapshot (model folders, sampler lists).
HOST_OPTIONS = ("model_name", "lora_1", "lora_2", "lora_3", "sampler_name", "scheduler")
REMOVED = set(RELEASED_TYPES) | {"FluxGuidance", "DifferentialDiffusion", "KSampler", "VAEDecode", "ImageCrop",
                                 "MaskPreview+"}


def _images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(9)
    edit = np.dstack([rng.integers(0, 256, EDIT_HW + (3,), dtype=np.uint8),
                      np.full(EDIT_HW, 255, dtype=np.uint8)])
    edit[MASK_BOX + (3,)] = 0  # LoadImage: mask = 1 - alpha
    return {EDIT_FILE: edit, REF_FILE: rng.integers(0, 256, REF_HW + (3,), dtype=np.uint8),
            FACE_FILE: rng.integers(0, 256, FACE_HW + (3,), dtype=np.uint8),
            CONTROL_FILE: rng.integers(0, 256, EDIT_HW + (3,), dtype=np.uint8)}


@pytest.fixture(scope="module")
def server(comfy_server):
    for name, array in _images().items():
        Image.fromarray(array).save(comfy_server.base_dir / "input" / name)
    return comfy_server


@pytest.fixture(scope="module")
def object_info(server):
    return server.object_info()


def _normalised(info: dict) -> dict:
    """What the converter relies on, the same on every host: newer hosts (0.33) give output nodes such as
    MaskPreview a pass-through output, spell "no options" as ``{}`` and mark expert inputs ``advanced`` (how
    the front end shows them, not what the converter writes). An emitted output node is written without
    outputs (nothing reads from it), as the workflow builder does."""
    output_node = bool(info.get("output_node"))
    info = json.loads(json.dumps({k: info[k] for k in ("input", "input_order", "output", "output_name")}))
    info["input"].pop("hidden", None)
    info["input_order"].pop("hidden", None)
    if output_node:
        info["output"], info["output_name"] = [], []
    for section in info["input"].values():
        for name, spec in section.items():
            if len(spec) > 1 and isinstance(spec[1], dict):
                spec[1].pop("tooltip", None)
                spec[1].pop("advanced", None)
                if name in HOST_OPTIONS:
                    spec[1]["options"] = []
                if not spec[1]:
                    del spec[1]
    return info


def test_emitted_node_snapshot_matches_the_server(object_info):
    """The converter places widget values from ``emitted_nodes.json``; it must be the server's definition.

    After an intended change of an emitted node, refresh it with
    ``ACEPP_UPDATE_SCHEMA=1 python -m pytest tests/test_convert_release.py -k snapshot``.
    """
    import os

    live = {kind: _normalised(object_info[kind]) for kind in load_emitted_nodes()}
    if os.environ.get("ACEPP_UPDATE_SCHEMA") == "1":
        EMITTED_NODES.write_text(json.dumps(live, indent=1) + "\n")
    assert load_emitted_nodes() == live


# -- the mapping -------------------------------------------------------------------------------


def _by_type(wf: dict, kind: str) -> list[dict]:
    return [n for n in wf["nodes"] if n["type"] == kind]


def _source(wf: dict, node: dict, name: str) -> dict | None:
    inp = next((i for i in node["inputs"] if i["name"] == name), None)
    if inp is None or inp.get("link") is None:
        return None
    link = next(lk for lk in wf["links"] if lk[0] == inp["link"])
    return next(n for n in wf["nodes"] if n["id"] == link[1])


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_mapping_keeps_the_users_graph_and_maps_the_widgets(name, object_info):
    before, after = RELEASED[name], CONVERTED[name].workflow
    spec = SPEC_BY_NAME[name]
    assert not {n["type"] for n in after["nodes"]} & REMOVED
    kept = {n["id"]: n for n in after["nodes"]}
    for node in before["nodes"]:
        if node["type"] in REMOVED:
            continue
        assert node["id"] in kept, f"{node['type']} {node['id']} was lost"
        assert kept[node["id"]]["type"] == node["type"] and kept[node["id"]]["pos"] == node["pos"]
        assert kept[node["id"]]["widgets_values"] == node["widgets_values"]
    assert after["groups"] == before["groups"] and after["groups"][0]["title"] == RELEASED_GROUP

    (cond,) = _by_type(after, "ACEPP_Conditioning")
    (sampler,) = _by_type(after, "ACEPP_Sampler")
    cw, sw = widget_values(cond, object_info["ACEPP_Conditioning"]), widget_values(sampler, object_info["ACEPP_Sampler"])
    task = spec.processor[3]
    assert cw["task"] == {"contour_repainting": "control", "depth_repainting": "control"}.get(task, task)
    assert cw["max_tokens"] == spec.processor[-1] * (2 if spec.kind == "lora" else 1)
    assert (cw["height"], cw["width"]) == tuple(spec.processor[1:3])
    assert cw["release_parity"] is True and cw["guidance"] == 50.0
    if "keep_pixels_rate" in cw and spec.kind == "fft":
        assert cw["keep_pixels_rate"] == spec.processor[4]
    assert (sw["seed"], sw["steps"], sw["cfg"], sw["sampler_name"], sw["scheduler"]) == \
        (spec.seed[0], 28, 1, "euler", "normal")
    assert sampler["widgets_values"][1] == spec.seed[1]  # fixed / randomize kept
    assert sw["canvas_shift"] is False

    # Wiring: the prompt (through Redux when present), the model chain, images, mask.
    positive = _source(after, cond, "positive")
    if spec.redux:
        assert positive["type"] == "StyleModelApply" and positive["widgets_values"] == list(spec.redux)
        assert _source(after, positive, "conditioning")["widgets_values"] == [spec.prompt]
    else:
        assert positive["type"] == "CLIPTextEncode" and positive["widgets_values"] == [spec.prompt]
    model = _source(after, cond, "model")
    assert model["type"] == ("ACEPP_Loader" if spec.kind == "fft" else "LoraLoaderModelOnly")
    assert _source(after, sampler, "model") is model
    if spec.kind == "lora":
        unet = _source(after, model, "model")
        assert unet["type"] == "UNETLoader" and unet["widgets_values"] == ["flux1-fill-dev.safetensors", "fp8_e4m3fn"]
        assert model["widgets_values"] == [spec.lora, 1]
    assert (_source(after, cond, "reference") is not None) == (spec.reference is not None)
    assert (_source(after, cond, "edit_image") is not None) == spec.edit
    assert (_source(after, cond, "mask") is not None) == spec.edit
    previews = [n for n in _by_type(after, "PreviewImage") if _source(after, n, "images") is sampler]
    assert len(previews) == 1, "the cropped result's preview now shows the sampler's image"
    notes = [n for n in _by_type(after, "MarkdownNote") if "released ACE++" in n["widgets_values"][0]]
    assert len(notes) == 1 and "release_parity" in notes[0]["widgets_values"][0]
    if cw["task"] == "control":
        assert _source(after, cond, "control_image") is None
        assert "comfyui_controlnet_aux" in notes[0]["widgets_values"][0]


def as_loaded(workflow: dict, object_info: dict) -> dict:
    """The graph as the front end holds it after loading: a node saved by an older ComfyUI with fewer
    widget values (the released DualCLIPLoader has no ``device`` yet) gets the defaults of the rest."""
    from aceplus_host.workflows import widget_layout

    wf = copy.deepcopy(workflow)
    for node in wf["nodes"]:
        info, values = object_info.get(node["type"]), node.get("widgets_values")
        if info is None or not isinstance(values, list):
            continue
        layout = widget_layout(info)
        for spec in layout[len(values):]:
            values.append(spec.options.get("default", spec.combo[0] if spec.combo else None) if spec else "fixed")
    return wf


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_converted_graph_is_sound(name, server, object_info):
    report = check_workflow(as_loaded(CONVERTED[name].workflow, object_info), object_info,
                            expected_missing=MODEL_FILES)
    assert report.errors == []
    assert {v for _, _, v in report.missing_models} <= MODEL_FILES


def test_converter_never_changes_its_input():
    wf = RELEASED["ACE_Plus_LoRA_workflow_redux_reference_editing"]
    before = copy.deepcopy(wf)
    convert(wf)
    assert wf == before


def test_not_a_released_graph_gets_a_message_and_no_change():
    from test_workflows_convert import txt2img_workflow

    wf = txt2img_workflow()
    before = copy.deepcopy(wf)
    with pytest.raises(NotAReleasedGraph, match="no released ACE.. node .* nothing to convert"):
        convert(wf)
    assert wf == before
    with pytest.raises(NotAReleasedGraph, match="UI format"):
        convert({"1": {"class_type": "KSampler", "inputs": {}}})  # an API-format prompt


def test_unmappable_wiring_is_refused_with_the_node_named():
    wf = copy.deepcopy(RELEASED["ACE_Plus_LoRA_workflow_reference_editing"])
    cond = next(n for n in wf["nodes"] if n["type"] == "ACEPlusLoraConditioning")
    for inp in cond["inputs"]:
        if inp["name"] in ("pixels", "mask"):
            wf["links"] = [lk for lk in wf["links"] if lk[0] != inp["link"]]
            inp["link"] = None
    with pytest.raises(ConversionError, match=rf"node {cond['id']} \(ACEPlusLoraConditioning\)"):
        convert(wf)


def test_custom_sampler_chain_is_kept_with_crop_back(object_info):
    """denoise below 1 is not the released chain: KSampler, VAEDecode stay; ImageCrop -> ACE++ Crop Back."""
    wf = copy.deepcopy(RELEASED["ACE_Plus_LoRA_workflow_reference_editing"])
    ks = next(n for n in wf["nodes"] if n["type"] == "KSampler")
    ks["widgets_values"][6] = 0.9
    out = convert(wf).workflow
    kinds = [n["type"] for n in out["nodes"]]
    assert "KSampler" in kinds and "VAEDecode" in kinds and "ACEPP_CropBack" in kinds
    assert "ACEPP_Sampler" not in kinds and "ImageCrop" not in kinds
    (back,) = _by_type(out, "ACEPP_CropBack")
    assert _source(out, back, "canvas")["type"] == "VAEDecode"
    assert _source(out, back, "layout")["type"] == "ACEPP_Conditioning"
    (ksampler,) = _by_type(out, "KSampler")
    assert _source(out, ksampler, "latent_image")["type"] == "ACEPP_Conditioning"
    assert check_workflow(as_loaded(out, object_info), object_info, expected_missing=MODEL_FILES).errors == []


def test_use_reference_off_leaves_the_reference_out():
    wf = copy.deepcopy(RELEASED["ACE_Plus_LoRA_workflow_reference_editing"])
    next(n for n in wf["nodes"] if n["type"] == "ACEPlusLoraProcessor")["widgets_values"][0] = False
    result = convert(wf)
    (cond,) = _by_type(result.workflow, "ACEPP_Conditioning")
    assert _source(result.workflow, cond, "reference") is None
    assert any("use_reference is off" in c for c in result.changes)


# -- the command line -------------------------------------------------------------------------------


def test_cli_converts_a_batch_to_the_same_graphs(tmp_path):
    names = sorted(RELEASED)
    for name in names:
        (tmp_path / f"{name}.json").write_text(json.dumps(RELEASED[name]))
    (tmp_path / "plain.json").write_text(json.dumps({"nodes": [{"id": 1, "type": "KSampler"}], "links": []}))
    run = subprocess.run([sys.executable, "-m", "aceplus_host", "convert-release",
                          *[str(tmp_path / f"{n}.json") for n in names], str(tmp_path / "plain.json"),
                          "--out-dir", str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr  # one input was not a released graph
    assert "plain.json: no released ACE++ node" in run.stdout and "nothing written" in run.stdout
    assert not (tmp_path / "out" / "plain_acepp.json").exists()
    for name in names:
        written = json.loads((tmp_path / "out" / f"{name}_acepp.json").read_text())
        assert written == CONVERTED[name].workflow
        assert CONVERTED[name].report() in run.stdout


def test_cli_in_out(tmp_path):
    src, dst = tmp_path / "in.json", tmp_path / "converted.json"
    src.write_text(json.dumps(RELEASED["ACE_Plus_FFT_workflow_no_preprocess"]))
    run = subprocess.run([sys.executable, "-m", "aceplus_host", "convert-release", str(src), str(dst)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads(dst.read_text()) == CONVERTED["ACE_Plus_FFT_workflow_no_preprocess"].workflow


# -- runs on the server -------------------------------------------------------------------------------


def _released_output_hw(name: str, prompt_cond: dict) -> tuple[int, int]:
    """The released processor's output size (height, width), from its own formula (ace_plus_reference.md 5-7)."""
    spec = SPEC_BY_NAME[name]
    eh, ew = (EDIT_HW if spec.edit else (prompt_cond["height"], prompt_cond["width"]))
    sw = 0
    if spec.reference:
        rh, rw = REF_HW if spec.reference == REF_FILE else FACE_HW
        if spec.kind == "lora":  # resize to the edit height
            sw = int(rw * (eh / rh))
        else:  # pad: shrink only a reference taller than keep_pixels_rate x eH
            rate = spec.processor[4]
            sw = int(rw * (int(eh * rate) / rh)) if rh >= rate * eh else rw
    h, w = eh, ew + sw
    budget = spec.processor[-1] * (2 if spec.kind == "lora" else 1)
    scale = min(1.0, math.sqrt(budget / ((h / 16) * (w / 16))))
    rh_, rw_ = int(h * scale) // 16 * 16, int(w * scale) // 16 * 16
    slice_w = int(sw * scale) // 16 * 16
    if spec.kind == "lora":
        x0 = slice_w + 30 if slice_w >= 30 else slice_w
    else:
        x0 = slice_w if slice_w > 30 else slice_w + 30
    return rh_, rw_ - x0


def _runnable(name: str, object_info: dict, parity: bool) -> tuple[dict, dict]:
    """(API prompt on the tiny models, the converted UI graph it came from)."""
    wf = copy.deepcopy(CONVERTED[name].workflow)
    (cond,) = _by_type(wf, "ACEPP_Conditioning")
    if widget_values(cond, object_info["ACEPP_Conditioning"])["task"] == "control":
        # What the Note asks of the user: a control map into control_image (here: a generated picture).
        from aceplus_host.convert_release import Editor

        ed = Editor(wf, object_info)
        load = ed.add("LoadImage", (cond["pos"][0] - 400, cond["pos"][1] + 600), (315, 320), {"image": CONTROL_FILE})
        ed.connect((load["id"], 0), cond["id"], "control_image")
    wf = as_loaded(wf, object_info)
    prompt = for_tiny_models(wf, object_info)
    from aceplus_host.workflows import replace_values

    prompt = replace_values(prompt, TINY)
    for node in prompt.values():
        if node["class_type"] == "UNETLoader":
            # The released graphs load the base as fp8_e4m3fn. On the CPU, ComfyUI then patches each LoRA
            # into the fp8 weights by its stochastic rounding (about 10 s per load of the tiny model here):
            # its own code, not the converted graph's. The shipped low-VRAM workflow runs that path
            # (fp8 base + LoRA, tests/test_workflows_shipped.py); here the base loads as in its file.
            node["inputs"]["weight_dtype"] = "default"
        if node["class_type"] == "ACEPP_Sampler":
            node["inputs"]["steps"] = CPU_STEPS
            if not parity:
                node["inputs"]["canvas_shift"] = True
        if node["class_type"] == "ACEPP_Conditioning":
            if "edit_image" not in node["inputs"]:
                node["inputs"]["width"] = node["inputs"]["height"] = CPU_SIZE
            if not parity:  # the Note's switch to the full-resolution defaults
                node["inputs"]["release_parity"] = False
                node["inputs"]["max_tokens"] = 8192
    return prompt, wf


def _run(server, prompt: dict, wf: dict) -> np.ndarray:
    prompt_id = server.submit(prompt)
    for attempt in range(3):  # a status poll can time out (30 s) while a busy box loads the Redux stand-ins
        try:
            entry = server.wait(prompt_id, timeout=900)
            break
        except TimeoutError:
            if attempt == 2:
                raise
    (sampler,) = _by_type(wf, "ACEPP_Sampler")
    preview = next(n for n in _by_type(wf, "PreviewImage") if _source(wf, n, "images") is sampler)
    (png,) = server.output_images(entry, str(preview["id"]))
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_converted_graph_runs_like_the_release_then_at_full_resolution(name, server, object_info):
    spec = SPEC_BY_NAME[name]
    prompt, wf = _runnable(name, object_info, parity=True)
    (cond,) = _by_type(wf, "ACEPP_Conditioning")
    out = _run(server, prompt, wf)
    assert out.shape[:2] == _released_output_hw(name, prompt[str(cond["id"])]["inputs"]), \
        "release parity gives the released processor's output size"

    prompt, wf = _runnable(name, object_info, parity=False)
    out = _run(server, prompt, wf)
    if not spec.edit:
        assert out.shape[:2] == (CPU_SIZE, CPU_SIZE)
        return
    edit = _images()[EDIT_FILE]
    assert out.shape == edit.shape[:2] + (3,), "the output has the edit image's size"
    mask = edit[..., 3] < 128
    diff = np.abs(out.astype(int) - edit[..., :3].astype(int))
    assert diff[~mask].max() == 0, "every pixel outside the mask is the input's"
    assert diff[mask].mean() > 1.0, "something was generated inside the mask"


def test_parity_budget_is_max_tokens(pack):
    """release_parity spends at most max_tokens on the whole canvas: the converter writes the released budget."""
    import torch

    g = torch.Generator().manual_seed(0)
    image, ref = torch.rand(1, 512, 512, 3, generator=g), torch.rand(1, 400, 300, 3, generator=g)  # B, H, W, C
    mask = torch.zeros(1, 512, 512)
    mask[:, 100:300, 100:400] = 1.0
    refs = [ref.permute(0, 3, 1, 2)]  # B, C, H, W
    cond = pack.nodes.conditioning

    def parity_canvas(max_tokens: int):
        spec = cond.canvas_spec(-1.0, "pad", "target_first", max_tokens, 4096, 1024, 1024, "crop", True, "fill")
        return cond.make_canvas(image, mask, refs, spec, "repainting")[0]

    small, large = parity_canvas(256), parity_canvas(6144)
    assert small.layout.tokens <= 256 < large.layout.tokens
    assert small.layout.crop_mode == large.layout.crop_mode == "release"  # still the release's fit and crop


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_keep_pixels_rate_of_the_fft_processor_reaches_the_widget(rate, object_info):
    wf = copy.deepcopy(RELEASED["ACE_Plus_FFT_workflow_referenceediting_generation"])
    next(n for n in wf["nodes"] if n["type"] == "ACEPlusFFTProcessor")["widgets_values"][4] = rate
    (cond,) = _by_type(convert(wf).workflow, "ACEPP_Conditioning")
    assert widget_values(cond, object_info["ACEPP_Conditioning"])["keep_pixels_rate"] == rate
