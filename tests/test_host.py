"""The test host itself: the fixtures load through ComfyUI's own loaders, LoRA keys all map, the pack's
pinned V3 API is there and the import-time guard turns away an older ComfyUI with a clear message."""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from fixtures import DOUBLE_TARGETS, SINGLE_TARGETS


@pytest.mark.parametrize("name, channels", [("tiny_fill", 384), ("tiny_fft", 448), ("tiny_dev", 64)])
def test_diffusion_fixtures_load_with_their_channel_count(fixture_paths, name, channels):
    import comfy.sd

    patcher = comfy.sd.load_diffusion_model(str(fixture_paths[name]))
    assert patcher.model.diffusion_model.img_in.weight.shape == (3072, channels)
    assert type(patcher.model.model_config).__name__ == ("FluxInpaint" if channels == 384 else "Flux")


def test_vae_fixture_is_a_16_channel_flux_vae(fixture_paths):
    import comfy.sd
    import comfy.utils

    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(fixture_paths["tiny_vae"])))
    latent = vae.encode(torch.rand(1, 64, 96, 3))
    assert latent.shape == (1, 16, 8, 12)
    assert vae.decode(latent).shape[-3:] == (64, 96, 3)


def full_size_fill_on_meta():
    """A real ``model_base.Flux`` with FLUX.1-Fill-dev's full config, on the meta device (no memory)."""
    import comfy.supported_models

    from aceplus_host.tiny_models import flux_config

    config = flux_config(image_model="flux", in_channels=96, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                         hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19, depth_single_blocks=38,
                         axes_dim=[16, 56, 56], theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)
    model_config = comfy.supported_models.FluxInpaint(config)
    model_config.set_inference_dtype(torch.bfloat16, None)
    with torch.device("meta"):
        return model_config.get_model({}, device="meta")


@pytest.mark.parametrize("rank", [16, 64])
def test_released_lora_fixture_maps_every_key(fixture_paths, rank, caplog):
    """The released format (kohya keys on BFL names) maps fully onto a full-depth FLUX Fill."""
    import comfy.lora

    path = fixture_paths[f"released_lora_r{rank}"]
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
        assert f.get_slice("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight").get_shape() == [rank, 3072]
        assert f.get_slice("lora_unet_single_blocks_37_linear1.lora_up.weight").get_shape() == [21504, rank]
        assert float(f.get_tensor("lora_unet_single_blocks_37_linear1.alpha")) == rank
    modules = 19 * len(DOUBLE_TARGETS) + 38 * len(SINGLE_TARGETS)
    assert len(keys) == 3 * modules
    key_map = comfy.lora.model_lora_keys_unet(full_size_fill_on_meta(), {})
    with caplog.at_level(logging.WARNING):
        patches = comfy.lora.load_lora({k: torch.zeros(1) for k in keys}, key_map)
    assert not [r for r in caplog.records if "not loaded" in r.getMessage()]
    assert len(patches) == modules


def test_tiny_lora_loads_through_load_lora_for_models(fixture_paths, caplog):
    import comfy.sd
    import comfy.utils

    model = comfy.sd.load_diffusion_model(str(fixture_paths["tiny_fill"]))
    lora = comfy.utils.load_torch_file(str(fixture_paths["tiny_lora_r16"]))
    with caplog.at_level(logging.WARNING):
        patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    assert not [r for r in caplog.records if "not loaded" in r.getMessage()]
    assert len(patched.patches) == len(DOUBLE_TARGETS)


# ---- the V3 API and the import-time guard, on whichever host runs the suite ------------------------------------

PACK_ROOT = Path(__file__).resolve().parent.parent
PINNED_V3 = "comfy_api.v0_0_2"


