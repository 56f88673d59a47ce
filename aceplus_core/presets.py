"""Task presets: the preprocessing pasted inside the edit mask, and the default repainting scale.

As in the release, the preprocessed image replaces the original ONLY inside the mask
(``Image.composite(new, orig, mask)`` there, ``where(mask > 0.5, new, orig)`` here), and every
preset except "repainting" keeps the pasted content visible to the model (repainting_scale 0).
Nothing here downloads anything: model-based annotators (depth, contour) are run by other nodes
and come in through the "control" preset.
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .canny import canny
from .tensors import binarize_mask, broadcast_batch, check_image, check_mask, resize_image

logger = logging.getLogger(__name__)

TASK_PRESETS = ("repainting", "no_preprocess", "recolorizing", "mosaic", "canny", "control")
DEFAULT_REPAINTING_SCALE = {
    "repainting": 1.0, "no_preprocess": 0.0, "recolorizing": 0.0,
    "mosaic": 0.0, "canny": 0.0, "control": 0.0,
}
# ITU-R BT.601 luma. (The release calls cv2's BGR2GRAY on an RGB array, i.e. swaps the R and B
# weights; we use the standard weights.)
LUMA_601 = (0.299, 0.587, 0.114)


def grayscale(image: torch.Tensor) -> torch.Tensor:
    """B, 3, H, W -> B, 3, H, W with ``Y = 0.299 R + 0.587 G + 0.114 B`` in all three channels."""
    w = torch.tensor(LUMA_601, dtype=image.dtype, device=image.device).view(1, 3, 1, 1)
    return (image * w).sum(1, keepdim=True).expand(-1, 3, -1, -1)


def mosaic(image: torch.Tensor, block: int = 64) -> torch.Tensor:
    """Pixelate: average down to ``(H // block, W // block)`` cells, nearest back up to H, W.

    The release downsizes by ``block`` with cv2 INTER_CUBIC and upsizes with INTER_NEAREST; we take
    the block mean (area) instead of a cubic point sample: same grid, less aliasing.
    """
    if block < 1:
        raise ValueError(f"mosaic_size must be >= 1 px, got {block}.")
    H, W = image.shape[-2:]
    small = F.adaptive_avg_pool2d(image, (max(1, H // block), max(1, W // block)))
    return F.interpolate(small, size=(H, W), mode="nearest")


def apply_preset(image: torch.Tensor, mask: Optional[torch.Tensor], preset: str, *,
                 control_image: Optional[torch.Tensor] = None, mosaic_size: int = 64,
                 canny_low: float = 100.0, canny_high: float = 200.0,
                 canny_sigma: float = 0.0) -> Tuple[torch.Tensor, float]:
    """Return (image with the preset pasted inside the mask, default repainting_scale).

    image B, 3, H, W in [0, 1]; mask 1|B, 1, H, W, binarised at > 0.5 with the same rule as
    ``build_canvas`` (None or all-zero = the whole image); control_image (for "control")
    1|B, 3, h, w, resized to H, W. The input is never modified.
    """
    if preset not in TASK_PRESETS:
        raise ValueError(f"Unknown task preset {preset!r}; use one of {TASK_PRESETS}.")
    image = check_image(image, "image")
    if mask is None:
        mask = torch.ones((1, 1, *image.shape[-2:]), device=image.device)
    mask = binarize_mask(check_mask(mask, "mask"))
    if tuple(mask.shape[-2:]) != tuple(image.shape[-2:]):
        raise ValueError(
            f"The mask is {tuple(mask.shape[-2:])} (H, W) but the image is {tuple(image.shape[-2:])}; "
            "resize the mask to the image."
        )
    mask = broadcast_batch(mask, image.shape[0], "mask")
    scale = DEFAULT_REPAINTING_SCALE[preset]
    if preset in ("repainting", "no_preprocess"):
        return image, scale

    if preset == "recolorizing":
        new = grayscale(image)
    elif preset == "mosaic":
        new = mosaic(image, int(mosaic_size))
    elif preset == "canny":
        new = canny(image, canny_low, canny_high, sigma=canny_sigma).expand(-1, 3, -1, -1)
    else:  # control
        if control_image is None:
            raise ValueError(
                "The 'control' preset needs a control image (e.g. a depth or contour map from another "
                "node), but none was given. Connect control_image or pick another preset."
            )
        ctrl = check_image(control_image, "control_image")
        ctrl = broadcast_batch(ctrl, image.shape[0], "control_image")
        new = resize_image(ctrl, tuple(image.shape[-2:]), "area")
    return torch.where(mask > 0.5, new.to(image.dtype), image), scale
