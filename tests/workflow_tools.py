"""Test helpers for the shipped workflows: load them, adapt them to the tiny fixtures, drive a browser.

The conversion itself lives in ``aceplus_host.workflows`` (importable without ComfyUI).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from aceplus_host.workflows import MODE_BYPASS, MODE_NEVER, VIRTUAL_TYPES, replace_values, ui_to_api

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
INPUTS = WORKFLOWS / "inputs"
SCREENSHOTS = ROOT / "docs" / "images" / "workflows"

# The released weights the workflows name -> the tiny random fixtures (tests/fixtures.py).
RELEASED_TO_FIXTURE = {
    "flux1-fill-dev.safetensors": "tiny_fill.safetensors",
    "ace_plus_fft.safetensors": "tiny_fft.safetensors",
    "comfyui_subject_lora16.safetensors": "tiny_lora_r16.safetensors",
    "comfyui_portrait_lora64.safetensors": "tiny_lora_r16.safetensors",
    "comfyui_local_lora16.safetensors": "tiny_lora_r16.safetensors",
    "ae.safetensors": "tiny_vae.safetensors",
    "flux1-redux-dev.safetensors": "tiny_redux.safetensors",
    "sigclip_vision_patch14_384.safetensors": "tiny_sigclip.safetensors",
}
# Redux appends 4096-wide tokens to the text conditioning: a graph with it gets the tiny Fill model with a
# 4096-wide text input and 4096-wide stand-in text.
REDUX_FILL, REDUX_TEXT_DIM = "tiny_fill_t5.safetensors", 4096
TEXT_ENCODER_FILES = ("clip_l.safetensors", "t5xxl_fp16.safetensors")
RELEASED_FILES = tuple(RELEASED_TO_FIXTURE) + TEXT_ENCODER_FILES
# The ComfyUI model folder of every released file the shipped workflows and the released graphs name.
RELEASED_FOLDERS = {
    "flux1-fill-dev.safetensors": "diffusion_models", "ace_plus_fft.safetensors": "diffusion_models",
    "comfyui_subject_lora16.safetensors": "loras", "comfyui_portrait_lora64.safetensors": "loras",
    "comfyui_local_lora16.safetensors": "loras", "comfyui_face_lora64.safetensors": "loras",
    "ae.safetensors": "vae", "flux1-redux-dev.safetensors": "style_models",
    "sigclip_vision_patch14_384.safetensors": "clip_vision",
    "clip_l.safetensors": "text_encoders", "t5xxl_fp16.safetensors": "text_encoders",
}


def shipped_workflows() -> dict[str, dict]:
    """Every ``workflows/*.json`` by file stem."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(WORKFLOWS.glob("*.json"))}


def copy_inputs(input_dir: Path) -> None:
    """Put the example images where LoadImage reads them (what the user does by hand)."""
    input_dir.mkdir(parents=True, exist_ok=True)
    for path in INPUTS.glob("*.png"):
        shutil.copy2(path, input_dir / path.name)


def active_nodes(workflow: dict, kind: str) -> list[dict]:
    return [n for n in workflow["nodes"] if n["type"] == kind and n.get("mode", 0) not in (MODE_NEVER, MODE_BYPASS)]


def for_tiny_models(workflow: dict, object_info: dict) -> dict:
    """The API prompt of a shipped workflow with only the model files and text encoders swapped.

    Model file names become the tiny fixtures; every CLIPTextEncode becomes the test-only
    ``ACEPPTest_RandomConditioning`` with the same text (T5-XXL cannot be shrunk), and the
    DualCLIPLoader it read from is dropped. A graph with FLUX Redux (StyleModelApply) gets the
    Fill stand-in with a 4096-wide text input and 4096-wide stand-in text, the width of Redux's
    tokens. Nothing else changes.
    """
    api = ui_to_api(workflow, object_info)
    redux = any(node["class_type"] == "StyleModelApply" for node in api.values())
    mapping = dict(RELEASED_TO_FIXTURE, **({"flux1-fill-dev.safetensors": REDUX_FILL} if redux else {}))
    prompt = replace_values(api, mapping)
    dropped = set()
    for nid, node in list(prompt.items()):
        if node["class_type"] == "CLIPTextEncode":
            prompt[nid] = {"class_type": "ACEPPTest_RandomConditioning",
                           "inputs": {"text": node["inputs"]["text"], "tokens": 8} |
                           ({"dim": REDUX_TEXT_DIM} if redux else {})}
        elif node["class_type"] == "DualCLIPLoader":
            dropped.add(nid)
            del prompt[nid]
    for nid, node in prompt.items():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and value and value[0] in dropped:
                raise AssertionError(f"node {nid} ({node['class_type']}).{name} still reads the dropped text "
                                     "encoder loader: only CLIPTextEncode may use it")
    return prompt


def load_rgba(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 H, W, 3; edit mask bool H, W) the way LoadImage reads a file (the project's one reader,
    ``aceplus_core.image_files``): mask = 1 - alpha, binarised at > 0.5 as the canvas does."""
    from aceplus_core.image_files import read_image

    loaded = read_image(path)
    rgb = (loaded.image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    if loaded.mask is None:
        return rgb, np.zeros(rgb.shape[:2], dtype=bool)
    return rgb, loaded.mask[0, 0].numpy() > 0.5


def linked_source(workflow: dict, node_id: int, input_name: str) -> tuple[dict, int] | None:
    """(origin node, origin slot) feeding ``input_name`` of node ``node_id``."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for inp in nodes[node_id]["inputs"]:
        if inp["name"] == input_name and inp.get("link") is not None:
            link = next(lk for lk in workflow["links"] if lk[0] == inp["link"])
            return nodes[link[1]], link[2]
    return None


def chromium_path() -> str | None:
    for candidate in (os.environ.get("ACEPP_CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


__all__ = ["VIRTUAL_TYPES", "RELEASED_FILES", "RELEASED_FOLDERS", "RELEASED_TO_FIXTURE", "active_nodes", "chromium_path",
           "copy_inputs", "for_tiny_models", "linked_source", "load_rgba", "shipped_workflows"]
