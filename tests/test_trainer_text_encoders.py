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


def test_comfy_text_encoders_cache_and_train(encoders, tmp_path, monkeypatch):
    """One sample: its prompt goes through ComfyUI's tokenizer and encoders, and the cached text is
    T5-XXL's (256, 4096) sequence and CLIP-L's 768-d pooled vector, finite and not constant; then one
    training step on it. One prompt, because every T5-XXL forward costs about 30 s here: ComfyUI casts
    all 4.76 B fp8 weights per forward and runs 256 tokens (its FLUX minimum) through them. Prompt
    handling (one cache entry per prompt, encoded once) is tested on the stub encoder
    (tests/test_trainer_loop.py). (Not compared with a second ``load_clip`` of the same files: that
    would hold a second 4.8 GB T5 in RAM on a shared CI box.)"""
    import comfy.sd

    from aceplus_host import cache_dir
    from trainer import cache as C
    from trainer import testing
    from trainer.config import load_config
    from trainer.loop import train

    tiny = cache_dir() / "trainer_tiny"
    dit = testing.tiny_flux_file(tiny / "fill_h256_ctx4096.safetensors", context_dim=4096)
    vae = testing.tiny_vae_file(tiny / "vae.safetensors")
    manifest = testing.write_copy_dataset(tmp_path / "data", n=1, size=32)
    (row,) = [json.loads(line) for line in manifest.read_text().splitlines()]
    prompt = "{image}, the man faces the camera."
    manifest.write_text(json.dumps({**row, "prompt": prompt}) + "\n")
    tokenized = []
    real_tokenize = comfy.sd.CLIP.tokenize
    monkeypatch.setattr(comfy.sd.CLIP, "tokenize",
                        lambda self, text, *a, **k: tokenized.append(text) or real_tokenize(self, text, *a, **k))

    d = testing.base_config(dit, vae, manifest, tmp_path / "out", run={"max_steps": 1})
    d["model"].update(text_encoder="comfy", clip_l=str(encoders["clip_l"]), t5xxl=str(encoders["t5xxl"]))
    cfg = load_config(data=d)
    result = train(cfg)
    assert len(result["losses"]) == 1 and torch.isfinite(torch.tensor(result["losses"][0][1]))
    assert tokenized == [prompt], tokenized

    (entry,) = sorted(C.cache_root(cfg).glob("*.safetensors"))
    text = C.load_entry(str(entry))[0]
    assert text["ctx"].shape == (256, 4096) and text["pooled"].shape == (768,)
    assert torch.isfinite(text["ctx"]).all() and torch.isfinite(text["pooled"]).all()
    assert text["ctx"].std() > 0 and text["pooled"].std() > 0
