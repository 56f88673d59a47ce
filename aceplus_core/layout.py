"""Canvas geometry: where each reference and the target sit in the LCU++ canvas.

The canvas is a single row of full-height cells: ``[ref_0 | ref_1 | ... | target]``.
A ``CanvasLayout`` is everything the nodes and the trainer need to go from the original
images to the canvas and back (crop-back), so it is passed between nodes as one frozen value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Tuple

POLICIES = ("target_first", "official")
CROP_MODES = ("target", "release", "release_fft")


@dataclass(frozen=True)
class Box:
    """A pixel box ``[y, y + h) x [x, x + w)``."""

    x: int
    y: int
    w: int
    h: int

    def __post_init__(self) -> None:
        if min(self.x, self.y, self.w, self.h) < 0:
            raise ValueError(f"Box coordinates must be non-negative, got {self}.")

    def slices(self) -> Tuple[slice, slice]:
        """(rows, cols) slices for ``tensor[..., rows, cols]``."""
        return slice(self.y, self.y + self.h), slice(self.x, self.x + self.w)

    def scaled(self, f: int) -> "Box":
        """The box in a grid ``f`` times coarser (latent: f=8, tokens: f=16); floors every edge."""
        x0, y0 = self.x // f, self.y // f
        x1, y1 = (self.x + self.w) // f, (self.y + self.h) // f
        return Box(x0, y0, x1 - x0, y1 - y0)

    def offset(self, dx: int, dy: int) -> "Box":
        return Box(self.x + dx, self.y + dy, self.w, self.h)

    @property
    def area(self) -> int:
        return self.w * self.h

    @property
    def x1(self) -> int:
        return self.x + self.w

    @property
    def y1(self) -> int:
        return self.y + self.h

    def contains(self, other: "Box") -> bool:
        return (self.x <= other.x and self.y <= other.y
                and other.x1 <= self.x1 and other.y1 <= self.y1)


@dataclass(frozen=True)
class CanvasLayout:
    """Geometry of one canvas (shared by every sample of a batch).

    ``reference_boxes`` are the full-height strip cells of the references (left to right, in the
    given order, padding included); ``reference_content_boxes`` the pixels their content covers.
    ``source_crop`` is the region of the original edit image that went into the target box (the
    whole image unless ``aspect_mode="crop"`` cut it). ``release_slice_w`` is the released code's
    ``slice_w`` (reference strip width after the budget, floored to 16), used by the release crop
    modes; None means ``target_box.x``.
    """

    canvas_h: int
    canvas_w: int
    target_box: Box
    reference_boxes: Tuple[Box, ...]
    reference_content_boxes: Tuple[Box, ...]
    original_h: int
    original_w: int
    source_crop: Box
    policy: str
    crop_mode: str = "target"
    release_slice_w: Optional[int] = field(default=None)

    def __post_init__(self) -> None:
        # Accept lists (e.g. from a JSON round trip) but store tuples: the layout is hashable.
        object.__setattr__(self, "reference_boxes", tuple(self.reference_boxes))
        object.__setattr__(self, "reference_content_boxes", tuple(self.reference_content_boxes))
        self.validate()

    @property
    def tokens(self) -> int:
        """FLUX sequence length of the canvas: one token per 16x16 pixels (8x VAE, 2x2 patch)."""
        return (self.canvas_h // 16) * (self.canvas_w // 16)

    @property
    def num_references(self) -> int:
        return len(self.reference_boxes)

    @property
    def slice_w(self) -> int:
        """Width of the reference strip in the release's sense (see ``release_slice_w``)."""
        return self.target_box.x if self.release_slice_w is None else self.release_slice_w

    def validate(self) -> None:
        """Raise ValueError unless the cells tile the canvas: full height, left to right, no gaps."""
        if self.canvas_h <= 0 or self.canvas_w <= 0 or self.canvas_h % 16 or self.canvas_w % 16:
            raise ValueError(f"Canvas size must be positive multiples of 16, got {self.canvas_h}x{self.canvas_w}.")
        if self.policy not in POLICIES:
            raise ValueError(f"Unknown policy {self.policy!r}; use one of {POLICIES}.")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"Unknown crop_mode {self.crop_mode!r}; use one of {CROP_MODES}.")
        if len(self.reference_boxes) != len(self.reference_content_boxes):
            raise ValueError("reference_boxes and reference_content_boxes differ in length.")
        x = 0
        for cell in (*self.reference_boxes, self.target_box):
            if cell.x != x or cell.y != 0 or cell.h != self.canvas_h:
                raise ValueError(f"Layout cells do not tile the canvas: {cell} at expected x={x}, "
                                 f"height {self.canvas_h}.")
            x = cell.x1
        if x != self.canvas_w:
            raise ValueError(f"Layout cells end at x={x}, canvas width is {self.canvas_w}.")
        for cell, content in zip(self.reference_boxes, self.reference_content_boxes):
            if not cell.contains(content):
                raise ValueError(f"Reference content {content} lies outside its cell {cell}.")
        full = Box(0, 0, self.original_w, self.original_h)
        if not full.contains(self.source_crop) or self.source_crop.area == 0:
            raise ValueError(f"source_crop {self.source_crop} is not inside the original "
                             f"{self.original_h}x{self.original_w} image.")

    def to_dict(self) -> Dict[str, Any]:
        """Plain-python form (JSON-able), e.g. to store in a checkpoint or a node output."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CanvasLayout":
        def box(b: Any) -> Box:
            return b if isinstance(b, Box) else Box(**b)

        d = dict(d)
        d["target_box"] = box(d["target_box"])
        d["source_crop"] = box(d["source_crop"])
        d["reference_boxes"] = tuple(box(b) for b in d["reference_boxes"])
        d["reference_content_boxes"] = tuple(box(b) for b in d["reference_content_boxes"])
        return cls(**d)
