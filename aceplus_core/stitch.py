"""Pixel stitching of the LCU++ canvas for both token policies.

Inputs arrive validated (see ``canvas.build_canvas``): float32 images B, 3, H, W, hard masks
B, 1, H, W in {0, 1}, references with batch 1 or B. Outputs are freshly allocated tensors.

Repainting, in [0, 1] terms: ``canvas = 0.5 + (edit - 0.5) * (1 - mask * repainting_scale)``,
which is the release's ``edit * (1 - mask * s)`` on images in [-1, 1] (0 there is mid grey).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .budget import (PATCH, plan_official, plan_reference_cells, plan_target_size)
from .layout import Box
from .spec import CanvasSpec
from .tensors import MID_GREY, resize_image, resize_mask


@dataclass
class Stitched:
    image: torch.Tensor             # B, 3, H, W  condition canvas (masked area blanked)
    mask: torch.Tensor              # B, 1, H, W  1 = generate
    target: Optional[torch.Tensor]  # B, 3, H, W  un-blanked canvas
    target_box: Box
    reference_boxes: Tuple[Box, ...]
    reference_content_boxes: Tuple[Box, ...]
    release_slice_w: Optional[int]


def blank_(region: torch.Tensor, mask: torch.Tensor, repainting_scale: float) -> torch.Tensor:
    """In place on ``region`` (a canvas slice we own): ``0.5 + (x - 0.5) * (1 - m * s)``.

    ``mask`` is hard (0/1), so this is ``where(m, x * (1 - s) + 0.5 * s, x)``: pixels outside the
    mask are left bit-exact, and with s = 1 the masked ones become exactly 0.5.
    """
    if repainting_scale == 0.0:
        return region
    hard = (mask > 0.5).expand_as(region)
    if repainting_scale == 1.0:
        return region.masked_fill_(hard, MID_GREY)
    mixed = region * (1.0 - repainting_scale) + MID_GREY * repainting_scale
    return region.copy_(torch.where(hard, mixed, region))


def _jitter_heights(n: int, canvas_h: int, jitter: Optional[Tuple[float, float]],
                    generator: Optional[torch.Generator]) -> Optional[list]:
    """Training: each reference's content height ~ U{int(lo*H), ..., int(hi*H)} (release: H/3..H)."""
    if jitter is None or n == 0:
        return None
    lo, hi = max(1, int(jitter[0] * canvas_h)), max(1, int(jitter[1] * canvas_h))
    draws = torch.randint(lo, hi + 1, (n,), generator=generator)
    return [int(v) for v in draws]


# --------------------------------------------------------------------------------------------
# target_first


