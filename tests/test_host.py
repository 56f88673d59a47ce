"""The test host itself: the fixtures load through ComfyUI's own loaders, LoRA keys all map."""

from __future__ import annotations

import logging

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
