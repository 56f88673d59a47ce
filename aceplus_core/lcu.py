"""LCU++ token assembly: what FLUX Fill's ``img_in`` sees, and per-token loss weights.

Per latent position (16-channel FLUX latent at 1/8 of the canvas), channels are concatenated
``[noisy 16 | condition latent(s) 16 each | mask 64]`` and then cut into 2x2 patches:
``b c (h 2) (w 2) -> b (h w) (c 2 2)``. Fill: 96 channels -> 384 features; FFT: 112 -> 448.
The mask is the pixel mask unshuffled 8x8: ``b 1 (h 8) (w 8) -> b (8 8) h w``, channel
``ph * 8 + pw`` (as in FLUX Fill and ComfyUI's ``Flux.concat_cond``).

Reshape/permute only (no einops) so the tests can check against an independent einops version.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .layout import CanvasLayout
from .tensors import MID_GREY

FLUX_LATENT_SCALE = 0.3611
FLUX_LATENT_SHIFT = 0.1159
VAE_FACTOR = 8
PATCH = 2


def normalize_latent(z: torch.Tensor) -> torch.Tensor:
    """Raw VAE latent -> model space: ``z' = 0.3611 * (z - 0.1159)``."""
    return (z - FLUX_LATENT_SHIFT) * FLUX_LATENT_SCALE


def denormalize_latent(z: torch.Tensor) -> torch.Tensor:
    """Model space -> raw VAE latent: ``z = z' / 0.3611 + 0.1159``."""
    return z / FLUX_LATENT_SCALE + FLUX_LATENT_SHIFT


def pack_mask(mask_px: torch.Tensor) -> torch.Tensor:
    """B, 1, H, W (H, W multiples of 8) -> B, 64, H/8, W/8; channel = ph * 8 + pw."""
    if mask_px.ndim != 4 or mask_px.shape[1] != 1:
        raise ValueError(f"pack_mask expects a B, 1, H, W mask, got shape {tuple(mask_px.shape)}.")
    b, c, H, W = mask_px.shape
    if H % VAE_FACTOR or W % VAE_FACTOR:
        raise ValueError(f"Mask size {H}x{W} must be a multiple of 8 (the VAE factor); build it with build_canvas.")
    h, w = H // VAE_FACTOR, W // VAE_FACTOR
    x = mask_px.reshape(b, c, h, VAE_FACTOR, w, VAE_FACTOR)  # b c h ph w pw
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * VAE_FACTOR * VAE_FACTOR, h, w)


