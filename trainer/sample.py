"""Sample images during training, with the same crop-back as the nodes.

Per listed sample: the cached canvas of variant 0 (its condition latent, mask, layout and text
embedding belong together, also when reference_height_jitter reshaped that canvas), Euler over the
FLUX-shifted schedule (``sigma' = e^mu / (e^mu + 1/sigma - 1)``, mu from the canvas token count, as
ComfyUI's ModelSamplingFlux), VAE decode, ``crop_back`` to the input size with unmasked pixels
composited from the input. PNGs go to ``<output_dir>/samples`` and to TensorBoard.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import cache as cache_mod
from .config import Config
from .data import SampleUnreadable

log = logging.getLogger(__name__)

_VAE = {}


@torch.no_grad()
def euler_sample(model, cond: torch.Tensor, mask_px: torch.Tensor, ctx: torch.Tensor, pooled: torch.Tensor,
                 tokens: int, steps: int, guidance: float, seed: int, device: torch.device) -> torch.Tensor:
    """Flow-matching Euler from pure noise: x_{i+1} = x_i + (s_{i+1} - s_i) v(x_i, s_i). -> B,16,h,w."""
    from aceplus_core import flux_shift_mu, pack_mask, shift_sigmas

    b, _, h, w = cond.shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 16, h, w, generator=g).to(device)
    sig = shift_sigmas(torch.linspace(1.0, 0.0, steps + 1), flux_shift_mu(tokens))
    packed = pack_mask(mask_px.to(device))
    for i in range(steps):
        s = torch.full((b,), float(sig[i]), device=device)
        v = model(torch.cat([x, cond.to(device), packed], 1), s, ctx.to(device), pooled.to(device), guidance)
        x = x + (sig[i + 1] - sig[i]) * v.float()
    return x


@torch.no_grad()
def render_samples(model, cfg: Config, samples, paths: dict, step: int, accelerator=None) -> list[Path]:
    """Render ``cfg.sample.indices``; returns the written PNG paths."""
    import comfy.sd
    import comfy.utils
    from aceplus_core import crop_back, denormalize_latent, to_bchw

    if cfg.model.vae not in _VAE:
        _VAE[cfg.model.vae] = comfy.sd.VAE(sd=comfy.utils.load_torch_file(cfg.model.vae))
    vae = _VAE[cfg.model.vae]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out_dir = Path(cfg.run.output_dir) / "samples"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i in cfg.sample.indices:
        if not 0 <= i < len(samples):
            log.warning("sample.indices: %d is outside the dataset (%d samples); skipped", i, len(samples))
            continue
        if (i, 0) not in paths:
            log.warning("sample.indices: sample %d (row %d) was skipped by the caching pass; not rendered", i,
                        samples[i].row)
            continue
        # the cached entry (variant 0) is self-consistent: its condition latent, mask and layout belong to
        # one canvas; with reference_height_jitter that canvas differs from an un-jittered rebuild
        try:
            t, _ = cache_mod.build_sample_canvas(cfg, samples[i], 0, training=False)  # the image + mask it was built from
        except SampleUnreadable as e:  # every rank sees the same files: under FSDP all skip it together
            log.warning("sample.indices: %s; not rendered", e)
            continue
        entry, layout = cache_mod.load_entry(paths[(i, 0)])
        lat = euler_sample(model, entry["cond"][None], entry["mask"][None], entry["ctx"][None], entry["pooled"][None],
                           layout.tokens, cfg.sample.steps, cfg.sample.guidance, cfg.run.seed, device)
        decoded = vae.decode(denormalize_latent(lat.cpu())).float()  # B, H, W, 3
        decoded = to_bchw(decoded.reshape(-1, *decoded.shape[-3:])).clamp(0, 1)
        original = t["image"]  # the edit image (the target for control rows), None for reference generation
        img = crop_back(decoded, layout, original, t["mask"] if original is not None else None)
        arr = (img[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        path = out_dir / f"step{step:08d}_sample{i}.png"
        Image.fromarray(arr).save(path)
        written.append(path)
        if accelerator is not None:
            for tracker in accelerator.trackers:
                if tracker.name == "tensorboard":
                    tracker.writer.add_image(f"sample/{i}", arr, step, dataformats="HWC")
    if was_training:
        model.train()
    log.info("samples at step %d: %s", step, [p.name for p in written])
    return written