def comfy_api_imports() -> dict[str, set[str]]:
    """Every ``comfy_api`` module the pack's code imports, by file."""
    found: dict[str, set[str]] = {}
    for path in [PACK_ROOT / "__init__.py", *sorted((PACK_ROOT / "nodes").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            for name in names:
                if name.split(".")[0] == "comfy_api":
                    found.setdefault(str(path.relative_to(PACK_ROOT)), set()).add(name)
    return found


def test_the_pack_imports_only_the_pinned_v3_api():
    """``comfy_api.latest`` moves with every release; the pack pins v0_0_2, which 0.3.75 and 0.33 both provide."""
    imports = comfy_api_imports()
    assert imports, "the nodes are written against the V3 API: some module must import it"
    others = {f: names - {PINNED_V3} for f, names in imports.items() if names - {PINNED_V3}}
    assert not others, f"import {PINNED_V3} only, not {others}"


def test_the_host_provides_the_pinned_v3_api_the_pack_uses(comfy_root, pack):
    import asyncio
    import importlib

    v3 = importlib.import_module(PINNED_V3)
    for name in ("ComfyExtension", "io"):
        assert hasattr(v3, name), f"{PINNED_V3}.{name} is missing on ComfyUI at {comfy_root}"
    for name in ("ComfyNode", "Schema", "NodeOutput", "Custom", "Image", "Mask", "Combo", "Int", "Float", "String"):
        assert hasattr(v3.io, name), f"{PINNED_V3}.io.{name} is missing on ComfyUI at {comfy_root}"
    extension = asyncio.run(pack.comfy_entrypoint())
    nodes = asyncio.run(extension.get_node_list())
    assert {n.define_schema().node_id for n in nodes} >= {"ACEPP_Loader", "ACEPP_Conditioning", "ACEPP_Sampler"}


def test_the_guard_passes_the_running_host(comfy_root, pack):
    from aceplus_host import comfyui_version

    version = comfyui_version(comfy_root)
    assert tuple(map(int, version.split(".")[:3])) >= tuple(map(int, pack.MIN_COMFYUI.split(".")))
    assert pack._host_too_old() is None


def fake_host(tmp_path: Path, version: str | None, v3: bool) -> Path:
    """A folder that looks like an older ComfyUI to the pack's guard: a version file and a comfy_api package."""
    root = tmp_path / "fake_comfyui"
    (root / "comfy_api").mkdir(parents=True)
    (root / "comfy_api" / "__init__.py").write_text("")
    if v3:
        (root / "comfy_api" / "v0_0_2").mkdir()
        (root / "comfy_api" / "v0_0_2" / "__init__.py").write_text("")
    if version is not None:
        (root / "comfyui_version.py").write_text(f'__version__ = "{version}"\n')
    return root


def import_pack_on(host: Path) -> subprocess.CompletedProcess:
    """Import the pack the way ComfyUI does (a package named after its folder), with ``host`` first on sys.path."""
    code = ("import importlib.util, sys; sys.path.insert(0, sys.argv[1]); "
            "spec = importlib.util.spec_from_file_location('ComfyUI-ACEPlusPlus', sys.argv[2] + '/__init__.py', "
            "submodule_search_locations=[sys.argv[2]]); m = importlib.util.module_from_spec(spec); "
            "sys.modules[spec.name] = m; spec.loader.exec_module(m)")
    return subprocess.run([sys.executable, "-c", code, str(host), str(PACK_ROOT)], capture_output=True, text=True,
                          cwd=host, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, timeout=60)


@pytest.mark.parametrize("version, v3, shown", [("0.3.60", True, "0.3.60"), ("0.3.40", False, "0.3.40"),
                                               (None, False, "unknown")])
def test_the_guard_names_an_older_host_and_the_fix(tmp_path, version, v3, shown):
    done = import_pack_on(fake_host(tmp_path, version, v3))
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ComfyUI-ACEPlusPlus requires a newer version of ComfyUI"), done.stderr
    assert f"this one is {shown}" in last and "0.3.75 or later" in last and "Please update ComfyUI" in last


def test_the_guard_lets_a_new_enough_host_through_to_the_nodes(tmp_path):
    """0.3.75 with the V3 package passes the guard: the import goes on to the nodes (here a fake, empty API)."""
    done = import_pack_on(fake_host(tmp_path, "0.3.75", True))
    assert "requires a newer version" not in done.stderr
    assert "cannot import name 'ComfyExtension'" in done.stderr  # reached nodes/__init__.py


# ---- another ComfyUI from a source archive, and the front end it pins -------------------------------------------


def fake_comfyui_archive(tmp_path: Path, version: str, frontend: str = "1.49.6", tops=("ComfyUI-x",)) -> Path:
    import tarfile

    src = tmp_path / "src"
    for top in tops:
        (src / top / "comfy").mkdir(parents=True)
        (src / top / "main.py").write_text("")
        (src / top / "comfy" / "model_base.py").write_text("")
        (src / top / "comfyui_version.py").write_text(f'# generated\n__version__ = "{version}"\n')
        (src / top / "requirements.txt").write_text(f"comfyui-frontend-package=={frontend}\ntorch\n")
    archive = tmp_path / "comfyui.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for top in tops:
            tar.add(src / top, arcname=top)
    return archive


def test_an_archive_unpacks_once_into_the_cache_by_its_version(tmp_path, monkeypatch):
    from aceplus_host import comfyui_version, host_frontend_version, unpack_comfyui_archive

    monkeypatch.setenv("ACEPP_CACHE", str(tmp_path / "cache"))
    archive = fake_comfyui_archive(tmp_path, "0.99.1", frontend="9.8.7")
    root = unpack_comfyui_archive(archive)
    assert root == tmp_path / "cache" / "comfyui-0.99.1"
    assert comfyui_version(root) == "0.99.1" and host_frontend_version(root) == "9.8.7"
    (root / "marker").write_text("kept")
    assert unpack_comfyui_archive(archive) == root and (root / "marker").is_file()  # not unpacked again
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["comfyui-0.99.1"]  # no temp folder left


def test_an_archive_that_is_not_one_comfyui_tree_is_refused(tmp_path, monkeypatch):
    from aceplus_host import unpack_comfyui_archive

    monkeypatch.setenv("ACEPP_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="should hold one ComfyUI folder"):
        unpack_comfyui_archive(fake_comfyui_archive(tmp_path, "0.99.1", tops=("a", "b")))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        unpack_comfyui_archive(tmp_path / "nowhere.tar.gz")


def test_the_front_end_comes_from_the_hosts_pin(comfy_root, tmp_path, monkeypatch):
    """The version is read from the host's requirements.txt; a cached ``pip --target`` copy of it is found."""
    from aceplus_host import find_frontend, host_frontend_version

    pin = host_frontend_version(comfy_root)
    line = next(ln for ln in (comfy_root / "requirements.txt").read_text().splitlines()
                if ln.lower().startswith("comfyui-frontend-package"))
    assert line.replace(" ", "") == f"comfyui-frontend-package=={pin}"
    monkeypatch.setenv("ACEPP_CACHE", str(tmp_path))
    assert find_frontend("0.0.1") is None
    static = tmp_path / "frontend" / "0.0.1" / "comfyui_frontend_package" / "static"
    static.mkdir(parents=True)
    (static / "index.html").write_text("<html></html>")
    assert find_frontend("0.0.1") == static


def test_another_front_end_version_comes_from_the_cache_beside_the_pin(comfy_root, tmp_path, monkeypatch):
    """``ensure_frontend(root, version)``: a version other than the pin (ACEPP_FRONTEND_VERSION in the front-end
    tests) is looked up in ``<cache>/frontend/<version>``, where it is installed with ``pip --target``."""
    from aceplus_host import ensure_frontend

    monkeypatch.setenv("ACEPP_CACHE", str(tmp_path))
    static = tmp_path / "frontend" / "0.0.2" / "comfyui_frontend_package" / "static"
    static.mkdir(parents=True)
    (static / "index.html").write_text("<html></html>")
    assert ensure_frontend(comfy_root, "0.0.2") == static
