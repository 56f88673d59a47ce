"""Every use of ComfyUI internals that could differ between versions, in one place.

Written against ComfyUI 0.3.75 (the pinned test host) and checked against the public surface of
later releases: ``comfy.sd.load_diffusion_model``, ``comfy.lora``, ``comfy.model_sampling``,
``comfy.sample``, ``latent_preview`` and ``node_helpers``. The node modules import ComfyUI only
through this module (plus ``comfy_api`` for the schema).
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Callable, Optional

import torch

log = logging.getLogger(__name__)

WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2")


# ---- node schema ------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def advanced() -> dict[str, bool]:
    """``{"advanced": True}`` for an expert input where the host's V3 schema takes the flag, else ``{}``.

    ComfyUI 0.33's ``io.Input`` has ``advanced=``: the front end folds such widgets behind its "show
    advanced" control (the inputs, their order and the saved ``widgets_values`` stay the same). ComfyUI
    0.3.75's has no such parameter; there every input shows, as before. Use as ``**compat.advanced()``.
    """
    from comfy_api.v0_0_2 import io

    return {"advanced": True} if "advanced" in inspect.signature(io.Input.__init__).parameters else {}


# ---- model folders ----------------------------------------------------------------------------
def model_files(folder: str) -> list[str]:
    import folder_paths

    return folder_paths.get_filename_list(folder)


def model_path(folder: str, name: str) -> str:
    """Full path of ``name`` in one of ComfyUI's model folders; FileNotFoundError naming both."""
    import folder_paths

    path = folder_paths.get_full_path(folder, name)
    if path is None:
        raise FileNotFoundError(
            f"Model file {name!r} was not found in ComfyUI's {folder!r} folders "
            f"({', '.join(folder_paths.get_folder_paths(folder)) or 'none configured'}). "
            "Put it there (or list the folder in extra_model_paths.yaml) and refresh the page."
        )
    return path


# ---- loading ----------------------------------------------------------------------------------
def model_options_for(weight_dtype: str) -> dict[str, Any]:
    """UNETLoader's weight dtype options, as ``comfy.sd.load_diffusion_model`` model_options."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype {weight_dtype!r} is not one of {WEIGHT_DTYPES}.")
    options: dict[str, Any] = {}
    if weight_dtype.startswith("fp8_e4m3fn"):
        options["dtype"] = torch.float8_e4m3fn
        if weight_dtype.endswith("_fast"):
            options["fp8_optimizations"] = True
    elif weight_dtype == "fp8_e5m2":
        options["dtype"] = torch.float8_e5m2
    return options


def load_diffusion_model(path: str, weight_dtype: str):
    import comfy.sd

    return comfy.sd.load_diffusion_model(path, model_options=model_options_for(weight_dtype))


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    import comfy.utils

    return comfy.utils.load_torch_file(path, safe_load=True)


def add_lora(model, lora: dict[str, torch.Tensor], strength: float):
    """A clone of ``model`` with the LoRA patched in; returns (clone, number of weights patched)."""
    import comfy.lora
    import comfy.lora_convert

    key_map = comfy.lora.model_lora_keys_unet(model.model, {})
    loaded = comfy.lora.load_lora(comfy.lora_convert.convert_lora(lora), key_map)
    patched = model.clone()
    applied = patched.add_patches(loaded, strength)
    return patched, len(set(applied))


def img_in_features(model) -> int:
    """Input features of the diffusion model's ``img_in`` (Fill 384, FFT 448, FLUX.1-dev 64).

    Read from the weight (works for fp8 and GGUF tensors, which keep ``shape``); falls back to the
    model config where the weight is not reachable (e.g. TensorRT wrappers).
    """
    base = getattr(model, "model", model)
    dm = getattr(base, "diffusion_model", None)
    weight = getattr(getattr(dm, "img_in", None), "weight", None)
    if weight is not None and hasattr(weight, "shape") and len(weight.shape) == 2:
        return int(weight.shape[1])
    config = getattr(getattr(base, "model_config", None), "unet_config", {}) or {}
    if "in_channels" in config:
        patch = int(config.get("patch_size", 2))
        return int(config["in_channels"]) * patch * patch
    raise ValueError(
        f"Cannot read the input width of this MODEL ({type(base).__name__}): it has no "
        "diffusion_model.img_in weight and no in_channels in its config. Connect a FLUX.1-Fill-dev "
        "or ACE++ FFT model."
    )


# ---- conditioning -----------------------------------------------------------------------------
def conditioning_set_values(conditioning, values: dict[str, Any]):
    """A copy of ``conditioning`` with ``values`` set on every entry (the input is not touched)."""
    import node_helpers

    return node_helpers.conditioning_set_values(conditioning, values)


def vae_encode(vae, image_bhwc: torch.Tensor) -> torch.Tensor:
    """Raw VAE latent (B, 16, H/8, W/8), before ``process_latent_in``."""
    return vae.encode(image_bhwc[:, :, :, :3])


def vae_decode(vae, latent: torch.Tensor) -> torch.Tensor:
    """IMAGE (B, H, W, 3) in [0, 1]; video-VAE style outputs (B, T, H, W, 3) are flattened."""
    image = vae.decode(latent)
    if image.ndim == 5:
        image = image.reshape(-1, *image.shape[-3:])
    return image


# ---- sampling ---------------------------------------------------------------------------------
def sampler_names() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SAMPLERS)


def scheduler_names() -> list[str]:
    import comfy.samplers

    return list(comfy.samplers.KSampler.SCHEDULERS)


def with_flux_shift(model, mu: float):
    """A clone of ``model`` whose sampling uses the FLUX time shift ``mu``.

    ``sigma' = e^mu / (e^mu + (1/sigma - 1))``: what ComfyUI's ModelSamplingFlux node installs,
    here with ``mu`` from the canvas token count instead of a width/height widget.
    """
    import comfy.model_sampling

    class ModelSamplingACEPP(comfy.model_sampling.ModelSamplingFlux, comfy.model_sampling.CONST):
        pass

    sampling = ModelSamplingACEPP(model.model.model_config)
    sampling.set_parameters(shift=float(mu))
    patched = model.clone()
    patched.add_object_patch("model_sampling", sampling)
    return patched


def prepare_noise(latent: torch.Tensor, seed: int, batch_index: Optional[list[int]] = None) -> torch.Tensor:
    import comfy.sample

    return comfy.sample.prepare_noise(latent, seed, batch_index)


def fix_empty_latent_channels(model, latent: torch.Tensor) -> torch.Tensor:
    import comfy.sample

    return comfy.sample.fix_empty_latent_channels(model, latent)


def preview_callback(model, steps: int) -> Callable:
    """ComfyUI's standard progress bar + latent previews for ``steps`` steps."""
    import latent_preview

    return latent_preview.prepare_callback(model, steps)


def progress_bar_enabled() -> bool:
    import comfy.utils

    return bool(getattr(comfy.utils, "PROGRESS_BAR_ENABLED", True))


def sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent, *, noise_mask,
           callback, seed) -> torch.Tensor:
    import comfy.sample

    return comfy.sample.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent,
                               denoise=1.0, noise_mask=noise_mask, callback=callback,
                               disable_pbar=not progress_bar_enabled(), seed=seed)
