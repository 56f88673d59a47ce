"""Offloading ([offload]): the frozen base streamed from host memory, block inputs kept on the host.

On the CPU the streamer runs its GPU schedule with separate CPU buffers as the "device" copies, so
what a GPU run computes is checked here bit for bit:

- **bit-equal**: a tiny run (3 double + 3 single blocks) with streaming and/or activation offload
  gives exactly the losses, the LoRA after 3 steps, the exported file, the sample image and the
  resumed run of the same run without them; on the fp32 CPU ops, and on the ops ComfyUI builds on
  CUDA (bf16 without manual cast, fp8 manual-cast to bf16), forced on the CPU; Fill and FFT (448);
- **residency**: at most ``prefetch + 1`` streamed blocks have a device copy alive at once (weak
  references on every copy, so what autograd keeps counts too), and no op but the copy itself ever
  reads a host-resident weight;
- **bad input**: a card too small even with everything offloaded, too little host RAM, impossible
  option pairs: each stops before the first step with the figures and the fix.
"""

from __future__ import annotations

import logging
import shutil
import weakref

import pytest
import torch
from safetensors.torch import load_file

from test_trainer_cuda_dtypes import _cuda_manual_cast

BLOCKS = 6  # 3 double + 3 single


@pytest.fixture(scope="module")
def env(comfy_root, tmp_path_factory):
    from aceplus_host import cache_dir
    from trainer import testing

    tiny = cache_dir() / "trainer_tiny"
    tmp = tmp_path_factory.mktemp("offload")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield {"dit": testing.tiny_flux_file(tiny / "fill_h256_d3s3.safetensors", depth=3, depth_single=3),
           "vae": testing.tiny_vae_file(tiny / "vae.safetensors"),
           "jsonl": testing.write_copy_dataset(tmp / "data", n=4, size=64), "tmp": tmp}
    torch.set_num_threads(threads)


def _cfg(env, out, offload=None, **sections):
    from trainer import testing
    from trainer.config import load_config

    d = testing.base_config(env["dit"], env["vae"], env["jsonl"], out, offload=offload or {}, **sections)
    d["cache"] = {"dir": str(env["tmp"] / "cache")}
    return load_config(data=d)


def _train(env, name, offload=None, **sections):
    from trainer.loop import train

    out = env["tmp"] / name
    shutil.rmtree(out, ignore_errors=True)
    sections.setdefault("run", {})
    sections["run"] = {"max_steps": 3, "save_every": 2, "keep_checkpoints": 0, **sections["run"]}
    r = train(_cfg(env, out, offload, **sections))
    return {"out": out, "losses": [v for _, v in r["losses"]], "lora": r["model"].trainable_state(),
            "export": load_file(str(r["export"])), "model": r["model"]}


def _equal(a: dict, b: dict) -> None:
    assert a["losses"] == b["losses"]
    assert set(a["lora"]) == set(b["lora"]) and all(torch.equal(a["lora"][k], b["lora"][k]) for k in a["lora"])
    assert set(a["export"]) == set(b["export"]) and all(torch.equal(a["export"][k], b["export"][k])
                                                        for k in a["export"])


def _resumed(env, run: dict, name: str, offload: dict, **sections) -> dict:
    """The same run again from its step-2 checkpoint (step 3 deleted): it must end where it ended."""
    out = env["tmp"] / name
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(run["out"], out)
    shutil.rmtree(out / "checkpoints" / "step-00000003")
    from trainer.loop import train

    r = train(_cfg(env, out, offload, run={"max_steps": 3, "save_every": 2, "keep_checkpoints": 0, "resume": "latest"},
                   **sections))
    return {"losses": run["losses"][:2] + [v for _, v in r["losses"]], "lora": r["model"].trainable_state(),
            "export": load_file(str(r["export"]))}


def test_streaming_is_bit_equal_fp32(env, caplog):
    """fp32 CPU ops: every block streamed; 4 streamed + block inputs on the host with 2 ahead; block inputs
    only. Losses, LoRA, export and the sample render equal the run without offloading; so does a run
    resumed from a streamed run's checkpoint."""
    samples = {"run": {"sample_every": 3}, "sample": {"steps": 2, "indices": [0]}}
    ref = _train(env, "ref", **samples)
    with caplog.at_level(logging.INFO, logger="trainer.offload"):
        full = _train(env, "all", {"base_blocks": -1}, **samples)
    assert caplog.text.count("saves no memory here") == 1, caplog.text  # logged once, on the CPU
    _equal(full, ref)
    png = "samples/step00000003_sample0.png"
    assert (full["out"] / png).read_bytes() == (ref["out"] / png).read_bytes()  # no-grad streaming too
    both = _train(env, "part_act", {"base_blocks": 4, "activations": True, "prefetch": 2})
    _equal(both, ref)
    _equal(_train(env, "act", {"activations": True}), ref)
    _equal(_resumed(env, both, "part_act_resumed", {"base_blocks": 4, "activations": True, "prefetch": 2}), ref)


