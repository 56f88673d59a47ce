"""User-input errors are ValueErrors that name the values; tensor helpers; no ComfyUI imports."""

import ast
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from aceplus_core import (CanvasSpec, build_canvas, mask_to_b1hw, to_bchw, to_bhwc,  # noqa: E402
                          validate_references)


def test_mask_image_size_mismatch():
    with pytest.raises(ValueError, match=r"\(64, 48\).*\(64, 64\).*[Rr]esize"):
        build_canvas(torch.rand(1, 3, 64, 64), torch.ones(1, 1, 64, 48))


def test_empty_reference_list_when_required():
    with pytest.raises(ValueError, match="at least one reference.*0 given"):
        build_canvas(torch.rand(1, 3, 64, 64), None, [], require_reference=True)
    with pytest.raises(ValueError, match="at least one reference"):
        validate_references([], require=True)
    assert len(validate_references([torch.rand(1, 3, 8, 8)], require=True)) == 1


@pytest.mark.parametrize("size", [(0, 512), (512, -16), (512.5, 512), (512,), "1024"])
def test_non_positive_or_bad_size(size):
    with pytest.raises(ValueError, match="size must be two positive integers"):
        build_canvas(None, None, [torch.rand(1, 3, 32, 32)], CanvasSpec(size=size))


def test_aspect_beyond_limit_names_ratio_and_fix():
    with pytest.raises(ValueError, match=r"5\.00:1.*max_aspect=4:1.*aspect_mode='crop'"):
        build_canvas(torch.rand(1, 3, 64, 320), None)
    with pytest.raises(ValueError, match=r"reference 1 .*6\.00:1"):
        build_canvas(torch.rand(1, 3, 64, 64), None, [torch.rand(1, 3, 32, 32), torch.rand(1, 3, 192, 32)])


@pytest.mark.parametrize("shape", [(1, 64, 64, 3), (1, 3, 64, 64)])
def test_three_channel_mask(shape):
    with pytest.raises(ValueError, match="3 channels.*ImageToMask"):
        build_canvas(torch.rand(1, 3, 64, 64), torch.ones(*shape))
    with pytest.raises(ValueError, match="single-channel"):
        mask_to_b1hw(torch.ones(*shape))


def test_image_channel_and_batch_errors():
    with pytest.raises(ValueError, match="3 channels.*got 4"):
        build_canvas(torch.rand(1, 4, 64, 64), None)
    with pytest.raises(ValueError, match="batch size 3.*batch size 2"):
        build_canvas(torch.rand(2, 3, 64, 64), torch.ones(3, 1, 64, 64))
    with pytest.raises(ValueError, match="reference 0 has batch size 3"):
        build_canvas(torch.rand(2, 3, 64, 64), None, [torch.rand(3, 3, 32, 32)])
    with pytest.raises(ValueError, match="policy='fast'"):
        build_canvas(torch.rand(1, 3, 64, 64), None, spec=CanvasSpec(policy="fast"))
    with pytest.raises(ValueError, match="repainting_scale must be in"):
        build_canvas(torch.rand(1, 3, 64, 64), None, spec=CanvasSpec(repainting_scale=1.5))
    with pytest.raises(ValueError, match="max_tokens=2 cannot hold"):
        build_canvas(torch.rand(1, 3, 64, 64), None, [torch.rand(1, 3, 32, 32)] * 2, CanvasSpec(max_tokens=2))


def test_mask_shapes_and_layout_helpers():
    for shape in [(32, 48), (2, 32, 48), (2, 1, 32, 48), (2, 32, 48, 1)]:
        assert mask_to_b1hw(torch.ones(*shape)).shape[1:] == (1, 32, 48)
    img = torch.rand(2, 32, 48, 3)
    chw = to_bchw(img)
    assert chw.shape == (2, 3, 32, 48)
    assert torch.equal(to_bhwc(chw), img)
    # batch broadcast: one mask and one reference for a batch of two
    c = build_canvas(torch.rand(2, 3, 64, 64), torch.ones(64, 64).unsqueeze(0).unsqueeze(0),
                     [torch.rand(1, 3, 32, 32)])
    assert c.image.shape[0] == 2 and c.mask.shape[0] == 2


FORBIDDEN = {"comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "server", "execution"}


def test_core_never_imports_comfyui():
    files = sorted((ROOT / "aceplus_core").rglob("*.py"))
    assert files
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"{path.name} imports {name}"
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # absolute self-imports break under ComfyUI's arbitrary package name
                assert not node.module.startswith("aceplus_core"), f"{path.name}: use relative imports"
