"""Task presets: pixels change only inside the mask; the pure-torch Canny finds a square."""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aceplus_core import TASK_PRESETS, apply_preset, canny, grayscale, mosaic  # noqa: E402


def _inputs():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 96, 128, generator=g)
    mask = torch.zeros(1, 1, 96, 128)
    mask[..., 20:70, 30:100] = 1
    return image, mask


@pytest.mark.parametrize("preset", TASK_PRESETS)
def test_presets_change_pixels_only_inside_mask(preset):
    image, mask = _inputs()
    before = image.clone()
    control = torch.rand(1, 3, 48, 64)
    out, scale = apply_preset(image, mask, preset, control_image=control, mosaic_size=16)
    assert torch.equal(image, before)                       # input untouched
    assert out.shape == image.shape
    outside = (mask == 0).expand_as(image)
    assert torch.equal(out[outside], image[outside])
    assert scale == (1.0 if preset == "repainting" else 0.0)
    if preset not in ("repainting", "no_preprocess"):
        assert not torch.equal(out, image)


def test_grayscale_is_bt601():
    px = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert torch.allclose(grayscale(px), torch.full((1, 3, 1, 1), 0.299))


def test_mosaic_blocks():
    img = torch.rand(1, 3, 128, 192)
    out = mosaic(img, 64)
    assert torch.equal(out[..., :64, :64], out[..., :1, :1].expand(1, 3, 64, 64))
    assert torch.allclose(out[..., 0, 0], img[..., :64, :64].mean((-2, -1)))


def test_canny_finds_square_edges():
    img = torch.zeros(1, 3, 64, 64)
    img[..., 20:44, 16:48] = 1.0
    edges = canny(img, 100, 200)
    assert edges.shape == (1, 1, 64, 64)
    e = edges[0, 0]
    assert 0 < e.sum() < 4 * 40 * 2                          # thin (1-2 px) outline only
    # every detected pixel lies within 1 px of the square's border
    ys, xs = torch.nonzero(e, as_tuple=True)
    near_h = ((ys - 19.5).abs() <= 1.5) | ((ys - 43.5).abs() <= 1.5)
    near_v = ((xs - 15.5).abs() <= 1.5) | ((xs - 47.5).abs() <= 1.5)
    assert bool((near_h | near_v).all())
    # and the four sides are found
    assert e[18:22, 30].sum() >= 1 and e[42:46, 30].sum() >= 1
    assert e[30, 14:18].sum() >= 1 and e[30, 46:50].sum() >= 1
    # flat image: no edges; weak gradient below the low threshold: none either
    assert canny(torch.full((1, 3, 32, 32), 0.5)).sum() == 0
    faint = torch.zeros(1, 3, 32, 32)
    faint[..., :, 16:] = 10 / 255                            # |Sobel| = 40 < 100
    assert canny(faint).sum() == 0


def test_canny_hysteresis_keeps_weak_edges_connected_to_strong():
    img = torch.zeros(1, 3, 32, 64)
    img[..., :, 32:] = 0.5                                   # step of 127.5 -> sobel ~ 510 (strong)
    weak_only = torch.zeros(1, 3, 32, 64)
    weak_only[..., :, 32:] = 35 / 255                        # sobel 140: weak, and nothing strong
    assert canny(img).sum() > 0
    assert canny(weak_only).sum() == 0
    assert canny(weak_only, 100, 120).sum() > 0


def test_control_preset_requires_image():
    image, mask = _inputs()
    with pytest.raises(ValueError, match="control image"):
        apply_preset(image, mask, "control")
    with pytest.raises(ValueError, match="Unknown task preset 'depth'"):
        apply_preset(image, mask, "depth")


def _analytic_image():
    """A deterministic test card (no RNG): sine grating in R, a disc in G, a ramp in B (uint8)."""
    import numpy as np

    y, x = np.mgrid[0:96, 0:128].astype(np.float64)
    r = 127.5 + 100 * np.sin(x / 7) * np.cos(y / 11)
    g = 255.0 * (((x - 60) ** 2 + (y - 45) ** 2) < 900)
    b = np.clip(40 + 2 * x, 0, 255)
    return np.clip(np.round(np.stack([r, g, b], -1)), 0, 255).astype(np.uint8)


# cv2.Canny(img, lo, hi) on _analytic_image(), recorded with opencv-python-headless 5.0.0:
# (edge count, sum of flat indices, sum of squared flat indices mod 1000003)
CV2_GOLDEN = {(100, 200): (202, 1180498, 579586), (50, 150): (205, 1189310, 474470),
              (150, 300): (200, 1161807, 895306)}


@pytest.mark.parametrize("thresholds", sorted(CV2_GOLDEN))
def test_canny_matches_opencv(thresholds):
    img = _analytic_image()
    t = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    idx = torch.nonzero(canny(t, *thresholds)[0, 0].flatten()).flatten().long()
    got = (int(idx.numel()), int(idx.sum()), int((idx * idx).sum() % 1000003))
    assert got == CV2_GOLDEN[thresholds]
    try:
        import cv2  # optional: compare pixel for pixel when OpenCV happens to be installed
    except ImportError:
        return
    assert torch.equal(canny(t, *thresholds)[0, 0].bool(), torch.from_numpy(cv2.Canny(img, *thresholds) > 0))