@pytest.mark.parametrize("base", ["bf16", "fp8_e4m3fn"])
def test_streaming_is_bit_equal_on_cuda_ops(env, monkeypatch, base):
    """The ops ComfyUI builds on CUDA (bf16 weights multiplied as stored: autograd saves the streamed
    copy itself; fp8 manual-cast to bf16), bf16 autocast, with the base converted once into the shared
    cache file: streaming + block inputs on the host equal the resident run, resume included."""
    import comfy.model_management as mm

    monkeypatch.setattr(mm, "unet_manual_cast", _cuda_manual_cast)
    sec = {"model": {"base_dtype": base}, "train": {"mixed_precision": "bf16"}}
    ref = _train(env, f"ref_{base}", **sec)
    off = {"base_blocks": -1, "activations": True}
    run = _train(env, f"stream_{base}", off, **sec)
    _equal(run, ref)
    linears = [m for m in run["model"].dit.modules() if isinstance(m, torch.nn.Linear)]
    assert all(bool(getattr(m, "comfy_cast_weights", False)) == (base != "bf16") for m in linears)
    converted = list((env["tmp"] / "cache" / "base").glob("*.safetensors"))
    assert any({"bf16": "-bf16-", "fp8_e4m3fn": "-f8_e4m3-"}[base] in p.name for p in converted), converted
    _equal(_resumed(env, run, f"stream_{base}_resumed", off, **sec), ref)


def test_streaming_is_bit_equal_fft(env, monkeypatch):
    """The 448-channel FFT model (its own tiny 3 + 3 block file), fp8 base on the CUDA ops, every block
    streamed + block inputs on the host: the same losses, LoRA and export as without offloading."""
    import comfy.model_management as mm

    from aceplus_host import cache_dir
    from trainer import testing

    monkeypatch.setattr(mm, "unet_manual_cast", _cuda_manual_cast)
    fft = testing.tiny_flux_file(cache_dir() / "trainer_tiny" / "fft_h256_d3s3.safetensors", kind="fft", depth=3,
                                 depth_single=3)
    sec = {"model": {"dit": str(fft), "kind": "fft", "base_dtype": "fp8_e4m3fn"}, "run": {"save_every": 0}}
    _equal(_train(env, "fft_stream", {"base_blocks": -1, "activations": True}, **sec), _train(env, "fft_ref", **sec))


def _tiny_model(env, base="fp32"):
    from trainer.model import Trainable, load_dit

    cfg = _cfg(env, env["tmp"] / "unused", model={"base_dtype": base})
    model = Trainable(load_dit(cfg, torch.device("cpu"), on_host=True), cfg).train()
    for lora in model.loras.values():  # nonzero up: gradients reach every block's input
        torch.nn.init.normal_(lora.up, std=0.02, generator=torch.Generator().manual_seed(3))
    return model


class _ReadsHost(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every op other than the streamer's copy that reads memory of a host-resident weight."""

    ALLOWED = {"aten.copy_.default", "aten.empty_like.default", "aten.detach.default", "aten.alias.default"}

    def __init__(self, ranges):
        super().__init__()
        self.ranges, self.hits = ranges, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) not in self.ALLOWED:
            for a in torch.utils._pytree.tree_leaves((args, kwargs or {})):
                if isinstance(a, torch.Tensor) and a.device.type == "cpu" and a.numel():
                    p = a.data_ptr()
                    if any(lo <= p < hi for lo, hi in self.ranges):
                        self.hits.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("base,streamed,prefetch", [("fp32", -1, 1), ("fp32", 4, 2), ("fp8_e4m3fn", -1, 1)])
def test_residency_bound(env, monkeypatch, base, streamed, prefetch):
    """Two training steps and a no-grad pass: never more than ``prefetch + 1`` streamed blocks have a live
    device copy (counted by weak references, so copies autograd saved count until it frees them: fp32
    ops save the weight itself), and nothing but the copy reads a streamed block's host weights."""
    import comfy.model_management as mm

    from trainer import offload

    if base != "fp32":
        monkeypatch.setattr(mm, "unet_manual_cast", _cuda_manual_cast)
    model = _tiny_model(env, base)
    n = BLOCKS if streamed < 0 else streamed
    host = [(p.data_ptr(), p.data_ptr() + p.numel() * p.element_size())
            for _, blk in offload.blocks_of(model.dit)[:n] for p in blk.parameters()]
    alive: dict[int, int] = {}
    seen = {"max": 0, "copies": 0}

    def dec(k):
        alive[k] -= 1

    def observe(k, tensors):
        seen["copies"] += 1
        for t in tensors:
            alive[k] = alive.get(k, 0) + 1
            weakref.finalize(t.untyped_storage(), dec, k)
        seen["max"] = max(seen["max"], sum(1 for v in alive.values() if v))

    streamer = offload.attach(model, streamed, False, torch.device("cpu"), prefetch, observer=observe)
    g = torch.Generator().manual_seed(0)
    x, s = torch.randn(1, 96, 8, 16, generator=g), torch.tensor([0.4])
    ctx, pooled = torch.randn(1, 8, 64, generator=g), torch.randn(1, 768, generator=g)
    with _ReadsHost(host) as mode:
        for _ in range(2):
            with torch.autocast("cpu", torch.bfloat16, enabled=base != "fp32"):
                loss = (model(x, s, ctx, pooled, 1.0).float() ** 2).mean()
            loss.backward()
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.loras.parameters())
        with torch.no_grad():
            model(x, s, ctx, pooled, 1.0)
    assert mode.hits == [], sorted(set(mode.hits))
    assert seen["copies"] >= 2 * n  # every streamed block copied in at least forward and backward
    assert 2 <= seen["max"] <= prefetch + 1, seen
    assert streamer.max_loaded <= prefetch + 1
    # host weights are back in every streamed block outside the window kept for the next pass
    kept = set(range(prefetch + 1)) | set(range(BLOCKS - prefetch - 1, BLOCKS))
    for k, (_, blk) in enumerate(offload.blocks_of(model.dit)[:n]):
        ptrs = {p.data_ptr() for p in blk.parameters()}
        assert k in kept or ptrs <= {lo for lo, _ in host}, k


