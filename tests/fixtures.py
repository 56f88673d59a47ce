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
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from aceplus_host import cache_dir  # noqa: E402

log = logging.getLogger(__name__)

FIXTURE_VERSION = 1
HIDDEN = 3072
MLP = 4 * HIDDEN
CONTEXT_DIM = 64  # our stand-in "T5" width for the tiny models
POOLED_DIM = 768  # CLIP-L pooled vector
KINDS = {"fill": 96, "fft": 112, "dev": 16}  # unpatchified input channels; img_in = 4x

# Module names (BFL) the released ACE++ LoRAs target, with (in, out) features.
DOUBLE_TARGETS = {
    "img_attn.qkv": (HIDDEN, 3 * HIDDEN), "txt_attn.qkv": (HIDDEN, 3 * HIDDEN),
    "img_attn.proj": (HIDDEN, HIDDEN), "txt_attn.proj": (HIDDEN, HIDDEN),
    "img_mlp.0": (HIDDEN, MLP), "img_mlp.2": (MLP, HIDDEN),
    "txt_mlp.0": (HIDDEN, MLP), "txt_mlp.2": (MLP, HIDDEN),
    "img_mod.lin": (HIDDEN, 6 * HIDDEN), "txt_mod.lin": (HIDDEN, 6 * HIDDEN),
}
SINGLE_TARGETS = {
    "linear1": (HIDDEN, 3 * HIDDEN + MLP), "linear2": (HIDDEN + MLP, HIDDEN), "modulation.lin": (HIDDEN, 3 * HIDDEN),
}


def fixtures_dir() -> Path:
    path = cache_dir() / "fixtures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def flux_state_dict(in_channels: int, depth: int = 1, depth_single: int = 0, hidden: int = HIDDEN,
                    context_dim: int = CONTEXT_DIM, vec_dim: int = POOLED_DIM, seed: int = 0,
                    dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """A random FLUX state dict in BFL layout, keys and shapes read off ComfyUI's own model."""
    from comfy.ldm.flux.model import Flux
    import comfy.ops

    heads = hidden // 128
    with torch.device("meta"):
        model = Flux(image_model="flux", in_channels=in_channels, out_channels=16, vec_in_dim=vec_dim,
                     context_in_dim=context_dim, hidden_size=hidden, mlp_ratio=4.0, num_heads=heads, depth=depth,
                     depth_single_blocks=depth_single, axes_dim=[16, 56, 56], theta=10000, patch_size=2,
                     qkv_bias=True, guidance_embed=True, dtype=dtype, device="meta",
                     operations=comfy.ops.disable_weight_init)
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, meta in model.state_dict().items():
        if key.endswith("scale"):  # RMSNorm scales
            out[key] = torch.ones(meta.shape, dtype=dtype)
        elif key.endswith("bias"):
            out[key] = torch.zeros(meta.shape, dtype=dtype)
        else:
            fan_in = meta.shape[-1] if meta.dim() > 1 else 1
            out[key] = (torch.randn(meta.shape, generator=gen) / fan_in ** 0.5).to(dtype)
    return out


def lora_state_dict(rank: int, double_blocks: int = 19, single_blocks: int = 38, seed: int = 0,
                    scale: float = 0.05, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    """Random LoRA in the released ACE++ format: kohya keys on BFL module names, alpha = rank."""
    gen = torch.Generator().manual_seed(seed)
    out = {}

    def add(prefix: str, fin: int, fout: int) -> None:
        name = "lora_unet_" + prefix.replace(".", "_")
        out[f"{name}.lora_down.weight"] = (torch.randn(rank, fin, generator=gen) / fin ** 0.5).to(dtype)
        out[f"{name}.lora_up.weight"] = (torch.randn(fout, rank, generator=gen) * scale).to(dtype)
        out[f"{name}.alpha"] = torch.tensor(float(rank), dtype=dtype)

    for i in range(double_blocks):
        for mod, (fin, fout) in DOUBLE_TARGETS.items():
            add(f"double_blocks.{i}.{mod}", fin, fout)
    for i in range(single_blocks):
        for mod, (fin, fout) in SINGLE_TARGETS.items():
            add(f"single_blocks.{i}.{mod}", fin, fout)
    return out


def tiny_vae_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A TAESD-layout VAE with 16 latent channels and FLUX's latent scale/shift."""
    import comfy.taesd.taesd as taesd

    torch.manual_seed(seed)
    model = taesd.TAESD(latent_channels=16)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sd["vae_scale"] = torch.tensor(0.3611)
    sd["vae_shift"] = torch.tensor(0.1159)
    return sd


def _save(sd: dict, path: Path, metadata: dict | None = None) -> None:
    tmp = path.with_suffix(".tmp")
    save_file(sd, str(tmp), metadata=metadata)
    tmp.rename(path)  # atomic: a killed run never leaves a half-written fixture


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
    }
    paths = {}
    for name, build in builders.items():
        path = root / f"{name}.safetensors"
        if not path.exists():
            log.info("building fixture %s", path)
            _save(build(), path, metadata={"aceplus_fixture": json.dumps({"name": name, "random": True})})
        paths[name] = path
    stamp.write_text(str(FIXTURE_VERSION))
    models = root / "models"
    layout = {"diffusion_models": ["tiny_fill", "tiny_fft", "tiny_dev"], "vae": ["tiny_vae"],
              "loras": ["released_lora_r16", "released_lora_r64", "tiny_lora_r16"]}
    for folder, names in layout.items():
        (models / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            link = models / folder / f"{name}.safetensors"
            if not link.exists():
                link.symlink_to(paths[name])
    paths["models"] = models
    return paths


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for key, value in ensure_fixtures().items():
        print(f"{key}: {value}")  # noqa: T201 - a script's output
