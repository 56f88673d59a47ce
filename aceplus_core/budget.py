"""Token budget: integer size planning for the two canvas policies (no tensors here).

FLUX sees one token per 16x16 canvas pixels (VAE /8, then 2x2 patches), so a canvas of
H x W pixels costs ``(H // 16) * (W // 16)`` tokens and every size is a multiple of 16.

Two policies:

``official`` (release parity). The released processors stitch ``[reference | edit]`` at the edit
image's own resolution, then scale the WHOLE canvas by one factor
``scale = min(1, sqrt(max_tokens / ((H / 16) * (W / 16))))`` and floor each size to 16:
``H' = int(H * scale) // 16 * 16``, ``W' = int(W * scale) // 16 * 16`` and the reference strip
width ``slice_w' = int(slice_w * scale) // 16 * 16`` (only used to crop the output). Adding a
reference therefore shrinks the edit region.

``target_first`` (ours). The target keeps its own resolution up to ``target_tokens`` and the
references get what is left of ``max_tokens``; they shrink (one common factor) before the target
does. The target only shrinks when even one 16-px column per reference would not fit beside it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

PATCH = 16           # canvas pixels per token side
PAD_KEEP_RATE = 0.8  # release "keep_pixels_rate" default: pad-fit references are at most 0.8 x height


def floor16(v: float) -> int:
    return int(v) // PATCH * PATCH


def ceil16(v: float) -> int:
    return -(-int(math.ceil(v)) // PATCH) * PATCH


def tokens_of(h: int, w: int) -> int:
    return (h // PATCH) * (w // PATCH)


@dataclass(frozen=True)
class RefCell:
    """One reference in the canvas: its cell width and the content placed inside it."""

    cell_w: int
    content_h: int
    content_w: int
    top: int   # content offset inside the cell
    left: int


# --------------------------------------------------------------------------------------------
# official


@dataclass(frozen=True)
class OfficialPlan:
    full_h: int                                # stitched canvas before the budget resize
    full_w: int
    ref_sizes: Tuple[Tuple[int, int], ...]     # fitted (h, w) of each reference content at full res
    ref_tops: Tuple[int, ...]                  # vertical pad offset of each reference at full res
    slice_w_full: int                          # sum of reference widths at full res
    canvas_h: int
    canvas_w: int
    release_slice_w: int                       # int(slice_w_full * scale) // 16 * 16


def pad_height(ref_h: int, height: int, keep_pixels_rate: float) -> int:
    """The pad fit's content height (the released FFT processor, rate r = ``keep_pixels_rate``):
    ``int(height * r)`` when ``ref_h >= r * height``, else ``ref_h`` (never upscaled).

    At least 1 px: with r = 0 the release asks for a 0-px reference and crashes.
    """
    if ref_h >= keep_pixels_rate * height:
        return max(1, int(height * keep_pixels_rate))
    return ref_h


def official_reference_size(ref_hw: Tuple[int, int], edit_h: int, fit: str,
                            content_h: Optional[int] = None,
                            keep_pixels_rate: float = PAD_KEEP_RATE) -> Tuple[int, int]:
    """The release's reference fit at the edit height (before the budget).

    resize: ``h = edit_h``, ``w = int(ref_w * (edit_h / ref_h))``.
    pad:    ``h = pad_height(ref_h, edit_h, r)``, ``w = int(ref_w * (h / ref_h))`` (unchanged when the
            reference is shorter than ``r * edit_h``); then padded to ``edit_h``.
    ``content_h`` (training jitter) forces the content height, as the release's dataset does.
    """
    rh, rw = ref_hw
    if content_h is not None:
        h = int(content_h)
        return h, max(1, int(rw * (h / rh)))
    if fit == "resize":
        return edit_h, max(1, int(rw * (edit_h / rh)))
    h = pad_height(rh, edit_h, keep_pixels_rate)
    if h == rh:
        return rh, rw
    return h, max(1, int(rw * (h / rh)))


def plan_official(edit_hw: Tuple[int, int], ref_hws: Sequence[Tuple[int, int]], *, fit: str,
                  max_tokens: int, content_heights: Optional[Sequence[int]] = None,
                  keep_pixels_rate: float = PAD_KEEP_RATE) -> OfficialPlan:
    eh, ew = edit_hw
    sizes = tuple(
        official_reference_size(hw, eh, fit, None if content_heights is None else content_heights[i],
                                keep_pixels_rate)
        for i, hw in enumerate(ref_hws)
    )
    tops = tuple((eh - h) // 2 for h, _ in sizes)  # release: T.Pad top = delta_h // 2
    slice_w = sum(w for _, w in sizes)
    full_h, full_w = eh, slice_w + ew
    scale = min(1.0, math.sqrt(max_tokens / ((full_h / PATCH) * (full_w / PATCH))))
    canvas_h, canvas_w = floor16(full_h * scale), floor16(full_w * scale)
    if canvas_h < PATCH or canvas_w < PATCH:
        raise ValueError(
            f"The canvas {full_h}x{full_w} scales to {canvas_h}x{canvas_w} under max_tokens={max_tokens} "
            f"with the official policy; it must be at least 16x16. Use a larger image or max_tokens."
        )
    return OfficialPlan(full_h, full_w, sizes, tops, slice_w, canvas_h, canvas_w,
                        floor16(slice_w * scale))


# --------------------------------------------------------------------------------------------
# target_first


def plan_target_size(edit_hw: Tuple[int, int], n_refs: int, *, max_tokens: int,
                     target_tokens: int) -> Tuple[int, int]:
    """Target region size (multiples of 16) under ``target_tokens``, leaving >= 16 px per reference.

    ``s = min(1, sqrt(min(target_tokens, max_tokens) / ((h/16) * (w/16))))``, sizes floored to 16.
    If ``(H/16) * (W/16 + n_refs) > max_tokens`` the target shrinks to the largest ``s`` with
    ``h w s^2 / 256 + n_refs h s / 16 <= max_tokens`` (the positive root of that quadratic).
    """
    eh, ew = edit_hw
    if max_tokens < n_refs + 1:
        raise ValueError(
            f"max_tokens={max_tokens} cannot hold the target plus {n_refs} reference(s) "
            f"(at least {n_refs + 1} tokens); raise max_tokens."
        )
    budget = min(target_tokens, max_tokens)
    s = min(1.0, math.sqrt(budget / ((eh / PATCH) * (ew / PATCH))))

    def sizes(scale: float) -> Tuple[int, int]:
        return max(PATCH, floor16(eh * scale)), max(PATCH, floor16(ew * scale))

    th, tw = sizes(s)
    if n_refs and (th // PATCH) * (tw // PATCH + n_refs) > max_tokens:
        a, b, c = eh * ew / PATCH ** 2, n_refs * eh / PATCH, -float(max_tokens)
        s = min(s, (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a))
        th, tw = sizes(s)
        while (th // PATCH) * (tw // PATCH + n_refs) > max_tokens and s > 1e-6:
            s *= 0.99
            th, tw = sizes(s)
        logger.info("target_first: target shrunk to %dx%d so that %d reference(s) fit max_tokens=%d",
                    th, tw, n_refs, max_tokens)
    if (th // PATCH) * (tw // PATCH + n_refs) > max_tokens:
        raise ValueError(
            f"The {eh}x{ew} edit image with {n_refs} reference(s) does not fit max_tokens={max_tokens} "
            f"even at 16 px; raise max_tokens or crop the image closer to square."
        )
    return th, tw


def _ideal_reference(ref_hw: Tuple[int, int], canvas_h: int, fit: str,
                     content_h: Optional[int], keep_pixels_rate: float) -> Tuple[float, float]:
    """Fitted content size (h, w) at the canvas height, before the width budget (float w)."""
    rh, rw = ref_hw
    if content_h is not None:
        h = float(content_h)
    elif fit == "resize":
        h = float(canvas_h)
    else:  # pad: shrink only references taller than keep_pixels_rate x height; never upscale
        h = float(pad_height(rh, canvas_h, keep_pixels_rate))
    return h, rw * h / rh


def _cells(ideal: Sequence[Tuple[float, float]], f: float, canvas_h: int,
           stretch: Sequence[bool]) -> Tuple[RefCell, ...]:
    out = []
    for (h, w), st in zip(ideal, stretch):
        ch = min(canvas_h, max(1, int(h * f)))
        if st:
            # resize fit: cell width = content width rounded to the nearest 16 (<= 8 px stretch)
            cw = max(PATCH, floor16(w * f + PATCH / 2))
            cell = cw
        else:
            # pad fit: keep the content's pixels, pad the cell up to the next multiple of 16
            cw = max(1, int(w * f))
            cell = max(PATCH, ceil16(cw))
        out.append(RefCell(cell, ch, cw, (canvas_h - ch) // 2, (cell - cw) // 2))
    return tuple(out)


def plan_reference_cells(ref_hws: Sequence[Tuple[int, int]], canvas_h: int, width_budget: int, *,
                         fit: str, content_heights: Optional[Sequence[int]] = None,
                         keep_pixels_rate: float = PAD_KEEP_RATE) -> Tuple[RefCell, ...]:
    """Fit each reference to ``canvas_h`` and shrink all by one factor to fit ``width_budget`` px.

    Shrunk references keep full-height cells (padded grey) so the canvas stays one row.
    """
    if not ref_hws:
        return ()
    ideal = [_ideal_reference(hw, canvas_h, fit, None if content_heights is None else content_heights[i],
                              keep_pixels_rate) for i, hw in enumerate(ref_hws)]
    # A resize-fit reference fills its cell (stretched <= 8 px) unless the budget shrinks it.
    stretch = [fit == "resize" and content_heights is None] * len(ideal)
    cells = _cells(ideal, 1.0, canvas_h, stretch)
    if sum(c.cell_w for c in cells) <= width_budget:
        return cells
    f = min(1.0, width_budget / sum(w for _, w in ideal))
    stretch = [False] * len(ideal)  # shrunk content is padded, never stretched
    for _ in range(600):
        cells = _cells(ideal, f, canvas_h, stretch)
        if sum(c.cell_w for c in cells) <= width_budget:
            break
        f *= 0.985
    else:
        cells = _cells(ideal, 0.0, canvas_h, stretch)
    if f < 0.5:
        logger.warning(
            "target_first: references shrunk to %.0f%% of their fitted size to fit the token budget; "
            "raise max_tokens or lower target_tokens for more reference detail.", 100 * f)
    return cells
