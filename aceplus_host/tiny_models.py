"""Random-weight models with the real architectures: the test fixtures and the demo's fallback.

* FLUX diffusion models in BFL layout that ComfyUI's ``UNETLoader`` detects. Up to ComfyUI 0.8.x
  ``num_heads`` is fixed at 24, so hidden must be 3072; one double block and no single block keeps
  them at ~392 M parameters. ``img_in`` is [3072, 384] (Fill), [3072, 448] (ACE++ FFT) or
  [3072, 64] (plain FLUX.1-dev).
* A TAESD-layout 16-channel VAE with FLUX's latent scale/shift (~2.5 M parameters).
* LoRAs with the exact key names, shapes and alpha of the released ACE++ LoRAs.
* FLUX's text encoders at their real sizes, as ComfyUI's ``DualCLIPLoader`` takes them: CLIP-L
  (123 M, fp16) and T5-XXL (4.76 B, float8_e4m3fn storage, 4.8 GB, written tensor by tensor so the
  build never holds the model in RAM). ComfyUI's T5 loader fixes the T5-XXL config, so no smaller
  T5 loads unchanged.

Nothing here downloads anything. Needs ComfyUI importable (``aceplus_host.import_comfy()``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Optional

import torch

log = logging.getLogger(__name__)

HIDDEN = 3072
MLP = 4 * HIDDEN
CONTEXT_DIM = 64  # stand-in "T5" width of the tiny models
POOLED_DIM = 768  # CLIP-L pooled vector
KINDS = {"fill": 96, "fft": 112, "dev": 16}  # unpatchified input channels; img_in = 4x
# Version of ``tiny_vae_state_dict``; bump when its weights change, so cached files are rebuilt
# (v1 kept ComfyUI's uninitialised memory: NaN latents; v3 draws and calibrates every weight).
TINY_VAE_VERSION = 3

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


# FluxParams fields that later ComfyUI versions require, with the value their model detection sets
# for a FLUX.1 (BFL) file. 0.33 added ``txt_ids_dims`` (``[]`` = text tokens get no position ids).
_FLUX1_NEWER_FIELDS = {"txt_ids_dims": []}


def flux_config(**config) -> dict:
    """``config`` completed to a FLUX.1 ``Flux(...)`` / ``unet_config`` for the ComfyUI in use.

    Fields a newer ComfyUI's ``FluxParams`` requires are added with the values its detection gives
    FLUX.1; an older one, which rejects unknown fields, gets none of them.
    """
    from comfy.ldm.flux.model import FluxParams

    fields = {f.name for f in dataclasses.fields(FluxParams)}
    for name, value in _FLUX1_NEWER_FIELDS.items():
        if name in fields:
            config.setdefault(name, list(value) if isinstance(value, list) else value)
    return config


def flux_state_dict(in_channels: int, depth: int = 1, depth_single: int = 0, hidden: int = HIDDEN,
                    context_dim: int = CONTEXT_DIM, vec_dim: int = POOLED_DIM, seed: int = 0,
                    dtype: torch.dtype = torch.bfloat16, device: Optional[torch.device] = None) -> dict[str, torch.Tensor]:
    """A random FLUX state dict in BFL layout, keys and shapes read off ComfyUI's own model."""
    import comfy.ops
    from comfy.ldm.flux.model import Flux

    heads = hidden // 128
    with torch.device("meta"):
        model = Flux(**flux_config(image_model="flux", in_channels=in_channels, out_channels=16, vec_in_dim=vec_dim,
                                   context_in_dim=context_dim, hidden_size=hidden, mlp_ratio=4.0, num_heads=heads,
                                   depth=depth, depth_single_blocks=depth_single, axes_dim=[16, 56, 56], theta=10000,
                                   patch_size=2, qkv_bias=True, guidance_embed=True),
                     dtype=dtype, device="meta", operations=comfy.ops.disable_weight_init)
    device = torch.device("cpu") if device is None else torch.device(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = {}
    for key, meta in model.state_dict().items():
        if key.endswith("scale"):  # RMSNorm scales
            out[key] = torch.ones(meta.shape, dtype=dtype, device=device)
        elif key.endswith("bias"):
            out[key] = torch.zeros(meta.shape, dtype=dtype, device=device)
        else:
            fan_in = meta.shape[-1] if meta.dim() > 1 else 1
            out[key] = (torch.randn(meta.shape, generator=gen, device=device) / fan_in ** 0.5).to(dtype)
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
    """A TAESD-layout VAE with 16 latent channels and FLUX's latent scale/shift.

    ComfyUI builds TAESD with ``disable_weight_init`` layers (uninitialised memory, often NaN), so
    every weight is drawn here: He-normal ``std = sqrt(2 / fan_in)`` for the ReLU convs, zero
    biases. Then the last encoder conv is rescaled so a random image encodes to latents of std 1
    (like the real FLUX VAE's raw latents), and the last decoder conv so a random latent decodes to
    mean 0.5, std 0.15: the picture then depends visibly on the latent, with little clipping.
    """
    import comfy.taesd.taesd as taesd

    gen = torch.Generator().manual_seed(seed)
    model = taesd.TAESD(latent_channels=16)
    sd = {}
    for key, value in model.state_dict().items():
        if key.endswith("bias"):
            sd[key] = torch.zeros(value.shape)
        elif key not in ("vae_scale", "vae_shift"):
            sd[key] = torch.randn(value.shape, generator=gen) * (2.0 / value[0].numel()) ** 0.5
    sd["vae_scale"] = torch.tensor(0.3611)
    sd["vae_shift"] = torch.tensor(0.1159)
    model.load_state_dict(sd)

    def last_conv(prefix: str) -> str:
        return max((k for k in sd if k.startswith(prefix) and k.endswith("weight") and sd[k].ndim == 4),
                   key=lambda k: int(k.split(".")[1]))

    with torch.no_grad():
        image = torch.rand(1, 3, 128, 128, generator=gen)
        enc = last_conv("taesd_encoder.")
        sd[enc] /= model.taesd_encoder(image).std()
        model.load_state_dict(sd)
        dec = last_conv("taesd_decoder.")
        out = model.taesd_decoder(torch.randn(1, 16, 16, 16, generator=gen))
        sd[dec] *= 0.15 / out.std()
        sd[dec.replace("weight", "bias")] = torch.full_like(sd[dec.replace("weight", "bias")], 0.0)
        model.load_state_dict(sd)
        mean = model.taesd_decoder(torch.randn(1, 16, 16, 16, generator=gen)).mean()
        sd[dec.replace("weight", "bias")] += 0.5 - mean
    return {k: v.contiguous() for k, v in sd.items()}


@dataclasses.dataclass(frozen=True)
class Streamed:
    """A safetensors file too big to hold in RAM: ``shapes`` {key: (shape, dtype)} in file order, and
    ``make(key)`` draws one tensor at a time while the file is written."""

    shapes: dict
    make: object  # Callable[[str], torch.Tensor]


_ST_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float8_e4m3fn: "F8_E4M3"}


