"""Write the trained weights in the formats ComfyUI and the released ACE++ files use.

LoRA: kohya keys on BFL module names, the released ACE++ format, loaded with every key mapped by
ComfyUI's ``LoraLoaderModelOnly`` / ``comfy.sd.load_lora_for_models`` (checked before writing: ComfyUI's
own parser must consume every key, with factor shapes that fit the base model)::

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
from .model import Trainable, check_dit_file, kohya_name

log = logging.getLogger(__name__)


class ExportCheckError(RuntimeError):
    """The weights about to be exported would not load completely in ComfyUI."""


def host_lora_key_map(dit_prefix_keys: list[str]) -> dict[str, str]:
    """kohya stem -> ``diffusion_model.<module>.weight``, built by ComfyUI's ``model_lora_keys_unet``.

    That function fills the generic BFL entries first and then asks the model config for the diffusers
    names; our key-only shim has no config, so that second part raises and the generic map (the one
    that covers kohya BFL keys) is what we keep.
    """
    import comfy.lora

    class _Shim:
        def __init__(self, keys):
            self._keys = keys
            self.model_config = None

        def state_dict(self):
            return dict.fromkeys(self._keys)

    key_map: dict[str, str] = {}
    try:
        comfy.lora.model_lora_keys_unet(_Shim(dit_prefix_keys), key_map)
    except (AttributeError, TypeError, KeyError):  # the diffusers part needs a model config
        pass
    return key_map


def check_lora_loads_in_comfy(sd: dict[str, torch.Tensor], dit_shapes: dict[str, tuple]) -> None:
    """Run ComfyUI's own LoRA parser (``comfy.lora.load_lora``) on ``sd`` against the DiT's keys and
    raise unless every key is consumed and every ``up @ down`` has the shape of the weight it patches.

    Fails on: a module the model does not have, a key ComfyUI does not parse (a typo'd suffix), a
    factor whose shape does not fit its module.
    """
    import comfy.lora

    key_map = host_lora_key_map([f"diffusion_model.{k}" for k in dit_shapes])
    not_loaded: list[str] = []

    class _Catch(logging.Handler):
        def emit(self, record):
            msg = record.getMessage()
            if msg.startswith("lora key not loaded: "):
                not_loaded.append(msg[len("lora key not loaded: "):])

    handler, root = _Catch(logging.WARNING), logging.getLogger()
    root.addHandler(handler)
    try:
        patches = comfy.lora.load_lora(sd, key_map, log_missing=True)
    except Exception as e:  # e.g. KeyError for an up factor without its down factor
        raise ExportCheckError(f"ComfyUI's LoRA parser fails on these weights ({type(e).__name__}: {e}); an "
                               "up/down pair is incomplete or misnamed.") from e
    finally:
        root.removeHandler(handler)
    if not_loaded:
        raise ExportCheckError(f"{len(not_loaded)} LoRA key(s) ComfyUI would not load, e.g. {sorted(not_loaded)[:5]}; "
                               "the trained modules and the base model's keys disagree (a different base file?).")
    bad = []
    for target, patch in patches.items():
        weights = patch.weights if hasattr(patch, "weights") else patch[1]  # adapter object | ("lora", (...))
        up, down = weights[0], weights[1]
        want = tuple(dit_shapes[target[len("diffusion_model."):]])
        if (up.shape[0], down.shape[-1]) != want[:2] or up.shape[1] != down.shape[0]:
            bad.append(f"{target}: up {tuple(up.shape)} @ down {tuple(down.shape)} vs weight {want}")
    if bad:
        raise ExportCheckError(f"{len(bad)} LoRA factor pair(s) do not fit their module: {bad[:3]}")


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


def bfl_keys(sd: dict[str, torch.Tensor], file_keys: set[str]) -> dict[str, torch.Tensor]:
    """The module's state dict under the base file's own (BFL) key names.

    Newer ComfyUI (0.33) renames the FLUX q/k RMSNorm ``*_norm.scale`` to ``*_norm.weight`` when it loads
    a file (``process_unet_state_dict``) and has no inverse for saving; BFL files, the released ACE++ FFT
    file and ComfyUI 0.3.75 use ``.scale``. Every key must land on a key of the base file."""
    out, unknown = {}, []
    for k, v in sd.items():
        name = k if k in file_keys else (k[:-len(".weight")] + ".scale" if k.endswith("_norm.weight") else None)
        if name not in file_keys:
            unknown.append(k)
        out[name] = v
    missing = sorted(file_keys - set(out))
    if unknown or missing:
        raise ExportCheckError(f"the full weights do not match the base file's keys: {len(unknown)} unknown "
                               f"(e.g. {unknown[:3]}), {len(missing)} missing (e.g. {missing[:3]}); the export "
                               "would not load as a FLUX diffusion model.")
    return out


def export(model: Trainable, cfg: Config, step: int, path: Path, state: dict | None = None) -> Path:
    """Write the LoRA (or full weights) atomically: temp file, then rename. ``state``: the DiT's full
    BFL-key weights when the model itself is sharded (gathered by ``trainer.distributed``)."""
    if cfg.lora.enabled:
        sd = lora_state_dict(model)
        check_lora_loads_in_comfy(sd, {k: tuple(v.shape) for k, v in model.dit.state_dict().items()})
    else:
        dtype = torch.bfloat16 if cfg.train.mixed_precision == "bf16" else torch.float32
        src = state if state is not None else model.dit.state_dict()
        src = bfl_keys(src, set(check_dit_file(cfg)))
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