def patchify(x: torch.Tensor) -> torch.Tensor:
    """B, C, h, w -> B, (h/2 * w/2), C*4; feature = c * 4 + ph * 2 + pw, tokens row-major."""
    b, c, h, w = x.shape
    if h % PATCH or w % PATCH:
        raise ValueError(f"Latent size {h}x{w} must be even to patchify (canvas multiple of 16).")
    x = x.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH)       # b c h ph w pw
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, (h // PATCH) * (w // PATCH), c * PATCH * PATCH)


def unpatchify(tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Inverse of ``patchify``: B, (h/2 * w/2), C*4 -> B, C, h, w (h, w in latent pixels)."""
    b, t, d = tokens.shape
    hp, wp = h // PATCH, w // PATCH
    if hp * wp != t or d % (PATCH * PATCH):
        raise ValueError(f"Cannot unpatchify {tuple(tokens.shape)} to a {h}x{w} latent.")
    c = d // (PATCH * PATCH)
    x = tokens.reshape(b, hp, wp, c, PATCH, PATCH)                    # b h w c ph pw
    return x.permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


def lcu_tokens(noisy: torch.Tensor, cond_latents: Sequence[torch.Tensor], mask_px: torch.Tensor) -> torch.Tensor:
    """``patchify(cat([noisy, *cond_latents, pack_mask(mask_px)], dim=1))`` -> B, T, 4 * C_total.

    All latents B, 16, h, w (condition latents already normalised); mask_px B|1, 1, 8h, 8w.
    """
    b, _, h, w = noisy.shape
    for i, c in enumerate(cond_latents):
        if tuple(c.shape[-2:]) != (h, w):
            raise ValueError(f"Condition latent {i} is {tuple(c.shape[-2:])}, the noisy latent is {(h, w)}.")
    if tuple(mask_px.shape[-2:]) != (h * VAE_FACTOR, w * VAE_FACTOR):
        raise ValueError(
            f"The pixel mask is {tuple(mask_px.shape[-2:])} but the latent {h}x{w} needs "
            f"{h * VAE_FACTOR}x{w * VAE_FACTOR} (8x); pass the canvas mask."
        )
    mask = pack_mask(mask_px.to(noisy.dtype))
    parts = [noisy, *cond_latents, mask]
    parts = [p.expand(b, *p.shape[1:]) if p.shape[0] == 1 and b != 1 else p for p in parts]
    return patchify(torch.cat(parts, dim=1))


def fill_tokens(noisy: torch.Tensor, cond_latent: torch.Tensor, mask_px: torch.Tensor) -> torch.Tensor:
    """FLUX Fill input: [noisy 16 | cond 16 | mask 64] -> B, T, 384."""
    return lcu_tokens(noisy, [cond_latent], mask_px)


def fft_tokens(noisy: torch.Tensor, edit_latent: torch.Tensor, modify_latent: torch.Tensor,
               mask_px: torch.Tensor) -> torch.Tensor:
    """ACE++ FFT input: [noisy 16 | edit 16 | modify 16 | mask 64] -> B, T, 448."""
    return lcu_tokens(noisy, [edit_latent, modify_latent], mask_px)


def position_ids(h_lat: int, w_lat: int, batch: int = 1) -> torch.Tensor:
    """FLUX image ids over the whole canvas: B, (h/2 * w/2), 3 with [0, row, col] (float32)."""
    hp, wp = h_lat // PATCH, w_lat // PATCH
    ids = torch.zeros(hp, wp, 3)
    ids[..., 1] = torch.arange(hp, dtype=torch.float32)[:, None]
    ids[..., 2] = torch.arange(wp, dtype=torch.float32)[None, :]
    return ids.reshape(1, hp * wp, 3).repeat(batch, 1, 1)


def fft_condition_images(canvas_image: torch.Tensor, canvas_mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The FFT model's two condition images from the (already blanked) canvas.

    The release computes, on images in [-1, 1] (0 = grey): ``edit = canvas * (1 - m)``,
    ``modify = canvas * m``. In [0, 1] that is ``edit = 0.5 + (canvas - 0.5) * (1 - m)`` and
    ``modify = 0.5 + (canvas - 0.5) * m``: grey where a part is excluded. Note that with
    repainting_scale 1 the canvas is already grey inside the mask, so ``modify`` is all grey, as in
    the release; ``modify`` carries content for control tasks (repainting_scale 0).
    """
    m = canvas_mask.to(canvas_image.dtype)
    centred = canvas_image - MID_GREY
    return centred * (1.0 - m) + MID_GREY, centred * m + MID_GREY


def region_weights(layout: CanvasLayout, ref_weight: float = 1.0, target_weight: float = 1.0,
                   unmasked_weight: Optional[float] = None, mask_px: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-token loss weights (B or 1, T), T = (canvas_h/16) * (canvas_w/16), tokens row-major.

    Reference cells -> ``ref_weight``, target box -> ``target_weight``; with ``unmasked_weight``,
    target tokens whose 16x16 patch has no masked pixel (``mask_px`` B|1, 1, H, W canvas mask) get
    ``unmasked_weight``. A token column that straddles the reference/target boundary (possible
    only with the official policy) gets ``f * w_target + (1 - f) * ref_weight``, f = its fraction
    of target pixels.
    """
    H, W = layout.canvas_h, layout.canvas_w
    h, w = H // 16, W // 16
    device = mask_px.device if mask_px is not None else torch.device("cpu")
    tb = layout.target_box
    x0 = torch.arange(w, device=device) * 16
    overlap = (torch.clamp(x0 + 16, max=tb.x1) - torch.clamp(x0, min=tb.x)).clamp(min=0)
    frac = (overlap.float() / 16.0).view(1, 1, w)                          # 1, 1, w   target share
    tgt = torch.full((1, h, w), float(target_weight), device=device)       # 1, h, w
    if unmasked_weight is not None:
        if mask_px is None:
            raise ValueError("unmasked_weight needs mask_px (the canvas mask, B, 1, H, W).")
        if tuple(mask_px.shape[-2:]) != (H, W):
            raise ValueError(f"mask_px is {tuple(mask_px.shape[-2:])}, the canvas is {H}x{W}.")
        any_masked = F.max_pool2d((mask_px > 0.5).float(), 16)[:, 0]     # B, h, w
        tgt = torch.where(any_masked > 0, tgt, torch.full_like(tgt, float(unmasked_weight)))
    weights = torch.where(frac >= 1.0, tgt, frac * tgt + (1.0 - frac) * float(ref_weight))
    return weights.flatten(1)                                              # B|1, T
