"""Full-size memory and FLOPs without a GPU: the trainer's real step on fake tensors.

    python bench/simulate_full_size.py                 # every row, full size (19 + 38 blocks, hidden 3072)
    python bench/simulate_full_size.py --depth 1 1     # the same rows at reduced depth (what CI runs)
    python bench/simulate_full_size.py --rows lora_r64_fp8_8192,lora_r16_fp8_8192
    python bench/simulate_full_size.py --rows lora_r64_fp8_offload_8192 --search offload --guidance

Under ``torch._subclasses.fake_tensor.FakeTensorMode`` every tensor has a shape, a dtype and a storage
size but no memory. The script builds ComfyUI's ``Flux`` at full size and runs the trainer's own
pieces on it: ``trainer.model.Trainable`` (LoRA forward hooks, per-block checkpointing through FLUX's
``patches_replace``, out-of-place adds), fp8 base storage through ComfyUI's ``manual_cast`` ops,
``trainer.loop.make_optimizer``, bf16 autocast, gradient clipping, ``optimizer.step``. ``LiveBytes``
(a ``TorchDispatchMode``) adds each new output storage's ``nbytes()`` when it appears and subtracts
it through ``weakref.finalize`` when it dies: the peak is the live-tensor peak that
``torch.cuda.max_memory_allocated`` reports on a card, before allocator rounding.
The ``*_offload*`` rows stream the base from host memory with ``trainer.offload`` and count host bytes
apart (``bench/simulate_offload.py``: also the largest-canvas search with offloading and ``--guidance``,
offload.auto's pick per card, simulated). The ``full_ft_fsdp8`` row shards the same step with the trainer's FSDP2 code on a fake 8-rank
process group and reports rank 0 (``bench/simulate_fsdp.py``); DTensors count at their local shard.

Simulation choices that mirror a CUDA run (see docs/full_size_simulation.md in the shared notes):
- the fake device is the CPU: SDPA there dispatches to ``_scaled_dot_product_flash_attention_for_cpu``
  (output + logsumexp, no L x L matrix: the memory shape of CUDA flash / memory-efficient attention);
- ComfyUI is told to use PyTorch SDPA (``--use-pytorch-cross-attention``), as it does on CUDA, not its
  CPU sub-quadratic path; each row reports the attention op that ran;
- torch AdamW runs with ``foreach=True`` (its CUDA default; on CPU tensors it defaults to a loop);
- 8-bit AdamW: bitsandbytes cannot run on fake CPU tensors, so ``Adam8bitStates`` allocates exactly
  the states ``bnb.optim.AdamW8bit`` allocates (Optimizer2State.init_state, block-wise: two uint8
  buffers of the parameter's shape + two fp32 absmax vectors of ceil(n / 256); tensors under 4096
  elements keep fp32 states) and updates in place, as bnb's fused kernel does.

Each row is broken down by what owns the bytes at the peak: weights (the frozen or trained base),
lora (adapter parameters), grads, optimizer (states), activations (allocated in the forward pass
and alive at the peak: block inputs saved by checkpointing, the loss graph), temporaries
(allocated after the forward: recomputed blocks, backward buffers, optimizer temporaries).

The margin: a card also holds the CUDA context and cuBLAS/cuDNN workspaces (not counted by
``max_memory_allocated``; about 0.5-0.8 GiB with lazy module loading on CUDA 12) and the caching
allocator's rounding and fragmentation (reserved / allocated is typically 1.05-1.10 for a loop of
same-shaped steps). ``MARGIN_FIXED_GIB`` + ``MARGIN_FRACTION`` x peak covers both; GiB columns
"with margin" include it. ``bench/gpu_check.sh`` measures the real figures when a GPU is lent.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for _p in (ROOT, ROOT / "bench"):  # the trainer; simulate_fsdp (the FSDP row) next to this file
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from live_bytes import Adam8bitStates, LiveBytes  # noqa: E402  (bench/, on sys.path above)
from simulate_offload import (attach_offload, offload_search, offload_specs, print_guidance,  # noqa: E402
                              print_offload_rows, transfer_counters)

log = logging.getLogger("simulate_full_size")

GIB = 2 ** 30
# CUDA context + cuBLAS workspace (0.5-0.8 GiB) rounded up to 1.0 GiB; + 8 % for the caching allocator's rounding
# and fragmentation on a loop of same-shaped steps. The trainer's offload plan uses the same margin.
from trainer.offload_plan import MARGIN_FIXED_GIB, MARGIN_FRACTION, with_margin  # noqa: E402
# Published dense bf16 peaks (no sparsity): H100 SXM5 989.4 TFLOPS (NVIDIA H100 datasheet, "BF16 Tensor
# Core 1,979 TFLOPS*" with * = with sparsity); RTX 4090 165.2 TFLOPS with FP32 accumulate (NVIDIA Ada
# Lovelace architecture whitepaper, table 2: 330.3 with sparsity).
PEAK_BF16_TFLOPS = {"H100 SXM": 989.4, "RTX 4090": 165.2}
ASSUMED_MFU = 0.40  # for the time estimate: a typical achieved fraction for bf16 DiT training (an assumption)
TAGS = ("weights", "lora", "grads", "optimizer", "activations", "temporaries")
FULL = {"depth": 19, "single": 38, "hidden": 3072, "heads": 24}


# --- ComfyUI import with the CUDA attention choice ------------------------------------------------

def import_comfy_sdpa() -> None:
    """Import ComfyUI for the CPU but with PyTorch SDPA attention (what it picks on CUDA)."""
    from aceplus_host import import_comfy

    if "comfy.model_management" in sys.modules:
        import comfy.ldm.modules.attention as attn

        if attn.optimized_attention is not attn.attention_pytorch:
            raise RuntimeError("ComfyUI was imported before simulate_full_size could select PyTorch SDPA "
                               f"attention (it uses {attn.optimized_attention.__name__}); import this module first "
                               "or run it in its own process.")
        return
    import_comfy(cpu=True)
    from comfy.cli_args import args

    args.use_pytorch_cross_attention = True
    import comfy.ldm.modules.attention as attn

    if attn.optimized_attention is not attn.attention_pytorch:
        raise RuntimeError(f"ComfyUI chose {attn.optimized_attention.__name__} for attention despite "
                           "--use-pytorch-cross-attention; the simulation needs PyTorch SDPA.")


# --- one row --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Spec:
    name: str
    kind: str = "fill"            # fill (384 features) | fft (448)
    rank: int = 64                 # 0 = full fine-tune
    base: str = "fp8_e4m3fn"       # storage of the frozen base: bf16 | fp8_e4m3fn | fp32
    optim: str = "adamw8bit"       # adamw (fp32 states) | adamw8bit
    img_tokens: int = 8192         # canvas tokens (2x2 latent patches)
    txt_tokens: int = 512
    depth: int = 19
    single: int = 38
    hidden: int = 3072
    heads: int = 24
    compute: str = "bf16"          # autocast dtype; fp32 = no autocast (CPU reference runs)
    checkpointing: bool = True
    shard: int = 1                 # FSDP world size for full fine-tunes (rank 0 on a fake process group)
    sampling: str = ""             # "" = training step; "nodes" | "stock" = one sampling step (no grad)
    offload_blocks: int = 0        # trainer.offload: blocks streamed from host memory (-1 = all)
    offload_act: bool = False      # trainer.offload: checkpointed block inputs in host memory
    prefetch: int = 1


def latent_hw(img_tokens: int) -> tuple[int, int]:
    """Latent h, w for a canvas of ``img_tokens`` 2x2 patches: 64 token rows (1024 px high), as wide
    as needed (8192 tokens = 64 x 128 = a 1024 x 2048 px canvas: 1024 target + 1024 reference)."""
    rows = 64 if img_tokens >= 64 * 2 and img_tokens % 64 == 0 else 1
    if img_tokens % rows:
        raise ValueError(f"img_tokens {img_tokens} is not a multiple of {rows}")
    return 2 * rows, 2 * (img_tokens // rows)


def _torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp8_e4m3fn": torch.float8_e4m3fn}[name]


def build_dit(spec: Spec, tracker: LiveBytes | None = None, real_init_seed: int | None = None):
    """ComfyUI's ``Flux`` at the spec's size, weights stored in ``spec.base`` (manual_cast ops when the
    storage differs from the compute dtype, as ComfyUI picks for an fp8 file)."""
    import torch

    import comfy.ops
    from comfy.ldm.flux.model import Flux

    from aceplus_host.tiny_models import flux_config

    storage, compute = _torch_dtype(spec.base), _torch_dtype(spec.compute)
    ops = comfy.ops.manual_cast if storage != compute else comfy.ops.disable_weight_init
    in_ch = {"fill": 96, "fft": 112}[spec.kind]
    pe = spec.hidden // spec.heads
    axes = [pe - 2 * (pe * 7 // 16), pe * 7 // 16, pe * 7 // 16]
    if tracker is not None:
        tracker.tag = "weights"
    dit = Flux(**flux_config(image_model="flux", in_channels=in_ch, out_channels=16, vec_in_dim=768,
                             context_in_dim=4096, hidden_size=spec.hidden, mlp_ratio=4.0, num_heads=spec.heads,
                             depth=spec.depth, depth_single_blocks=spec.single, axes_dim=axes, theta=10000,
                             patch_size=2, qkv_bias=True, guidance_embed=True),
               dtype=storage, device="cpu", operations=ops)
    if real_init_seed is not None:  # real (non-fake) runs: ComfyUI ops skip init, fill every weight
        g = torch.Generator().manual_seed(real_init_seed)
        with torch.no_grad():
            for p in dit.parameters():
                p.copy_((torch.randn(p.shape, generator=g) * 0.02).to(storage))
    if tracker is not None:
        tracker.tag = "temporaries"
    return dit


def _config(spec: Spec):
    from trainer.config import load_config

    lora = {"enabled": spec.rank > 0}
    if spec.rank:
        lora.update(rank=spec.rank, alpha=float(spec.rank))
    return load_config(data={"model": {"dit": "simulated", "gradient_checkpointing": spec.checkpointing,
                                       "kind": spec.kind},
                             "lora": lora, "data": {"manifest": "simulated"},
                             "train": {"optimizer": "adamw" if spec.optim == "adamw" else "adamw8bit",
                                       "mixed_precision": "bf16" if spec.compute == "bf16" else "no"}})


def flop_mapping() -> dict:
    """FlopCounterMode formulas for the CPU flash-attention ops (not in torch's registry)."""
    import torch
    import torch.utils.flop_counter as fc

    aten = torch.ops.aten

    def fwd(q, k, v, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(q, k, v)

    def bwd(grad_out, q, k, v, *args, out_shape=None, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out, q, k, v)

    return {aten._scaled_dot_product_flash_attention_for_cpu: fwd,
            aten._scaled_dot_product_flash_attention_for_cpu_backward: bwd}


@contextlib.contextmanager
def noop_to_for_fake():
    """``Module.to`` that returns the module when no parameter or buffer would change.

    Fake parameters always carry a weakref (the fake mode's memo), and ``Module._apply`` swaps fake
    parameters with ``torch.utils.swap_tensors``, which refuses tensors with weakrefs; the trainer's
    ``LoRA(...).to(lin.weight.device)`` would fail on a same-device no-op. This keeps the semantics of
    ``Tensor.to`` (same device and dtype: the same tensor) and lets a real change through unchanged.
    """
    import torch

    orig = torch.nn.Module.to

    def to(self, *args, **kwargs):
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        tensors = list(self.parameters()) + list(self.buffers())
        if all((device is None or t.device == device) and (dtype is None or not t.is_floating_point()
                                                             or t.dtype == dtype) for t in tensors):
            return self
        return orig(self, *args, **kwargs)

    torch.nn.Module.to = to
    try:
        yield
    finally:
        torch.nn.Module.to = orig


def measured_steps(model, params, opt, batch, cfg, tracker, steps: int, autocast, count_flops: bool,
                   before_step=None, after_backward=None) -> tuple[int, dict, list]:
    """The trainer's step (forward, backward, clip, optimizer step) ``steps`` times on ``batch`` =
    (x_in, s, ctx, pooled, target). -> (FLOPs of the first step, {"fwd_bwd" | "optimizer": (peak, by tag)}
    of the last step, the optimizer's state tensors).

    FLOPs are counted in the first step, memory in the last: FlopCounterMode's module tracker keeps every
    block's recomputed tensors alive until backward ends (measured: the peak then grows with depth), so
    the two never share a step. FLOPs do not depend on the optimizer state. ``before_step(i)`` and
    ``after_backward(last)`` let a caller add its own bookkeeping (the FSDP row)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x_in, s, ctx, pooled, target = batch
    flops, phases, states = 0, {}, []
    for i in range(steps):
        last = i == steps - 1
        if before_step is not None:
            before_step(i)
        counter = FlopCounterMode(display=False, custom_mapping=flop_mapping()) if i == 0 and count_flops else None
        if last:
            tracker.reset_peak()
        with counter if counter is not None else contextlib.nullcontext():
            tracker.tag = "activations"
            with autocast:
                pred = model(x_in, s, ctx, pooled, 1.0)
                loss = ((pred.float() - target) ** 2).mean()
            tracker.tag = "temporaries"
            loss.backward()
            del pred, loss
            if after_backward is not None:
                after_backward(last)
            if last:  # the forward + backward peak, then the optimizer's own
                phases["fwd_bwd"] = (tracker.peak, {t: tracker.peak_by.get(t, 0) for t in TAGS})
                tracker.reset_peak()
            if cfg.train.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
            opt.step()
            states = [v for st in opt.state.values() for v in st.values()
                      if isinstance(v, torch.Tensor) and v.dim() > 0]
            for v in states:
                tracker.retag(v, "optimizer")
            opt.zero_grad(set_to_none=True)
        if last:
            phases["optimizer"] = (tracker.peak, {t: tracker.peak_by.get(t, 0) for t in TAGS})
        if counter is not None:
            flops = counter.get_total_flops()
            del counter
    return flops, phases, states


def run_step(spec: Spec, fake: bool = True, steps: int = 2, seed: int = 0, count_flops: bool = True) -> dict:
    """Build, then run ``steps`` (>= 2) training steps: FLOPs counted in the first, memory measured in
    the last (optimizer states exist by then, as in every step of a run but the first). ``steps=1,
    count_flops=False`` (8-bit states only, allocated up front) is the quick form the canvas search uses.

    Returns peak bytes, breakdown at the peak, FLOPs of the measured step, trainable parameters
    and the attention ops seen. With ``fake=False`` the same code runs on real CPU tensors.
    """
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    from trainer.loop import make_optimizer
    from trainer.model import Trainable

    cfg = _config(spec)
    tracker = LiveBytes()
    h, w = latent_hw(spec.img_tokens)
    in_ch = {"fill": 96, "fft": 112}[spec.kind]
    outer = FakeTensorMode() if fake else contextlib.nullcontext()
    with outer, tracker:
        dit = build_dit(spec, tracker, real_init_seed=None if fake else seed)
        tracker.tag = "lora"
        with noop_to_for_fake():
            model = Trainable(dit, cfg).train()
            streamer = attach_offload(spec, model, tracker)
        tracker.tag = "weights" if not spec.rank else "temporaries"
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            tracker.retag(p, "lora" if spec.rank else "weights")
            p.register_post_accumulate_grad_hook(lambda p: tracker.retag(p.grad, "grads"))
        tracker.tag = "temporaries"
        if spec.optim == "adamw8bit":
            opt = Adam8bitStates(params, lr=cfg.learning_rate)
            if steps == 1:
                opt.init_states()
                for st in opt.state.values():
                    for v in st.values():
                        tracker.retag(v, "optimizer")
        else:
            opt = make_optimizer(params, cfg, torch.device("cpu"))
            for group in opt.param_groups:
                group["foreach"] = True  # AdamW's default on CUDA tensors
        g = torch.Generator().manual_seed(seed)
        tracker.tag = "activations"
        x_in = torch.randn(1, in_ch, h, w, generator=None if fake else g)
        ctx = torch.randn(1, spec.txt_tokens, 4096, generator=None if fake else g)
        pooled = torch.randn(1, 768, generator=None if fake else g)
        target = torch.randn(1, 16, h, w, generator=None if fake else g)
        s = torch.full((1,), 0.5)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec.compute == "bf16")
        moved = {}
        flops, phases, _ = measured_steps(model, params, opt, (x_in, s, ctx, pooled, target), cfg, tracker, steps,
                                          autocast, count_flops, *transfer_counters(model, streamer, moved))
        peak, by = max(phases.values(), key=lambda v: v[0])
        n_train = sum(p.numel() for p in params)
        n_base = sum(p.numel() for p in dit.parameters())
        ops = sorted(tracker.attention_ops)
    return {"peak_bytes": peak, "by_tag": by, "flops": flops, "trainable_params": n_train, "base_params": n_base,
            "phases": {k: {"peak_bytes": v[0], "by_tag": v[1]} for k, v in phases.items()}, "attention_ops": ops,
            "img_tokens": spec.img_tokens, "txt_tokens": spec.txt_tokens, "host_peak_bytes": tracker.host_peak,
            "offload": bool(spec.offload_blocks or spec.offload_act), **moved}


def run_sampling(spec: Spec) -> dict:
    """One sampling step as ComfyUI runs it: ``BaseModel.apply_model`` of FLUX.1-Fill (model_base.Flux)
    with the Fill concat conditioning (16 latent + 64 packed-mask channels), no grad, bf16 compute.

    ``nodes``: the latent and condition the ACE++ nodes hand to the sampler for a 1024x1024 edit with
    one 1024x1024 reference (canvas 1024 x 2048); ``stock``: the stock Fill graph on the same
    hand-stitched canvas (InpaintModelConditioning -> KSampler): the same call with the same shapes.
    """
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    import comfy.model_detection

    from aceplus_host.tiny_models import flux_config

    tracker = LiveBytes()
    h, w = latent_hw(spec.img_tokens)
    storage = _torch_dtype(spec.base)
    with FakeTensorMode(), tracker:
        tracker.tag = "weights"
        pe = spec.hidden // spec.heads
        unet = flux_config(image_model="flux", in_channels=96, out_channels=16, vec_in_dim=768, context_in_dim=4096,
                           hidden_size=spec.hidden, mlp_ratio=4.0, num_heads=spec.heads, depth=spec.depth,
                           depth_single_blocks=spec.single, axes_dim=[pe - 2 * (pe * 7 // 16), pe * 7 // 16,
                                                                       pe * 7 // 16],
                           theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True)
        model_config = comfy.model_detection.model_config_from_unet_config(unet)
        model_config.set_inference_dtype(storage, torch.bfloat16 if storage != torch.bfloat16 else None)
        model = model_config.get_model({}, "", device="cpu")
        tracker.tag = "activations"
        if spec.sampling == "nodes":
            # ACE++ Sampler: noise latent (B,16,h,w) and the conditioning's concat latent + noise mask
            latent = torch.randn(1, 16, h, w)
            concat = torch.cat([torch.randn(1, 16, h, w), torch.rand(1, 64, h, w)], dim=1)
        else:
            # stock: InpaintModelConditioning's concat_latent_image + concat_mask on the stitched canvas
            latent = torch.zeros(1, 16, h, w) + torch.randn(1, 16, h, w)
            concat = torch.cat([torch.zeros(1, 16, h, w), torch.ones(1, 64, h, w)], dim=1)
        ctx, pooled = torch.randn(1, spec.txt_tokens, 4096), torch.randn(1, 768)
        sigma = torch.full((1,), 0.5)
        tracker.tag = "temporaries"
        tracker.reset_peak()
        guidance = torch.full((1,), 30.0)
        with torch.no_grad():
            out = model.apply_model(latent, sigma, c_concat=concat, c_crossattn=ctx, y=pooled, guidance=guidance)
            del out
        peak, by = tracker.peak, {t: tracker.peak_by.get(t, 0) for t in TAGS}
        counter = FlopCounterMode(display=False, custom_mapping=flop_mapping())  # a second call: see run_step
        with torch.no_grad(), counter:
            model.apply_model(latent, sigma, c_concat=concat, c_crossattn=ctx, y=pooled, guidance=guidance)
        ops = sorted(tracker.attention_ops)
    return {"peak_bytes": peak, "by_tag": by, "flops": counter.get_total_flops(), "trainable_params": 0,
            "base_params": 0, "attention_ops": ops, "img_tokens": spec.img_tokens, "txt_tokens": spec.txt_tokens}


# --- the table ------------------------------------------------------------------------------------

def lora_specs(base: Spec) -> list[Spec]:
    specs = []
    for rank in (16, 64):
        for b in ("bf16", "fp8_e4m3fn"):
            for o in ("adamw", "adamw8bit"):
                short = {"bf16": "bf16", "fp8_e4m3fn": "fp8"}[b] + ("" if o == "adamw8bit" else "_adamw32")
                specs.append(replace(base, name=f"lora_r{rank}_{short}_{base.img_tokens}", rank=rank, base=b,
                                     optim=o))
    return specs


def all_specs(depth: tuple[int, int], img_tokens: int, hidden: int, heads: int, txt_tokens: int = 512) -> list[Spec]:
    base = Spec(name="", depth=depth[0], single=depth[1], hidden=hidden, heads=heads, img_tokens=img_tokens,
                txt_tokens=txt_tokens)
    specs = lora_specs(base)
    specs.append(replace(base, name=f"fft_lora_r64_fp8_{img_tokens}", kind="fft"))
    specs += offload_specs(base)
    specs.append(replace(base, name=f"full_ft_fsdp8_{img_tokens}", rank=0, base="fp32", optim="adamw", shard=8))
    for b in ("bf16", "fp8_e4m3fn"):
        short = {"bf16": "bf16", "fp8_e4m3fn": "fp8"}[b]
        for path in ("nodes", "stock"):
            specs.append(replace(base, name=f"sample_{path}_{short}_{img_tokens}", base=b, rank=0, optim="adamw",
                                 sampling=path))
    return specs


def simulate(spec: Spec) -> dict:
    t = time.perf_counter()
    if spec.sampling:
        r = run_sampling(spec)
    elif spec.shard > 1:
        from simulate_fsdp import run_fsdp_step

        r = run_fsdp_step(spec, world=spec.shard)
    else:
        r = run_step(spec)
    r["seconds"] = time.perf_counter() - t
    r["peak_gib"] = r["peak_bytes"] / GIB
    r["peak_gib_margin"] = with_margin(r["peak_bytes"]) / GIB
    return r


def largest_canvas(base: Spec, budget_gib: float, known: dict[int, float] | None = None,
                   quantum: int = 512, cap: int = 0) -> tuple[int, float, dict[int, float]]:
    """Largest image-token count (a multiple of ``quantum`` = 64 rows x 8) whose simulated peak with
    margin fits ``budget_gib``. The peak grows linearly with the tokens (attention keeps no L x L
    matrix), so two simulated points give the candidate; each candidate is then simulated itself and
    moved down by ``quantum`` until it fits. Every number reported is a simulated one. ``cap`` > 0:
    search no further (the answer is then "at least ``cap``")."""
    known = dict(known or {})

    def peak(tokens: int) -> float:
        if tokens not in known:
            r = run_step(replace(base, img_tokens=tokens), steps=1, count_flops=False)
            known[tokens] = with_margin(r["peak_bytes"]) / GIB
        return known[tokens]

    a, b = 4096, 8192
    slope = (peak(b) - peak(a)) / (b - a)
    guess = max(quantum, int((b + (budget_gib - peak(b)) / slope) // quantum * quantum))
    if cap:
        guess = min(guess, cap)
    while peak(guess) > budget_gib and guess > quantum:
        guess -= quantum
    if peak(guess) > budget_gib:
        return 0, peak(guess), known
    while (not cap or guess < cap) and peak(guess + quantum) <= budget_gib:  # the line was pessimistic
        guess += quantum
    return guess, peak(guess), known


def estimates(flops: float) -> dict:
    return {card: flops / (peak * 1e12 * ASSUMED_MFU) for card, peak in PEAK_BF16_TFLOPS.items()}


def fmt_row(name: str, r: dict) -> str:
    by = r["by_tag"]
    cells = " | ".join(f"{by[t] / GIB:.2f}" for t in TAGS)
    est = estimates(r["flops"])
    return (f"| {name} | {r['img_tokens']}+{r['txt_tokens']} | {cells} | {r['peak_gib']:.2f} | "
            f"**{r['peak_gib_margin']:.2f}** | {r['flops'] / 1e12:.1f} | {est['H100 SXM']:.2f} | "
            f"{est['RTX 4090']:.2f} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depth", nargs=2, type=int, metavar=("D", "S"), default=[FULL["depth"], FULL["single"]],
                   help="double and single blocks (default 19 38 = FLUX.1)")
    p.add_argument("--hidden", type=int, default=FULL["hidden"])
    p.add_argument("--img-tokens", type=int, default=8192, help="canvas tokens (8192 = 1024 target + 1024 ref)")
    p.add_argument("--txt-tokens", type=int, default=512, help="T5 tokens (512 = the trainer's cache)")
    p.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    p.add_argument("--no-search", action="store_true", help="skip the largest-canvas searches")
    p.add_argument("--guidance", action="store_true",
                   help="8, 12 and 16 GB cards x rank 16 and 64 at --img-tokens: offload.auto's pick, simulated")
    p.add_argument("--search", choices=["all", "resident", "offload", "none"], default=None,
                   help="which largest-canvas search: resident (24 and 16 GB), offload (16, 12 and 8 GB, every "
                        "block streamed + block inputs on the host); default: all without --rows, none with them")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import_comfy_sdpa()
    import torch

    heads = args.hidden // 128
    specs = all_specs(tuple(args.depth), args.img_tokens, args.hidden, heads, args.txt_tokens)
    wanted = [r for r in args.rows.split(",") if r]
    unknown = sorted(set(wanted) - {s.name for s in specs})
    if unknown:
        p.error(f"unknown row(s) {unknown}; rows: {[s.name for s in specs]}")
    results = {}
    log.info("torch %s, depth %d + %d, hidden %d, %d image + %d text tokens; margin %.1f GiB + %.0f%%",
             torch.__version__, args.depth[0], args.depth[1], args.hidden, args.img_tokens, args.txt_tokens,
             MARGIN_FIXED_GIB,
             100 * MARGIN_FRACTION)
    for spec in specs:
        if wanted and spec.name not in wanted:
            continue
        results[spec.name] = simulate(spec)
        r = results[spec.name]
        log.info("%s: peak %.2f GiB (%.2f with margin), %.1f TFLOP, %.0f s, attention %s", spec.name, r["peak_gib"],
                 r["peak_gib_margin"], r["flops"] / 1e12, r["seconds"], ",".join(r["attention_ops"]) or "-")
    log.info("")
    log.info("| row | tokens (img+txt) | weights | LoRA | grads | optimizer | activations | temporaries | peak GiB | "
             "+ margin GiB | TFLOP/step | est. s/step H100 | est. s/step 4090 |")
    log.info("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        if not r.get("offload"):
            log.info("%s", fmt_row(name, r))
    print_offload_rows(results, estimates, TAGS, ASSUMED_MFU)
    for a, b in (("sample_nodes_bf16", "sample_stock_bf16"), ("sample_nodes_fp8", "sample_stock_fp8")):
        a, b = f"{a}_{args.img_tokens}", f"{b}_{args.img_tokens}"
        if a in results and b in results:
            log.info("peak ratio %s / %s = %.3f", a, b, results[a]["peak_bytes"] / results[b]["peak_bytes"])
    summary = {name: round(r["peak_gib_margin"], 3) for name, r in results.items()}
    search = "none" if args.no_search else args.search or ("none" if wanted else "all")
    base = Spec(name="", depth=args.depth[0], single=args.depth[1], hidden=args.hidden, heads=heads)
    for rank in (16, 64) if search in ("all", "resident") else ():
        known: dict[int, float] = {}
        for budget in (24, 16):
            tokens, peak, known = largest_canvas(replace(base, rank=rank), budget, known)
            log.info("largest canvas, LoRA rank %d, fp8 base, 8-bit AdamW, %d GB card: %d image tokens "
                     "(%.2f GiB with margin)", rank, budget, tokens, peak)
            summary[f"max_tokens_r{rank}_fp8_{budget}gb"] = tokens
    if search in ("all", "offload"):  # every block streamed, block inputs on the host
        offload_search(sys.modules[__name__], base, summary)
    if args.guidance:
        print_guidance(sys.modules[__name__], replace(base, img_tokens=args.img_tokens, txt_tokens=args.txt_tokens),
                       summary)
    log.info("MFU/time columns are estimates: FLOPs counted by FlopCounterMode (incl. checkpoint recompute) / "
             "(published dense bf16 peak x assumed MFU %.0f%%)", 100 * ASSUMED_MFU)
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
