"""Random-weight model files with the real architectures, generated and cached, never committed.

Run as a script to (re)build them: ``python tests/fixtures.py``. Tests call
``ensure_fixtures()``, which builds what is missing into ``<cache>/fixtures`` and
lays out a ComfyUI model folder tree (``models/diffusion_models``, ``vae``,
``loras``) of symlinks to them.

What gets built and why:

* ``tiny_fill.safetensors`` / ``tiny_fft.safetensors`` / ``tiny_dev.safetensors``:
  BFL-key FLUX diffusion models that ComfyUI 0.3.75's ``UNETLoader`` detects. Up to
  0.8.x ComfyUI fixes ``num_heads=24``, so hidden must be 3072; one double block
  and no single block keeps them at ~392 M parameters. ``img_in`` is
  [3072, 384] (Fill), [3072, 448] (ACE++ FFT) or [3072, 64] (plain FLUX.1-dev).
* ``tiny_vae.safetensors``: a TAESD-layout 16-channel VAE with FLUX's scale/shift.
* ``released_lora_r16/r64.safetensors``: the exact key names, shapes and alpha of
  the released ACE++ LoRAs (all 19 double and 38 single blocks, hidden 3072).
* ``tiny_lora_r16.safetensors``: the released format restricted to the blocks the
  tiny model has, so it changes the tiny model's output.
* Redux stand-ins (the FLUX Redux workflows): ``tiny_redux.safetensors``, a random
  ``ReduxImageEncoder`` (ComfyUI fixes its shape: 1152 -> 12288 -> 4096, 64 M parameters);
  ``tiny_sigclip.safetensors``, a random SigLIP-so400m/14 at 384 px in the layout
  ``CLIPVisionLoader`` detects (ComfyUI fixes its config: 27 layers, hidden 1152, 413 M
  parameters, fp16); ``tiny_fill_t5.safetensors``, the tiny Fill model with a 4096-wide
  text input, since Redux appends 4096-wide tokens to the text conditioning.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from aceplus_host import cache_dir  # noqa: E402

FIXTURE_VERSION = 1  # bump to rebuild everything; per-file versions below rebuild one file

# The builders live in aceplus_host.tiny_models (the demo uses them too); re-exported here.
from aceplus_host.tiny_models import (  # noqa: E402,F401
    CONTEXT_DIM, DOUBLE_TARGETS, HIDDEN, KINDS, MLP, POOLED_DIM, SINGLE_TARGETS, TINY_VAE_VERSION, ensure_built,
    flux_state_dict, lora_state_dict, tiny_vae_state_dict,
)

# name -> builder version; a cached file whose metadata holds an older version is rebuilt.
# tiny_vae v3: weights drawn and calibrated (v1 kept ComfyUI's uninitialised memory: NaN latents).
FILE_VERSIONS = {"tiny_vae": TINY_VAE_VERSION}


REDUX_CONTEXT_DIM = 4096  # Redux's token width = T5-XXL's


def redux_state_dict(seed: int = 11) -> dict:
    """Random weights for ComfyUI's ``ReduxImageEncoder`` (what ``StyleModelLoader`` builds for Redux)."""
    return _random_like(_meta_state_dict("redux"), seed)


def sigclip_state_dict(seed: int = 12) -> dict:
    """Random weights in the SigLIP 384 layout ``comfy.clip_vision`` detects (layer 22 present, hidden 1152,
    729 positions)."""
    return _random_like(_meta_state_dict("sigclip"), seed)


def _meta_state_dict(which: str) -> dict:
    import json

    import torch

    import comfy.ops

    with torch.device("meta"):
        if which == "redux":
            from comfy.ldm.flux.redux import ReduxImageEncoder

            return ReduxImageEncoder().state_dict()
        import comfy.clip_model
        import comfy.clip_vision

        config = Path(comfy.clip_vision.__file__).with_name("clip_vision_siglip_384.json")
        model = comfy.clip_model.CLIPVisionModelProjection(json.loads(config.read_text()), torch.float16, "meta",
                                                          comfy.ops.disable_weight_init)
        return model.state_dict()


