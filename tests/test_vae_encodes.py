"""One VAE encode fewer: with held references, ACE++ Conditioning reuses the condition latent.

Fill: the held start latent is the condition latent itself (the same canvas pixels), so a run
encodes once (the stock inpaint graph encodes once too). FFT: the edit latent covers the held
reference cells with the same pixels, so two encodes (edit, modify) instead of three.
"""

from __future__ import annotations

import pytest
import torch

from test_nodes_unit import edit_inputs, fft_load, fft_model, fill_model, run_conditioning, vae  # noqa: F401


class CountingVAE:
    """The VAE with its ``encode`` calls counted (everything else passed through)."""

    def __init__(self, vae):
        self._vae, self.encodes = vae, 0

    def encode(self, pixels):
        self.encodes += 1
        return self._vae.encode(pixels)

    def __getattr__(self, name):
        return getattr(self._vae, name)


@pytest.mark.parametrize("kind, hold, want", [("fill", True, 1), ("fill", False, 1), ("fft", True, 2),
                                              ("fft", False, 2)])
def test_encodes_per_run(pack, fill_model, fft_model, vae, kind, hold, want):  # noqa: F811
    counting = CountingVAE(vae)
    image, mask, ref = edit_inputs()
    model = fill_model if kind == "fill" else fft_model
    pos, _, latent, bundle, _ = run_conditioning(pack, model, counting, image=image, mask=mask, reference=ref,
                                                 hold=hold)
    assert counting.encodes == want
    condition = pos[0][1]["concat_latent_image"]
    if hold:
        held = latent["noise_mask"][0, 0] == 0  # h, w: the reference cells
        assert held.any()
        # The held cells carry the condition's own latent (Fill: all of it; FFT: the edit latent).
        torch.testing.assert_close(latent["samples"][..., held], condition[:, :16][..., held], rtol=0, atol=0)
        assert latent["samples"].data_ptr() != condition.data_ptr()  # never one shared tensor
    else:
        assert "noise_mask" not in latent
