"""Write the trained weights in the formats ComfyUI and the released ACE++ files use.

LoRA: kohya keys on BFL module names, the released ACE++ format, loaded with every key mapped by
ComfyUI's ``LoraLoaderModelOnly`` / ``comfy.sd.load_lora_for_models``::

    lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight   r x in
    lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight     out x r
    lora_unet_double_blocks_0_img_attn_qkv.alpha              scalar (delta W = alpha / r * up @ down)

Full fine-tune: the DiT's state dict with BFL keys (what ``UNETLoader`` reads).
Metadata (safetensors header, strings): ``aceplus_config`` (resolved config JSON), ``aceplus_base_model``,
``aceplus_kind``, ``aceplus_stage`` (the data_type filter), ``aceplus_steps``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import save_file

from .config import Config
from .model import Trainable, kohya_name

log = logging.getLogger(__name__)


def host_lora_key_map(dit_prefix_keys: list[str]) -> set[str]:
    """The kohya stems ComfyUI maps for a FLUX model (via its own key map function)."""
    import comfy.lora

    class _Shim:  # model_lora_keys_unet only needs state_dict() keys and model_config for some archs
        def __init__(self, keys):
            self._keys = keys
            self.model_config = None

        def state_dict(self):
            return dict.fromkeys(self._keys)

    try:
        key_map = comfy.lora.model_lora_keys_unet(_Shim(dit_prefix_keys), {})
    except Exception:  # some versions inspect the model class; fall back to the documented rule
        key_map = {f"lora_unet_{k[len('diffusion_model.'):-len('.weight')].replace('.', '_')}": k
                   for k in dit_prefix_keys if k.endswith(".weight")}
    return set(key_map)


def lora_state_dict(model: Trainable, dtype: torch.dtype = torch.bfloat16) -> dict[str, torch.Tensor]:
    out = {}
    for key, lora in model.loras.items():
        stem = kohya_name(model.module_names[key])
        out[f"{stem}.lora_down.weight"] = lora.down.detach().to(dtype).cpu().contiguous()
        out[f"{stem}.lora_up.weight"] = lora.up.detach().to(dtype).cpu().contiguous()
        out[f"{stem}.alpha"] = torch.tensor(lora.alpha, dtype=dtype)
    return out


def metadata(cfg: Config, step: int) -> dict[str, str]:
    return {"aceplus_config": cfg.to_json(), "aceplus_base_model": Path(cfg.model.dit).name,
            "aceplus_kind": cfg.model.kind, "aceplus_stage": ",".join(cfg.data.data_types) or "all",
            "aceplus_steps": str(step), "aceplus_format": "lora_kohya_bfl" if cfg.lora.enabled else "bfl_full",
            "format": "pt"}


def export(model: Trainable, cfg: Config, step: int, path: Path, state: dict | None = None) -> Path:
    """Write the LoRA (or full weights) atomically: temp file, then rename. ``state``: the DiT's full
    BFL-key weights when the model itself is sharded (gathered by ``trainer.distributed``)."""
    if cfg.lora.enabled:
        sd = lora_state_dict(model)
        mapped = host_lora_key_map([f"diffusion_model.{k}" for k in model.dit.state_dict()])
        stems = {k.rsplit(".", 2)[0] if ".lora_" in k else k.rsplit(".", 1)[0] for k in sd}
        unmapped = sorted(stems - mapped)
        if unmapped:  # would load as "lora key not loaded" in ComfyUI
            raise RuntimeError(f"LoRA keys ComfyUI would not map: {unmapped[:5]}")
    else:
        dtype = torch.bfloat16 if cfg.train.mixed_precision == "bf16" else torch.float32
        src = state if state is not None else model.dit.state_dict()
        sd = {k: v.detach().to(dtype).cpu().contiguous() for k, v in src.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(sd, str(tmp), metadata=metadata(cfg, step))
    os.replace(tmp, path)
    log.info("exported %s (%d tensors, %s)", path, len(sd), "LoRA" if cfg.lora.enabled else "full weights")
    return path


def read_metadata(path: str) -> dict:
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = dict(f.metadata() or {})
    if "aceplus_config" in meta:
        meta["aceplus_config"] = json.loads(meta["aceplus_config"])
    return meta