def stitch_target_first(edit: Optional[torch.Tensor], mask: torch.Tensor, refs: Sequence[torch.Tensor],
                        spec: CanvasSpec, *, edit_hw: Tuple[int, int], batch: int,
                        target_image: Optional[torch.Tensor], with_target: bool,
                        generator: Optional[torch.Generator]) -> Stitched:
    max_tokens, target_tokens, jitter = spec.max_tokens, spec.target_tokens, spec.reference_height_jitter
    th, tw = plan_target_size(edit_hw, len(refs), max_tokens=max_tokens, target_tokens=target_tokens)
    max_cols = max_tokens // (th // PATCH)            # 16-px columns the budget allows at this height
    width_budget = (max_cols - tw // PATCH) * PATCH   # pixels left for the reference strip
    heights = _jitter_heights(len(refs), th, jitter, generator)
    cells = plan_reference_cells([tuple(r.shape[-2:]) for r in refs], th, width_budget,
                                 fit=spec.reference_fit, content_heights=heights,
                                 keep_pixels_rate=spec.keep_pixels_rate)
    strip_w = sum(c.cell_w for c in cells)
    canvas_w = strip_w + tw

    device = mask.device
    # Reference strip, built once (batch 1 when every reference is shared) and copied into both
    # the condition canvas and the target canvas.
    ref_batch = max([r.shape[0] for r in refs], default=1)
    strip = torch.full((ref_batch, 3, th, strip_w), MID_GREY, device=device)   # Bs, 3, H, Ws
    ref_boxes, content_boxes = [], []
    x = 0
    for ref, cell in zip(refs, cells):
        content = resize_image(ref, (cell.content_h, cell.content_w), "area")  # 1|B, 3, ch, cw
        y0, x0 = cell.top, x + cell.left
        strip[:, :, y0:y0 + cell.content_h, x0:x0 + cell.content_w] = content
        ref_boxes.append(Box(x, 0, cell.cell_w, th))
        content_boxes.append(Box(x0, y0, cell.content_w, cell.content_h))
        x += cell.cell_w

    # Target region: antialiased resize for the image, nearest-exact for the mask.
    m = resize_mask(mask, (th, tw))                                              # 1|B, 1, th, tw
    if edit is None:
        region = torch.full((1, 3, th, tw), MID_GREY, device=device)
    else:
        region = resize_image(edit, (th, tw), "area")                          # B, 3, th, tw

    def assemble(right: torch.Tensor) -> torch.Tensor:
        out = torch.empty((batch, 3, th, canvas_w), device=device)              # B, 3, H, W
        out[:, :, :, :strip_w] = strip
        out[:, :, :, strip_w:] = right
        return out

    target = None
    if with_target:
        target = assemble(region if target_image is None else resize_image(target_image, (th, tw), "area"))
    image = assemble(region)
    blank_(image[:, :, :, strip_w:], m, spec.scale)
    canvas_mask = torch.zeros((batch, 1, th, canvas_w), device=device)          # B, 1, H, W
    canvas_mask[:, :, :, strip_w:] = m
    return Stitched(image, canvas_mask, target, Box(strip_w, 0, tw, th), tuple(ref_boxes),
                    tuple(content_boxes), None)


# --------------------------------------------------------------------------------------------
# official


def _nearest_source_index(n_in: int, n_out: int, device: torch.device) -> torch.Tensor:
    """Source index of each output row/col under nearest-exact resizing, read from torch itself
    (an index ramp through F.interpolate), so the layout matches the resized pixels exactly."""
    ramp = torch.arange(n_in, dtype=torch.float32, device=device).view(1, 1, 1, n_in)
    return F.interpolate(ramp, size=(1, n_out), mode="nearest-exact").view(n_out)


def stitch_official(edit: Optional[torch.Tensor], mask: torch.Tensor, refs: Sequence[torch.Tensor],
                    spec: CanvasSpec, *, edit_hw: Tuple[int, int], batch: int,
                    target_image: Optional[torch.Tensor], with_target: bool,
                    generator: Optional[torch.Generator]) -> Stitched:
    """Release parity: stitch at the edit resolution, then nearest-exact resize the whole canvas.

    Nearest-exact resizing is a pure gather (output pixel (i, j) = input (rows[i], cols[j])), so
    instead of materialising the full-resolution canvas we gather each part straight into the
    small one, with the index maps read from torch's own kernel: bit-identical to the release's
    resize, without the large intermediate. Blanking after the gather equals blanking before it.

    The layout's boxes are where the pixels really land after that resize, not the release's
    ``slice_w`` (kept as ``release_slice_w``), which is floored to 16 on its own and can miss the
    real boundary by up to 15 px.
    """
    eh, ew = edit_hw
    heights = _jitter_heights(len(refs), eh, spec.reference_height_jitter, generator)
    plan = plan_official(edit_hw, [tuple(r.shape[-2:]) for r in refs], fit=spec.reference_fit,
                         max_tokens=spec.max_tokens, content_heights=heights,
                         keep_pixels_rate=spec.keep_pixels_rate)
    device = mask.device
    H, W = plan.canvas_h, plan.canvas_w
    S = plan.slice_w_full
    rows = _nearest_source_index(plan.full_h, H, device).long()   # H   source row of each output row
    cols = _nearest_source_index(plan.full_w, W, device).long()   # W   source col of each output col

    def first_col(a: int) -> int:  # first output column whose source column is >= a (cols sorted)
        return int((cols < a).sum())

    def first_row(a: int) -> int:
        return int((rows < a).sum())

    xs = first_col(S)
    right_rows, right_cols = rows, cols[xs:] - S

    def gather(img: torch.Tensor, r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # out[..., i, j] = img[..., r[i], c[j]]; rows by index_select, columns by gather (several
        # times faster than index_select on the last dim)
        rows_first = img.index_select(2, r)                                     # b, C, h, W_in
        idx = c.view(1, 1, 1, -1).expand(*rows_first.shape[:3], c.numel())
        return rows_first.gather(3, idx)

    strip = torch.full((max([r.shape[0] for r in refs], default=1), 3, H, xs), MID_GREY, device=device)
    ref_boxes, content_boxes = [], []
    a = 0
    for ref, (h, w), top in zip(refs, plan.ref_sizes, plan.ref_tops):
        x0, x1 = first_col(a), first_col(a + w)
        y0, y1 = first_row(top), first_row(top + h)
        if x1 > x0 and y1 > y0:
            # release: antialiased bilinear fit of the reference at full res, grey (0) padding
            fitted = resize_image(ref, (h, w), "bilinear")                     # 1|B, 3, h, w
            strip[:, :, y0:y1, x0:x1] = gather(fitted, rows[y0:y1] - top, cols[x0:x1] - a)
        ref_boxes.append(Box(x0, 0, x1 - x0, H))
        content_boxes.append(Box(x0, y0, x1 - x0, y1 - y0))
        a += w

    def assemble(right: Optional[torch.Tensor]) -> torch.Tensor:
        out = torch.empty((batch, 3, H, W), device=device)                     # B, 3, H, W
        out[:, :, :, :xs] = strip
        out[:, :, :, xs:] = MID_GREY if right is None else gather(right, right_rows, right_cols)
        return out

    canvas_mask = torch.zeros((batch, 1, H, W), device=device)                 # B, 1, H, W
    canvas_mask[:, :, :, xs:] = gather(mask, right_rows, right_cols)
    target = None
    if with_target:
        target = assemble(edit if target_image is None else target_image)
    image = assemble(edit)
    blank_(image[:, :, :, xs:], canvas_mask[:, :, :, xs:], spec.scale)
    return Stitched(image, canvas_mask, target, Box(xs, 0, W - xs, H), tuple(ref_boxes),
                    tuple(content_boxes), plan.release_slice_w)
