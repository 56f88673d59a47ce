"""Custom wire types of the pack, declared once, and the values that travel on them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from comfy_api.v0_0_2 import io

from ..aceplus_core.layout import CanvasLayout

# ACEPP_LAYOUT: a LayoutBundle, from ACE++ Conditioning to ACE++ Sampler / ACE++ Crop Back.
Layout = io.Custom("ACEPP_LAYOUT")
# ACEPP_REFERENCES: a tuple of reference images (each 1|B, 3, h, w), built by ACE++ Add Reference.
References = io.Custom("ACEPP_REFERENCES")


@dataclass(frozen=True)
class LayoutBundle:
    """Everything crop-back needs: the canvas geometry and the original edit image and mask.

    ``image`` is None for reference generation (no edit image): the output is the target box alone.
    Tensors are the caller's (never modified); ``mask`` is the mask given to the canvas builder
    (B|1, 1, H, W, not binarised: crop-back applies the same > 0.5 / empty-means-all rule).
    """

    layout: CanvasLayout
    image: Optional[torch.Tensor]  # B, 3, H, W in [0, 1]
    mask: Optional[torch.Tensor]   # B|1, 1, H, W
    kind: str                      # "fill" or "fft": the model the canvas was conditioned for


ReferenceList = Tuple[torch.Tensor, ...]  # each 1|B, 3, h, w in [0, 1]
