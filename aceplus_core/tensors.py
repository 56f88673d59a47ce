"""Tensor layout helpers: the one place where ComfyUI's BHWC / mask shapes meet the core's BCHW.

Core conventions:
- images: float ``B, 3, H, W`` in [0, 1]
- masks:  float ``B, 1, H, W`` in [0, 1] (binarised at > 0.5 where a hard mask is needed)

Nothing here modifies its input in place; callers may hand in tensors that ComfyUI caches.
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

MID_GREY = 0.5  # 0 in the release's [-1, 1] space


def to_bchw(image_bhwc: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) or a single H, W, C image -> B, C, H, W (a view, no copy)."""
    if not isinstance(image_bhwc, torch.Tensor):
        raise ValueError(f"Expected an image tensor, got {type(image_bhwc).__name__}.")
    if image_bhwc.ndim == 3:
        image_bhwc = image_bhwc.unsqueeze(0)
    if image_bhwc.ndim != 4:
        raise ValueError(
            f"Expected an image of shape (B, H, W, C), got shape {tuple(image_bhwc.shape)}. "
            "Pass a ComfyUI IMAGE."
        )
    return image_bhwc.permute(0, 3, 1, 2)


def to_bhwc(image_bchw: torch.Tensor) -> torch.Tensor:
    """B, C, H, W -> ComfyUI IMAGE (B, H, W, C), contiguous (ComfyUI nodes expect that)."""
    if image_bchw.ndim != 4:
        raise ValueError(f"Expected an image of shape (B, C, H, W), got shape {tuple(image_bchw.shape)}.")
    return image_bchw.permute(0, 2, 3, 1).contiguous()


def mask_to_b1hw(mask: torch.Tensor) -> torch.Tensor:
    """Accept ComfyUI MASK shapes (H, W), (B, H, W), (B, 1, H, W) or (B, H, W, 1) -> B, 1, H, W.

    A 3-channel tensor is an IMAGE, not a MASK: refuse it rather than guess a channel.
    """
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"Expected a mask tensor, got {type(mask).__name__}.")
    shape = tuple(mask.shape)
    if mask.ndim == 2:
        return mask.reshape(1, 1, *shape)
    if mask.ndim == 3:
        return mask.unsqueeze(1)
    if mask.ndim == 4:
        if shape[1] == 1:
            return mask
        if shape[3] == 1:
            return mask.permute(0, 3, 1, 2)
        if shape[1] in (3, 4) or shape[3] in (3, 4):
            raise ValueError(
                f"The mask has {shape[3] if shape[3] in (3, 4) else shape[1]} channels (shape {shape}); "
                "a mask must be single-channel. Convert the image to a mask first, "
                "e.g. with ComfyUI's ImageToMask node (channel 'red')."
            )
    raise ValueError(
        f"Unsupported mask shape {shape}; expected (H, W), (B, H, W) or (B, 1, H, W)."
    )


def check_image(image: torch.Tensor, name: str) -> torch.Tensor:
    """Validate a core image (B, 3, H, W) and return it as float32 (no copy if already float32)."""
    if not isinstance(image, torch.Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(image).__name__}.")
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4:
        raise ValueError(f"{name} must have shape (B, 3, H, W), got {tuple(image.shape)}.")
    if image.shape[1] != 3:
        raise ValueError(
            f"{name} must have 3 channels (RGB), got {image.shape[1]} (shape {tuple(image.shape)}). "
            "Convert RGBA/greyscale images to RGB first (and pass BCHW: use to_bchw on a ComfyUI IMAGE)."
        )
    if image.shape[2] < 1 or image.shape[3] < 1:
        raise ValueError(f"{name} is empty: shape {tuple(image.shape)}.")
    if not image.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [0, 1], got dtype {image.dtype}.")
    return image.float()


def check_mask(mask: torch.Tensor, name: str) -> torch.Tensor:
    """Validate and normalise a mask to float32 B, 1, H, W."""
    mask = mask_to_b1hw(mask)
    if not mask.is_floating_point():
        mask = mask.float()
    return mask.float()


def binarize_mask(mask_b1hw: torch.Tensor, empty_means_all: bool = True) -> torch.Tensor:
    """Hard mask: 1 where mask > 0.5 (the release's > 128 of 255).

    With ``empty_means_all`` an all-zero mask (per sample) becomes all ones: the release
    treats "nothing masked" as "edit everything".
    """
    hard = (mask_b1hw > 0.5).float()
    if empty_means_all:
        empty = hard.flatten(1).amax(dim=1) == 0  # B
        if bool(empty.any()):
            hard = torch.where(empty.view(-1, 1, 1, 1), torch.ones_like(hard), hard)
    return hard


def broadcast_batch(t: torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """Batch 1 or ``batch`` -> ``batch`` (expand: a view, no copy)."""
    if t.shape[0] == batch:
        return t
    if t.shape[0] == 1:
        return t.expand(batch, *t.shape[1:])
    raise ValueError(
        f"{name} has batch size {t.shape[0]} but the edit image has batch size {batch}; "
        f"pass a batch of 1 (shared) or {batch} (one per image)."
    )


def resize_image(image: torch.Tensor, size: Tuple[int, int], mode: str = "area") -> torch.Tensor:
    """Resize B, C, H, W to ``size`` = (H, W).

    mode "area": antialiased bilinear (good for down- and upscaling alike); "bicubic":
    antialiased bicubic (crop-back: sharper when the target was budget-scaled);
    "nearest-exact": what the release uses for its budget resize; "bilinear": the release's
    reference resize (antialiased bilinear, the same kernel as "area" here).
    Returns the input itself when the size already matches (callers never write into it).
    """
    h, w = int(size[0]), int(size[1])
    if tuple(image.shape[-2:]) == (h, w):
        return image
    if mode == "nearest-exact":
        return F.interpolate(image, size=(h, w), mode="nearest-exact")
    if mode in ("area", "bilinear"):
        return F.interpolate(image, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    if mode == "bicubic":  # may overshoot [0, 1]: callers clamp
        return F.interpolate(image, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
    raise ValueError(f"Unknown resize mode {mode!r}; use 'area', 'bilinear', 'bicubic' or 'nearest-exact'.")


def resize_mask(mask: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Nearest-exact resize of a (hard) mask: stays binary."""
    return resize_image(mask, size, mode="nearest-exact")


def center_crop_box(h: int, w: int, max_aspect: float) -> Optional[Tuple[int, int, int, int]]:
    """The release's centre crop to ``max_aspect`` (torchvision CenterCrop rounding).

    Returns (top, left, crop_h, crop_w), or None when the aspect ratio is within the limit.
    Tall:  crop_h = int(max_aspect * w); wide: crop_w = int(max_aspect * h);
    offset = int(round((size - crop) / 2)).
    """
    if h / w > max_aspect:
        ch, cw = int(max_aspect * w), w
    elif w / h > max_aspect:
        ch, cw = h, int(max_aspect * h)
    else:
        return None
    top = int(round((h - ch) / 2.0))
    left = int(round((w - cw) / 2.0))
    return top, left, ch, cw
