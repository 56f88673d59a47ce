"""Trainer: bad configs and bad data fail before any training, with messages that name the problem."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture(scope="module")
def tr(comfy_root):
    from trainer import config, data, model, testing

    return config, data, model, testing


@pytest.fixture()
def small(tmp_path, tr, fixture_paths):
    _, _, _, testing = tr
    manifest = testing.write_copy_dataset(tmp_path / "data", n=2, size=32)
    return testing.base_config(fixture_paths["tiny_fill"], fixture_paths["tiny_vae"], manifest, tmp_path / "out")


def test_unknown_key_named(tr, small):
    config = tr[0]
    small["train"]["learning_rat"] = 1e-4
    with pytest.raises(config.ConfigError, match=r"train\.learning_rat"):
        config.load_config(data=small)


def test_wrong_type_named(tr, small):
    config = tr[0]
    with pytest.raises(config.ConfigError, match=r"lora\.rank must be an integer"):
        config.load_config(data=small, overrides=["lora.rank='sixteen'"])
    with pytest.raises(config.ConfigError, match=r"model\.kind = 'flil' is not one of"):
        config.load_config(data=small, overrides=["model.kind=flil"])


def test_set_overrides_and_toml(tr, small, tmp_path):
    config = tr[0]
    toml = tmp_path / "run.toml"
    toml.write_text('[lora]\nrank = 8\n[train]\nbetas = [0.9, 0.99]\n')
    cfg = config.load_config(toml, ["lora.alpha=8", "train.unmasked_weight=0.25", f"model.dit={small['model']['dit']}",
                                    f"data.manifest={small['data']['manifest']}"])
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.train.unmasked_weight) == (8, 8.0, 0.25)
    assert cfg.train.betas == [0.9, 0.99] and cfg.learning_rate == 1e-3
    assert "lora.rank" not in config.describe() and "rank = 64" in config.describe()  # documented defaults


def test_missing_model_file(tr, small):
    config, _, model, _ = tr
    small["model"]["dit"] = "/nowhere/flux1-fill-dev.safetensors"
    cfg = config.load_config(data=small)
    with pytest.raises(config.ConfigError, match="model.dit '/nowhere/flux1-fill-dev.safetensors' does not exist"):
        model.check_dit_file(cfg)


def test_base_without_fill_channels(tr, small, fixture_paths):
    config, _, model, _ = tr
    small["model"]["dit"] = str(fixture_paths["tiny_dev"])
    with pytest.raises(config.ConfigError, match=r"img_in takes 64 input features but model.kind = 'fill' needs 384"):
        model.check_dit_file(config.load_config(data=small))
    small["model"]["dit"] = str(fixture_paths["tiny_fft"])
    with pytest.raises(config.ConfigError, match="set model.kind = 'fft'"):
        model.check_dit_file(config.load_config(data=small))


def test_train_fails_before_loading_anything(tr, small, monkeypatch):
    """train() checks the model file and the data before it builds the Accelerator or loads weights."""
    config = tr[0]
    from trainer import loop

    monkeypatch.setattr(loop, "load_dit", lambda *a, **k: pytest.fail("model loaded before validation"))
    small["model"]["dit"] = "/nowhere/x.safetensors"
    with pytest.raises(config.ConfigError, match="does not exist"):
        loop.train(config.load_config(data=small))


def test_empty_dataset_and_corrupt_rows(tr, small, tmp_path, caplog):
    config, data, _, _ = tr
    root = Path(small["data"]["manifest"]).parent
    (root / "target_0.png").write_bytes(b"not a png")      # corrupt
    (root / "ref_1.png").unlink()                          # missing
    with caplog.at_level(logging.WARNING), pytest.raises(config.ConfigError, match="has no usable sample"):
        data.load_samples(config.load_config(data=small))
    assert "train.jsonl:1: target_image" in caplog.text and "is not an image" in caplog.text
    assert "train.jsonl:2: reference 0" in caplog.text and "does not exist" in caplog.text


def test_stage_filter_and_csv(tr, small, tmp_path):
    config, data, _, testing = tr
    csv = testing.write_copy_dataset(tmp_path / "csvdata", n=3, size=32, fmt="csv", data_type="inpainting")
    small["data"] = {"manifest": str(csv), "data_types": ["inpainting"]}
    samples, report = data.load_samples(config.load_config(data=small))
    assert len(samples) == 3 and len(samples[0].references) == 1 and samples[0].prompt
    small["data"]["data_types"] = ["subject"]
    with pytest.raises(config.ConfigError, match="3 filtered by data_type"):
        data.load_samples(config.load_config(data=small))


@pytest.mark.parametrize("mode", ["resize", "skip"])
def test_mask_size_mismatch(tr, small, caplog, mode):
    config, data, _, _ = tr
    root = Path(small["data"]["manifest"]).parent
    Image.new("L", (40, 24), 255).save(root / "mask_0.png")
    small["data"]["mask_mismatch"] = mode
    with caplog.at_level(logging.INFO):
        samples, report = data.load_samples(config.load_config(data=small))
    assert "mask" in caplog.text and "(40x24)" not in caplog.text  # sizes are logged as (h, w)
    assert "(24, 40) but its image is (32, 32)" in caplog.text
    if mode == "resize":
        assert len(samples) == 2 and report.fixed == {"mask_resized": 1}
        t = data.load_sample_tensors(samples[0])
        assert t["mask"].shape == (1, 1, 32, 32)
    else:
        assert len(samples) == 1 and report.skipped == {"mask_size_mismatch": 1}


def test_example_configs_parse(tr):
    config = tr[0]
    found = sorted((Path(__file__).resolve().parent.parent / "trainer" / "configs").glob("*.toml"))
    assert len(found) >= 5
    kinds = {p.stem: config.load_config(p) for p in found}
    assert not kinds["full_finetune_fft"].lora.enabled and kinds["full_finetune_fft"].learning_rate == 5e-5
    assert kinds["continue_released_lora"].lora.init_from.endswith("comfyui_subject_lora16.safetensors")


def test_tiny_models_are_the_shared_builders(tr, tmp_path):
    """The trainer's tiny VAE / FLUX files are the shared ``aceplus_host.tiny_models`` builders' output
    (seeded, every weight drawn, finite), and a cached VAE from an older builder is rebuilt."""
    import torch
    from safetensors.torch import load_file, save_file

    from aceplus_host.tiny_models import KINDS, TINY_VAE_VERSION, fixture_version, flux_state_dict, tiny_vae_state_dict

    testing = tr[3]
    stale = tmp_path / "vae.safetensors"
    save_file({"vae_scale": torch.tensor(1.0)}, str(stale))  # an old file: no builder version in its metadata
    path = testing.tiny_vae_file(stale, seed=3)
    assert fixture_version(path) == TINY_VAE_VERSION
    got, want = load_file(str(path)), tiny_vae_state_dict(3)
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    assert all(torch.isfinite(v).all() for v in got.values())

    flux = load_file(str(testing.tiny_flux_file(tmp_path / "flux.safetensors", hidden=128, seed=5)))
    ref = flux_state_dict(KINDS["fill"], depth=1, depth_single=1, hidden=128, seed=5, dtype=torch.float32)
    assert set(flux) == set(ref) and all(torch.equal(flux[k], ref[k]) for k in ref)
    assert flux["img_in.weight"].shape == (128, 384)


def test_cache_key_follows_vae_and_text_encoder_files(tr, small, tmp_path):
    """A different VAE or text-encoder file under the same path gives new cache keys (re-encoded),
    an untouched one the same keys."""
    import os

    config, data, _, _ = tr
    from trainer.cache import entry_key

    vae, clip, t5 = (tmp_path / n for n in ("ae.safetensors", "clip_l.safetensors", "t5.safetensors"))
    for f in (vae, clip, t5):
        f.write_bytes(b"x" * 8)
    small["model"].update(vae=str(vae), clip_l=str(clip), t5xxl=str(t5), text_encoder="comfy")
    cfg = config.load_config(data=small)
    sample = data.load_samples(cfg)[0][0]
    key = entry_key(cfg, sample, 0)
    assert entry_key(cfg, sample, 0) == key
    for f in (vae, t5):
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # replaced by another file, same name
        new = entry_key(cfg, sample, 0)
        assert new != key, f
        key = new


def test_print_config_is_valid_toml_and_the_readme_list(tr):
    """``--print-config`` output parses as TOML into the defaults, and README's "Every option" block is it."""
    import tomllib

    config = tr[0]
    text = config.describe()
    cfg = config.load_config(data=tomllib.loads(text), overrides=["model.dit=x", "data.manifest=y"])
    assert cfg.train == config.TrainConfig() and cfg.canvas == config.CanvasConfig()
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    assert f"```toml\n{text.strip()}\n```" in readme, "README 'Every option' differs from describe(): paste it"


@pytest.mark.parametrize("name", ["adamw", "adamw_fused", "adamw8bit"])
def test_optimizer_choice_carries_the_release_hyperparameters(tr, small, name, caplog, monkeypatch):
    """Every optimizer option gives AdamW with the configured betas/eps/decay; on the CPU the fused
    one falls back (CUDA only), and the 8-bit one falls back with a warning when bitsandbytes is missing."""
    import sys

    import torch

    from trainer import loop

    config = tr[0]
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError
    cfg = config.load_config(data=small, overrides=[f"train.optimizer='{name}'", "train.eps=1e-7"])
    params = [torch.nn.Parameter(torch.zeros(3))]
    with caplog.at_level(logging.WARNING):
        opt = loop.make_optimizer(params, cfg, torch.device("cpu"))
    group = opt.param_groups[0]
    assert (group["lr"], group["betas"], group["eps"], group["weight_decay"]) == (1e-3, (0.9, 0.999), 1e-7, 0.01)
    assert type(opt) is torch.optim.AdamW and not group.get("fused")
    warned = any("bitsandbytes is not installed" in r.getMessage() for r in caplog.records)
    assert warned == (name == "adamw8bit")
