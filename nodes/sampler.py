"""ACE++ Sampler: sample the canvas with the ACE++ schedule, decode, crop back to the input size.

Schedule: 28 Euler steps, cfg 1 (FLUX guidance comes from the conditioning), and the FLUX time
shift from the CANVAS token count, ``mu = lerp(0.5 at 256 tokens, 1.15 at 4096 tokens)``,
``sigma' = e^mu / (e^mu + (1/sigma - 1))``, installed on a clone of the model like ComfyUI's
ModelSamplingFlux node does.
"""

from __future__ import annotations

import logging

import torch
from comfy_api.v0_0_2 import io

from ..aceplus_core import canvas_mu, crop_back, to_bchw, to_bhwc
from . import compat, validation
from .types import Layout, LayoutBundle

log = logging.getLogger(__name__)

DEFAULT_STEPS = 28
MAX_SEED = 0xFFFFFFFFFFFFFFFF


def check_latent_matches(latent: dict, bundle: LayoutBundle) -> None:
    """ValueError when the LATENT is not the one ACE++ Conditioning made for this layout."""
    h, w = latent["samples"].shape[-2:]
    lay = bundle.layout
    if (h * 8, w * 8) != (lay.canvas_h, lay.canvas_w):
        raise ValueError(
            f"The latent is {h}x{w} ({h * 8}x{w * 8} px) but the ACE++ layout's canvas is "
            f"{lay.canvas_h}x{lay.canvas_w} px. Connect the latent and layout of the same ACE++ Conditioning."
        )


def sample_canvas(model, positive, negative, latent: dict, bundle: LayoutBundle, *, seed: int, steps: int, cfg: float,
                  sampler_name: str, scheduler: str, canvas_shift: bool) -> torch.Tensor:
    """Sampled canvas latent (raw VAE space), with ComfyUI's progress bar and previews."""
    check_latent_matches(latent, bundle)
    if canvas_shift:
        mu = canvas_mu(bundle.layout)
        log.info("ACE++: canvas %dx%d = %d tokens, shift mu = %.3f", bundle.layout.canvas_h, bundle.layout.canvas_w,
                 bundle.layout.tokens, mu)
        model = compat.with_flux_shift(model, mu)
    samples = compat.fix_empty_latent_channels(model, latent["samples"])
    noise = compat.prepare_noise(samples, seed, latent.get("batch_index"))
    callback = compat.preview_callback(model, steps)
    return compat.sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, samples,
                         noise_mask=latent.get("noise_mask"), callback=callback, seed=seed)


def finish(decoded_bhwc: torch.Tensor, bundle: LayoutBundle, composite: bool, feather: int) -> torch.Tensor:
    """Decoded canvas IMAGE -> IMAGE at the edit image's size (outside-mask pixels from the input)."""
    out = crop_back(to_bchw(decoded_bhwc), bundle.layout, bundle.image, bundle.mask, composite=composite,
                    feather=int(feather))
    return to_bhwc(out)


def crop_back_inputs(expert: bool = False) -> list:
    """The composite and feather widgets of ACE++ Sampler and ACE++ Crop Back (both feed ``finish``).

    ``expert``: fold them behind "show advanced" where the host supports it (ACE++ Sampler; on Crop Back
    they are the only widgets and stay in view)."""
    flag = compat.advanced() if expert else {}
    return [
        io.Boolean.Input("composite", default=True, **flag,
                         tooltip="Take every pixel outside the mask from the input image, unchanged."),
        io.Int.Input("feather", default=0, min=0, max=256, **flag,
                     tooltip="With composite: fade the edit in over this many px inside the mask edge."),
    ]


class Sampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ACEPP_Sampler",
            display_name="ACE++ Sampler",
            category="ACE++",
            description="Samples the ACE++ canvas (28 Euler steps, shift from the canvas size, cfg 1), decodes it "
                        "and crops the result back to the edit image's size, keeping every pixel outside the mask.",
            inputs=[
                io.Model.Input("model", tooltip="FLUX.1-Fill-dev (+ ACE++ LoRA) or the ACE++ FFT model."),
                io.Conditioning.Input("positive", tooltip="positive from ACE++ Conditioning."),
                io.Conditioning.Input("negative", tooltip="negative from ACE++ Conditioning."),
                io.Latent.Input("latent", tooltip="latent from ACE++ Conditioning."),
                Layout.Input("layout", tooltip="layout from ACE++ Conditioning."),
                io.Vae.Input("vae", tooltip="The FLUX VAE, to decode the canvas."),
                io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                             tooltip="Noise seed."),
                io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=200,
                             tooltip="Sampling steps; ACE++ uses 28. Fewer is faster and rougher."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1,
                               tooltip="Classifier-free guidance. Keep 1 for FLUX (guidance comes from the "
                                       "conditioning's FLUX guidance); above 1 doubles the time per step."),
                io.Combo.Input("sampler_name", options=compat.sampler_names(), default="euler",
                               tooltip="Sampler; ACE++ uses euler."),
                io.Combo.Input("scheduler", options=compat.scheduler_names(), default="simple",
                               tooltip="Sigma schedule: simple (FLUX default) or normal (the released graphs)."),
                io.Boolean.Input("canvas_shift", default=True, **compat.advanced(),
                                 tooltip="Set the FLUX time shift from the canvas token count (ACE++ schedule). "
                                         "Off: keep the model's own sampling (e.g. a ModelSamplingFlux node)."),
                *crop_back_inputs(expert=True),
            ],
            outputs=[
                io.Image.Output("image", display_name="image", tooltip="The result at the edit image's size."),
                io.Image.Output("canvas", display_name="canvas", tooltip="The whole decoded canvas (references + target)."),
            ],
        )

    @classmethod
    def validate_inputs(cls, cfg=None, sampler_name=None, scheduler=None) -> bool | str:
        """Before the prompt runs: ComfyUI 0.3.75 would run its first sampler for an unknown name, and NaN passes
        every host's min/max check (nodes/validation.py)."""
        return validation.hook(cls, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler)

    @classmethod
    def execute(cls, model, positive, negative, latent, layout, vae, seed, steps, cfg, sampler_name, scheduler,
                canvas_shift, composite, feather) -> io.NodeOutput:
        validation.require_widgets(cls, cfg=cfg, sampler_name=sampler_name, scheduler=scheduler)  # linked values
        samples = sample_canvas(model, positive, negative, latent, layout, seed=seed, steps=steps, cfg=cfg,
                                sampler_name=sampler_name, scheduler=scheduler, canvas_shift=canvas_shift)
        decoded = compat.vae_decode(vae, samples)
        return io.NodeOutput(finish(decoded, layout, composite, feather), decoded)
