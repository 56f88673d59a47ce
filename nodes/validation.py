"""What reaches the ACE++ nodes is checked before it runs, and refused in ComfyUI's words.

Queue time: each node's ``validate_inputs`` (the V3 hook, in ``comfy_api.v0_0_2`` on 0.3.75 and
0.33) calls ``hook``. ComfyUI 0.3.75 does not check V3 combo values when a prompt is queued (an
unknown ``sampler_name`` would run ComfyUI's first sampler), and no host refuses NaN (it passes
``val < min`` and ``val > max``). ComfyUI skips its own range and list checks for the inputs a
hook takes, so the hook does them all, from the node's schema, the same on both hosts: a combo
value not in its list, and a float that is not finite or out of range. ComfyUI repeats a hook's
message for every input the hook takes, so each message starts with the input it is about.

Run time: values that arrive through links (unknown when the prompt is queued) get the same checks
at the top of ``execute``, and the tensors are checked with messages in ComfyUI's terms: the
input's name as the node shows it, shapes as H x W x C, and a stock node that fixes it.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from comfy_api.v0_0_2 import io

from ..aceplus_core import mask_to_b1hw
from ..aceplus_core.image_files import MIN_SIDE

# The stock ComfyUI nodes the messages tell the user to add, by their display names (a server test checks that
# each exists on the host).
SPLIT_ALPHA, IMAGE_TO_MASK, MASK_TO_IMAGE = "Split Image with Alpha", "Convert Image to Mask", "Convert Mask to Image"
UPSCALE, VAE_DECODE = "Upscale Image", "VAE Decode"
STOCK_NODES = (SPLIT_ALPHA, IMAGE_TO_MASK, MASK_TO_IMAGE, UPSCALE, VAE_DECODE)

ABSENT = object()  # hook default: the input is not in the prompt (a linked input arrives as None)
LIST_SHOWN = 20    # ComfyUI's own limit: longer option lists are summarised by their length


def _options_text(options: list) -> str:
    return f"(list of length {len(options)})" if len(options) > LIST_SHOWN else str(list(options))


def check_value(spec: io.Input, value: Any) -> Optional[str]:
    """The problem with one widget value, in ComfyUI's words, or None."""
    name = spec.id
    if isinstance(spec, io.Combo.Input):
        options = list(spec.options or [])
        if value not in options:
            return f"Value not in list: {name}: '{value}' not in {_options_text(options)}"
        return None
    if isinstance(spec, (io.Float.Input, io.Int.Input)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name}: {value!r} is not a number"
        lo, hi = spec.min, spec.max
        if isinstance(value, float) and not math.isfinite(value):
            span = f" between {lo:g} and {hi:g}" if lo is not None and hi is not None else ""
            return f"{name}: {value} is not a finite number; set a number{span}"
        if lo is not None and value < lo:
            return f"Value {value} smaller than min of {lo}: {name}"
        if hi is not None and value > hi:
            return f"Value {value} bigger than max of {hi}: {name}"
    return None


def check_widgets(node: type[io.ComfyNode], values: dict[str, Any]) -> Optional[str]:
    """The first problem among ``values`` (input name -> value) of ``node``; None and ABSENT are skipped (a
    linked value is not known yet, an absent optional input takes its default)."""
    specs = {spec.id: spec for spec in node.define_schema().inputs}
    problems = [check_value(specs[name], value) for name, value in values.items()
                if value is not None and value is not ABSENT and name in specs]
    problems = [p for p in problems if p]
    return "; ".join(problems) if problems else None


def hook(node: type[io.ComfyNode], **values) -> bool | str:
    """``validate_inputs`` result: True, or the message ComfyUI shows on the node before anything runs."""
    return check_widgets(node, values) or True


def require_widgets(node: type[io.ComfyNode], **values) -> None:
    """The same checks at run time (values that came through links): ValueError naming the input."""
    problem = check_widgets(node, values)
    if problem:
        raise ValueError(problem)


# ---- tensors, in ComfyUI terms --------------------------------------------------------------------

def shape_text(image: torch.Tensor) -> str:
    """An IMAGE (B, H, W, C) as ``64x80x3`` (H x W x C); a batch as ``2 x 64x80x3``."""
    shape = [int(s) for s in image.shape]
    batch = shape.pop(0) if len(shape) == 4 else 1
    return ("" if batch == 1 else f"{batch} x ") + "x".join(map(str, shape))


