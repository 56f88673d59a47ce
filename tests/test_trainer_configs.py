"""Every shipped recipe in trainer/configs/ runs to completion, and the loop options no recipe covers.

Each recipe is read as shipped; the test swaps in what a CPU test needs and nothing else:
tiny random-weight models of the recipe's ``model.kind`` (hidden 256), the stub text encoder, a tiny
dataset with reference rows (of the recipe's first ``data_type`` when it filters), a small token
budget, a few steps, and (when the recipe continues from a LoRA) a random LoRA file of the recipe's
rank. Optimizer, precision, base dtype, jitter, variants, reference fit, LoRA rank and targets, full
fine-tune, sampling and checkpointing stay as shipped. A recipe added to the folder is covered here
without touching this file.
"""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "trainer" / "configs").glob("*.toml"))
STEPS = 3


@pytest.fixture(scope="module")
def tiny(comfy_root, tmp_path_factory):
    from aceplus_host import cache_dir
    from trainer import testing

    root = cache_dir() / "trainer_tiny"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is faster than two on a small shared box
    yield {
        "fill": testing.tiny_flux_file(root / "fill_h256.safetensors"),
        "fft": testing.tiny_flux_file(root / "fft_h256.safetensors", kind="fft"),
        "vae": testing.tiny_vae_file(root / "vae.safetensors"),
        "tmp": tmp_path_factory.mktemp("recipes"),
    }
    torch.set_num_threads(threads)


def _random_lora(cfg, path: Path) -> Path:
    """A LoRA file in the released key format for this recipe's rank/targets on the tiny model."""
    from trainer.export import lora_state_dict
    from trainer.model import Trainable, load_dit

    model = Trainable(load_dit(cfg, torch.device("cpu")), cfg)
    g = torch.Generator().manual_seed(7)
    for lora in model.loras.values():
        lora.up.data = torch.randn(lora.up.shape, generator=g) * 0.01
    save_file(lora_state_dict(model, torch.float32), str(path))
    return path


def shrunk(recipe: Path, tiny: dict, out: Path) -> dict:
    """The recipe as shipped, with tiny models / data / budget / steps swapped in (see the module doc)."""
    from trainer import testing

    raw = tomllib.loads(recipe.read_text())
    d = copy.deepcopy(raw)
    model = d.setdefault("model", {})
    kind = model.get("kind", "fill")
    model.update(dit=str(tiny[kind]), vae=str(tiny["vae"]), text_encoder="stub_test_only", num_heads=0)
    run = d.setdefault("run", {})
    run.update(output_dir=str(out), max_steps=STEPS)
    if run.get("sample_every"):
        run["sample_every"] = STEPS  # sampling on: render once, at the last step (after its checkpoint)
        d.setdefault("sample", {})["steps"] = 1
    types = d.get("data", {}).get("data_types") or ["subject"]
    manifest = testing.write_copy_dataset(out / "data", n=4, size=64, data_type=types[0])
    d.setdefault("data", {})["manifest"] = str(manifest)
    canvas = d.setdefault("canvas", {})
    canvas.update(max_tokens=64, target_tokens=16)  # 64 px target = 16 tokens; one 64 px reference beside it
    if d.get("lora", {}).get("init_from"):
        from trainer.config import load_config

        base = copy.deepcopy(d)
        base["lora"].pop("init_from")
        d["lora"]["init_from"] = str(_random_lora(load_config(data=base), out / "init_lora.safetensors"))
    return d


def test_recipes_folder_is_not_empty():
    assert len(RECIPES) >= 5, RECIPES


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipe_runs(tiny, recipe, monkeypatch):
    """The recipe trains STEPS steps: finite losses, a complete checkpoint, the export with its config,
    every global batch of one canvas shape with noise of that shape, and (when the recipe samples) an image."""
    from trainer import cache as cache_mod
    from trainer import loop
    from trainer.config import load_config
    from trainer.export import read_metadata

    out = tiny["tmp"] / recipe.stem
    cfg = load_config(data=shrunk(recipe, tiny, out))
    seen = []
    real_loss = loop.loss_of

    def spy(model, batch, layouts, eps, s, cfg_, device):
        seen.append((tuple(batch["x0"].shape), tuple(eps.shape), [(lay.canvas_h, lay.canvas_w) for lay in layouts]))
        return real_loss(model, batch, layouts, eps, s, cfg_, device)

    monkeypatch.setattr(loop, "loss_of", spy)
    result = loop.train(cfg)

    assert [s for s, _ in result["losses"]] == list(range(1, STEPS + 1))
    assert all(torch.isfinite(torch.tensor(v)) for _, v in result["losses"]), result["losses"]
    assert len(seen) == STEPS * cfg.train.grad_accum
    for x0_shape, eps_shape, canvases in seen:
        assert x0_shape == eps_shape and len(set(canvases)) == 1, (x0_shape, eps_shape, canvases)
        assert x0_shape[-2:] == (canvases[0][0] // 8, canvases[0][1] // 8)
    ck = out / "checkpoints" / f"step-{STEPS:08d}"
    assert {p.name for p in ck.iterdir()} == {"trainable.safetensors", "state.safetensors", "state.json"}
    meta = read_metadata(str(result["export"]))
    assert meta["aceplus_config"] == json.loads(cfg.to_json())
    assert meta["aceplus_format"] == ("lora_kohya_bfl" if cfg.lora.enabled else "bfl_full")
    weights = load_file(str(result["export"]))
    if cfg.lora.enabled:
        assert all(k.startswith("lora_unet_") for k in weights)
    else:  # full fine-tune: every DiT weight, BFL keys, changed by training
        base = load_file(cfg.model.dit)
        assert set(weights) == set(base)
        assert any(not torch.equal(weights[k].float(), base[k].float()) for k in base)
    if cfg.run.sample_every:
        assert (out / "samples" / f"step{STEPS:08d}_sample0.png").is_file()
    if cfg.canvas.variants > 1 and cfg.canvas.reference_height_jitter:
        index = cache_mod.read_index(cfg, cache_mod.run_cache_pass(cfg, loop.load_samples(cfg)[0], {}))
        assert len({(e["h"], e["w"]) for e in index}) > 1, "jitter variants should differ in canvas size"
