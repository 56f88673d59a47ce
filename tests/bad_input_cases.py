"""Every bad input the tests send, what it must get, and the README table made from them.

``SERVER_CASES`` are API prompts posted to the headless server (tests/test_bad_input_server.py);
``TRAINER_CASES`` are manifest rows (tests/test_trainer_data.py); ``CONVERTER_CASES`` damaged
released graphs (tests/test_convert_release_fuzz.py). Each test checks its cases, and
``test_readme_table_is_the_cases`` checks that README's "What bad input gets" table is
``readme_table()``: the table cannot claim what no test checks.

Stages: ``queue`` = refused when the prompt is queued (HTTP 400 with node_errors, nothing runs);
``run`` = a named execution error of that node (the UI's error dialog); ``skip`` = the trainer skips
the row and counts it with its row number and reason; ``refuse`` = the converter answers 400 / exits 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

# ---- graphs on the tiny fixtures (node ids stay fixed so ComfyUI's cache reuses the loaders) -------------
COND = dict(task="repainting", repainting_scale=-1.0, reference_fit="pad", budget_policy="target_first",
            max_tokens=8192, target_tokens=4096, width=64, height=64, guidance=50.0, aspect_mode="crop",
            hold_references=True, release_parity=False)
SAMPLER = dict(seed=3, steps=1, cfg=1.0, sampler_name="euler", scheduler="simple", canvas_shift=True, composite=True,
               feather=0)
EDIT_FILE, SMALL_FILE = "acepp_bad_edit.png", "acepp_bad_small.png"  # 64x80 with an alpha mask; 48x48 RGB


def base() -> dict:
    return {
        "txt_pos": {"class_type": "ACEPPTest_RandomConditioning", "inputs": {"text": "a hat", "tokens": 8}},
        "txt_neg": {"class_type": "ACEPPTest_RandomConditioning", "inputs": {"text": "", "tokens": 8}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "tiny_vae.safetensors"}},
        "model": {"class_type": "ACEPP_Loader", "inputs": {"model_name": "tiny_fill.safetensors",
                                                           "weight_dtype": "default"}},
        "edit": {"class_type": "LoadImage", "inputs": {"image": EDIT_FILE}},
    }


def conditioning(g: dict, with_edit=True, with_mask=True, **inputs) -> dict:
    node = {"positive": ["txt_pos", 0], "negative": ["txt_neg", 0], "vae": ["vae", 0], "model": ["model", 0], **COND}
    if with_edit:
        node["edit_image"] = ["edit", 0]
    if with_mask:
        node["mask"] = ["edit", 1]
    node.update(inputs)
    g["cond"] = {"class_type": "ACEPP_Conditioning", "inputs": node}
    return g["cond"]["inputs"]


def good_graph(prefix: str = "acepp_bad_ok") -> dict:
    """Conditioning + Sampler (1 step) + SaveImage: the prompt that must still run after the bad ones."""
    g = base()
    conditioning(g)
    sampler(g)
    g["save"] = {"class_type": "SaveImage", "inputs": {"images": ["samp", 0], "filename_prefix": prefix}}
    return g


def sampler(g: dict, **inputs) -> dict:
    g["samp"] = {"class_type": "ACEPP_Sampler", "inputs": {
        "model": ["model", 0], "positive": ["cond", 0], "negative": ["cond", 1], "latent": ["cond", 2],
        "layout": ["cond", 3], "vae": ["vae", 0], **SAMPLER, **inputs}}
    return g["samp"]["inputs"]


def output(g: dict, node: str, slot: int = 0) -> dict:
    g["out"] = {"class_type": "PreviewImage", "inputs": {"images": [node, slot]}}
    return g


def image(g: dict, node_id: str, batch=1, h=64, w=80, c=3) -> list:
    g[node_id] = {"class_type": "ACEPPTest_Image", "inputs": {"batch": batch, "height": h, "width": w, "channels": c,
                                                              "value": 0.5}}
    return [node_id, 0]


def rgba(g: dict, node_id: str) -> list:
    """A 4-channel IMAGE, from stock nodes: Join Image with Alpha of the edit picture and its mask."""
    g[node_id] = {"class_type": "JoinImageWithAlpha", "inputs": {"image": ["edit", 0], "alpha": ["edit", 1]}}
    return [node_id, 0]


# ---- the cases ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    where: str                 # the node or tool, as the user sees it
    bad: str                   # what is wrong (README column)
    stage: str                 # queue | run | skip | refuse
    expect: tuple[str, ...]    # fragments of the message the user gets
    build: Optional[Callable[[], dict]] = field(default=None, compare=False)
    node: str = ""             # the node id the error must name (queue) / the class type (run)
    reason: str = ""           # trainer: the data report's reason
    gets: str = ""             # README wording when it is not the stage's


def _c(id, where, bad, stage, expect, build=None, node="", reason="", gets="") -> Case:
    return Case(id, where, bad, stage, tuple(expect), build, node, reason, gets)


def _cond(**kw) -> Callable[[], dict]:
    def build() -> dict:
        g = base()
        conditioning(g, **kw)
        return output(g, "cond", 4)
    return build


def _cond_with(extra: Callable[[dict], dict], mask: bool = True) -> Callable[[], dict]:
    """``extra(g)`` adds its nodes to ``g`` and returns the Conditioning inputs to set."""
    def build() -> dict:
        g = base()
        conditioning(g, with_mask=mask, **extra(g))
        return output(g, "cond", 4)
    return build


def load(g: dict, node_id: str, name: str, mask_channel: str = "") -> list:
    if mask_channel:
        g[node_id] = {"class_type": "LoadImageMask", "inputs": {"image": name, "channel": mask_channel}}
    else:
        g[node_id] = {"class_type": "LoadImage", "inputs": {"image": name}}
    return [node_id, 0]


def _loader(**kw) -> Callable[[], dict]:
    def build() -> dict:
        g = base()
        g["model"]["inputs"].update(kw)
        conditioning(g)
        return output(g, "cond", 4)
    return build


def _sampler(**kw) -> Callable[[], dict]:
    def build() -> dict:
        g = base()
        conditioning(g)
        sampler(g, **kw)
        return output(g, "samp", 0)
    return build


def _other_latent() -> dict:
    g = base()
    conditioning(g)
    sampler(g)
    g["cond2"] = {"class_type": "ACEPP_Conditioning", "inputs": {**g["cond"]["inputs"],
                                                                 "edit_image": load(g, "small", SMALL_FILE)}}
    g["cond2"]["inputs"].pop("mask")
    g["samp"]["inputs"]["latent"] = ["cond2", 2]
    return output(g, "samp", 0)


def _crop_back_wrong_canvas() -> dict:
    g = base()
    conditioning(g, reference=["edit", 0])
    g["back"] = {"class_type": "ACEPP_CropBack", "inputs": {"canvas": ["edit", 0], "layout": ["cond", 3],
                                                            "composite": True, "feather": 0}}
    return output(g, "back", 0)


def _add_reference(make: Callable[[dict], list]) -> Callable[[], dict]:
    def build() -> dict:
        g = base()
        g["add"] = {"class_type": "ACEPP_AddReference", "inputs": {"image": make(g)}}
        conditioning(g, more_references=["add", 0])
        return output(g, "cond", 4)
    return build


def _crop_back_feather() -> dict:
    g = base()
    conditioning(g)
    g["back"] = {"class_type": "ACEPP_CropBack", "inputs": {"canvas": ["edit", 0], "layout": ["cond", 3],
                                                            "composite": True, "feather": -1}}
    return output(g, "back", 0)


LOADER, COND_NODE, SAMP, BACK, ADD = ("ACE++ Loader", "ACE++ Conditioning", "ACE++ Sampler", "ACE++ Crop Back",
                                      "ACE++ Add Reference")
NOT_IN_LIST = "Value not in list"

SERVER_CASES = [
    # -- ACE++ Loader: missing files and unknown choices, before anything loads
    _c("model_missing", LOADER, "`model_name` of a file that is not in models/diffusion_models", "queue",
       [NOT_IN_LIST, "model_name: 'flux1-fill-dev-missing.safetensors'"],
       _loader(model_name="flux1-fill-dev-missing.safetensors"), node="model"),
    _c("lora_missing", LOADER, "`lora_1` of a file that is not in models/loras", "queue",
       [NOT_IN_LIST, "lora_1: 'no_such_lora.safetensors'"], _loader(lora_1="no_such_lora.safetensors"), node="model"),
    _c("weight_dtype", LOADER, "unknown `weight_dtype`", "queue", [NOT_IN_LIST, "weight_dtype: 'fp4'"],
       _loader(weight_dtype="fp4"), node="model"),
    _c("strength_nan", LOADER, "`strength_1` = NaN", "queue", ["strength_1: nan is not a finite number"],
       _loader(lora_1="None", strength_1=float("nan")), node="model"),
    _c("strength_range", LOADER, "`strength_1` out of range (11)", "queue", ["bigger than max of 10.0: strength_1"],
       _loader(strength_1=11.0), node="model"),
    # -- ACE++ Conditioning: choices, non-finite numbers, wiring, shapes
    _c("task", COND_NODE, "unknown `task`", "queue", [NOT_IN_LIST, "task: 'inpaint'"], _cond(task="inpaint"),
       node="cond"),
    _c("reference_fit", COND_NODE, "unknown `reference_fit`", "queue", [NOT_IN_LIST, "reference_fit: 'stretch'"],
       _cond(reference_fit="stretch"), node="cond"),
    _c("budget_policy", COND_NODE, "unknown `budget_policy`", "queue", [NOT_IN_LIST, "budget_policy: 'greedy'"],
       _cond(budget_policy="greedy"), node="cond"),
    _c("aspect_mode", COND_NODE, "unknown `aspect_mode`", "queue", [NOT_IN_LIST, "aspect_mode: 'fit'"],
       _cond(aspect_mode="fit"), node="cond"),
    _c("guidance_nan", COND_NODE, "`guidance` = NaN", "queue", ["guidance: nan is not a finite number"],
       _cond(guidance=float("nan")), node="cond"),
    _c("repainting_inf", COND_NODE, "`repainting_scale` = inf", "queue",
       ["repainting_scale: inf is not a finite number"], _cond(repainting_scale=float("inf")), node="cond"),
    _c("keep_rate_nan", COND_NODE, "`keep_pixels_rate` = NaN", "queue", ["keep_pixels_rate: nan is not a finite"],
       _cond(keep_pixels_rate=float("nan")), node="cond"),
    _c("max_tokens_range", COND_NODE, "`max_tokens` out of range (10)", "queue", ["smaller than min of 256"],
       _cond(max_tokens=10), node="cond"),
    _c("width_type", COND_NODE, "`width` = \"wide\" (not a number)", "queue",
       ["Failed to convert an input value to a INT value", "width, wide"],
       _cond(width="wide"), node="cond"),
    _c("vae_type", COND_NODE, "a MODEL linked into `vae`", "queue",
       ["Return type mismatch between linked nodes", "vae, received_type(MODEL) mismatch input_type(VAE)"],
       _cond(vae=["model", 0]),
       node="cond"),
    _c("mask_no_image", COND_NODE, "`mask` connected, `edit_image` not", "queue",
       ["mask is connected but edit_image is not"], _cond(with_edit=False), node="cond"),
    _c("image_missing", "Load Image", "an image file that is not in ComfyUI's input folder", "queue",
       ["Invalid image file", "acepp_no_such_picture.png"],
       lambda: output({**base(), "edit": {"class_type": "LoadImage", "inputs": {"image": "acepp_no_such_picture.png"}}},
                      "edit", 0), node="edit"),
    _c("mask_size", COND_NODE, "`mask` of another size than `edit_image`", "run",
       ["mask is 48x48 but edit_image is 64x80x3 (H x W x C)", "Convert Mask to Image"],
       _cond_with(lambda g: {"mask": load(g, "small_mask", SMALL_FILE, "red")}, mask=False),
       node="ACEPP_Conditioning"),
    _c("reference_rgba", COND_NODE, "4-channel (RGBA) `reference`", "run",
       ["reference has 4 channels", "Split Image with Alpha"], _cond_with(lambda g: {"reference": rgba(g, "rgba")}),
       node="ACEPP_Conditioning"),
    _c("reference_gray", COND_NODE, "1-channel `reference`", "run",
       ["reference has 1 channel (64x80x1, H x W x C)", "Convert Mask to Image"],
       _cond_with(lambda g: {"reference": image(g, "gray", c=1)}), node="ACEPP_Conditioning"),
    _c("edit_1px", COND_NODE, "1x1 `edit_image`", "run", ["edit_image is 1x1x3 (H x W x C)", "Upscale Image"],
       _cond_with(lambda g: {"edit_image": image(g, "dot", h=1, w=1)}, mask=False), node="ACEPP_Conditioning"),
    _c("reference_batch", COND_NODE, "`reference` batch of 3 with an `edit_image` batch of 2", "run",
       ["reference is a batch of 3 but edit_image is a batch of 2"],
       _cond_with(lambda g: {"edit_image": image(g, "two", batch=2), "reference": image(g, "three", batch=3)},
                  mask=False), node="ACEPP_Conditioning"),
    _c("control_missing", COND_NODE, "task `control` without `control_image`", "run", ["control image"],
       _cond(task="control"), node="ACEPP_Conditioning"),
    # -- ACE++ Sampler
    _c("sampler_name", SAMP, "unknown `sampler_name`", "queue", [NOT_IN_LIST, "sampler_name: 'euler_fast'"],
       _sampler(sampler_name="euler_fast"), node="samp"),
    _c("scheduler", SAMP, "unknown `scheduler`", "queue", [NOT_IN_LIST, "scheduler: 'cosine'"],
       _sampler(scheduler="cosine"), node="samp"),
    _c("cfg_nan", SAMP, "`cfg` = NaN", "queue", ["cfg: nan is not a finite number"], _sampler(cfg=float("nan")),
       node="samp"),
    _c("steps_range", SAMP, "`steps` = 0", "queue", ["smaller than min of 1"], _sampler(steps=0), node="samp"),
    _c("seed_type", SAMP, "`seed` = \"abc\"", "queue", ["Failed to convert an input value to a INT value", "seed, abc"],
       _sampler(seed="abc"), node="samp"),
    _c("latent_other", SAMP, "`latent` of another ACE++ Conditioning than `layout`", "run",
       ["but the ACE++ layout's canvas is", "Connect the latent and layout of the same ACE++ Conditioning"],
       _other_latent, node="ACEPP_Sampler"),
    # -- ACE++ Crop Back, ACE++ Add Reference
    _c("crop_back_canvas", BACK, "`canvas` that is not the decoded canvas of its `layout`", "run",
       ["canvas is 64x80x3 (H x W x C) but the layout's canvas is", "VAE Decode"], _crop_back_wrong_canvas,
       node="ACEPP_CropBack"),
    _c("feather_range", BACK, "`feather` = -1", "queue", ["smaller than min of 0"], _crop_back_feather, node="back"),
    _c("add_rgba", ADD, "4-channel (RGBA) `image`", "run", ["image has 4 channels", "Split Image with Alpha"],
       _add_reference(lambda g: rgba(g, "rgba")), node="ACEPP_AddReference"),
    _c("add_tiny", ADD, "`image` 8x8", "run", ["image is 8x8x3 (H x W x C)", "Upscale Image"],
       _add_reference(lambda g: image(g, "tiny", h=8, w=8)), node="ACEPP_AddReference"),
]

TRAINER_CASES = [
    _c("row_missing", "Trainer manifest", "an image path that does not exist", "skip", ["does not exist"],
       reason="missing"),
    _c("row_zero", "Trainer manifest", "a zero-byte image", "skip", ["is empty (0 bytes)"], reason="zero_byte"),
    _c("row_truncated", "Trainer manifest", "a truncated PNG or JPEG", "skip", ["the file is cut short"],
       reason="truncated"),
    _c("row_html", "Trainer manifest", "a file that is not an image (an HTML page saved as .png)", "skip",
       ["is not an image Pillow can read"], reason="not_an_image"),
    _c("row_tiny", "Trainer manifest", "an image with a side under 16 px", "skip", ["at least 16 px on each side"],
       reason="too_small"),
    _c("row_bomb", "Trainer manifest", "an image over 64 Mpx, or a decompression bomb", "skip",
       ["the limit is 64 Mpx"], reason="too_large"),
    _c("row_vanished", "Trainer caching pass", "an image deleted (or made unreadable) after validation", "skip",
       ["disappeared after the dataset was validated"], gets="sample skipped with a warning naming its row and "
                                                             "reason; training goes on with the rest"),
    _c("torn_entry", "Trainer caching pass", "a cache entry cut short (full disk, killed copy)", "skip",
       ["is damaged (cut short?); encoding it again"], gets="encoded again"),
]

def _released(change: Callable[[dict], None]) -> Callable[[], dict]:
    """A copy of a released graph (tests/released_workflows.py) with one damage."""
    def build() -> dict:
        from released_workflows import released_workflows

        wf = released_workflows()["ACE_Plus_LoRA_workflow_reference_editing"]
        change(wf)
        return wf
    return build


def _node(wf: dict, kind: str) -> dict:
    return next(n for n in wf["nodes"] if n["type"] == kind)


def _dangling_vae(wf: dict) -> None:
    cond = _node(wf, "ACEPlusLoraConditioning")
    next(i for i in cond["inputs"] if i["name"] == "vae")["link"] = 9999


CONVERTER_CASES = [
    _c("graph_no_type", "convert-release", "a node without `type`", "refuse", ["has no node type (field 'type'"],
       _released(lambda wf: _node(wf, "KSampler").pop("type"))),
    _c("graph_no_id", "convert-release", "a node without `id`", "refuse", ["(VAEDecode) has no field 'id'"],
       _released(lambda wf: _node(wf, "VAEDecode").pop("id"))),
    _c("graph_dangling", "convert-release", "an input linked to a link id the graph does not have", "refuse",
       ["(ACEPlusLoraConditioning): input 'vae' has field 'link' 9999, a link the graph does not have"],
       _released(_dangling_vae)),
    _c("graph_widget_type", "convert-release", "a widget value of the wrong type (`steps` = \"many\")", "refuse",
       ["(KSampler): widget 'steps' is 'many'; it must be an integer"],
       _released(lambda wf: _node(wf, "KSampler")["widgets_values"].__setitem__(2, "many"))),
    _c("graph_duplicate_id", "convert-release", "two nodes with the same id", "refuse", ["is used by two nodes"],
       _released(lambda wf: _node(wf, "VAEDecode").__setitem__("id", _node(wf, "KSampler")["id"]))),
    _c("graph_none", "convert-release", "a body that is not a UI workflow (`null`, an API prompt)", "refuse",
       ["not a ComfyUI workflow in the UI format"], lambda: None, gets="HTTP 400 / exit status 1, one line"),
]

STAGE_TEXT = {
    "queue": "refused when queued (red node, nothing runs)",
    "run": "stops with an error on the node",
    "skip": "row skipped, counted in the data report with its row number",
    "refuse": "HTTP 400 / exit status 1, one line naming the node and the field",
}


def readme_table() -> str:
    """The README table: one line per case, with the fragments of the message the tests check."""
    lines = ["| Where | Bad input | What it gets | The message says |", "|---|---|---|---|"]
    for case in SERVER_CASES + TRAINER_CASES + CONVERTER_CASES:
        gets = case.gets or STAGE_TEXT[case.stage] + (f" as `{case.reason}`" if case.reason else "")
        said = " ... ".join(f"`{e}`" for e in case.expect)
        lines.append(f"| {case.where} | {case.bad} | {gets} | {said} |")
    return "\n".join(lines)
