"""Main job: run an ACE++ reference-editing graph in a headless ComfyUI and write the result.

    python scripts/demo.py [--steps N] [--size 512] [--tiny] [--out result.png]

1. Finds ComfyUI ($COMFYUI_PATH, the ComfyUI this pack is installed in, or the pinned 0.3.75,
   fetched on first use) and links this pack into a private server folder (.cache/demo).
2. Uses the real model files when they are in that ComfyUI's model folders:
   diffusion_models/flux1-fill-dev.safetensors (or ace_plus_fft.safetensors), vae/ae.safetensors,
   text_encoders (or clip)/clip_l.safetensors + a t5xxl file, and, if present, an ACE++ LoRA in loras/.
   Otherwise it builds tiny random-weight models with the real FLUX architecture (once, cached) and
   a stand-in text encoder; the output is then labelled RANDOM WEIGHTS in the log and in its name.
3. Makes its example images itself (procedural: no downloads, no files needed), runs the graph
   ACE++ Loader -> ACE++ Conditioning -> ACE++ Sampler -> SaveImage, and prints the output path.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aceplus_host import ComfyServer, cache_dir, find_comfyui, link_models  # noqa: E402

log = logging.getLogger("acepp.demo")

FILL_NAMES = ("flux1-fill-dev.safetensors", "flux1-fill-dev-fp8.safetensors", "ace_plus_fft.safetensors")
VAE_NAMES = ("ae.safetensors", "flux_vae.safetensors")
CLIP_NAMES = ("clip_l.safetensors",)
T5_NAMES = ("t5xxl_fp16.safetensors", "t5xxl_fp8_e4m3fn.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors")
LORA_NAMES = ("comfyui_subject_lora16.safetensors", "comfyui_local_lora16.safetensors",
              "comfyui_portrait_lora64.safetensors")
FOLDERS = {"diffusion_models": ("diffusion_models", "unet"), "vae": ("vae",), "text_encoders": ("text_encoders", "clip"),
           "loras": ("loras",)}
PROMPT = "{image}, a red ball lies in the middle of the meadow, in the style of the reference"


@dataclass
class ModelSet:
    models_dir: Path          # a ComfyUI ``models`` tree
    diffusion: str
    vae: str
    clip_l: Optional[str]     # None: tiny models with the stand-in text encoder
    t5: Optional[str]
    lora: Optional[str]
    random: bool


def find_file(models: Path, folder: str, names: tuple[str, ...]) -> Optional[str]:
    for sub in FOLDERS[folder]:
        for name in names:
            if (models / sub / name).is_file():
                return name
    return None


def real_models(comfy_dir: Path) -> Optional[ModelSet]:
    """The user's real files in ComfyUI's model folders, or None when any required one is missing."""
    models = comfy_dir / "models"
    found = {"diffusion": find_file(models, "diffusion_models", FILL_NAMES), "vae": find_file(models, "vae", VAE_NAMES),
             "clip_l": find_file(models, "text_encoders", CLIP_NAMES), "t5": find_file(models, "text_encoders", T5_NAMES)}
    missing = [k for k, v in found.items() if v is None]
    if missing:
        log.info("real model files not found in %s (missing: %s)", models, ", ".join(missing))
        return None
    lora = find_file(models, "loras", LORA_NAMES) if found["diffusion"] != "ace_plus_fft.safetensors" else None
    return ModelSet(models, found["diffusion"], found["vae"], found["clip_l"], found["t5"], lora, random=False)


def tiny_models() -> ModelSet:
    """Build (once) the random-weight tiny FLUX.1-Fill and VAE into .cache/demo/tiny_models."""
    from aceplus_host import import_comfy
    from aceplus_host.tiny_models import TINY_VAE_VERSION, KINDS, ensure_built, flux_state_dict, tiny_vae_state_dict

    import_comfy()
    models = cache_dir() / "demo" / "tiny_models"
    ensure_built(models / "diffusion_models" / "tiny_fill_random.safetensors",
                 lambda: flux_state_dict(KINDS["fill"], seed=1), "tiny_fill_random.safetensors")
    ensure_built(models / "vae" / "tiny_vae_random.safetensors", tiny_vae_state_dict, "tiny_vae_random.safetensors",
                 TINY_VAE_VERSION)
    return ModelSet(models, "tiny_fill_random.safetensors", "tiny_vae_random.safetensors", None, None, None, True)


def example_images(size: int):
    """(edit RGB, mask bool, reference RGB) as uint8 arrays: a meadow scene and a striped ball."""
    import numpy as np

    h = w = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32) / size
    sky = np.stack([0.45 + 0.3 * y, 0.65 + 0.2 * y, 0.95 - 0.1 * y], -1)
    grass = np.stack([0.2 + 0.1 * np.sin(40 * x), 0.55 + 0.1 * np.sin(25 * x + 9 * y), 0.2 + 0 * x], -1)
    edit = np.where((y > 0.55 + 0.05 * np.sin(6 * x))[..., None], grass, sky)
    sun = (x - 0.8) ** 2 + (y - 0.2) ** 2 < 0.01
    edit[sun] = (1.0, 0.9, 0.4)
    mask = (np.abs(x - 0.5) < 0.2) & (np.abs(y - 0.62) < 0.2)
    ball = (x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.12
    ref = np.ones((h, w, 3), np.float32)
    stripes = (np.sin(30 * (x + y)) > 0)[..., None]
    ref = np.where(ball[..., None], np.where(stripes, (0.9, 0.1, 0.1), (1.0, 1.0, 1.0)), ref)
    to8 = lambda a: (np.clip(a, 0, 1) * 255).round().astype(np.uint8)  # noqa: E731
    return to8(edit), mask, to8(ref)


def write_inputs(input_dir: Path, size: int) -> tuple[str, str]:
    import numpy as np
    from PIL import Image

    edit, mask, ref = example_images(size)
    input_dir.mkdir(parents=True, exist_ok=True)
    alpha = np.where(mask, 0, 255).astype(np.uint8)  # LoadImage: mask = 1 - alpha
    Image.fromarray(np.dstack([edit, alpha]), "RGBA").save(input_dir / "acepp_demo_edit.png")
    Image.fromarray(ref, "RGB").save(input_dir / "acepp_demo_reference.png")
    return "acepp_demo_edit.png", "acepp_demo_reference.png"


def text_nodes(ms: ModelSet) -> dict:
    if ms.random:  # the stand-in from tests/comfy_test_pack: T5 cannot be shrunk
        return {"pos": {"class_type": "ACEPPTest_RandomConditioning", "inputs": {"text": PROMPT, "tokens": 16}},
                "neg": {"class_type": "ACEPPTest_RandomConditioning", "inputs": {"text": "", "tokens": 16}}}
    return {"clip": {"class_type": "DualCLIPLoader", "inputs": {"clip_name1": ms.clip_l, "clip_name2": ms.t5,
                                                                "type": "flux"}},
            "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": PROMPT}},
            "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["clip", 0], "text": ""}}}


def build_graph(ms: ModelSet, edit: str, ref: str, steps: int, seed: int, prefix: str) -> dict:
    loader = {"model_name": ms.diffusion, "weight_dtype": "default"}
    if ms.lora:
        loader.update(lora_1=ms.lora, strength_1=1.0)
    return {
        **text_nodes(ms),
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": ms.vae}},
        "model": {"class_type": "ACEPP_Loader", "inputs": loader},
        "edit": {"class_type": "LoadImage", "inputs": {"image": edit}},
        "ref": {"class_type": "LoadImage", "inputs": {"image": ref}},
        "cond": {"class_type": "ACEPP_Conditioning", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "vae": ["vae", 0], "model": ["model", 0],
            "edit_image": ["edit", 0], "mask": ["edit", 1], "reference": ["ref", 0], "task": "repainting",
            "repainting_scale": -1.0, "reference_fit": "pad", "budget_policy": "target_first", "max_tokens": 8192,
            "target_tokens": 4096, "width": 1024, "height": 1024, "guidance": 50.0, "aspect_mode": "crop",
            "hold_references": True, "release_parity": False}},
        "sampler": {"class_type": "ACEPP_Sampler", "inputs": {
            "model": ["model", 0], "positive": ["cond", 0], "negative": ["cond", 1], "latent": ["cond", 2],
            "layout": ["cond", 3], "vae": ["vae", 0], "seed": seed, "steps": steps, "cfg": 1.0,
            "sampler_name": "euler", "scheduler": "simple", "canvas_shift": True, "composite": True, "feather": 0}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["sampler", 0], "filename_prefix": prefix}},
        "save_canvas": {"class_type": "SaveImage", "inputs": {"images": ["sampler", 1],
                                                              "filename_prefix": prefix + "_canvas"}},
    }


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="use the tiny random-weight models even if real ones exist")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 28; 4 with random weights)")
    p.add_argument("--size", type=int, default=None, help="edit image side in px (default 1024; 256 with random weights)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--out", type=Path, default=None, help="also copy the result to this path")
    p.add_argument("--gpu", action="store_true", help="let ComfyUI use the GPU (default: GPU if torch sees one)")
    args = p.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    if args.size is not None and (args.size < 64 or args.size % 16):
        p.error(f"--size must be a multiple of 16 and >= 64, got {args.size}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    comfy_dir = find_comfyui()
    log.info("ComfyUI: %s", comfy_dir)
    ms = None if args.tiny else real_models(comfy_dir)
    if ms is None:
        ms = tiny_models()
        log.warning("=" * 78)
        log.warning("RANDOM WEIGHTS: no real FLUX.1-Fill / VAE / text encoder files were found, so this run uses")
        log.warning("tiny random-weight models. The output proves the pipeline runs; the picture is noise.")
        log.warning("Put flux1-fill-dev.safetensors, ae.safetensors, clip_l + t5xxl in %s/models.", comfy_dir)
        log.warning("=" * 78)
    steps = args.steps or (4 if ms.random else 28)
    size = args.size or (256 if ms.random else 1024)
    base = cache_dir() / "demo"
    link_models(base, ms.models_dir)
    edit, ref = write_inputs(base / "input", size)
    prefix = "acepp_demo_RANDOM_WEIGHTS" if ms.random else "acepp_demo"
    import torch

    cpu = not (args.gpu or torch.cuda.is_available())
    extra = (ROOT / "tests" / "comfy_test_pack",) if ms.random else ()
    log.info("running %s + %s, %d steps at %dx%d (%s)", ms.diffusion, ms.lora or "no LoRA", steps, size, size,
             "CPU" if cpu else "GPU")
    with ComfyServer(base, comfy_dir=comfy_dir, extra_packs=extra, cpu=cpu) as server:
        entry = server.run(build_graph(ms, edit, ref, steps, args.seed, prefix), timeout=24 * 3600)
    images = entry["outputs"]["save"]["images"]
    result = base / "output" / images[0].get("subfolder", "") / images[0]["filename"]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result, args.out)
        result = args.out
    if ms.random:
        log.warning("the output below is from RANDOM WEIGHTS (tiny test models), not from ACE++")
    print(result)  # noqa: T201 - the script's one result
    return 0


if __name__ == "__main__":
    sys.exit(main())
