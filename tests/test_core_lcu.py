"""LCU++ token assembly against an independent einops formulation; ids, weights, schedule."""

import math
import sys
from pathlib import Path

import pytest
import torch
from einops import rearrange

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aceplus_core import (FLUX_LATENT_SCALE, FLUX_LATENT_SHIFT, CanvasSpec, build_canvas, canvas_mu,  # noqa: E402
                          denormalize_latent, fft_condition_images, fft_tokens, fill_tokens,
                          flow_matching_pair, flux_shift_mu, lcu_tokens, logit_normal,
                          normalize_latent, pack_mask, patchify, position_ids, region_weights,
                          shift_sigmas, unpatchify)


def ref_tokens(noisy, conds, mask_px):
    """What FLUX Fill / ComfyUI do, written with einops."""
    m = rearrange(mask_px, "b c (h ph) (w pw) -> b (c ph pw) h w", ph=8, pw=8)
    x = torch.cat([noisy, *conds, m], dim=1)
    return rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)


def test_fill_and_fft_tokens_match_einops():
    g = torch.Generator().manual_seed(0)
    b, h, w = 2, 6, 10
    noisy, cond, cond2 = (torch.randn(b, 16, h, w, generator=g) for _ in range(3))
    mask = (torch.rand(b, 1, 8 * h, 8 * w, generator=g) > 0.5).float()
    t384 = fill_tokens(noisy, cond, mask)
    assert t384.shape == (b, (h // 2) * (w // 2), 384)
    assert torch.equal(t384, ref_tokens(noisy, [cond], mask))
    t448 = fft_tokens(noisy, cond, cond2, mask)
    assert t448.shape == (b, 15, 448)
    assert torch.equal(t448, ref_tokens(noisy, [cond, cond2], mask))
    assert torch.equal(lcu_tokens(noisy, [cond, cond2], mask), t448)
    # a batch-1 mask broadcasts
    assert torch.equal(fill_tokens(noisy, cond, mask[:1]), ref_tokens(noisy, [cond], mask[:1].expand(b, -1, -1, -1)))


def test_mask_channel_index_is_ph_times_8_plus_pw():
    mask = torch.zeros(1, 1, 32, 48)
    y, x = 8 * 2 + 5, 8 * 3 + 6         # latent cell (2, 3), offset ph=5, pw=6
    mask[0, 0, y, x] = 1.0
    packed = pack_mask(mask)
    assert packed.shape == (1, 64, 4, 6)
    assert packed.sum() == 1 and packed[0, 5 * 8 + 6, 2, 3] == 1
    # and after patchify it sits in token (row 1, col 1) at feature 64 + 64 + 4 * (5*8+6) + 2*0 + 1
    noisy = torch.zeros(1, 16, 4, 6)
    tok = fill_tokens(noisy, noisy, mask)
    t, f = torch.nonzero(tok[0], as_tuple=True)
    assert (int(t), int(f)) == (1 * 3 + 1, 32 * 4 + 4 * (5 * 8 + 6) + 0 * 2 + 1)


def test_patchify_roundtrip_and_bad_sizes():
    x = torch.randn(2, 16, 8, 12)
    assert torch.equal(unpatchify(patchify(x), 8, 12), x)
    assert torch.equal(patchify(x), rearrange(x, "b c (h a) (w d) -> b (h w) (c a d)", a=2, d=2))
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_mask(torch.zeros(1, 1, 30, 32))
    with pytest.raises(ValueError, match="8x"):
        fill_tokens(torch.zeros(1, 16, 4, 4), torch.zeros(1, 16, 4, 4), torch.zeros(1, 1, 16, 16))


def test_position_ids_grid():
    ids = position_ids(6, 10, batch=2)
    assert ids.shape == (2, 15, 3)
    assert bool((ids[..., 0] == 0).all())
    assert ids[0, 7].tolist() == [0.0, 1.0, 2.0]   # token 7 = row 1, col 2 of a 3x5 grid


def test_latent_normalisation():
    z = torch.randn(1, 16, 4, 4)
    assert torch.allclose(normalize_latent(z), FLUX_LATENT_SCALE * (z - FLUX_LATENT_SHIFT))
    assert torch.allclose(denormalize_latent(normalize_latent(z)), z)


def test_fft_condition_images():
    canvas = torch.rand(1, 3, 16, 16)
    m = torch.zeros(1, 1, 16, 16)
    m[..., :8, :] = 1
    edit, modify = fft_condition_images(canvas, m)
    # release in [-1, 1]: edit = c * (1 - m), modify = c * m
    c = canvas * 2 - 1
    assert torch.allclose(edit * 2 - 1, c * (1 - m))
    assert torch.allclose(modify * 2 - 1, c * m)


def test_region_weights():
    edit = torch.rand(1, 3, 64, 64)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 0:10, 0:10] = 1
    canvas = build_canvas(edit, mask, [torch.rand(1, 3, 64, 32)], CanvasSpec(reference_fit="resize"))
    lay = canvas.layout
    assert (lay.canvas_h, lay.canvas_w, lay.target_box.x) == (64, 96, 32)
    w = region_weights(lay, ref_weight=0.25, target_weight=2.0)
    assert w.shape == (1, 4 * 6)
    grid = w.view(4, 6)
    assert bool((grid[:, :2] == 0.25).all()) and bool((grid[:, 2:] == 2.0).all())
    w2 = region_weights(lay, ref_weight=0.25, target_weight=2.0, unmasked_weight=0.1, mask_px=canvas.mask).view(4, 6)
    assert float(w2[0, 2]) == 2.0                        # the masked token
    assert torch.allclose(w2[1:, 2:], torch.tensor(0.1)) and float(w2[0, 3]) == pytest.approx(0.1)
    assert bool((w2[:, :2] == 0.25).all())
    with pytest.raises(ValueError, match="mask_px"):
        region_weights(lay, unmasked_weight=0.1)


def test_shift_mu_matches_comfyui_line():
    assert flux_shift_mu(256) == pytest.approx(0.5)
    assert flux_shift_mu(4096) == pytest.approx(1.15)
    # ComfyUI ModelSamplingFlux: x1=256, x2=4096, mm = (1.15-0.5)/(4096-256), b = 0.5 - mm*256
    mm = (1.15 - 0.5) / (4096 - 256)
    assert flux_shift_mu(6144) == pytest.approx(6144 * mm + (0.5 - mm * 256))
    lay = build_canvas(torch.rand(1, 3, 64, 64), None).layout
    assert canvas_mu(lay) == pytest.approx(flux_shift_mu(16))
    s = torch.tensor([1.0, 0.5, 0.1, 0.0])
    out = shift_sigmas(s, 1.15)
    e = math.exp(1.15)
    assert torch.allclose(out[:3], e / (e + (1 / s[:3] - 1)))
    assert out[0] == 1.0 and out[3] == 0.0


def test_flow_matching_pair_and_logit_normal():
    x0, eps = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    s = torch.tensor([0.0, 0.5, 1.0])
    xt, target = flow_matching_pair(x0, eps, s)
    assert torch.equal(xt[0], x0[0]) and torch.equal(xt[2], eps[2])
    assert torch.allclose(xt[1], 0.5 * x0[1] + 0.5 * eps[1])
    assert torch.equal(target, eps - x0)
    a = logit_normal(1000, torch.Generator().manual_seed(0))
    b = logit_normal(1000, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and 0 < float(a.min()) and float(a.max()) < 1
    assert abs(float(a.mean()) - 0.5) < 0.03
