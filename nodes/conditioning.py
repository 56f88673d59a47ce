"""ACE++ Conditioning: build the LCU++ canvas, VAE-encode it and attach it to the conditioning.

Fill (384): ``concat_latent_image`` = vae.encode(canvas) (raw: ComfyUI's ``Flux.concat_cond`` applies
``process_latent_in``), ``concat_mask`` = canvas mask (B, 1, H, W at pixel size; ComfyUI unshuffles it
8x8 to 64 channels). FFT (448): ``concat_latent_image`` = cat(encode(edit), encode(modify)) = 32
channels. The received conditioning is never modified: ``conditioning_set_values`` copies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from comfy_api.v0_0_2 import io

from ..aceplus_core import (DEFAULT_REPAINTING_SCALE, REFERENCE_FITS, TASK_PRESETS, Canvas, apply_preset, build_canvas,
                           fft_condition_images, mask_to_b1hw, to_bchw, to_bhwc)
from ..aceplus_core.layout import POLICIES
from . import compat
from .loader import model_kind
from .types import Layout, LayoutBundle, ReferenceList, References

log = logging.getLogger(__name__)

NO_PREPROCESS = ("repainting", "no_preprocess")  # presets that leave the image as it is
PRESET_SCALE = -1.0  # repainting_scale widget value meaning "the task preset's default"
# Release parity: the released ComfyUI processors' reference fit and crop. The budget is ``max_tokens``
# as the released processors count it: the LoRA processor spends 2 x its max_seq_length widget (default
# 3072 -> 6144 tokens), the FFT processor its max_seq_length (3072); the converter writes those values.
PARITY = {"fill": dict(reference_fit="resize", crop_mode="release"),
          "fft": dict(reference_fit="pad", crop_mode="release_fft")}


@dataclass(frozen=True)
class CanvasSettings:
    task: str = "repainting"
    repainting_scale: float = PRESET_SCALE
    reference_fit: str = "pad"
    policy: str = "target_first"
    max_tokens: int = 8192
    target_tokens: int = 4096
    width: int = 1024
    height: int = 1024
    aspect_mode: str = "crop"
    release_parity: bool = False


def model_kind_of(model) -> str:
    """'fill' or 'fft' from any FLUX-Fill-shaped MODEL (ours, UNETLoader, GGUF, fp8)."""
    return model_kind(compat.img_in_features(model), "The connected MODEL")


def gather_references(reference: Optional[torch.Tensor], more: Optional[ReferenceList]) -> list[torch.Tensor]:
    """``reference`` (IMAGE) first, then the ACE++ Add Reference chain, as BCHW tensors."""
    refs = [] if reference is None else [to_bchw(reference)]
    return refs + list(more or ())


def make_canvas(edit_image: Optional[torch.Tensor], mask: Optional[torch.Tensor], references: Sequence[torch.Tensor],
                kind: str, s: CanvasSettings, control_image: Optional[torch.Tensor] = None) -> tuple[Canvas, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(canvas, original image BCHW, original mask B1HW) with the task preset applied inside the mask."""
    image = None if edit_image is None else to_bchw(edit_image)
    mask_b1hw = None if mask is None else mask_to_b1hw(mask)
    if mask_b1hw is not None and not bool((mask_b1hw > 0.5).any()):
        # Zero-area mask = edit everything (release rule), whatever its size: LoadImage gives a 64x64
        # zero mask for images without alpha.
        log.info("ACE++: the mask is empty (%s); editing the whole image.", tuple(mask_b1hw.shape[-2:]))
        mask_b1hw = None
    if image is not None and mask_b1hw is not None and tuple(mask_b1hw.shape[-2:]) != tuple(image.shape[-2:]):
        raise ValueError(
            f"The mask is {tuple(mask_b1hw.shape[-2:])} (H, W) but the edit image is "
            f"{tuple(image.shape[-2:])}; they must be the same size. Paint the mask on this image, or "
            "resize the mask (e.g. with an image-resize node on a mask converted to an image)."
        )
    scale = s.repainting_scale
    prepared = image
    if image is not None:
        if s.task in NO_PREPROCESS:  # nothing to paste: skip the preset's full-size mask pass
            prepared, preset_scale = image, DEFAULT_REPAINTING_SCALE[s.task]
        else:
            control = None if control_image is None else to_bchw(control_image)
            prepared, preset_scale = apply_preset(image, mask_b1hw, s.task, control_image=control)
        scale = preset_scale if scale < 0 else scale
    elif s.task != "repainting":
        log.warning("ACE++: task %r needs an edit image; without one the canvas is generated from scratch.", s.task)
    scale = 1.0 if scale < 0 else scale
    budget = dict(max_tokens=s.max_tokens, reference_fit=s.reference_fit, policy=s.policy, crop_mode="target")
    if s.release_parity:
        budget = dict(PARITY[kind], policy="official", max_tokens=s.max_tokens)
    canvas = build_canvas(prepared, mask_b1hw, references, size=None if image is not None else (s.height, s.width),
                          repainting_scale=float(scale), target_tokens=s.target_tokens, aspect_mode=s.aspect_mode,
                          **budget)
    return canvas, image, mask_b1hw