def check_image(image: Optional[torch.Tensor], name: str, node: str) -> None:
    """An IMAGE input (B, H, W, C): 3 channels, every side at least MIN_SIDE px."""
    if image is None:
        return
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
        got = f"shape {tuple(image.shape)}" if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"{node}: {name} must be an IMAGE (batch x height x width x 3), got {got}. Connect the IMAGE "
                         "output of Load Image or of another image node.")
    h, w, c = (int(s) for s in image.shape[-3:])
    shape = shape_text(image)
    if c == 4:
        raise ValueError(f"{node}: {name} has 4 channels (RGBA, {shape}, H x W x C); ACE++ needs RGB. Put a "
                         f"'{SPLIT_ALPHA}' node in front of {name} (its IMAGE output is the RGB part; its MASK can "
                         "go to mask).")
    if c == 1:
        raise ValueError(f"{node}: {name} has 1 channel ({shape}, H x W x C); ACE++ needs RGB. Convert it with "
                         f"'{IMAGE_TO_MASK}' (channel red) and then '{MASK_TO_IMAGE}'.")
    if c != 3:
        raise ValueError(f"{node}: {name} has {c} channels ({shape}, H x W x C); ACE++ needs an RGB IMAGE "
                         "(3 channels), as Load Image gives.")
    if min(h, w) < MIN_SIDE:
        raise ValueError(f"{node}: {name} is {shape} (H x W x C); ACE++ needs at least {MIN_SIDE} px on each side. "
                         f"Use a larger picture, or enlarge it with '{UPSCALE}'.")


def check_same_batch(t: torch.Tensor, name: str, batch: int, of: str, node: str) -> None:
    """``t`` (batch first) must hold 1 item (shared) or ``batch`` (one per item of ``of``)."""
    n = int(t.shape[0])
    if n not in (1, batch):
        raise ValueError(f"{node}: {name} is a batch of {n} but {of} is a batch of {batch}; give {name} 1 image "
                         f"(shared by all) or {batch} (one each, in the same order).")


def check_conditioning_inputs(edit_image, mask, reference, more_references, control_image) -> None:
    """ACE++ Conditioning's tensors, before anything is encoded (a control map of another size is resized to the
    edit image by the preset, as documented)."""
    node = "ACE++ Conditioning"
    if mask is not None and edit_image is None:
        raise ValueError(mask_without_image_message())
    for name, image in (("edit_image", edit_image), ("reference", reference), ("control_image", control_image)):
        check_image(image, name, node)
    for i, ref in enumerate(more_references or ()):  # BCHW, appended by ACE++ Add Reference (checked there)
        if min(int(ref.shape[-2]), int(ref.shape[-1])) < MIN_SIDE:
            raise ValueError(f"{node}: more_references #{i + 1} is {int(ref.shape[-2])}x{int(ref.shape[-1])} px; "
                             f"ACE++ needs at least {MIN_SIDE} px on each side. Enlarge it with '{UPSCALE}'.")
    if edit_image is None:
        return
    batch = int(edit_image.shape[0]) if edit_image.ndim == 4 else 1
    h, w = (int(s) for s in edit_image.shape[-3:-1])
    if mask is not None:
        m = mask_to_b1hw(mask)  # B, 1, H, W (a 3- or 4-channel "mask" is refused there, naming ImageToMask)
        mh, mw = int(m.shape[-2]), int(m.shape[-1])
        empty = not bool((m > 0.5).any())  # LoadImage's 64x64 zero mask of a picture without alpha: edit all
        if (mh, mw) != (h, w) and not empty:
            raise ValueError(f"{node}: mask is {mh}x{mw} but edit_image is {shape_text(edit_image)} (H x W x C); they "
                             "must be the same size. Paint the mask on this image (right-click Load Image > Open in "
                             f"MaskEditor), or resize it: '{MASK_TO_IMAGE}' > '{UPSCALE}' > '{IMAGE_TO_MASK}'.")
        check_same_batch(m, "mask", batch, "edit_image", node)
    for name, image in (("reference", reference), ("control_image", control_image)):
        if image is not None and image.ndim == 4:
            check_same_batch(image, name, batch, "edit_image", node)


def mask_without_image_message() -> str:
    return ("ACE++ Conditioning: mask is connected but edit_image is not. The mask says where to edit an image: "
            "connect the image it was painted on to edit_image (from the same Load Image), or disconnect mask to "
            "generate a new picture from the references (width x height).")


def check_canvas(canvas: torch.Tensor, bundle, node: str) -> None:
    """ACE++ Crop Back's canvas: an RGB IMAGE with the layout's canvas shape (any uniform scale: a VAE may round),
    and a batch that matches the edit images the layout was built from."""
    check_image(canvas, "canvas", node)
    lay = bundle.layout
    h, w = (int(s) for s in canvas.shape[-3:-1])
    sh, sw = h / lay.canvas_h, w / lay.canvas_w
    if abs(sh - sw) > 0.02 * max(sh, sw):
        raise ValueError(f"{node}: canvas is {shape_text(canvas)} (H x W x C) but the layout's canvas is "
                         f"{lay.canvas_h}x{lay.canvas_w}; connect the '{VAE_DECODE}' of the latent that the same ACE++ "
                         "Conditioning made (its layout and its latent belong together).")
    if bundle.image is not None and canvas.ndim == 4:
        batch = int(bundle.image.shape[0])
        if int(canvas.shape[0]) not in (1, batch) and batch != 1:
            check_same_batch(canvas, "canvas", batch, "the edit_image of ACE++ Conditioning", node)