def _random_like(meta: dict, seed: int) -> dict:
    """Normal(0, 1/fan_in) weights, unit norms, zero biases, in fp16 (one tensor at a time: modest memory)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, t in meta.items():
        if "norm" in key and key.endswith("weight"):
            out[key] = torch.ones(t.shape, dtype=torch.float16)
        elif key.endswith("bias"):
            out[key] = torch.zeros(t.shape, dtype=torch.float16)
        else:
            fan_in = int(torch.tensor(t.shape[1:]).prod()) if t.dim() > 1 else 1
            out[key] = (torch.randn(t.shape, generator=gen) / fan_in ** 0.5).to(torch.float16)
    return out


def fixtures_dir() -> Path:
    path = cache_dir() / "fixtures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def ensure_fixtures() -> dict[str, Path]:
    """Build missing fixtures; return {name: path} and a ComfyUI ``models`` tree of links."""
    from aceplus_host import import_comfy

    import_comfy()
    root = fixtures_dir()
    stamp = root / "VERSION"
    if stamp.exists() and stamp.read_text().strip() != str(FIXTURE_VERSION):
        for f in root.glob("*.safetensors"):
            f.unlink()
    builders = {
        "tiny_fill": lambda: flux_state_dict(KINDS["fill"], seed=1),
        "tiny_fft": lambda: flux_state_dict(KINDS["fft"], seed=2),
        "tiny_dev": lambda: flux_state_dict(KINDS["dev"], seed=3),
        "tiny_vae": tiny_vae_state_dict,
        "released_lora_r16": lambda: lora_state_dict(16, seed=16),
        "released_lora_r64": lambda: lora_state_dict(64, seed=64),
        "tiny_lora_r16": lambda: lora_state_dict(16, double_blocks=1, single_blocks=0, seed=7, scale=0.5),
        "tiny_fill_t5": lambda: flux_state_dict(KINDS["fill"], context_dim=REDUX_CONTEXT_DIM, seed=1),
        "tiny_redux": redux_state_dict,
        "tiny_sigclip": sigclip_state_dict,
    }
    paths = {name: ensure_built(root / f"{name}.safetensors", build, name, FILE_VERSIONS.get(name, 1))
             for name, build in builders.items()}
    stamp.write_text(str(FIXTURE_VERSION))
    models = root / "models"
    layout = {"diffusion_models": ["tiny_fill", "tiny_fft", "tiny_dev", "tiny_fill_t5"], "vae": ["tiny_vae"],
              "loras": ["released_lora_r16", "released_lora_r64", "tiny_lora_r16"],
              "style_models": ["tiny_redux"], "clip_vision": ["tiny_sigclip"]}
    for folder, names in layout.items():
        (models / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            link = models / folder / f"{name}.safetensors"
            if not link.exists():
                link.symlink_to(paths[name])
    paths["models"] = models
    return paths


# Real-size text encoders (random weights) for the trainer's ``model.text_encoder = "comfy"`` test; not
# part of ensure_fixtures(): the T5-XXL file is 4.8 GB, built only when that test runs.
TEXT_ENCODER_VERSION = 2  # v2: T5 drawn as fp8 bit patterns (4x faster to build)


def ensure_text_encoders() -> dict[str, Path]:
    """CLIP-L (fp16, 246 MB) and T5-XXL (float8_e4m3fn, 4.8 GB, streamed to disk) with ComfyUI's shapes."""
    from aceplus_host import import_comfy
    from aceplus_host.tiny_models import clip_l_state_dict, t5xxl_streamed

    import_comfy()
    root = fixtures_dir()
    return {
        "clip_l": ensure_built(root / "random_clip_l.safetensors", lambda: clip_l_state_dict(seed=11),
                               "random_clip_l", TEXT_ENCODER_VERSION),
        "t5xxl": ensure_built(root / "random_t5xxl_fp8_e4m3fn.safetensors", lambda: t5xxl_streamed(seed=12),
                              "random_t5xxl_fp8_e4m3fn", TEXT_ENCODER_VERSION),
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for key, value in ensure_fixtures().items():
        print(f"{key}: {value}")  # noqa: T201 - a script's output
