"""Trainer loop pieces: the batch plan over canvas variants, pickle-free checkpoints, save-before-sample,
the export check, and loop options no shipped recipe turns on (official policy, unmasked weight, img_in)."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file


@pytest.fixture(scope="module")
def env(comfy_root, tmp_path_factory):
    from aceplus_host import cache_dir
    from trainer import testing

    tiny = cache_dir() / "trainer_tiny"
    tmp = tmp_path_factory.mktemp("loop")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {"dit": testing.tiny_flux_file(tiny / "fill_h256.safetensors"),
           "vae": testing.tiny_vae_file(tiny / "vae.safetensors"),
           "jsonl": testing.write_copy_dataset(tmp / "data", n=4, size=64), "tmp": tmp}
    torch.set_num_threads(threads)


def _cfg(env, name, **sections):
    from trainer import testing
    from trainer.config import load_config

    d = testing.base_config(env["dit"], env["vae"], env["jsonl"], env["tmp"] / name, **sections)
    d["cache"] = {"dir": str(env["tmp"] / "cache")}
    return load_config(data=d)


# --- batch plan ---------------------------------------------------------------------------------

def _index(n_samples: int, variants: int, seed: int = 0) -> list[dict]:
    """Cache-index entries whose canvas width varies by variant (as reference_height_jitter does)."""
    g = torch.Generator().manual_seed(seed)
    widths = [64, 96, 112, 128]
    return [{"sample": i, "variant": v, "h": 64, "w": widths[int(torch.randint(4, (), generator=g))]}
            for i in range(n_samples) for v in range(variants)]


@pytest.mark.parametrize("global_batch", [1, 2, 3])
def test_batch_plan_never_mixes_shapes_and_uses_every_variant(global_batch):
    from trainer.loop import BatchPlan

    index = _index(12, 4)
    shape = {(e["sample"], e["variant"]): (e["h"], e["w"]) for e in index}
    plan = BatchPlan(index, global_batch, seed=5)
    for epoch in range(3):
        seen = []
        for j in range(plan.per_epoch):
            b = plan.batch(epoch * plan.per_epoch + j)
            assert len(b) == global_batch and len({shape[e] for e in b}) == 1, b
            seen += b
        assert len(seen) == len(set(seen))  # each (sample, variant) at most once per epoch
        dropped = sum(len(v) % global_batch for v in plan.buckets.values())
        assert len(seen) == len(index) - dropped
        assert {v for _, v in seen} == {0, 1, 2, 3}
    again = BatchPlan(index, global_batch, seed=5)  # deterministic in (seed, m)
    assert [again.batch(m) for m in range(2 * plan.per_epoch)] == [plan.batch(m) for m in range(2 * plan.per_epoch)]


def test_batch_plan_without_a_full_bucket_says_what_to_change():
    from trainer.config import ConfigError
    from trainer.loop import BatchPlan

    index = [{"sample": i, "variant": 0, "h": 64, "w": 64 + 16 * i} for i in range(3)]
    with pytest.raises(ConfigError, match="batch_size"):
        BatchPlan(index, 2, seed=0)


def test_stage2_variants_train_with_their_own_shapes(env, monkeypatch):
    """The issue's stage-2 crash: jittered variants of different canvas sizes, batch 2 and grad_accum 2.
    Every loaded batch has one shape and noise of that shape, and variants other than 0 are trained."""
    from trainer import cache as cache_mod
    from trainer import loop

    cfg = _cfg(env, "stage2", run={"max_steps": 6}, train={"batch_size": 2, "grad_accum": 2},
               canvas={"reference_height_jitter": [0.3333, 1.0], "variants": 4, "max_tokens": 64,
                       "target_tokens": 16})
    loaded = []
    real = cache_mod.load_batch

    def spy(paths):
        loaded.extend(paths)
        return real(paths)

    monkeypatch.setattr(cache_mod, "load_batch", spy)
    encoded = []
    real_text = cache_mod.Encoders._encode_text
    monkeypatch.setattr(cache_mod.Encoders, "_encode_text", lambda self, p: encoded.append(p) or real_text(self, p))
    result = loop.train(cfg)
    assert len(result["losses"]) == 6 and all(v == v for _, v in result["losses"])
    samples, _ = loop.load_samples(cfg)
    # each distinct prompt is encoded once, not once per entry (4 samples x 4 variants; T5 dominates a
    # real caching pass)
    assert sorted(encoded) == sorted({s.prompt for s in samples}), encoded
    index = cache_mod.read_index(cfg, cache_mod.run_cache_pass(cfg, samples, {}))
    by_path = {e["path"]: e for e in index}
    assert len({(e["h"], e["w"]) for e in index}) > 1  # the variants really differ in size
    used = [by_path[p] for p in loaded]
    assert {e["variant"] for e in used} - {0}, "only variant 0 was ever trained"
    for k in range(0, len(used), 2):  # one global batch (1 process x batch 2) per pair
        assert used[k]["h"] == used[k + 1]["h"] and used[k]["w"] == used[k + 1]["w"], used[k:k + 2]


# --- checkpoints: no pickles --------------------------------------------------------------------

class Payload:  # a class pickle would instantiate (it runs code on load)
    def __reduce__(self):
        return (print, ("unpickled!",))


def _legacy_checkpoint(root: Path, optimizer_obj) -> Path:
    d = root / "checkpoints" / "step-00000001"
    d.mkdir(parents=True)
    save_file({"w": torch.zeros(2)}, str(d / "trainable.safetensors"))
    torch.save(optimizer_obj, d / "optimizer.pt")
    torch.save({"base_lrs": [0.1], "last_epoch": 1}, d / "scheduler.pt")
    torch.save({"torch": torch.get_rng_state()}, d / "rng.pt")
    (d / "state.json").write_text(json.dumps({"step": 1, "micro": 1, "config": {}}))
    return d


def test_checkpoint_with_a_pickled_object_is_refused(tmp_path, capsys):
    from trainer.checkpoint import CheckpointError, load_checkpoint

    d = _legacy_checkpoint(tmp_path, {"state": {}, "param_groups": [], "extra": Payload()})
    with pytest.raises(CheckpointError, match=r"optimizer\.pt holds pickled Python objects.*never loads") as e:
        load_checkpoint(d)
    assert "state.safetensors" in str(e.value)
    assert "unpickled!" not in capsys.readouterr().out


def test_legacy_checkpoint_of_plain_tensors_still_loads(tmp_path):
    from trainer.checkpoint import load_checkpoint

    d = _legacy_checkpoint(tmp_path, {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1}]})
    got = load_checkpoint(d)
    assert torch.equal(got["optimizer"]["state"][0]["exp_avg"], torch.ones(2))


def test_checkpoint_round_trip_has_no_pickle(tmp_path):
    """Optimizer (int-keyed state, tuple betas), scheduler and RNG state come back exactly, from
    safetensors + JSON only."""
    import random

    import numpy as np

    from trainer import checkpoint as C

    p = torch.nn.Parameter(torch.randn(3, 4))
    opt = torch.optim.AdamW([p], lr=1e-3, betas=(0.9, 0.99))
    p.grad = torch.randn(3, 4)
    opt.step()
    sch = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5)
    d = C.save_checkpoint(str(tmp_path), 3, 6, {"w": p.detach()}, opt.state_dict(), sch.state_dict(), "{}", 0)
    assert {f.name for f in d.iterdir()} == {"trainable.safetensors", "state.safetensors", "state.json"}
    for f in d.iterdir():
        assert not f.read_bytes().startswith(b"\x80"), f"{f} looks like a pickle"
    want = (torch.rand(3), np.random.rand(2), random.random())
    got = C.load_checkpoint(d)
    C.set_rng_state(got["rng"])
    assert torch.equal(want[0], torch.rand(3)) and (want[1] == np.random.rand(2)).all() and want[2] == random.random()
    assert got["step"] == 3 and got["micro"] == 6
    a, b = opt.state_dict(), got["optimizer"]
    assert b["param_groups"] == a["param_groups"]
    assert set(b["state"]) == {0} and all(torch.equal(a["state"][0][k], b["state"][0][k]) for k in a["state"][0])
    assert got["scheduler"] == sch.state_dict()
    with pytest.raises(TypeError, match="no pickles"):
        C.save_checkpoint(str(tmp_path), 4, 8, {}, {"x": object()}, {}, "{}", 0)


# --- save before sample ---------------------------------------------------------------------------

def test_failing_sample_render_costs_no_checkpoint(env, monkeypatch, caplog):
    from trainer import loop, sample

    out = env["tmp"] / "badsample"
    seen = []

    def broken(model, cfg, samples, paths, step, accelerator=None):
        seen.append((step, (out / "checkpoints" / f"step-{step:08d}" / "state.json").is_file()))
        raise RuntimeError("mat1 and mat2 must have the same dtype")  # what a bf16 render raised

    monkeypatch.setattr(sample, "render_samples", broken)
    cfg = _cfg(env, "badsample", run={"max_steps": 3, "save_every": 1, "sample_every": 1, "keep_checkpoints": 0})
    with caplog.at_level(logging.ERROR):
        result = loop.train(cfg)
    assert seen == [(1, True), (2, True), (3, True)]  # each step's checkpoint existed before its render
    assert result["step"] == 3 and result["export"].is_file()
    errors = [r for r in caplog.records if "sample rendering at step" in r.getMessage()]
    assert len(errors) == 3 and all(r.exc_info and "same dtype" in str(r.exc_info[1]) for r in errors)


def test_failing_sample_render_under_fsdp_stops_the_run_with_the_resume_advice(env, monkeypatch):
    """Under FSDP every rank renders together: a rank whose render failed cannot let the others wait in a
    collective it will never join, so the error ends the run (after the step's checkpoint) and says how
    to go on, instead of being logged and skipped as in a single-process run."""
    import types

    from trainer import distributed, loop

    def broken(cfg, model, samples, paths, step, accelerator):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(distributed, "strategy", lambda cfg, world: "fsdp")
    monkeypatch.setattr(distributed, "render_samples", broken)
    rank1 = types.SimpleNamespace(num_processes=2, process_index=1, is_main_process=False)
    with pytest.raises(RuntimeError, match=r"step 7 failed on rank 1 .*CUDA out of memory.*run.resume = 'latest'") \
            as err:
        loop.sample_phase(_cfg(env, "fsdp_render"), None, [], {}, rank1, 7)
    assert str(err.value.__cause__) == "CUDA out of memory"


# --- export check ---------------------------------------------------------------------------------

def test_export_check_fails_on_a_bad_key_set(env):
    from trainer.export import ExportCheckError, check_lora_loads_in_comfy, lora_state_dict
    from trainer.model import Trainable, load_dit

    cfg = _cfg(env, "check")
    model = Trainable(load_dit(cfg, torch.device("cpu")), cfg)
    shapes = {k: tuple(v.shape) for k, v in model.dit.state_dict().items()}
    good = lora_state_dict(model)
    check_lora_loads_in_comfy(good, shapes)  # the real export passes

    stem = "lora_unet_double_blocks_0_img_attn_qkv"
    unknown = {**good, "lora_unet_double_blocks_7_img_attn_qkv.lora_down.weight": good[f"{stem}.lora_down.weight"],
               "lora_unet_double_blocks_7_img_attn_qkv.lora_up.weight": good[f"{stem}.lora_up.weight"]}
    with pytest.raises(ExportCheckError, match="would not load.*double_blocks_7"):
        check_lora_loads_in_comfy(unknown, shapes)
    typo = dict(good)
    typo[f"{stem}.lora_dwn.weight"] = typo.pop(f"{stem}.lora_down.weight")
    with pytest.raises(ExportCheckError, match="parser fails.*incomplete or misnamed"):
        check_lora_loads_in_comfy(typo, shapes)
    wrong = dict(good)
    wrong[f"{stem}.lora_up.weight"] = torch.zeros(7, wrong[f"{stem}.lora_up.weight"].shape[1])
    with pytest.raises(ExportCheckError, match="do not fit"):
        check_lora_loads_in_comfy(wrong, shapes)


def test_full_export_uses_the_base_files_bfl_keys():
    """ComfyUI 0.33 loads a BFL ``*_norm.scale`` as the module's ``*_norm.weight``; the export writes the
    file's names back, and a key that matches nothing in the base file stops the export."""
    from trainer.export import ExportCheckError, bfl_keys

    file_keys = {"img_in.weight", "double_blocks.0.img_attn.norm.query_norm.scale"}
    t = torch.zeros(1)
    module_033 = {"img_in.weight": t, "double_blocks.0.img_attn.norm.query_norm.weight": t}
    module_0375 = {"img_in.weight": t, "double_blocks.0.img_attn.norm.query_norm.scale": t}
    assert set(bfl_keys(module_033, file_keys)) == file_keys
    assert set(bfl_keys(module_0375, file_keys)) == file_keys
    with pytest.raises(ExportCheckError, match="1 unknown.*img_out.weight"):
        bfl_keys({**module_033, "img_out.weight": t}, file_keys)
    with pytest.raises(ExportCheckError, match="1 missing.*img_in.weight"):
        bfl_keys({"double_blocks.0.img_attn.norm.query_norm.weight": t}, file_keys)


# --- loop options no shipped recipe turns on -------------------------------------------------------

def test_official_policy_unmasked_weight_and_img_in_train(env):
    """policy = 'official', unmasked_weight and lora.train_img_in inside the loop: it trains, img_in gets
    an adapter that is exported and trained, and the unmasked weight changes the loss it reports."""
    from trainer import loop

    sec = dict(run={"max_steps": 2}, train={"scheduler": "constant", "lr": 1e-2})
    base = loop.train(_cfg(env, "opts_base", canvas={"policy": "official"}, **sec))
    opts = loop.train(_cfg(env, "opts", canvas={"policy": "official"}, lora={"train_img_in": True},
                           train={**sec["train"], "unmasked_weight": 0.25}, run=sec["run"]))
    for r in (base, opts):
        assert [s for s, _ in r["losses"]] == [1, 2] and all(v == v for _, v in r["losses"])
    # step 1 sees the same data and noise; img_in's LoRA starts at zero, so only the weighting differs
    assert opts["losses"][0][1] < base["losses"][0][1]  # unmasked tokens weigh 0.25 instead of 1
    lora = load_file(str(opts["export"]))
    assert "lora_unet_img_in.lora_up.weight" in lora and lora["lora_unet_img_in.lora_up.weight"].abs().max() > 0
    assert "lora_unet_img_in.lora_up.weight" not in load_file(str(base["export"]))


# --- full fine-tune end to end ----------------------------------------------------------------------

def test_full_finetune_resume_matches_uninterrupted(env):
    """lora.enabled = false on the tiny model, single process: 2 steps, then --resume latest to step 4,
    gives bit-identical weights to 4 uninterrupted steps; the checkpoint holds every DiT weight and
    the AdamW state as safetensors, and the export has the base file's BFL key set."""
    from trainer import loop
    from trainer.export import bfl_keys

    sec = dict(lora={"enabled": False}, train={"scheduler": "constant", "lr": 1e-4}, model={"num_heads": 0})
    ref = loop.train(_cfg(env, "fft_ref", run={"max_steps": 4, "save_every": 0}, **sec))
    loop.train(_cfg(env, "fft_cut", run={"max_steps": 2, "save_every": 0}, **sec))
    ck = env["tmp"] / "fft_cut" / "checkpoints" / "step-00000002"
    base_keys = set(load_file(str(env["dit"])))  # the checkpoint holds every weight (under the module's names)
    assert set(bfl_keys(load_file(str(ck / "trainable.safetensors")), base_keys)) == base_keys
    assert any(k.startswith("optimizer/") for k in load_file(str(ck / "state.safetensors")))
    resumed = loop.train(_cfg(env, "fft_cut", run={"max_steps": 4, "save_every": 0, "resume": "latest"}, **sec))
    assert [s for s, _ in resumed["losses"]] == [3, 4]
    assert resumed["losses"] == ref["losses"][2:]
    a, b = load_file(str(ref["export"])), load_file(str(resumed["export"]))
    assert set(a) == set(b) == set(load_file(str(env["dit"])))
    assert all(torch.equal(a[k], b[k]) for k in a)
