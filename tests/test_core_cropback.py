"""Crop-back: unmasked pixels come back bit-exact; geometry of the target and release crops."""

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aceplus_core import CanvasSpec, build_canvas, crop_back, feather_alpha  # noqa: E402


def random_mask(g, h, w):
    m = torch.zeros(1, 1, h, w)
    y0, x0 = int(torch.randint(0, h // 2, (1,), generator=g)), int(torch.randint(0, w // 2, (1,), generator=g))
    m[..., y0:y0 + h // 3 + 1, x0:x0 + w // 3 + 1] = 1.0
    return m


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(20, 300), w=st.integers(20, 300), n_refs=st.integers(0, 2),
       policy=st.sampled_from(["target_first", "official"]), max_tokens=st.sampled_from([96, 256, 4096]),
       feather=st.sampled_from([0, 3]), seed=st.integers(0, 2**16), batch=st.sampled_from([1, 2]))
def test_identity_decode_is_bit_exact_outside_mask(h, w, n_refs, policy, max_tokens, feather, seed, batch):
    g = torch.Generator().manual_seed(seed)
    edit = torch.rand(batch, 3, h, w, generator=g)
    mask = random_mask(g, h, w)
    refs = [torch.rand(1, 3, 64, 48, generator=g) for _ in range(n_refs)]
    spec = CanvasSpec(policy=policy, max_tokens=max_tokens, target_tokens=min(max_tokens, 1024), aspect_mode="crop")
    canvas = build_canvas(edit, mask, refs, spec, with_target=True)
    out = crop_back(canvas.target, canvas.layout, edit, mask, feather=feather)
    assert out.shape == edit.shape
    keep = (mask <= 0.5).expand_as(edit)
    assert torch.equal(out[keep], edit[keep])
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_identity_without_scaling_is_exact_everywhere():
    # multiple of 16, within the budget: the target region is the image itself, no resize anywhere
    edit = torch.rand(1, 3, 128, 96)
    mask = torch.zeros(1, 1, 128, 96)
    mask[..., 40:80, 10:50] = 1
    canvas = build_canvas(edit, mask, [torch.rand(1, 3, 50, 70)], with_target=True)
    out = crop_back(canvas.target, canvas.layout, edit, mask, composite=False)
    assert torch.equal(out, edit)


def test_generated_content_lands_inside_mask_at_original_size():
    edit = torch.rand(1, 3, 333, 250)   # not a multiple of 16 and budget-scaled below
    mask = torch.zeros(1, 1, 333, 250)
    mask[..., 30:130, 60:170] = 1
    canvas = build_canvas(edit, mask, [torch.rand(1, 3, 128, 128)], CanvasSpec(max_tokens=256, target_tokens=128))
    assert canvas.layout.target_box.h < 333
    decoded = torch.full_like(canvas.image, 0.25)
    out = crop_back(decoded, canvas.layout, edit, mask)
    assert out.shape == (1, 3, 333, 250)
    inside = mask.bool().expand_as(edit)
    assert float((out[inside] - 0.25).abs().max()) < 1e-6
    assert torch.equal(out[~inside], edit[~inside])
    # VAE sizes that differ by a few px from the canvas are resized first
    off = torch.full((1, 3, canvas.layout.canvas_h + 8, canvas.layout.canvas_w - 8), 0.25)
    out2 = crop_back(off, canvas.layout, edit, mask)
    assert torch.equal(out2[~inside], edit[~inside])


def test_aspect_crop_restores_the_cut_borders():
    edit = torch.rand(1, 3, 60, 400)
    mask = torch.ones(1, 1, 60, 400)
    canvas = build_canvas(edit, mask, spec=CanvasSpec(aspect_mode="crop"))
    sc = canvas.layout.source_crop
    out = crop_back(torch.zeros_like(canvas.image), canvas.layout, edit, mask)
    assert out.shape == edit.shape
    assert torch.equal(out[..., :, :sc.x], edit[..., :, :sc.x])
    assert torch.equal(out[..., :, sc.x + sc.w:], edit[..., :, sc.x + sc.w:])
    assert bool((out[..., :, sc.x:sc.x + sc.w] == 0).all())


def test_feather_blends_only_inside_mask():
    m = torch.zeros(1, 1, 40, 40)
    m[..., 10:30, 10:30] = 1
    a = feather_alpha(m, 4)
    assert bool((a[m == 0] == 0).all())
    assert float(a[0, 0, 20, 20]) == 1.0
    assert float(a[0, 0, 10, 20]) == pytest.approx(1 / 5)
    assert float(a[0, 0, 12, 20]) == pytest.approx(3 / 5)
    edit = torch.rand(1, 3, 40, 40)
    canvas = build_canvas(edit, m)
    out = crop_back(torch.ones_like(canvas.image), canvas.layout, edit, m, feather=4)
    keep = (m == 0).expand_as(edit)
    assert torch.equal(out[keep], edit[keep])
    assert bool((out[0, :, 20, 20] == 1).all())


@pytest.mark.parametrize("mode,expected_x", [("release", 720 + 30), ("release_fft", 720)])
def test_release_crop_modes(mode, expected_x):
    spec = CanvasSpec(policy="official", reference_fit="resize", max_tokens=4096, crop_mode=mode)
    canvas = build_canvas(torch.rand(1, 3, 1024, 1024), None, [torch.rand(1, 3, 1024, 1024)], spec)
    out = crop_back(canvas.image, canvas.layout)
    assert out.shape == (1, 3, 720, 1440 - expected_x)


def test_release_fft_crops_30px_without_reference():
    canvas = build_canvas(torch.rand(1, 3, 256, 256), None, spec=CanvasSpec(policy="official", max_tokens=4096))
    assert crop_back(canvas.image, canvas.layout, crop_mode="release_fft").shape[-1] == 256 - 30
    assert crop_back(canvas.image, canvas.layout, crop_mode="release").shape[-1] == 256


def test_crop_back_does_not_modify_inputs():
    edit = torch.rand(1, 3, 64, 64)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 8:30, 8:30] = 0.7
    e0, m0 = edit.clone(), mask.clone()
    canvas = build_canvas(edit, mask, [torch.rand(1, 3, 32, 32)], with_target=True)
    d0 = canvas.target.clone()
    crop_back(canvas.target, canvas.layout, edit, mask, feather=2)
    assert torch.equal(edit, e0) and torch.equal(mask, m0) and torch.equal(canvas.target, d0)


@pytest.mark.parametrize("policy", ["target_first", "official"])
def test_large_budget_scaled_image_round_trip(policy):
    g = torch.Generator().manual_seed(7)
    edit = torch.rand(1, 3, 1500, 1100, generator=g)          # 6445 tokens: scaled by both policies
    mask = torch.zeros(1, 1, 1500, 1100)
    mask[..., 400:900, 300:800] = 1
    spec = CanvasSpec(policy=policy, max_tokens=4096 if policy == "official" else 8192)
    canvas = build_canvas(edit, mask, [torch.rand(1, 3, 700, 500, generator=g)], spec, with_target=True)
    assert canvas.layout.target_box.h < 1500
    out = crop_back(canvas.target, canvas.layout, edit, mask)
    keep = (mask == 0).expand_as(edit)
    assert torch.equal(out[keep], edit[keep])
    # inside the mask the round trip is a down/up-sampled copy of the original
    inside = ~keep
    assert float((out[inside] - edit[inside]).abs().mean()) < 0.25
