"""ACE++ Conditioning: build the LCU++ canvas, VAE-encode it and attach it to the conditioning.

Fill (384): ``concat_latent_image`` = vae.encode(canvas) (raw: ComfyUI's ``Flux.concat_cond`` applies
``process_latent_in``), ``concat_mask`` = canvas mask (B, 1, H, W at pixel size; ComfyUI unshuffles it
8x8 to 64 channels). FFT (448): ``concat_latent_image`` = cat(encode(edit), encode(modify)) = 32
channels. The received conditioning is never modified: ``conditioning_set_values`` copies.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
from comfy_api.v0_0_2 import io

from ..aceplus_core import (KEEP_PIXELS_RATE, REFERENCE_FITS, TASK_PRESETS, Canvas, CanvasSpec, fft_condition_images,
                           mask_to_b1hw, task_canvas, to_bchw, to_bhwc)
from ..aceplus_core.layout import POLICIES
from . import compat, validation
from .loader import model_kind
from .types import Layout, LayoutBundle, ReferenceList, References

log = logging.getLogger(__name__)

PRESET_SCALE = -1.0  # repainting_scale widget value meaning "the task preset's default"
# Expert inputs fold behind the front end's "show advanced" where the host supports it (nodes/compat.py); the
# defaults show: the task, the size or budget and guidance. Input order (= widgets_values order) is unchanged.
EXPERT = compat.advanced()


def canvas_spec(repainting_scale: float, reference_fit: str, budget_policy: str, max_tokens: int, target_tokens: int,
                width: int, height: int, aspect_mode: str, release_parity: bool, kind: str,
                keep_pixels_rate: float = KEEP_PIXELS_RATE) -> CanvasSpec:
    """The node's widgets as a ``CanvasSpec`` (release parity: the released processor's budget, fit and crop)."""
    spec = CanvasSpec(policy=budget_policy, max_tokens=max_tokens, target_tokens=target_tokens,
                      reference_fit=reference_fit, keep_pixels_rate=float(keep_pixels_rate), aspect_mode=aspect_mode,
                      repainting_scale=None if repainting_scale < 0 else float(repainting_scale), size=(height, width))
    if not release_parity:
        return spec
    # The released processors' fit and crop; the budget stays max_tokens, counted as the release counts
    # it: the LoRA processor spends 2 x its max_seq_length widget (default 3072 -> 6144), the FFT
    # processor its max_seq_length (3072). The released-workflow converter writes those values.
    return spec.release_parity(kind).replace(max_tokens=max_tokens)


def model_kind_of(model) -> str:
    """'fill' or 'fft' from any FLUX-Fill-shaped MODEL (ours, UNETLoader, GGUF, fp8)."""
    return model_kind(compat.img_in_features(model), "The connected MODEL")


def gather_references(reference: Optional[torch.Tensor], more: Optional[ReferenceList]) -> list[torch.Tensor]:
    """``reference`` (IMAGE) first, then the ACE++ Add Reference chain, as BCHW tensors."""
    refs = [] if reference is None else [to_bchw(reference)]
    return refs + list(more or ())


def make_canvas(edit_image: Optional[torch.Tensor], mask: Optional[torch.Tensor], references: Sequence[torch.Tensor],
                spec: CanvasSpec, task: str, control_image: Optional[torch.Tensor] = None
                ) -> tuple[Canvas, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(canvas, original image BCHW, original mask B1HW or None) with the task preset applied inside the mask,
    by ``aceplus_core.task_canvas``: the function the trainer's caching pass calls too."""
    image = None if edit_image is None else to_bchw(edit_image)
    built = task_canvas(image, None if mask is None else mask_to_b1hw(mask), references, spec, task,
                        control_image=None if control_image is None else to_bchw(control_image))
    return built.canvas, image, built.mask


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
                io.Combo.Input("reference_fit", options=list(REFERENCE_FITS), default="pad", **EXPERT,
                               tooltip="pad: references keep their aspect at up to 0.8 x the canvas height, padded "
                                       "grey. resize: scaled to the full canvas height."),
                io.Combo.Input("budget_policy", options=list(POLICIES), default="target_first", **EXPERT,
                               tooltip="target_first: the edit keeps its resolution (up to target_tokens) and the "
                                       "references share the rest of max_tokens. official: one scale for the whole "
                                       "canvas, as in the release."),
                io.Int.Input("max_tokens", default=8192, min=256, max=65536, step=256,
                             tooltip="Token budget of the whole canvas (one token = 16x16 px). More = sharper and "
                                     "slower; attention cost grows with its square."),
                io.Int.Input("target_tokens", default=4096, min=256, max=65536, step=256, **EXPERT,
                             tooltip="target_first only: most tokens the edit image gets (4096 = 1024x1024)."),
                io.Int.Input("width", default=1024, min=16, max=8192, step=16,
                             tooltip="Output width when there is no edit image."),
                io.Int.Input("height", default=1024, min=16, max=8192, step=16,
                             tooltip="Output height when there is no edit image."),
                io.Float.Input("guidance", default=50.0, min=0.0, max=100.0, step=0.5,
                               tooltip="FLUX guidance embedding; ACE++ and FLUX.1-Fill use 50 (like FluxGuidance)."),
                io.Combo.Input("aspect_mode", options=["crop", "error"], default="crop", **EXPERT,
                               tooltip="Images beyond 4:1: crop = centre-crop to 4:1 for the model (the rest is kept "
                                       "from the input); error = stop with a message."),
                io.Boolean.Input("hold_references", default=True, **EXPERT,
                                 tooltip="Keep the reference area at the encoded references while sampling (noise "
                                         "mask), instead of letting the model redraw it."),
                io.Boolean.Input("release_parity", default=False, **EXPERT,
                                 tooltip="Reproduce the released ACE++ canvas exactly: one budget of max_tokens for "
                                         "the whole canvas (the release's defaults: 6144 Fill, 3072 FFT), resize "
                                         "(Fill) / pad (FFT) fit and the release crop (output smaller than the "
                                         "input). Overrides fit and policy."),
                io.Float.Input("keep_pixels_rate", default=KEEP_PIXELS_RATE, min=0.0, max=1.0, step=0.01, optional=True,
                               **EXPERT,
                               tooltip="pad fit: a reference at least this fraction of the canvas height is shrunk "
                                       "to it, a shorter one keeps its pixels (the released FFT processor's "
                                       "keep_pixels_rate; 0.8 there). Used in both budget policies and in release "
                                       "parity."),
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
    def validate_inputs(cls, task=None, repainting_scale=None, reference_fit=None, budget_policy=None, guidance=None,
                        aspect_mode=None, keep_pixels_rate=None, mask=validation.ABSENT,
                        edit_image=validation.ABSENT) -> bool | str:
        """Before the prompt runs (nodes/validation.py): choices, non-finite floats, and a mask without its image
        (a linked input arrives here as None, an unconnected one keeps the ABSENT default)."""
        if mask is not validation.ABSENT and edit_image is validation.ABSENT:
            return validation.mask_without_image_message()
        return validation.hook(cls, task=task, repainting_scale=repainting_scale, reference_fit=reference_fit,
                               budget_policy=budget_policy, guidance=guidance, aspect_mode=aspect_mode,
                               keep_pixels_rate=keep_pixels_rate)

    @classmethod
    def execute(cls, positive, negative, vae, model, task, repainting_scale, reference_fit, budget_policy, max_tokens,
                target_tokens, width, height, guidance, aspect_mode, hold_references, release_parity,
                keep_pixels_rate=KEEP_PIXELS_RATE, edit_image=None, mask=None, reference=None, more_references=None,
                control_image=None) -> io.NodeOutput:
        validation.require_widgets(cls, task=task, repainting_scale=repainting_scale, guidance=guidance,
                                   keep_pixels_rate=keep_pixels_rate)  # values that came through links
        validation.check_conditioning_inputs(edit_image, mask, reference, more_references, control_image)
        kind = model_kind_of(model)
        spec = canvas_spec(repainting_scale, reference_fit, budget_policy, max_tokens, target_tokens, width, height,
                           aspect_mode, release_parity, kind, keep_pixels_rate)
        refs = gather_references(reference, more_references)
        canvas, image, mask_b1hw = make_canvas(edit_image, mask, refs, spec, task, control_image)
        condition = encode_canvas(vae, canvas, kind)
        pos, neg = attach(positive, negative, condition, canvas.mask, guidance)
        latent = start_latent(vae, canvas, condition, hold_references and not release_parity)
        bundle = LayoutBundle(canvas.layout, image, mask_b1hw, kind)
        return io.NodeOutput(pos, neg, latent, bundle, to_bhwc(canvas.image))
