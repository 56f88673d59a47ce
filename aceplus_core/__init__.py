"""aceplus_core: the pure-torch core of the ACE++ node pack and trainer.

Canvas layout and stitching (LCU++), token budget, task presets, mask packing and 384/448 token
assembly, schedule shift, crop-back/composite and loss weighting. Never imports ComfyUI: the
nodes and the trainer import this package, not the other way round.
"""

from .budget import floor16, plan_official, plan_reference_cells, plan_target_size, tokens_of
from .canny import canny
from .canvas import Canvas, TaskCanvas, build_canvas, task_canvas, validate_references
from .cropback import crop_back, feather_alpha, release_crop_x
from .layout import CROP_MODES, POLICIES, Box, CanvasLayout
from .lcu import (FLUX_LATENT_SCALE, FLUX_LATENT_SHIFT, denormalize_latent, fft_condition_images,
                  fft_tokens, fill_tokens, lcu_tokens, normalize_latent, pack_mask, patchify,
                  position_ids, region_weights, unpatchify)
from .presets import DEFAULT_REPAINTING_SCALE, TASK_PRESETS, apply_preset, grayscale, mosaic
from .spec import ASPECT_MODES, KEEP_PIXELS_RATE, REFERENCE_FITS, RELEASE_PARITY, CanvasSpec
from .schedule import canvas_mu, flow_matching_pair, flux_shift_mu, logit_normal, shift_sigmas
from .tensors import binarize_mask, mask_to_b1hw, to_bchw, to_bhwc

__all__ = [
    "ASPECT_MODES", "CROP_MODES", "DEFAULT_REPAINTING_SCALE", "FLUX_LATENT_SCALE", "FLUX_LATENT_SHIFT",
    "KEEP_PIXELS_RATE", "POLICIES", "REFERENCE_FITS", "RELEASE_PARITY", "TASK_PRESETS", "Box", "Canvas",
    "CanvasLayout", "CanvasSpec", "TaskCanvas", "apply_preset", "task_canvas",
    "binarize_mask", "build_canvas", "canny", "canvas_mu", "crop_back", "denormalize_latent",
    "feather_alpha", "fft_condition_images", "fft_tokens", "fill_tokens", "floor16",
    "flow_matching_pair", "flux_shift_mu", "grayscale", "lcu_tokens", "logit_normal", "mask_to_b1hw",
    "mosaic", "normalize_latent", "pack_mask", "patchify", "plan_official", "plan_reference_cells",
    "plan_target_size", "position_ids", "region_weights", "release_crop_x", "shift_sigmas",
    "to_bchw", "to_bhwc", "tokens_of", "unpatchify", "validate_references",
]
