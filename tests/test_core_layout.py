"""Canvas layout: tiling, token budgets (both policies), the official size table."""

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aceplus_core import Box, CanvasLayout, CanvasSpec, build_canvas  # noqa: E402

JITTER = CanvasSpec(reference_height_jitter=(1 / 3, 1.0))

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_tiling(layout: CanvasLayout, canvas) -> None:
    H, W = layout.canvas_h, layout.canvas_w
    assert tuple(canvas.image.shape[-2:]) == (H, W)
    assert H % 16 == 0 and W % 16 == 0
    cover = torch.zeros(H, W, dtype=torch.int32)
    for b in (*layout.reference_boxes, layout.target_box):
        assert b.y == 0 and b.h == H
        r, c = b.slices()
        cover[r, c] += 1
    assert bool((cover == 1).all()), "cells must cover the canvas exactly once"
    xs = [b.x for b in (*layout.reference_boxes, layout.target_box)]
    assert xs == sorted(xs) and layout.target_box.x1 == W  # references left, target right-most
    for cell, content in zip(layout.reference_boxes, layout.reference_content_boxes):
        assert cell.contains(content)
    # mask is 0 over every reference cell and binary
    assert bool(((canvas.mask == 0) | (canvas.mask == 1)).all())
    for b in layout.reference_boxes:
        r, c = b.slices()
        assert bool((canvas.mask[:, :, r, c] == 0).all())


@SETTINGS
@given(
    eh=st.integers(24, 260), ew=st.integers(24, 260), n_refs=st.integers(0, 4),
    ref_sizes=st.lists(st.tuples(st.integers(20, 200), st.integers(20, 200)), min_size=4, max_size=4),
    policy=st.sampled_from(["target_first", "official"]), fit=st.sampled_from(["pad", "resize"]),
    max_tokens=st.sampled_from([64, 160, 256, 1024]), target_frac=st.sampled_from([0.25, 0.5, 1.0]),
    has_edit=st.booleans(), seed=st.integers(0, 2**16),
)
def test_boxes_tile_canvas(eh, ew, n_refs, ref_sizes, policy, fit, max_tokens, target_frac, has_edit, seed):
    g = torch.Generator().manual_seed(seed)
    refs = [torch.rand(1, 3, h, w, generator=g) for h, w in ref_sizes[:n_refs]]
    if max(eh / ew, ew / eh) > 4 or any(max(h / w, w / h) > 4 for h, w in ref_sizes[:n_refs]):
        aspect_mode = "crop"
    else:
        aspect_mode = "error"
    edit = torch.rand(2, 3, eh, ew, generator=g) if has_edit else None
    mask = (torch.rand(1, 1, eh, ew, generator=g) > 0.7).float() if has_edit else None
    target_tokens = max(1, int(max_tokens * target_frac))
    if max_tokens < (n_refs + 1):
        return
    spec = CanvasSpec(size=(eh, ew), policy=policy, reference_fit=fit, max_tokens=max_tokens,
                      target_tokens=target_tokens, aspect_mode=aspect_mode)
    canvas = build_canvas(edit, mask, refs, spec, with_target=has_edit)
    layout = canvas.layout
    check_tiling(layout, canvas)
    assert layout.tokens <= max_tokens
    assert len(layout.reference_boxes) == n_refs
    assert (layout.original_h, layout.original_w) == (eh, ew)
    assert canvas.image.shape[0] == (2 if has_edit else 1)
    assert (canvas.target is not None) == has_edit
    if has_edit:
        assert canvas.target.shape == canvas.image.shape
    if policy == "target_first":
        for b in (*layout.reference_boxes, layout.target_box):
            assert b.x % 16 == 0 and b.w % 16 == 0
    # layout survives a plain-dict round trip (node outputs / checkpoints)
    assert CanvasLayout.from_dict(layout.to_dict()) == layout


@SETTINGS
@given(eh=st.integers(32, 400), ew=st.integers(32, 400), n_refs=st.integers(1, 4),
       max_tokens=st.sampled_from([128, 256, 512, 1024, 2048]), target_tokens=st.sampled_from([64, 256, 512, 1024]),
       fit=st.sampled_from(["pad", "resize"]), ref_hw=st.tuples(st.integers(40, 300), st.integers(40, 300)))
