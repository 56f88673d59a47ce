"""LoRA under DDP moves only the LoRA: 2 processes on the CPU (torchrun, gloo), tiny FLUX.

The frozen base is neither broadcast at DDP construction nor all-reduced: each rank starts with a
different base weight and still holds exactly its own after ``prepare`` and a training step, while
the LoRA gradients are all-reduced (identical on both ranks). The control run wraps the same model
with stock accelerate/DDP and shows that there the base IS overwritten by rank 0's, so the check
can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ddp_toml(comfy_root, tmp_path_factory):
    from aceplus_host import cache_dir
    from trainer import testing

    tmp = tmp_path_factory.mktemp("ddp")
    dit = testing.tiny_flux_file(cache_dir() / "trainer_tiny" / "fill_h256.safetensors")
    toml = tmp / "ddp.toml"
    toml.write_text(testing.to_toml(testing.base_config(dit, tmp / "vae", tmp / "m.jsonl", tmp / "out")))
    return toml


def _worker(mode: str, toml: Path, report: Path, *extra: str) -> list[dict]:
    """``tests/dist_worker.py MODE`` on 2 processes (torchrun, gloo); the two ranks' reports."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "tests/dist_worker.py", mode, str(toml), str(report), *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return [json.loads((report / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_lora_ddp_never_moves_the_base(ddp_toml, tmp_path):
    ours = _worker("ddp_base", ddp_toml, tmp_path / "ours")
    for r in ours:  # each rank keeps its own base: nothing was broadcast onto it
        assert r["base_after"] == r["base_before"]
    assert ours[0]["base_before"] != ours[1]["base_before"]
    # ... while the LoRA gradients were all-reduced: both ranks step to the same LoRA
    assert ours[0]["lora_grad"] == pytest.approx(ours[1]["lora_grad"], rel=1e-6)
    assert ours[0]["lora"] == pytest.approx(ours[1]["lora"], rel=1e-6)

    stock = _worker("ddp_base", ddp_toml, tmp_path / "stock", "--stock")  # control: plain accelerate.prepare
    assert stock[1]["base_after"] == stock[0]["base_before"] != stock[1]["base_before"], \
        "stock DDP no longer broadcasts frozen parameters: the control of this test lost its meaning"
    assert [r["wrappers_at_destroy"] for r in ours + stock] == [[0]] * 4


def test_lora_ddp_training_releases_its_wrapper_before_the_process_group(comfy_root, tmp_path):
    """``train()`` under DDP (2 processes, gloo) drops the DDP wrapper before it destroys the process
    group. A wrapper freed after the group, at interpreter exit, makes gloo abort the finished process
    about half the time (exit -6, torchrun reports the run failed after everything was saved)."""
    from aceplus_host import cache_dir
    from trainer import testing

    tiny = cache_dir() / "trainer_tiny"
    dit = testing.tiny_flux_file(tiny / "fill_h256.safetensors")
    vae = testing.tiny_vae_file(tiny / "vae.safetensors")
    manifest = testing.write_copy_dataset(tmp_path / "data", n=2, size=32)
    toml = tmp_path / "train.toml"
    toml.write_text(testing.to_toml(testing.base_config(dit, vae, manifest, tmp_path / "out", run={"max_steps": 1})))
    reports = _worker("train", toml, tmp_path / "report")
    assert [r["step"] for r in reports] == [1, 1]
    assert [r["wrappers_at_destroy"] for r in reports] == [[0], [0]], "a DDP wrapper outlived the process group"


def test_lora_ddp_streams_the_base_from_one_shared_file(comfy_root, tmp_path):
    """offload.base_blocks = -1 + block inputs on the host under DDP (2 processes, gloo), bf16 base from an fp32
    file: rank 0 writes the converted base once into the cache, and both ranks' streamed host weights are
    views of that one file's memory map (the page cache holds it once per machine, not once per rank).
    Both ranks train exactly as with the base resident, and stay in sync."""
    from aceplus_host import cache_dir
    from trainer import testing

    dit = testing.tiny_flux_file(cache_dir() / "trainer_tiny" / "fill_h256_d3s3.safetensors", depth=3,
                                 depth_single=3)
    d = testing.base_config(dit, tmp_path / "vae", tmp_path / "m.jsonl", tmp_path / "out",
                            model={"base_dtype": "bf16"}, offload={"base_blocks": -1, "activations": True})
    d["cache"] = {"dir": str(tmp_path / "cache")}
    toml = tmp_path / "offload.toml"
    toml.write_text(testing.to_toml(d))
    reports = _worker("offload", toml, tmp_path / "report")
    for r in reports:
        assert r["streamed"] == r["resident"]  # losses and LoRA, bit for bit
        assert r["mapping"]["inside"] == r["mapping"]["host"] > 0, r["mapping"]
    assert reports[0]["streamed"]["lora"] == reports[1]["streamed"]["lora"]  # all-reduced
    assert reports[0]["streamed"]["losses"] != reports[1]["streamed"]["losses"]  # each rank its own data
    a, b = (r["mapping"] for r in reports)
    converted = list((tmp_path / "cache" / "base").iterdir())
    assert a["file"] == b["file"] == str(converted[0]) and a["inode"] == b["inode"] and len(converted) == 1


