"""Crop the generated target out of the decoded canvas and put it back into the original image.

``crop_mode="target"`` (ours): cut ``layout.target_box``, resize it to the source crop, place it at
the original size and, with ``composite=True``, take every pixel outside the edit mask from the
original image, bit for bit.

``crop_mode="release"`` / ``"release_fft"``: what the released ComfyUI graphs produce, for parity
checks only. They cut at ``x0`` and keep the rest of the canvas as is (no resize, no composite), so
the output is smaller than the input:
  release (LoRA processor): ``x0 = slice_w + 30 if slice_w >= 30 else slice_w``
  release_fft (FFT processor): ``x0 = slice_w if slice_w > 30 else slice_w + 30`` (so 30 px are cut
  even without a reference)
where ``slice_w`` is the release's reference strip width after the budget (``layout.slice_w``).
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F

from .layout import CanvasLayout
from .tensors import MID_GREY, binarize_mask, check_image, check_mask, resize_image

logger = logging.getLogger(__name__)

RELEASE_SEAM = 30  # px the released processors add to slice_w


def release_crop_x(layout: CanvasLayout, crop_mode: str) -> int:
    s = layout.slice_w
    if crop_mode == "release":
        return s + RELEASE_SEAM if s >= RELEASE_SEAM else s
    return s if s > RELEASE_SEAM else s + RELEASE_SEAM


def feather_alpha(mask: torch.Tensor, feather: int) -> torch.Tensor:
    """Blend weight inside a hard mask: ``alpha = min(d, f + 1) / (f + 1)``.

    d is the chessboard distance (in px, >= 1 inside the mask) to the nearest unmasked pixel,
    counted by repeated 3x3 erosions; outside the mask alpha = 0, deeper than ``feather`` px it is
    1. The image border counts as masked, so masks touching the border are not faded there.
    """
    acc = mask.clone()
    eroded = mask
    for _ in range(feather):
        # erode(m) = -maxpool(-m): max-pool pads with -inf, i.e. outside the image counts as masked
        eroded = -F.max_pool2d(-eroded, kernel_size=3, stride=1, padding=1)
        acc += eroded
        if not bool(eroded.any()):
            break
    return acc / (feather + 1)


def crop_back(decoded: torch.Tensor, layout: CanvasLayout, original_image: Optional[torch.Tensor] = None,
              original_mask: Optional[torch.Tensor] = None, *, composite: bool = True, feather: int = 0,
              crop_mode: Optional[str] = None) -> torch.Tensor:
    """decoded: B, 3, h, w VAE decode of the canvas -> B, 3, original_h, original_w in [0, 1].

    ``original_image`` (1|B, 3, H, W) and ``original_mask`` (1|B, 1, H, W, at the original size, the
    mask given to ``build_canvas``; binarised at > 0.5, all-zero means all-ones) drive the composite:
    ``out = where(mask, generated, original)`` so unmasked pixels are returned unchanged. Pixels
    outside ``layout.source_crop`` (aspect crop) always come from the original (grey without one).
    ``feather`` > 0 fades the generated content in over that many px INSIDE the mask.
    """
    mode = layout.crop_mode if crop_mode is None else crop_mode
    decoded = check_image(decoded, "decoded")
    if not isinstance(feather, int) or feather < 0:
        raise ValueError(f"feather must be a non-negative integer (px), got {feather!r}.")
    H, W = layout.canvas_h, layout.canvas_w
    dh, dw = int(decoded.shape[2]), int(decoded.shape[3])
    if (dh, dw) != (H, W):
        # VAE rounding: scale the boxes to the decoded size instead of resampling the whole canvas
        logger.info("decoded image %dx%d differs from the canvas %dx%d; scaling the crop", dh, dw, H, W)

    if mode in ("release", "release_fft"):
        x0 = min(round(release_crop_x(layout, mode) * dw / W), dw - 1)
        return decoded[:, :, :, x0:].clamp(0.0, 1.0)
    if mode != "target":
        raise ValueError(f"Unknown crop_mode {mode!r}; use 'target', 'release' or 'release_fft'.")

    tb, sc = layout.target_box, layout.source_crop
    x0, x1 = round(tb.x * dw / W), round(tb.x1 * dw / W)
    y0, y1 = round(tb.y * dh / H), round(tb.y1 * dh / H)
    # B, 3, ch, cw: bicubic like the release's PIL resize back; a no-op when sizes already match
    gen = resize_image(decoded[:, :, y0:y1, x0:x1], (sc.h, sc.w), "bicubic").clamp(0.0, 1.0)
    B, oh, ow = gen.shape[0], layout.original_h, layout.original_w
    full_crop = (sc.x, sc.y, sc.w, sc.h) == (0, 0, ow, oh)

    orig = None
    if original_image is not None:
        check_image(original_image, "original_image")
        # keep the caller's tensor (and dtype): unmasked pixels are copied from it bit for bit
        orig = original_image if original_image.ndim == 4 else original_image.unsqueeze(0)
        if tuple(orig.shape[-2:]) != (oh, ow):
            raise ValueError(
                f"original_image is {tuple(orig.shape[-2:])} (H, W) but the layout was built from a "
                f"{oh}x{ow} image; pass the same image that went into build_canvas."
            )
        if orig.shape[0] != B and 1 not in (orig.shape[0], B):
            raise ValueError(f"original_image batch {orig.shape[0]} does not match the decoded batch {B}.")
        B = max(B, orig.shape[0])

    # Generated content placed at the original size (outside the source crop: original or grey).
    if full_crop:
        placed = gen
    else:
        base = orig.float() if orig is not None else torch.full((1, 3, oh, ow), MID_GREY, device=gen.device)
        placed = base.expand(B, 3, oh, ow).clone()
        placed[:, :, sc.y:sc.y + sc.h, sc.x:sc.x + sc.w] = gen
    if not composite or orig is None:
        return placed.expand(B, 3, oh, ow).contiguous() if placed.shape[0] != B else placed

    if original_mask is None:
        m = torch.ones((1, 1, oh, ow), device=gen.device)
    else:
        m = check_mask(original_mask, "original_mask")
        if tuple(m.shape[-2:]) != (oh, ow):
            raise ValueError(
                f"original_mask is {tuple(m.shape[-2:])} (H, W) but the original image is {oh}x{ow}; "
                "pass the mask that went into build_canvas."
            )
        m = binarize_mask(m)
    if not full_crop:  # the model never saw pixels outside the crop: keep them
        inside = torch.zeros((1, 1, oh, ow), device=m.device)
        inside[:, :, sc.y:sc.y + sc.h, sc.x:sc.x + sc.w] = 1.0
        m = m * inside
    placed = placed.to(orig.dtype)
    alpha = feather_alpha(m, feather) if feather > 0 else None
    # Composite only inside the mask's bounding box; everything else is a plain copy of the original.
    hard = m > 0.5                                    # b, 1, H, W
    col_any = hard.flatten(0, 2).any(0)               # W: column has a masked pixel
    row_any = hard.flatten(0, 1).any(-1).any(0)       # H: row has a masked pixel
    out = orig.expand(B, 3, oh, ow).clone()
    if not bool(col_any.any()):
        return out
    ys = torch.nonzero(row_any).flatten()
    xs = torch.nonzero(col_any).flatten()
    r = slice(int(ys[0]), int(ys[-1]) + 1)
    c = slice(int(xs[0]), int(xs[-1]) + 1)
    o, p, mm = out[:, :, r, c], placed.expand(B, 3, oh, ow)[:, :, r, c], m[:, :, r, c]
    if alpha is not None:
        # inside the mask: lerp(original, generated, alpha); outside: exactly the original
        p = torch.lerp(o, p, alpha[:, :, r, c].to(orig.dtype))
    o.copy_(torch.where(mm > 0.5, p, o))
    return out
