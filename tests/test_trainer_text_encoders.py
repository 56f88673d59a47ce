"""``model.text_encoder = "comfy"``: the caching pass encodes prompts with CLIP-L and T5-XXL through
ComfyUI's own text-encoder loader (``comfy.sd.load_text_encoder_state_dicts``, what ``load_clip`` and
``DualCLIPLoader`` call), on encoder files with the real architectures and random weights.

ComfyUI builds T5-XXL from its fixed ``t5_config_xxl.json``, so a smaller T5 does not load unchanged: the
T5 file is full size (4.76 B parameters), stored as float8_e4m3fn like the common
``t5xxl_fp8_e4m3fn.safetensors`` (4.8 GB on disk and in RAM while the caching pass runs). Marked
``real_text_encoders``; CI runs it with the rest (``pytest -q``), ``-m "not real_text_encoders"`` skips it.
"""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.real_text_encoders


@pytest.fixture(scope="module")
def encoders(comfy_root):
    from fixtures import ensure_text_encoders

    return ensure_text_encoders()


def test_mmap_reader_matches_safetensors(encoders):
    from safetensors.torch import load_file

    from trainer.cache import mmap_safetensors

    want = load_file(str(encoders["clip_l"]))
    got = mmap_safetensors(str(encoders["clip_l"]))
    assert set(got) == set(want)
    assert all(got[k].dtype == want[k].dtype and torch.equal(got[k], want[k]) for k in want)


def test_text_encoder_dtype_choice(comfy_root):
    """'auto' leaves the GPU to ComfyUI (fp16) and computes in bf16 on the CPU; the others are explicit."""
    import comfy.model_management as mm

    from trainer.cache import text_encoder_dtype

    on_cpu = mm.is_device_cpu(mm.text_encoder_device())
    assert text_encoder_dtype("auto") == (torch.bfloat16 if on_cpu else None)
    assert [text_encoder_dtype(c) for c in ("fp32", "bf16", "fp16")] == [torch.float32, torch.bfloat16, torch.float16]


def test_comfy_text_encoders_cache_and_train(encoders, tmp_path, caplog):
    """Two samples with different prompts: the cached text is T5-XXL's (L, 4096) sequence and CLIP-L's
    768-d pooled vector, finite, different per prompt; then one training step on it. On the CPU the
    encoders compute in bf16 (``text_encoder_dtype = "auto"``), which ComfyUI reports when it loads them.
    (Not compared with a second ``load_clip`` of the same files: that would hold a second 4.8 GB T5 in
    RAM on a shared CI box.)"""
    import logging

    caplog.set_level(logging.INFO)
    from aceplus_host import cache_dir
    from trainer import cache as C
    from trainer import testing
    from trainer.config import load_config
    from trainer.loop import train

    tiny = cache_dir() / "trainer_tiny"
    dit = testing.tiny_flux_file(tiny / "fill_h256_ctx4096.safetensors", context_dim=4096)
    vae = testing.tiny_vae_file(tiny / "vae.safetensors")
    manifest = testing.write_copy_dataset(tmp_path / "data", n=2, size=32)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    prompts = ["a red cube on a table", "{image}, the man faces the camera."]
    manifest.write_text("".join(json.dumps({**r, "prompt": p}) + "\n" for r, p in zip(rows, prompts)))

    d = testing.base_config(dit, vae, manifest, tmp_path / "out", run={"max_steps": 1})
    d["model"].update(text_encoder="comfy", clip_l=str(encoders["clip_l"]), t5xxl=str(encoders["t5xxl"]))
    cfg = load_config(data=d)
    result = train(cfg)
    assert len(result["losses"]) == 1 and torch.isfinite(torch.tensor(result["losses"][0][1]))
    loads = [r.getMessage() for r in caplog.records if r.getMessage().startswith("CLIP/text encoder model load")]
    assert len(loads) == 1 and loads[0].endswith("dtype: torch.bfloat16"), loads

    entries = sorted(C.cache_root(cfg).glob("*.safetensors"))
    assert len(entries) == 2
    texts = [C.load_entry(str(p))[0] for p in entries]
    for t in texts:
        assert t["ctx"].ndim == 2 and t["ctx"].shape[1] == 4096 and t["pooled"].shape == (768,)
        assert torch.isfinite(t["ctx"]).all() and torch.isfinite(t["pooled"]).all()
        assert t["ctx"].std() > 0
    assert not torch.equal(texts[0]["pooled"], texts[1]["pooled"])
