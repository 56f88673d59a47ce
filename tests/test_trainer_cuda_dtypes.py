"""The dtype paths a CUDA run takes, forced on the CPU.

On CUDA, ComfyUI keeps bf16 weights in ops WITHOUT manual cast (``unet_manual_cast`` returns None
when the device supports bf16, so ``pick_operations`` gives ``disable_weight_init``): a Linear then
multiplies its bf16 weight with whatever it is fed, and an fp32 input fails. fp8 weights get
``manual_cast`` ops that compute in bf16. On the CPU ComfyUI manual-casts everything to fp32, so the
default tests never see those paths. Here ``unet_manual_cast`` answers as it does on a bf16-capable
GPU, and the trainer runs steps and renders a sample on the ops ComfyUI then builds.
"""

from __future__ import annotations

import pytest
import torch

from test_trainer_run import _cfg, env  # noqa: F401  (module fixture: tiny DiT, VAE, dataset)


def _cuda_manual_cast(weight_dtype, inference_device, supported_dtypes=(torch.float16, torch.bfloat16,
                                                                        torch.float32)):
    """``comfy.model_management.unet_manual_cast`` on a bf16-capable GPU (e.g. an A100/H100)."""
    if weight_dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        return None  # native: ops without manual cast
    return torch.bfloat16  # fp8 storage: manual cast to bf16


@pytest.fixture
def cuda_ops(monkeypatch, comfy_root):
    import comfy.model_management as mm

    monkeypatch.setattr(mm, "unet_manual_cast", _cuda_manual_cast)


@pytest.mark.parametrize("base,mixed", [("bf16", "no"), ("bf16", "bf16"), ("fp8_e4m3fn", "no"),
                                        ("fp8_e4m3fn", "bf16")])
def test_cuda_ops_path_trains_and_samples(env, cuda_ops, base, mixed):  # noqa: F811
    """Three LoRA steps with finite losses and a sample render (outside autocast), on the ops ComfyUI
    builds on CUDA: bf16 weights with no manual cast, or fp8 weights manual-cast to bf16."""
    from trainer.config import load_config
    from trainer.loop import train

    out = env["tmp"] / f"cuda_{base}_{mixed}"
    cfg = load_config(data=_cfg(env, out, run={"max_steps": 3, "save_every": 0, "sample_every": 3},
                                model={"base_dtype": base}, train={"mixed_precision": mixed},
                                sample={"steps": 2, "indices": [0]}))
    result = train(cfg)
    dit = result["model"].dit
    linears = [m for m in dit.modules() if isinstance(m, torch.nn.Linear)]
    want = {"bf16": torch.bfloat16, "fp8_e4m3fn": torch.float8_e4m3fn}[base]
    assert linears and all(m.weight.dtype == want for m in linears)
    # the forced path really is the CUDA one: no manual cast for bf16, manual cast for fp8
    assert all(bool(getattr(m, "comfy_cast_weights", False)) == (base != "bf16") for m in linears)
    losses = [v for _, v in result["losses"]]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(v)) for v in losses), losses
    assert (out / "samples" / "step00000003_sample0.png").is_file()


def test_cuda_bf16_sample_render_outside_autocast(env, cuda_ops):  # noqa: F811
    """``render_samples`` on a bare bf16 model (no accelerate wrapper, no autocast anywhere): the
    sampler feeds fp32 latents, and the no-manual-cast ops must still get bf16 inputs."""
    from trainer import cache as C
    from trainer.config import load_config
    from trainer.data import load_samples
    from trainer.model import Trainable, check_dit_file, load_dit
    from trainer.sample import render_samples

    out = env["tmp"] / "cuda_render"
    cfg = load_config(data=_cfg(env, out, model={"base_dtype": "bf16"}, sample={"steps": 2, "indices": [0]}))
    samples, _ = load_samples(cfg)
    keys = C.run_cache_pass(cfg, samples, check_dit_file(cfg))
    paths = {(e["sample"], e["variant"]): e["path"] for e in C.read_index(cfg, keys)}
    model = Trainable(load_dit(cfg, torch.device("cpu")), cfg)
    assert not torch.is_autocast_enabled("cpu")
    written = render_samples(model, cfg, samples, paths, 7)
    assert [p.name for p in written] == ["step00000007_sample0.png"] and written[0].is_file()