def test_target_first_references_never_cost_target_resolution(eh, ew, n_refs, max_tokens, target_tokens, fit, ref_hw):
    if max(eh / ew, ew / eh) > 4 or max(ref_hw[0] / ref_hw[1], ref_hw[1] / ref_hw[0]) > 4:
        return
    edit = torch.rand(1, 3, eh, ew)
    alone = build_canvas(edit, None, [], CanvasSpec(max_tokens=max_tokens, target_tokens=target_tokens)).layout
    refs = [torch.rand(1, 3, *ref_hw) for _ in range(n_refs)]
    spec = CanvasSpec(max_tokens=max_tokens, target_tokens=target_tokens, reference_fit=fit)
    with_refs = build_canvas(edit, None, refs, spec).layout
    th, tw = alone.target_box.h, alone.target_box.w
    assert with_refs.tokens <= max_tokens
    if (th // 16) * (tw // 16 + n_refs) <= max_tokens:  # the budget allows >= 16 px per reference
        assert (with_refs.target_box.h, with_refs.target_box.w) == (th, tw)
    else:
        assert with_refs.target_box.area <= alone.target_box.area


def test_target_first_keeps_1024_target_beside_a_reference():
    edit, ref = torch.rand(1, 3, 1024, 1024), torch.rand(1, 3, 1024, 1024)
    layout = build_canvas(edit, None, [ref]).layout
    assert layout.target_box == Box(832, 0, 1024, 1024)           # ceil16(int(0.8 * 1024)) = 832
    assert layout.reference_content_boxes[0] == Box(6, 102, 819, 819)
    assert layout.tokens == 64 * (52 + 64) <= 8192
    # two references: they shrink (common factor), the target does not
    layout2 = build_canvas(edit, None, [ref, ref]).layout
    assert (layout2.target_box.w, layout2.target_box.h) == (1024, 1024)
    assert layout2.tokens <= 8192
    w0, w1 = (b.w for b in layout2.reference_content_boxes)
    assert w0 == w1 and w0 < 819


def test_target_first_large_image_scales_to_target_tokens():
    layout = build_canvas(torch.rand(1, 3, 2000, 1500), None, [torch.rand(1, 3, 300, 300)]).layout
    tb = layout.target_box
    assert (tb.h // 16) * (tb.w // 16) <= 4096
    assert (tb.h, tb.w) == (int(2000 * (4096 / (125 * 93.75)) ** 0.5) // 16 * 16,
                            int(1500 * (4096 / (125 * 93.75)) ** 0.5) // 16 * 16)
    # pad fit never upscales: a 300 px reference stays 300 px
    assert layout.reference_content_boxes[0].h == 300


# (edit h, w), [(ref h, w)], fit, max_tokens -> (canvas h, w, release slice_w), computed by hand from
# scale = min(1, sqrt(T / ((H/16)(W/16)))), H' = int(H s)//16*16, W' = int(W s)//16*16,
# slice' = int(slice s)//16*16, with the reference fitted at the edit height first.
OFFICIAL_TABLE = [
    # 1024|1024 resize: W=2048, 8192 tok -> s=0.70711: int(724.08)=724->720, int(1448.15)->1440
    ((1024, 1024), [(1024, 1024)], "resize", 4096, (720, 1440, 720)),
    # pad: ref 1024 >= 819.2 -> 819x819; W=1843, 7372 tok, s=0.745396: 763->752, 1373->1360, 610->608
    ((1024, 1024), [(1024, 1024)], "pad", 4096, (752, 1360, 608)),
    ((1024, 1024), [], "pad", 4096, (1024, 1024, 0)),
    ((1024, 1024), [], "pad", 6144, (1024, 1024, 0)),                    # never upscaled
    ((1000, 750), [], "resize", 4096, (992, 736, 0)),                     # 2929.7 tok: floor to 16 only
    # 512x512 ref resized to 768 high -> 768 wide; 768x1792 = 5376 tok <= 6144 -> s=1
    ((768, 1024), [(512, 512)], "resize", 6144, (768, 1792, 768)),
    ((2048, 2048), [], "resize", 3072, (880, 880, 0)),                    # s=0.43301: int(886.8)=886->880
    # pad, 512 < 819.2 keeps 512x768; W=1792, 7168 tok, s=0.755929: 774->768, 1354->1344, 580->576
    ((1024, 1024), [(512, 768)], "pad", 4096, (768, 1344, 576)),
]


@pytest.mark.parametrize("edit_hw,ref_hws,fit,max_tokens,expected", OFFICIAL_TABLE)
def test_official_sizes_match_release_formula(edit_hw, ref_hws, fit, max_tokens, expected):
    refs = [torch.rand(1, 3, *hw) for hw in ref_hws]
    spec = CanvasSpec(policy="official", reference_fit=fit, max_tokens=max_tokens)
    canvas = build_canvas(torch.rand(1, 3, *edit_hw), None, refs, spec)
    lay = canvas.layout
    assert (lay.canvas_h, lay.canvas_w, lay.slice_w) == expected
    check_tiling(lay, canvas)


def test_official_matches_release_pixels():
    """Release pipeline written out step by step (stitch at full res, nearest-exact resize)."""
    g = torch.Generator().manual_seed(3)
    edit = torch.rand(1, 3, 200, 300, generator=g)
    ref = torch.rand(1, 3, 180, 120, generator=g)
    mask = torch.zeros(1, 1, 200, 300)
    mask[..., 50:120, 100:250] = 1
    canvas = build_canvas(edit, mask, [ref], CanvasSpec(policy="official", reference_fit="resize", max_tokens=128))
    # release, in [-1, 1]: ref -> (200, int(120 * 200/180) = 133), edit * (1 - m), cat, resize
    r = torch.nn.functional.interpolate(ref * 2 - 1, size=(200, 133), mode="bilinear", antialias=True,
                                        align_corners=False)
    e = (edit * 2 - 1) * (1 - mask)
    full = torch.cat([r, e], dim=-1)
    fm = torch.cat([torch.zeros(1, 1, 200, 133), mask], dim=-1)
    s = min(1.0, (128 / ((200 / 16) * (433 / 16))) ** 0.5)
    H, W = int(200 * s) // 16 * 16, int(433 * s) // 16 * 16
    img = torch.nn.functional.interpolate(full, size=(H, W), mode="nearest-exact")
    m = torch.nn.functional.interpolate(fm, size=(H, W), mode="nearest-exact")
    assert canvas.image.shape[-2:] == (H, W)
    assert torch.equal(canvas.mask, m)
    assert torch.allclose(canvas.image, (img + 1) / 2, atol=1e-5, rtol=0)
    assert canvas.layout.release_slice_w == int(133 * s) // 16 * 16


def test_reference_generation_without_edit_image():
    ref = torch.rand(1, 3, 256, 256)
    canvas = build_canvas(None, None, [ref], CanvasSpec(size=(512, 384)))
    lay = canvas.layout
    assert (lay.original_h, lay.original_w) == (512, 384)
    assert (lay.target_box.h, lay.target_box.w) == (512, 384)
    r, c = lay.target_box.slices()
    assert bool((canvas.mask[:, :, r, c] == 1).all())
    assert bool((canvas.image[:, :, r, c] == 0.5).all())
    default = build_canvas(None, None, [ref]).layout
    assert (default.original_h, default.original_w) == (1024, 1024)


def test_repainting_scale_and_mask_rules():
    edit = torch.rand(1, 3, 64, 64)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:32, 16:48] = 0.9
    c1 = build_canvas(edit, mask, spec=CanvasSpec(repainting_scale=1.0))
    inside, outside = c1.mask.bool().expand(1, 3, 64, 64), ~c1.mask.bool().expand(1, 3, 64, 64)
    assert bool((c1.image[inside] == 0.5).all())
    assert torch.equal(c1.image[outside], edit[outside])      # kept pixels are untouched
    c0 = build_canvas(edit, mask, spec=CanvasSpec(repainting_scale=0.0))
    assert torch.equal(c0.image, edit)
    ch = build_canvas(edit, mask, spec=CanvasSpec(repainting_scale=0.5))
    assert torch.allclose(ch.image[inside], 0.5 + (edit[inside] - 0.5) * 0.5)
    # all-zero mask -> edit everything (release behaviour)
    cz = build_canvas(edit, torch.zeros(1, 1, 64, 64))
    assert bool((cz.mask == 1).all())
    # the inputs were not modified
    assert float(mask.max()) == pytest.approx(0.9)


def test_aspect_crop_crops_image_and_mask_together():
    edit = torch.rand(1, 3, 100, 500)
    mask = torch.zeros(1, 1, 100, 500)
    mask[..., :, 240:260] = 1
    canvas = build_canvas(edit, mask, spec=CanvasSpec(aspect_mode="crop"))
    sc = canvas.layout.source_crop
    assert (sc.h, sc.w) == (100, 400) and sc.x == 50 and sc.y == 0


def test_reference_height_jitter_is_seeded_and_in_range():
    edit, ref = torch.rand(1, 3, 96, 96), torch.rand(1, 3, 96, 96)
    a = build_canvas(edit, None, [ref], JITTER, generator=torch.Generator().manual_seed(1)).layout
    b = build_canvas(edit, None, [ref], JITTER, generator=torch.Generator().manual_seed(1)).layout
    assert a == b
    heights = {build_canvas(edit, None, [ref], JITTER, generator=torch.Generator().manual_seed(s))
               .layout.reference_content_boxes[0].h for s in range(12)}
    assert len(heights) > 3 and min(heights) >= 96 // 3 and max(heights) <= 96


def test_target_image_becomes_canvas_target():
    edit, tgt, ref = torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 96), torch.rand(1, 3, 64, 64)
    for policy in ("target_first", "official"):
        c = build_canvas(edit, None, [ref], CanvasSpec(policy=policy, reference_fit="resize"), target_image=tgt)
        r, col = c.layout.target_box.slices()
        assert torch.equal(c.target[:, :, r, col], tgt) if policy == "target_first" else True
        rb = c.layout.reference_boxes[0].slices()
        assert torch.equal(c.target[:, :, rb[0], rb[1]], c.image[:, :, rb[0], rb[1]])


def test_target_is_built_only_when_asked():
    edit = torch.rand(1, 3, 64, 64)
    assert build_canvas(edit, None).target is None
    assert build_canvas(edit, None, with_target=True).target is not None
    assert build_canvas(edit, None, target_image=torch.rand(1, 3, 64, 64)).target is not None
