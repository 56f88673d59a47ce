"""Build the LCU++ condition canvas: ``[ref_0 | ... | ref_n | edit]`` plus its mask and layout.

This is the single canvas implementation used by the ComfyUI nodes and by the trainer, so what
is trained is exactly what is sampled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

from .layout import Box, CanvasLayout
from .presets import DEFAULT_REPAINTING_SCALE, apply_preset
from .spec import ASPECT_MODES, DEFAULT_SIZE, REFERENCE_FITS, CanvasSpec  # noqa: F401 (re-exported)
from .stitch import stitch_official, stitch_target_first
from .tensors import (binarize_mask, broadcast_batch, center_crop_box, check_image, check_mask)

logger = logging.getLogger(__name__)

NO_PREPROCESS = ("repainting", "no_preprocess")  # presets that leave the image as it is


@dataclass(frozen=True)
class Canvas:
    image: torch.Tensor             # B, 3, H, W in [0, 1]: condition canvas (masked area blanked)
    mask: torch.Tensor              # B, 1, H, W in {0, 1}: 1 where to generate, 0 over references
    target: Optional[torch.Tensor]  # B, 3, H, W: un-blanked canvas [refs | edit or target image]
    layout: CanvasLayout


def validate_references(references: Optional[Sequence[torch.Tensor]], *, require: bool = False,
                        batch: Optional[int] = None) -> Tuple[torch.Tensor, ...]:
    """Check a list of reference images (each 1|B, 3, h, w) and return them as float32.

    ``require=True`` raises when the list is empty (reference generation/editing tasks).
    """
    if references is None:
        references = ()
    if isinstance(references, torch.Tensor):
        references = (references,)
    refs = tuple(check_image(r, f"reference {i}") for i, r in enumerate(references))
    if require and not refs:
        raise ValueError(
            "This task needs at least one reference image, but the reference list is empty (0 given). "
            "Connect a reference image, or switch to a task without references."
        )
    if batch is not None:
        refs = tuple(broadcast_batch(r, batch, f"reference {i}") for i, r in enumerate(refs))
    return refs


def _check_size(size: object) -> Tuple[int, int]:
    ok = (isinstance(size, (tuple, list)) and len(size) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in size))
    if not ok or min(size) <= 0:  # type: ignore[arg-type]
        raise ValueError(
            f"size must be two positive integers (height, width), got {size!r}; e.g. size=(1024, 1024)."
        )
    return int(size[0]), int(size[1])  # type: ignore[index]


def _aspect(image_hw: Tuple[int, int], what: str, max_aspect: float, aspect_mode: str
            ) -> Optional[Tuple[int, int, int, int]]:
    """None when within ``max_aspect``; the crop (top, left, h, w) in crop mode; else ValueError."""
    h, w = image_hw
    crop = center_crop_box(h, w, max_aspect)
    if crop is not None and aspect_mode == "error":
        ratio = max(h / w, w / h)
        raise ValueError(
            f"The {what} is {h}x{w} (aspect ratio {ratio:.2f}:1), beyond max_aspect={max_aspect:g}:1. "
            f"Pass aspect_mode='crop' to centre-crop it to {max_aspect:g}:1, or crop the image yourself."
        )
    return crop


def _crop(t: Optional[torch.Tensor], crop: Optional[Tuple[int, int, int, int]]) -> Optional[torch.Tensor]:
    if t is None or crop is None:
        return t
    top, left, h, w = crop
    return t[..., top:top + h, left:left + w]


def build_canvas(
    edit_image: Optional[torch.Tensor],
    edit_mask: Optional[torch.Tensor],
    references: Sequence[torch.Tensor] = (),
    spec: CanvasSpec = CanvasSpec(),
    *,
    target_image: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    require_reference: bool = False,
    with_target: Optional[bool] = None,
) -> Canvas:
    """Stitch references (left, in order) and the edit image (right) into one canvas, as ``spec`` says.

    edit_image: B, 3, H, W in [0, 1], or None for pure reference generation (mid-grey image of
        ``spec.size``, default the target image's size or 1024x1024, fully masked).
    edit_mask: B|1, 1, H, W (None: edit everything). Binarised at > 0.5; an all-zero mask means
        "edit everything" (release behaviour).
    references: each 1|B, 3, h, w, any size; 0..N of them.
    spec: policy, budget, reference fit and keep_pixels_rate, aspect handling, crop mode, training
        height jitter (drawn from ``generator``), repainting scale and size (see ``CanvasSpec``).
    target_image: training ground truth (same size as edit_image) for ``Canvas.target``.
    require_reference: raise a ValueError when ``references`` is empty.
    with_target: build ``Canvas.target`` (the un-blanked canvas, the trainer's x0). Default (None):
        only when ``target_image`` is given, since inference does not need it (saves a canvas copy).
    """
    if not isinstance(spec, CanvasSpec):
        raise TypeError(f"spec must be an aceplus_core.CanvasSpec, got {type(spec).__name__}.")
    size, max_aspect, aspect_mode = spec.size, spec.max_aspect, spec.aspect_mode

    # ---- images
    if edit_image is not None:
        edit = check_image(edit_image, "edit_image")
        batch, orig_hw = edit.shape[0], (int(edit.shape[2]), int(edit.shape[3]))
        if size is not None:
            _check_size(size)
    else:
        edit = None
        if size is None and target_image is not None:
            size = tuple(target_image.shape[-2:])  # type: ignore[assignment]
        orig_hw = _check_size(DEFAULT_SIZE if size is None else size)
        batch = 1
    tgt = None if target_image is None else check_image(target_image, "target_image")
    if tgt is not None:
        if edit is None:
            batch = tgt.shape[0]
        if edit is not None and tuple(tgt.shape[-2:]) != orig_hw:
            raise ValueError(
                f"target_image is {tuple(tgt.shape[-2:])} but edit_image is {orig_hw} (H, W); "
                "they must be the same size (resize one of them)."
            )
    refs = validate_references(references, require=require_reference)
    if edit is None and refs:
        batch = max([batch] + [r.shape[0] for r in refs])
    refs = tuple(broadcast_batch(r, batch, f"reference {i}") for i, r in enumerate(refs))
    if tgt is not None:
        tgt = broadcast_batch(tgt, batch, "target_image")

    # ---- mask (binarised on the ORIGINAL image, the same rule crop_back applies)
    if edit_mask is None or edit is None:
        if edit is None and edit_mask is not None and not bool((edit_mask > 0.5).all()):
            logger.warning("edit_mask is ignored without an edit image: reference generation masks everything.")
        mask = torch.ones((1, 1, *orig_hw), device=(edit if edit is not None else refs[0] if refs else
                                                    torch.empty(0)).device)
    else:
        mask = check_mask(edit_mask, "edit_mask")
        if tuple(mask.shape[-2:]) != orig_hw:
            raise ValueError(
                f"The mask is {tuple(mask.shape[-2:])} (H, W) but the edit image is {orig_hw}; they must "
                "match. Resize the mask to the image (e.g. with a mask resize / ImageScale node)."
            )
        mask = binarize_mask(broadcast_batch(mask, batch, "edit_mask") if mask.shape[0] != 1 else mask)

    # ---- aspect ratio (image, mask and target cropped together; references each on their own)
    source_crop = Box(0, 0, orig_hw[1], orig_hw[0])
    crop = _aspect(orig_hw, "edit image", max_aspect, aspect_mode)
    if crop is not None:
        top, left, ch, cw = crop
        logger.info("edit image %dx%d centre-cropped to %dx%d (max_aspect %g)", *orig_hw, ch, cw, max_aspect)
        edit, mask, tgt = _crop(edit, crop), _crop(mask, crop), _crop(tgt, crop)
        source_crop = Box(left, top, cw, ch)
    refs = tuple(_crop(r, _aspect(tuple(r.shape[-2:]), f"reference {i}", max_aspect, aspect_mode))
                 for i, r in enumerate(refs))
    edit_hw = (source_crop.h, source_crop.w)

    if with_target is None:
        with_target = tgt is not None
    common = dict(edit_hw=edit_hw, batch=batch, target_image=tgt, with_target=with_target, generator=generator)
    if spec.policy == "official":
        st = stitch_official(edit, mask, refs, spec, **common)
    else:
        st = stitch_target_first(edit, mask, refs, spec, **common)

    layout = CanvasLayout(
        canvas_h=int(st.image.shape[2]), canvas_w=int(st.image.shape[3]), target_box=st.target_box,
        reference_boxes=st.reference_boxes, reference_content_boxes=st.reference_content_boxes,
        original_h=orig_hw[0], original_w=orig_hw[1], source_crop=source_crop, policy=spec.policy,
        crop_mode=spec.crop_mode, release_slice_w=st.release_slice_w,
    )
    return Canvas(st.image, st.mask, st.target, layout)


@dataclass(frozen=True)
class TaskCanvas:
    canvas: Canvas
    mask: Optional[torch.Tensor]  # B|1, 1, H, W: the edit mask used (None = edit everything)
    repainting_scale: float       # the scale the canvas was blanked with


def task_canvas(edit_image: Optional[torch.Tensor], edit_mask: Optional[torch.Tensor],
                references: Sequence[torch.Tensor], spec: CanvasSpec, task: str = "repainting", *,
                control_image: Optional[torch.Tensor] = None, target_image: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None, with_target: Optional[bool] = None) -> TaskCanvas:
    """The canvas of one task, the one function the ACE++ Conditioning node and the trainer's
    caching pass both call: the task preset pasted inside the mask (``apply_preset``), then
    ``build_canvas`` with ``spec``.

    ``spec.repainting_scale`` None = the preset's default (repainting 1, every other preset 0).
    A mask with no pixel above 0.5 means "edit everything" (the release rule; LoadImage gives a
    64x64 zero mask for an image without alpha), whatever its size.
    """
    image = None if edit_image is None else check_image(edit_image, "edit_image")
    mask = None if edit_mask is None else check_mask(edit_mask, "edit_mask")
    if mask is not None and not bool((mask > 0.5).any()):
        logger.info("ACE++: the mask is empty (%s); editing the whole image.", tuple(mask.shape[-2:]))
        mask = None
    if image is not None and mask is not None and tuple(mask.shape[-2:]) != tuple(image.shape[-2:]):
        raise ValueError(
            f"The mask is {tuple(mask.shape[-2:])} (H, W) but the edit image is "
            f"{tuple(image.shape[-2:])}; they must be the same size. Paint the mask on this image, or "
            "resize the mask (e.g. with an image-resize node on a mask converted to an image)."
        )
    if task not in DEFAULT_REPAINTING_SCALE:
        raise ValueError(f"Unknown task preset {task!r}; use one of {tuple(DEFAULT_REPAINTING_SCALE)}.")
    prepared = image
    if image is not None and task not in NO_PREPROCESS:  # nothing to paste: skip the full-size mask pass
        prepared, _ = apply_preset(image, mask, task, control_image=control_image)
    elif image is None and task != "repainting":
        logger.warning("ACE++: task %r needs an edit image; without one the canvas is generated from scratch.",
                       task)
    scale = DEFAULT_REPAINTING_SCALE[task] if spec.repainting_scale is None else float(spec.repainting_scale)
    canvas = build_canvas(prepared, mask, references, spec.replace(repainting_scale=scale),
                          target_image=target_image, generator=generator, with_target=with_target)
    return TaskCanvas(canvas, mask, scale)