@pytest.mark.parametrize("which", ["h256", "tiny_fill"])
def test_base_is_memory_mapped_and_equals_stock_loader(comfy_root, fixture_paths, which):
    """Every rank memory-maps the base: the DiT's weights (dtype as in the file) ARE the file's
    pages (their addresses lie inside a mapping of the file: no private copy), and they are exactly
    what ComfyUI's stock loader (``comfy.sd.load_diffusion_model_state_dict``, which copies) gives.
    Needs /proc (Linux)."""
    import comfy.sd
    import comfy.utils
    import torch

    from aceplus_host import cache_dir
    from trainer import testing
    from trainer.config import load_config
    from trainer.model import load_base_model

    dit = (testing.tiny_flux_file(cache_dir() / "trainer_tiny" / "fill_h256.safetensors") if which == "h256"
           else fixture_paths["tiny_fill"])
    dtype = "fp32" if which == "h256" else "bf16"  # the file's dtype: nothing to convert, nothing copied
    d = testing.base_config(dit, Path("vae"), Path("m.jsonl"), Path("out"), model={"base_dtype": dtype})
    cfg = load_config(data=d)
    base = load_base_model(cfg, torch.device("cpu"))
    ranges = testing.mapped_ranges(Path(dit))
    assert ranges, "the DiT file is not memory-mapped at all"
    params = list(base.diffusion_model.named_parameters())
    inside = [n for n, p in params if any(lo <= p.data_ptr() < hi for lo, hi in ranges)]
    assert len(inside) == len(params), sorted({n for n, _ in params} - set(inside))[:5]
    assert not [n for n, t in [*base.named_parameters(), *base.named_buffers()] if t.is_meta]

    if which == "tiny_fill":  # hidden 3072, 24 heads: the stock loader takes it; same tensors
        sd, meta = comfy.utils.load_torch_file(str(dit), return_metadata=True)
        stock = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": torch.bfloat16},
                                                         metadata=meta).model.diffusion_model
        ref, got = stock.state_dict(), base.diffusion_model.state_dict()
        assert type(base.diffusion_model) is type(stock) and set(got) == set(ref)
        assert all(got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k]) for k in ref)


def test_distributed_strategy_choice(comfy_root):
    """'auto': DDP for LoRA, FSDP for full fine-tunes (>1 process), nothing for 1; impossible pairs are
    refused when the config is read, with the fix in the message."""
    from trainer import distributed as D
    from trainer.config import ConfigError, load_config

    base = {"model": {"dit": "x"}, "data": {"manifest": "y"}}
    lora, full = load_config(data=base), load_config(data={**base, "lora": {"enabled": False}})
    assert (D.strategy(lora, 1), D.strategy(lora, 2), D.strategy(full, 1), D.strategy(full, 2)) == \
        ("single", "ddp", "single", "fsdp")
    assert D.strategy(load_config(data=base, overrides=["lora.enabled=false", "train.distributed='ddp'"]), 2) == "ddp"
    with pytest.raises(ConfigError, match="use 'ddp' or 'auto'"):
        load_config(data=base, overrides=["train.distributed='fsdp'"])
    with pytest.raises(ConfigError, match="'bf16'"):
        load_config(data=base, overrides=["lora.enabled=false", "train.distributed='fsdp'",
                                          "train.mixed_precision='fp16'"])
    with pytest.raises(ConfigError, match="'bf16'"):  # auto picks FSDP at 2 processes: refused before loading
        D.check(load_config(data=base, overrides=["lora.enabled=false", "train.mixed_precision='fp16'"]), 2)