def write_streamed(st: Streamed, path: Path, metadata: Optional[dict] = None) -> None:
    """The safetensors format written by hand: 8-byte header length, JSON header, raw tensors."""
    header, offset = {}, 0
    for key, (shape, dtype) in st.shapes.items():
        n = dtype.itemsize
        for d in shape:
            n *= d
        header[key] = {"dtype": _ST_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for key, (shape, dtype) in st.shapes.items():
            t = st.make(key)
            if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
                raise ValueError(f"{key}: built {tuple(t.shape)} {t.dtype}, declared {tuple(shape)} {dtype}")
            f.write(t.contiguous().view(torch.uint8).numpy().tobytes())
            del t


def _te_shapes(module: torch.nn.Module, dtype: torch.dtype) -> dict:
    """{key: (shape, dtype)} of a ComfyUI text encoder built on the meta device, without the
    ``transformer.`` prefix and ``logit_scale`` (the layout of the usual encoder files)."""
    return {k[len("transformer."):]: (tuple(v.shape), dtype) for k, v in module.state_dict().items()
            if k.startswith("transformer.")}


def clip_l_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """CLIP-L text encoder (``clip_l.safetensors`` layout), random, fp16: keys and shapes read off
    ComfyUI's ``SDClipModel``; linear weights ~ N(0, 1/fan_in), norms 1, embeddings N(0, 0.02)."""
    import comfy.sd1_clip

    with torch.device("meta"):
        shapes = _te_shapes(comfy.sd1_clip.SDClipModel(device="meta", dtype=torch.float16,
                                                       return_projected_pooled=False), torch.float16)
    gen = torch.Generator().manual_seed(seed)
    return {k: _te_tensor(k, shape, dtype, gen) for k, (shape, dtype) in shapes.items()}


def _te_tensor(key: str, shape: tuple, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    if key.endswith("bias"):
        return torch.zeros(shape, dtype=dtype)
    if "norm" in key and len(shape) == 1:
        return torch.ones(shape, dtype=dtype)
    if "embedding" in key or key.endswith("shared.weight") or "relative_attention_bias" in key:
        std = 0.02 if "embedding" in key else 0.5
        return (torch.randn(shape, generator=gen) * std).to(dtype)
    return (torch.randn(shape, generator=gen) / shape[-1] ** 0.5).to(dtype)  # Linear: N(0, 1/fan_in)


def t5xxl_streamed(seed: int = 0) -> Streamed:
    """T5-XXL encoder (``t5xxl_fp8_e4m3fn.safetensors`` layout, every tensor float8_e4m3fn), random:
    keys and shapes read off ComfyUI's ``T5XXLModel`` (its fixed t5_config_xxl.json), drawn per tensor."""
    import comfy.text_encoders.sd3_clip

    dtype = torch.float8_e4m3fn
    with torch.device("meta"):
        shapes = _te_shapes(comfy.text_encoders.sd3_clip.T5XXLModel(device="meta", dtype=dtype), dtype)
    order = list(shapes)

    def make(key: str) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed * 100_003 + order.index(key))  # per tensor: any order
        shape, dt = shapes[key]
        return _te_tensor(key, shape, dt, gen)

    return Streamed(shapes, make)


def save_safetensors(sd: dict, path: Path, metadata: Optional[dict] = None) -> None:
    """Write atomically (temp file, then rename): a killed run never leaves a half-written file."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_suffix(".tmp")
    if isinstance(sd, Streamed):
        write_streamed(sd, tmp, metadata)
    else:
        save_file(sd, str(tmp), metadata=metadata)
    tmp.rename(path)


def ensure_built(path: Path, build, name: str, version: int = 1) -> Path:
    """``path``, written atomically from ``build()`` unless a file of this builder ``version`` is there.

    ``build()`` returns a state dict, or a ``Streamed`` for files too big to hold in RAM.

    A cached file whose metadata records an older builder version is rebuilt (random weights only).
    """
    path = Path(path)
    if path.exists() and (fixture_version(path) or 1) < version:
        log.info("%s was built by an older builder (version < %d); rebuilding", path, version)
        path.unlink()
    if not path.exists():
        log.info("building %s (random weights)", path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors(build(), path, random_metadata(name, version))
    return path


def random_metadata(name: str, version: int) -> dict[str, str]:
    return {"aceplus_fixture": json.dumps({"name": name, "random": True, "version": version})}


def fixture_version(path: Path) -> Optional[int]:
    """The builder version stored in a file's metadata (None when absent or unreadable)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = (f.metadata() or {}).get("aceplus_fixture")
        return int(json.loads(meta).get("version", 1)) if meta else None
    except Exception:  # noqa: BLE001 - any unreadable file is rebuilt
        return None