def test_plan_fits_and_explains(env, monkeypatch):
    """offload.auto takes the least offloading that fits the budget; settings that do not fit, and too
    little host RAM for the pinned buffers, stop the run with the figures and what to change."""
    from trainer import offload_plan as P
    from trainer.config import ConfigError
    from trainer.model import check_dit_file

    cfg = _cfg(env, env["tmp"] / "plan", {"auto": True, "memory_gib": 1.0})
    shapes = check_dit_file(cfg)
    index = [{"h": 1024, "w": 2048, "path": ""}]  # 64 x 128 = 8192 image tokens
    arch = P.Arch.from_shapes(shapes, 4, cfg)
    step = P.step_of(cfg, index, torch.device("cpu"), 8)
    # candidates in auto's order: n = 0..6 blocks streamed with block inputs on the device, then on the host
    order = [(n, act) for act in (False, True) for n in range(BLOCKS + 1)]
    gib = [P.with_margin(P.predict(arch, step, n, act)["bytes"]) / P.GIB for n, act in order]
    assert all(a >= b for a, b in zip(gib, gib[1:])) and gib[0] > gib[BLOCKS] > gib[-1], gib  # each saves more
    steps = [i for i in range(1, len(gib)) if gib[i] < gib[i - 1]]
    assert len(steps) >= 5, gib
    for i in [0] + steps:
        budget = gib[0] + 1e-3 if i == 0 else (gib[i] + gib[i - 1]) / 2
        p = P.plan(_cfg(env, env["tmp"] / "plan", {"auto": True, "memory_gib": budget}), shapes, index,
                   torch.device("cpu"), 8)
        assert (p.base_blocks, p.activations) == order[i] and p.peak_gib <= budget, (i, budget, p)
    with pytest.raises(ConfigError, match=r"(?s)too small.*8192 image.*1\.00 GiB.*even with every block streamed and "
                                          r"the block inputs on the host it needs.*lower lora\.rank \(now 4\) or "
                                          r"canvas\.max_tokens"):
        P.plan(cfg, shapes, index, torch.device("cpu"), 8)
    i = steps[1]  # an explicit setting one step short of fitting: the message names the one that fits
    short = order[i - 1]
    fixed = _cfg(env, env["tmp"] / "plan", {"base_blocks": short[0], "activations": short[1],
                                             "memory_gib": (gib[i] + gib[i - 1]) / 2})
    with pytest.raises(ConfigError, match=rf"offload\.base_blocks = {short[0]}, offload\.activations = "
                                          rf"{str(short[1]).lower()} needs {gib[i - 1]:.2f} GiB.*Fix: stream more: "
                                          rf"offload\.base_blocks = {order[i][0]}"):
        P.plan(fixed, shapes, index, torch.device("cpu"), 8)
    monkeypatch.setattr(P, "available_host_gib", lambda: 1e-6)
    host = _cfg(env, env["tmp"] / "plan", {"base_blocks": -1, "activations": True})
    with pytest.raises(ConfigError, match=r"pinned host memory .* only 0\.0 GiB .* offload\.activations = false"):
        P.plan(host, shapes, index, torch.device("cpu"), 8)


def test_offload_option_pairs_refused(env):
    from trainer.config import ConfigError

    with pytest.raises(ConfigError, match="full fine-tune trains every weight"):
        _cfg(env, env["tmp"] / "x", {"base_blocks": -1}, lora={"enabled": False})
    with pytest.raises(ConfigError, match="needs model.gradient_checkpointing = true"):
        _cfg(env, env["tmp"] / "x", {"activations": True}, model={"gradient_checkpointing": False})
    with pytest.raises(ConfigError, match="chooses offload.base_blocks and offload.activations itself"):
        _cfg(env, env["tmp"] / "x", {"auto": True, "base_blocks": 3})
    with pytest.raises(ConfigError, match="offload.prefetch = 0"):
        _cfg(env, env["tmp"] / "x", {"base_blocks": 3, "prefetch": 0})
