"""``CanvasSpec``: how a canvas is built, as one frozen value shared by the nodes and the trainer.

The ACE++ Conditioning node builds it from its widgets, the trainer from its ``[canvas]`` config,
and both hand it to the same core functions (``build_canvas``, ``task_canvas``), so what is trained
is what is sampled. It holds the token-budget policy and budget, the reference fit and its
``keep_pixels_rate``, the aspect-ratio handling, the crop mode, the training height jitter, the
repainting scale and the output size without an edit image.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

from .layout import CROP_MODES, POLICIES

REFERENCE_FITS = ("resize", "pad")
ASPECT_MODES = ("error", "crop")
DEFAULT_SIZE = (1024, 1024)
KEEP_PIXELS_RATE = 0.8  # the release's default: pad-fit references are at most 0.8 x the edit height

# Release parity: the released ComfyUI processors' budgets (LoRA processor widget 3072 x 2, FFT
# processor 3072), reference fit and output crop, per model kind.
RELEASE_PARITY = {
    "fill": dict(policy="official", max_tokens=6144, reference_fit="resize", crop_mode="release"),
    "fft": dict(policy="official", max_tokens=3072, reference_fit="pad", crop_mode="release_fft"),
}


def _choice(name: str, value: Any, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not supported; use one of {choices}.")


def _positive_int(name: str, v: Any) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{name} must be a positive integer, got {v!r}.")


def _unit(name: str, v: Any, hint: str = "") -> None:
    if not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= float(v) <= 1.0):
        raise ValueError(f"{name} must be in [0, 1], got {v!r}.{hint}")


@dataclass(frozen=True)
class CanvasSpec:
    """Everything that decides a canvas besides its images.

    policy: "target_first" (the target keeps its resolution up to ``target_tokens``; references share
        the rest of ``max_tokens``) or "official" (release parity: one scale for the whole canvas).
    reference_fit: "resize" (to the canvas height) or "pad" (references at least ``keep_pixels_rate``
        x the height shrink to ``int(rate x height)``, smaller ones keep their size; padded grey, centred).
    keep_pixels_rate: the pad fit's height limit, in both policies (release default 0.8).
    aspect_mode: images beyond ``max_aspect``:1 are centre-cropped ("crop") or rejected ("error").
    crop_mode: how crop-back reads the output ("target", or the release's "release"/"release_fft").
    reference_height_jitter: training only: each reference's content height drawn in
        ``[lo, hi] x height`` and padded (the release uses (1/3, 1)); None = off.
    repainting_scale: how much of the masked area is blanked (1 = all, 0 = none); None = the task
        preset's default (``task_canvas``), 1.0 for ``build_canvas``.
    size: (height, width) of the canvas target without an edit image; None = the target image's size
        when there is one, else 1024 x 1024.
    """

    policy: str = "target_first"
    max_tokens: int = 8192
    target_tokens: int = 4096
    reference_fit: str = "pad"
    keep_pixels_rate: float = KEEP_PIXELS_RATE
    aspect_mode: str = "error"
    max_aspect: float = 4.0
    crop_mode: str = "target"
    reference_height_jitter: Optional[Tuple[float, float]] = None
    repainting_scale: Optional[float] = None
    size: Optional[Tuple[int, int]] = None

    def __post_init__(self) -> None:
        # lists from a config or JSON become tuples: the spec stays hashable
        for name in ("reference_height_jitter", "size"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))
        self.validate()

    def validate(self) -> None:
        _choice("policy", self.policy, POLICIES)
        _choice("reference_fit", self.reference_fit, REFERENCE_FITS)
        _choice("aspect_mode", self.aspect_mode, ASPECT_MODES)
        _choice("crop_mode", self.crop_mode, CROP_MODES)
        _positive_int("max_tokens", self.max_tokens)
        _positive_int("target_tokens", self.target_tokens)
        _unit("keep_pixels_rate", self.keep_pixels_rate, " The release default is 0.8.")
        if self.repainting_scale is not None:
            _unit("repainting_scale", self.repainting_scale)
        m = self.max_aspect
        if not (isinstance(m, (int, float)) and m >= 1.0 and math.isfinite(m)):
            raise ValueError(f"max_aspect must be a finite number >= 1, got {m!r}.")
        jit = self.reference_height_jitter
        if jit is not None and not (len(jit) == 2 and 0.0 < jit[0] <= jit[1] <= 1.0):
            raise ValueError(f"reference_height_jitter must satisfy 0 < lo <= hi <= 1, got {jit!r}; "
                             "the release uses (1/3, 1).")
        size = self.size
        ok = size is None or (len(size) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                                     for v in size))
        if not ok:
            raise ValueError(f"size must be two positive integers (height, width), got {size!r}; "
                             "e.g. size=(1024, 1024).")

    def replace(self, **changes: Any) -> "CanvasSpec":
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def release_parity(self, kind: str) -> "CanvasSpec":
        """This spec with the released processor's budget, fit and crop for ``kind`` ('fill' | 'fft');
        ``keep_pixels_rate``, the size, the aspect handling and the repainting scale are kept."""
        if kind not in RELEASE_PARITY:
            raise ValueError(f"Unknown model kind {kind!r}; use one of {tuple(RELEASE_PARITY)}.")
        return self.replace(**RELEASE_PARITY[kind])

    @property
    def scale(self) -> float:
        """The repainting scale ``build_canvas`` applies (None = 1.0: blank the masked area)."""
        return 1.0 if self.repainting_scale is None else float(self.repainting_scale)