def encode_canvas(vae, canvas: Canvas, kind: str) -> torch.Tensor:
    """Raw condition latent(s): Fill B, 16, h, w; FFT B, 32, h, w (edit then modify)."""
    if kind == "fft":
        edit_px, modify_px = fft_condition_images(canvas.image, canvas.mask)
        return torch.cat([compat.vae_encode(vae, to_bhwc(edit_px)), compat.vae_encode(vae, to_bhwc(modify_px))], dim=1)
    return compat.vae_encode(vae, to_bhwc(canvas.image))


def start_latent(vae, canvas: Canvas, condition: torch.Tensor, hold_references: bool) -> dict:
    """The LATENT to sample from.

    Without held references: zeros of the canvas latent size (sampling starts from pure noise).
    With them: the encoded canvas, and a ``noise_mask`` (latent size) that is 0 over the
    reference cells, so the sampler keeps those latents at ``sigma eps + (1 - sigma) z_ref`` each
    step (ComfyUI's inpaint blend): the model sees the true noised reference, as in training.
    ``concat_mask`` is set explicitly, so this noise mask never reaches the model as its mask.

    No second VAE encode: only the held (reference) cells of this latent matter at full denoise,
    and there the pixels are the condition's own. Fill: the condition IS ``encode(canvas.image)``.
    FFT: its edit latent ``encode(canvas * (1 - mask))`` sees the same pixels over the references
    (mask 0 there); only the modify latent differs. A canvas with a separate ``target`` (training
    ground truth) is still encoded, since its pixels differ.
    """
    b, _, h, w = condition.shape
    layout = canvas.layout
    if not hold_references or not layout.reference_boxes:
        return {"samples": torch.zeros((b, 16, h, w), dtype=torch.float32)}
    if canvas.target is not None:
        samples = compat.vae_encode(vae, to_bhwc(canvas.target))
    else:
        samples = condition[:, :16].clone()  # a copy: the LATENT and the conditioning never share a tensor
    hold = torch.ones((1, 1, h, w), dtype=torch.float32)  # 1 = sample, 0 = keep
    for box in layout.reference_boxes:
        rows, cols = box.scaled(8).slices()
        hold[:, :, rows, cols] = 0.0
    return {"samples": samples, "noise_mask": hold}


def attach(positive, negative, condition: torch.Tensor, canvas_mask: torch.Tensor, guidance: float):
    """Copies of positive/negative carrying the LCU++ condition and the FLUX guidance value."""
    values = {"concat_latent_image": condition, "concat_mask": canvas_mask, "guidance": float(guidance)}
    return compat.conditioning_set_values(positive, values), compat.conditioning_set_values(negative, values)


class Conditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ACEPP_Conditioning",
            display_name="ACE++ Conditioning",
            category="ACE++",
            description="Stitches the references (left) and the edit image (right) into one LCU++ canvas, "
                        "VAE-encodes it and attaches it to the conditioning, for FLUX.1-Fill-dev (+ ACE++ "
                        "LoRA) or the ACE++ FFT model. Feed its outputs to ACE++ Sampler.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="The instruction, encoded by CLIPTextEncode (FLUX)."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning; unused at cfg 1 (the default), but "
                                      "it gets the same canvas."),
                io.Vae.Input("vae", tooltip="The FLUX VAE (ae.safetensors)."),
                io.Model.Input("model", tooltip="The diffusion model; only its img_in width is read, to tell "
                               "Fill (384) from FFT (448). Any loader works (ACE++ Loader, UNETLoader, GGUF)."),
                io.Image.Input("edit_image", optional=True,
                               tooltip="The image to edit. Leave empty to generate a new image of width x height "
                                       "from the references. A batch edits several images with the same references."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Where to edit (1 = regenerate), the size of the edit image. Empty or all-zero "
                                      "= edit everything."),
                io.Image.Input("reference", optional=True,
                               tooltip="A reference image (subject, face, style). More via ACE++ Add Reference."),
                References.Input("more_references", optional=True,
                                 tooltip="Further references from a chain of ACE++ Add Reference nodes, placed after "
                                         "`reference`, left to right."),
                io.Image.Input("control_image", optional=True,
                               tooltip="For the 'control' task: a depth/contour/pose map pasted inside the mask."),
                io.Combo.Input("task", options=list(TASK_PRESETS), default="repainting",
                               tooltip="repainting: regenerate the masked area. no_preprocess: keep it visible. "
                                       "recolorizing/mosaic/canny/control: paste a grayscale/pixelated/edge/control "
                                       "version inside the mask as a guide."),
                io.Float.Input("repainting_scale", default=PRESET_SCALE, min=PRESET_SCALE, max=1.0, step=0.05,
                               tooltip="How much of the masked area is blanked: 1 = all (free repainting), 0 = none "
                                       "(the pasted guide stays visible). -1 = the task's default."),
                io.Combo.Input("reference_fit", options=list(REFERENCE_FITS), default="pad",
                               tooltip="pad: references keep their aspect at up to 0.8 x the canvas height, padded "
                                       "grey. resize: scaled to the full canvas height."),
                io.Combo.Input("budget_policy", options=list(POLICIES), default="target_first",
                               tooltip="target_first: the edit keeps its resolution (up to target_tokens) and the "
                                       "references share the rest of max_tokens. official: one scale for the whole "
                                       "canvas, as in the release."),
                io.Int.Input("max_tokens", default=8192, min=256, max=65536, step=256,
                             tooltip="Token budget of the whole canvas (one token = 16x16 px). More = sharper and "
                                     "slower; attention cost grows with its square."),
                io.Int.Input("target_tokens", default=4096, min=256, max=65536, step=256,
                             tooltip="target_first only: most tokens the edit image gets (4096 = 1024x1024)."),
                io.Int.Input("width", default=1024, min=16, max=8192, step=16,
                             tooltip="Output width when there is no edit image."),
                io.Int.Input("height", default=1024, min=16, max=8192, step=16,
                             tooltip="Output height when there is no edit image."),
                io.Float.Input("guidance", default=50.0, min=0.0, max=100.0, step=0.5,
                               tooltip="FLUX guidance embedding; ACE++ and FLUX.1-Fill use 50 (like FluxGuidance)."),
                io.Combo.Input("aspect_mode", options=["crop", "error"], default="crop",
                               tooltip="Images beyond 4:1: crop = centre-crop to 4:1 for the model (the rest is kept "
                                       "from the input); error = stop with a message."),
                io.Boolean.Input("hold_references", default=True,
                                 tooltip="Keep the reference area at the encoded references while sampling (noise "
                                         "mask), instead of letting the model redraw it."),
                io.Boolean.Input("release_parity", default=False,
                                 tooltip="Reproduce the released ACE++ canvas exactly: one budget of max_tokens for "
                                         "the whole canvas (the release's defaults: 6144 Fill, 3072 FFT), resize "
                                         "(Fill) / pad (FFT) fit and the release crop (output smaller than the "
                                         "input). Overrides fit and policy."),
            ],
            outputs=[
                io.Conditioning.Output("positive_out", display_name="positive", tooltip="Positive conditioning with the canvas attached."),
                io.Conditioning.Output("negative_out", display_name="negative", tooltip="Negative conditioning with the canvas attached."),
                io.Latent.Output("latent_out", display_name="latent", tooltip="The canvas-sized latent to sample."),
                Layout.Output("layout", display_name="layout", tooltip="Canvas geometry + original image and mask, for crop-back."),
                io.Image.Output("canvas_image", display_name="canvas", tooltip="The stitched condition canvas (for inspection)."),
            ],
        )

    @classmethod
    def execute(cls, positive, negative, vae, model, task, repainting_scale, reference_fit, budget_policy, max_tokens,
                target_tokens, width, height, guidance, aspect_mode, hold_references, release_parity, edit_image=None,
                mask=None, reference=None, more_references=None, control_image=None) -> io.NodeOutput:
        kind = model_kind_of(model)
        settings = CanvasSettings(task, repainting_scale, reference_fit, budget_policy, max_tokens, target_tokens,
                                  width, height, aspect_mode, release_parity)
        refs = gather_references(reference, more_references)
        canvas, image, mask_b1hw = make_canvas(edit_image, mask, refs, kind, settings, control_image)
        condition = encode_canvas(vae, canvas, kind)
        pos, neg = attach(positive, negative, condition, canvas.mask, guidance)
        latent = start_latent(vae, canvas, condition, hold_references and not release_parity)
        bundle = LayoutBundle(canvas.layout, image, mask_b1hw, kind)
        return io.NodeOutput(pos, neg, latent, bundle, to_bhwc(canvas.image))
