"""ACE++ Loader: FLUX.1-Fill-dev or the ACE++ FFT model, optional ACE++ LoRAs.

The file's ``img_in`` width is read from the safetensors header before any weight is loaded, so a
wrong file fails in milliseconds with a message that says which file is needed. Loading goes
through ``comfy.sd.load_diffusion_model``; ComfyUI's global model-config list is never touched.
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Sequence, Tuple

from comfy_api.v0_0_2 import io

from . import compat, validation

log = logging.getLogger(__name__)

FILL_FEATURES = 384  # 96 unpatchified channels: noisy 16 + condition 16 + mask 64, x 2x2 patch
FFT_FEATURES = 448   # 112: noisy 16 + edit 16 + modify 16 + mask 64
DEV_FEATURES = 64    # plain FLUX.1-dev / schnell: noisy 16 only
KINDS = {FILL_FEATURES: "fill", FFT_FEATURES: "fft"}
NEEDED = ("flux1-fill-dev.safetensors (FLUX.1-Fill-dev, for the ACE++ LoRAs) or ace_plus_fft.safetensors "
          "(the ACE++ FFT model)")
SAFETENSORS_EXT = (".safetensors", ".sft")
NO_LORA = "None"
LORA_SLOTS = 3


def model_kind(features: int, what: str) -> str:
    """'fill' or 'fft' from the ``img_in`` input width; ValueError naming the needed file otherwise."""
    if features in KINDS:
        return KINDS[features]
    if features == DEV_FEATURES:
        raise ValueError(
            f"{what} is a plain FLUX.1 text-to-image model (img_in takes 64 features, no inpainting "
            f"channels). ACE++ needs {NEEDED}, whose img_in takes 384 or 448 features. Put one of them "
            "in ComfyUI/models/diffusion_models and select it."
        )
    raise ValueError(
        f"{what} has img_in with {features} input features; ACE++ needs 384 (FLUX.1-Fill-dev) or 448 "
        f"(ACE++ FFT). Use {NEEDED}."
    )


def read_img_in_features(path: str) -> int:
    """Input width of ``img_in.weight`` read from the safetensors header only (no weights loaded)."""
    from safetensors import SafetensorError, safe_open

    name = os.path.basename(path)
    if not path.lower().endswith(SAFETENSORS_EXT):
        raise ValueError(
            f"{name} is not a .safetensors file ({path}). ACE++ Loader reads safetensors only; for GGUF "
            "or other formats load the model with that format's loader and connect its MODEL to ACE++ "
            "Conditioning and ACE++ Sampler directly."
        )
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            keys = [k for k in f.keys() if k == "img_in.weight" or k.endswith(".img_in.weight")]
            if not keys:
                raise ValueError(
                    f"{name} ({path}) has no img_in.weight tensor, so it is not a FLUX diffusion model "
                    f"in BFL layout. ACE++ needs {NEEDED}."
                )
            shape = f.get_slice(keys[0]).get_shape()
    except SafetensorError as err:
        raise ValueError(
            f"{name} is not a readable safetensors file ({err}); it is corrupt or incompletely "
            f"downloaded (size {os.path.getsize(path)} bytes, at {path}). Download it again."
        ) from err
    if len(shape) != 2:
        raise ValueError(f"{name}: img_in.weight has shape {shape}, expected [hidden, features].")
    return int(shape[1])


def load_model(path: str, weight_dtype: str):
    """(MODEL, kind) after the header check."""
    name = os.path.basename(path)
    kind = model_kind(read_img_in_features(path), name)
    model = compat.load_diffusion_model(path, weight_dtype)
    log.info("ACE++: loaded %s as a %s model (%s)", name, kind.upper(), weight_dtype)
    return model, kind


def apply_loras(model, kind: str, loras: Sequence[Tuple[Optional[str], str, float]]):
    """Patch each (name, path, strength) into a clone of ``model``; strength 0 and 'None' are skipped."""
    for name, path, strength in loras:
        if name in (None, "", NO_LORA) or strength == 0.0:
            continue
        if kind == "fft":
            log.warning("ACE++: applying LoRA %s to an FFT (448-channel) model. The released ACE++ LoRAs "
                        "were trained on FLUX.1-Fill-dev and are not meant for the FFT model.", name)
        read_header_ok(path)
        model, patched = compat.add_lora(model, compat.load_state_dict(path), strength)
        if patched == 0:
            raise ValueError(
                f"LoRA {name} matched none of the model's weights (0 patched). It is not a FLUX LoRA in a "
                "format ComfyUI maps (kohya lora_unet_*, diffusers transformer.*, diffusion_model.*), or it "
                "was made for a different model. Pick an ACE++ LoRA or set its slot to None."
            )
        log.info("ACE++: LoRA %s at strength %g patched %d weights", name, strength, patched)
    return model


def read_header_ok(path: str) -> None:
    """ValueError naming the file unless it is a readable safetensors file (header only)."""
    from safetensors import SafetensorError, safe_open

    name = os.path.basename(path)
    if not path.lower().endswith(SAFETENSORS_EXT):
        raise ValueError(f"LoRA {name} is not a .safetensors file ({path}); ACE++ Loader reads safetensors only.")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            f.keys()
    except SafetensorError as err:
        raise ValueError(
            f"LoRA {name} is not a readable safetensors file ({err}); it is corrupt or incompletely "
            f"downloaded ({os.path.getsize(path)} bytes at {path}). Download it again."
        ) from err


class Loader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        loras = [NO_LORA, *compat.model_files("loras")]
        slots = []
        for i in range(1, LORA_SLOTS + 1):
            slots += [
                io.Combo.Input(f"lora_{i}", options=loras, default=NO_LORA, optional=True,
                               tooltip=f"ACE++ LoRA #{i} from models/loras (e.g. comfyui_subject_lora16, "
                                       "comfyui_portrait_lora64, comfyui_local_lora16). None = no LoRA."),
                io.Float.Input(f"strength_{i}", default=1.0, min=-10.0, max=10.0, step=0.01, optional=True,
                               tooltip=f"Strength of LoRA #{i}; 0 disables it, 1 is the trained strength."),
            ]
        return io.Schema(
            node_id="ACEPP_Loader",
            display_name="ACE++ Loader",
            category="ACE++",
            description="Loads FLUX.1-Fill-dev (384-channel, for the ACE++ LoRAs) or the ACE++ FFT model "
                        "(448-channel) from models/diffusion_models, checks the file before loading, and "
                        "applies up to three LoRAs. Refuses plain FLUX.1-dev with a message naming the file "
                        "you need.",
            inputs=[
                io.Combo.Input("model_name", options=compat.model_files("diffusion_models"),
                               tooltip="flux1-fill-dev.safetensors (with an ACE++ LoRA) or "
                                       "ace_plus_fft.safetensors, from models/diffusion_models."),
                io.Combo.Input("weight_dtype", options=list(compat.WEIGHT_DTYPES), default="default",
                               tooltip="Weight storage type. fp8 halves memory (12 GB instead of 24 GB for "
                                       "FLUX.1-Fill); _fast also uses fp8 matmuls on GPUs that have them."),
                *slots,
            ],
            outputs=[io.Model.Output(tooltip="The diffusion model, ready for ACE++ Conditioning and Sampler.")],
        )

    @classmethod
    def validate_inputs(cls, model_name=None, weight_dtype=None, lora_1=None, strength_1=None, lora_2=None,
                        strength_2=None, lora_3=None, strength_3=None) -> bool | str:
        """Before the prompt runs: the files are in their folders, the strengths finite (nodes/validation.py)."""
        return validation.hook(cls, model_name=model_name, weight_dtype=weight_dtype, lora_1=lora_1,
                               strength_1=strength_1, lora_2=lora_2, strength_2=strength_2, lora_3=lora_3,
                               strength_3=strength_3)

    @classmethod
    def execute(cls, model_name, weight_dtype, **slots) -> io.NodeOutput:
        validation.require_widgets(cls, model_name=model_name, weight_dtype=weight_dtype, **slots)
        # every file is found and every LoRA header read before the base model loads (seconds to minutes)
        path = compat.model_path("diffusion_models", model_name)
        loras = []
        for i in range(1, LORA_SLOTS + 1):
            name = slots.get(f"lora_{i}", NO_LORA)
            if name not in (None, NO_LORA):
                loras.append((name, compat.model_path("loras", name), float(slots.get(f"strength_{i}", 1.0))))
        for name, lora_path, strength in loras:
            if strength != 0.0:
                read_header_ok(lora_path)
        model, kind = load_model(path, weight_dtype)
        return io.NodeOutput(apply_loras(model, kind, loras))
