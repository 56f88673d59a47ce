"""One canvas specification for the nodes and the trainer ("trained exactly as sampled").

- ``keep_pixels_rate`` reproduces the released FFT processor's pad fit for any rate in [0, 1],
  checked against the released formula written out independently below;
- the ACE++ Conditioning node and the trainer's caching pass build identical canvases for the same
  images and spec, task by task (local-edit presets included);
- the trainer's per-sample repainting scale follows the release (1.0 with a reference, else the
  configured 0.5), with presets at the node's scale and a per-data_type override;
- reference-generation rows log no spurious "edit_mask is ignored";
- every shipped ACEPP_Conditioning node carries the keep_pixels_rate widget.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from aceplus_core import CanvasSpec, build_canvas

ROOT = Path(__file__).resolve().parent.parent


def released_fft_processor(edit: torch.Tensor, mask: torch.Tensor, ref: torch.Tensor, keep_pixels_rate: float,
                           max_seq_len: int = 3072, d: int = 16) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The released ``ACEPlusFFTProcessor.preprocess`` (task repainting, one reference), step by step on
    1, C, H, W tensors in [0, 1]: returns (blanked canvas in [0, 1], canvas mask, slice_w before the +30).

    One deliberate difference: at ``keep_pixels_rate = 0`` the release asks for a 0-px-high reference
    and crashes in ``T.Resize``; here (and in the pack) the reference is 1 px high.
    """
    e = edit[0] - 0.5                                                   # 3, eH, eW; 0 = grey
    m = (mask[0] > 0.5).float()                                         # 1, eH, eW
    if not bool(m.any()):
        m = torch.ones_like(m)
    e = e * (1 - m * 1.0)                                               # repainting_scale 1
    r = ref[0] - 0.5
    H, W = r.shape[-2:]
    eH = e.shape[-2]
    if H >= keep_pixels_rate * eH:
        tH = max(1, int(eH * keep_pixels_rate))
        tW = max(1, int(W * (tH / H)))
        r = F.interpolate(r[None], size=(tH, tW), mode="bilinear", antialias=True, align_corners=False)[0]
    rH = r.shape[-2]
    delta_h = eH - rH
    r = F.pad(r, (0, 0, delta_h // 2, delta_h - delta_h // 2), value=0.0)  # T.Pad: top = delta_h // 2
    full = torch.cat([r, e], dim=-1)
    fm = torch.cat([torch.zeros(1, *r.shape[-2:]), m], dim=-1)
    slice_w = r.shape[-1]
    Hc, Wc = full.shape[-2:]
    s = min(1.0, math.sqrt(max_seq_len / ((Hc / d) * (Wc / d))))
    oh, ow = int(Hc * s) // d * d, int(Wc * s) // d * d
    slice_w = int(slice_w * s) // d * d
    img = F.interpolate(full[None], size=(oh, ow), mode="nearest-exact")
    msk = F.interpolate(fm[None], size=(oh, ow), mode="nearest-exact")
    return img * (1 - msk) + 0.5, msk, slice_w


def fft_inputs(seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    edit = torch.rand(1, 3, 200, 300, generator=g)
    ref = torch.rand(1, 3, 180, 120, generator=g)
    mask = torch.zeros(1, 1, 200, 300)
    mask[..., 50:120, 100:250] = 1
    return edit, mask, ref


@pytest.mark.parametrize("rate", [0.0, 0.5, 0.8, 1.0])
def test_release_parity_fft_matches_the_released_formula_for_any_keep_pixels_rate(rate):
    edit, mask, ref = fft_inputs()
    spec = CanvasSpec(keep_pixels_rate=rate).release_parity("fft")
    canvas = build_canvas(edit, mask, [ref], spec)
    want_img, want_mask, want_slice = released_fft_processor(edit, mask, ref, rate, max_seq_len=3072)
    assert canvas.image.shape == want_img.shape
    assert torch.equal(canvas.mask, want_mask)
    torch.testing.assert_close(canvas.image, want_img, rtol=0, atol=1e-5)
    assert canvas.layout.release_slice_w == want_slice


def test_keep_pixels_rate_changes_the_pad_fit_in_both_policies():
    edit, _, ref = fft_inputs()
    for policy in ("official", "target_first"):
        heights = [build_canvas(edit, None, [ref], CanvasSpec(policy=policy, keep_pixels_rate=r, max_tokens=4096))
                   .layout.reference_content_boxes[0].h for r in (0.5, 0.8)]
        assert heights[0] < heights[1], (policy, heights)


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.8"])
def test_keep_pixels_rate_out_of_range_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"keep_pixels_rate must be in \[0, 1\].*release default is 0.8"):
        CanvasSpec(keep_pixels_rate=bad)


# ---- node and trainer build the same canvas -----------------------------------------------------------

def _write_rows(root: Path) -> dict:
    """A photo, a control map, a reference, a target and a mask as 8-bit PNGs (exact after reloading)."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    files = {}
    for name, shape in (("photo", (64, 96, 3)), ("map", (64, 96, 3)), ("ref", (80, 56, 3)), ("target", (64, 96, 3))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / f"{name}.png")
        files[name] = str(root / f"{name}.png")
    m = np.zeros((64, 96), np.uint8)
    m[16:48, 24:72] = 255
    Image.fromarray(m).save(root / "mask.png")
    files["mask"] = str(root / "mask.png")
    return files


# data_type, the node's task, with a reference?, the node's repainting_scale widget that matches the trainer
CASES = [
    ("subject", "repainting", True, -1.0),        # reference: 1.0 on both sides
    ("inpainting", "repainting", False, 0.5),      # no reference: the trainer's configured 0.5
    ("recolorizing", "recolorizing", False, -1.0),
    ("mosaic", "mosaic", False, -1.0),
    ("canny", "canny", False, -1.0),
    ("depth_repainting", "control", False, -1.0),  # the row's edit image is the control map
    ("recolorizing", "recolorizing", True, -1.0),
]


@pytest.mark.parametrize("policy", ["target_first", "official"])
@pytest.mark.parametrize("data_type,task,with_ref,widget_scale", CASES)
def test_node_and_trainer_build_identical_canvases(pack, tmp_path, policy, data_type, task, with_ref, widget_scale):
    from trainer.cache import build_sample_canvas
    from trainer.config import load_config
    from trainer.data import Sample, load_image, load_mask

    f = _write_rows(tmp_path)
    control = task == "control"
    sample = Sample(row=1, target_image=f["target"], edit_image=f["map"] if control else f["photo"],
                    edit_mask=f["mask"], references=(f["ref"],) if with_ref else (), data_type=data_type)
    canvas = {"policy": policy, "max_tokens": 96, "target_tokens": 48, "keep_pixels_rate": 0.6}
    cfg = load_config(data={"model": {"dit": "x"}, "data": {"manifest": "y"}, "canvas": canvas})
    _, trained = build_sample_canvas(cfg, sample, 0, training=False)

    cond = pack.nodes.conditioning
    spec = cond.canvas_spec(widget_scale, "pad", policy, 96, 48, 1024, 1024, "crop", False, "fill", 0.6)
    photo = load_image(f["target"] if control else f["photo"])
    mask = load_mask(f["mask"], (64, 96))
    refs = [load_image(f["ref"])] if with_ref else []
    ctrl = load_image(f["map"]).permute(0, 2, 3, 1) if control else None
    sampled, _, _ = cond.make_canvas(photo.permute(0, 2, 3, 1), mask[:, 0], refs, spec, task, ctrl)

    assert trained.layout.to_dict() == sampled.layout.to_dict()  # the pack imports its own copy of the core
    assert torch.equal(trained.mask, sampled.mask)
    assert torch.equal(trained.image, sampled.image)


def test_trainer_repainting_scale_per_sample():
    """1.0 with a reference, else canvas.repainting_scale (0.5); presets at the node's default (0);
    canvas.repainting_scales overrides per data_type."""
    from trainer.cache import sample_task
    from trainer.config import load_config
    from trainer.data import Sample

    cfg = load_config(data={"model": {"dit": "x"}, "data": {"manifest": "y"},
                            "canvas": {"repainting_scales": {"inpainting": 0.9}}})

    def task(data_type, refs=()):
        return sample_task(cfg, Sample(row=1, target_image="t", references=refs, data_type=data_type))

    assert task("subject", ("r",)) == ("repainting", 1.0)
    assert task("", ()) == ("repainting", 0.5)
    assert task("inpainting", ()) == ("repainting", 0.9)
    assert task("mosaic", ()) == ("mosaic", 0.0)
    assert task("contour_repainting", ("r",)) == ("control", 0.0)


def test_reference_generation_rows_log_no_mask_warning(tmp_path, caplog):
    from trainer.cache import build_sample_canvas
    from trainer.config import load_config
    from trainer.data import Sample

    f = _write_rows(tmp_path)
    cfg = load_config(data={"model": {"dit": "x"}, "data": {"manifest": "y"}})
    sample = Sample(row=1, target_image=f["target"], references=(f["ref"],), data_type="subject")
    with caplog.at_level(logging.INFO):
        for variant in range(3):
            _, canvas = build_sample_canvas(cfg, sample, variant)
    assert "edit_mask is ignored" not in caplog.text
    assert float(canvas.mask[:, :, :, canvas.layout.target_box.x:].min()) == 1.0  # the whole target is generated


def test_every_shipped_conditioning_node_has_keep_pixels_rate():
    """The widget is the last value of every ACEPP_Conditioning node in workflows/*.json (saved graphs
    keep their widget positions), at the release's 0.8."""
    found = 0
    for path in sorted((ROOT / "workflows").glob("*.json")):
        for node in json.loads(path.read_text()).get("nodes", []):
            if node.get("type") != "ACEPP_Conditioning":
                continue
            found += 1
            names = [i["name"] for i in node["inputs"] if "widget" in i]
            assert names[-1] == "keep_pixels_rate", (path.name, names)
            assert node["widgets_values"][-1] == 0.8, (path.name, node["widgets_values"])
    assert found >= 10
