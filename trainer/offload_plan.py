"""The device memory of a LoRA step, with and without offloading, and the [offload] plan of a run.

``predict`` is a cheap analytic model of the live-tensor peak (what ``torch.cuda.max_memory_allocated``
reports), term by term from the model file's shapes, calibrated on ``bench/simulate_full_size.py``
(the trainer's real step at full size on fake tensors). ``tests/test_simulate_full_size.py`` ties it to
simulated runs at reduced size. At backward block k (blocks in run order, k counted down)::

    weights   non-block layers + blocks that stay + streamed blocks in flight (k and the next prefetch)
    lora      LoRA factors (fp32) + optimizer states (AdamW: 2 fp32; 8-bit: 2 bytes + absmax)
    saved     block inputs checkpointing saved for blocks < k (on the device unless offloaded)
              + LoRA gradients of blocks >= k + the batch and rotary embedding
    work      recompute + backward of block k: TAU x tokens x hidden x compute bytes, + KAPPA x the
              compute-dtype copy of its weights when ComfyUI's ops cast them (an fp8 base); per block kind
    peak      max over k of the sum, and the optimizer step; the card needs it with the margin.

``plan`` turns the config into a ``Plan`` before any weight is loaded: ``offload.auto`` picks the least
offloading that fits (streaming blocks first, which overlaps compute; then the block inputs, whose
copies do not), an explicit setting that does not fit, or too little host RAM for the pinned buffers,
stops the run with the figures and what to change. It never falls back to keeping everything resident.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Optional

import torch

from .config import Config, ConfigError

log = logging.getLogger(__name__)

GIB = 2 ** 30
MARGIN_FIXED_GIB = 1.0   # CUDA context + cuBLAS workspace (0.5-0.8 GiB) rounded up
MARGIN_FRACTION = 0.08   # caching-allocator rounding + fragmentation on a loop of same-shaped steps
# One block's recompute + backward (``work``), fitted to the simulation's bf16 and fp8 rows at hidden 3072 and
# 4608 / 8704 tokens (linear in the tokens): TAU x tokens x hidden x compute bytes, + KAPPA x the compute-dtype
# copy of the block's weights when the ops cast them. Single blocks: 32.2 with or without the cast (the cast
# adds 0.62 of the copy); double blocks: 31.6 without, 27.3 + 0.69 of the copy with it.
TAU = {("double", False): 31.6, ("double", True): 27.3, ("single", False): 32.2, ("single", True): 32.2}
KAPPA = {"double": 0.69, "single": 0.62}
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp8_e4m3fn": 1}


def with_margin(peak_bytes: float) -> float:
    return peak_bytes * (1 + MARGIN_FRACTION) + MARGIN_FIXED_GIB * GIB


@dataclass(frozen=True)
class Arch:
    """What the memory model needs from a FLUX file: bytes per block in run order, the rest, widths."""
    block_bytes: tuple[int, ...]
    double: int                     # the first ``double`` blocks are double blocks
    other_bytes: int
    hidden: int
    lora_per_block: tuple[int, ...]  # LoRA parameters per block
    lora_other: int                  # LoRA parameters outside the blocks (img_in)
    in_features: int

    @staticmethod
    def from_shapes(shapes: dict[str, tuple], itemsize: int, cfg: Config) -> "Arch":
        numel = {k: int(torch.Size(v).numel()) for k, v in shapes.items()}
        per = {}
        for k, n in numel.items():
            m = re.match(r"(double|single)_blocks\.(\d+)\.", k)
            if m:
                key = (m.group(1) == "single", int(m.group(2)))
                per[key] = per.get(key, 0) + n
        order = sorted(per)
        other = sum(numel.values()) - sum(per.values())

        def lora(name: str) -> int:
            out, inp = shapes[f"{name}.weight"][:2]
            return cfg.lora.rank * (inp + out) if cfg.lora.enabled else 0

        lora_per = []
        for single, i in order:
            kind, targets = ("single", cfg.lora.single_targets) if single else ("double", cfg.lora.double_targets)
            lora_per.append(sum(lora(f"{kind}_blocks.{i}.{t}") for t in targets))
        return Arch(tuple(per[k] * itemsize for k in order), sum(1 for s, _ in order if not s), other * itemsize,
                    shapes["img_in.weight"][0], tuple(lora_per), lora("img_in") if cfg.lora.train_img_in else 0,
                    shapes["img_in.weight"][1])


@dataclass(frozen=True)
class Step:
    """The shape of one training step for the model."""
    img_tokens: int
    txt_tokens: int
    batch: int = 1
    compute_bytes: int = 2        # activations: bf16 under autocast
    cast: bool = True             # ComfyUI's ops cast the stored weights (fp8 base)
    optimizer: str = "adamw8bit"
    storage_bytes: int = 1


def predict(arch: Arch, step: Step, streamed: int = 0, act_host: bool = False, prefetch: int = 1) -> dict:
    """Predicted live-tensor peak in bytes (no margin) and its parts at that peak."""
    n, nb = min(streamed, len(arch.block_bytes)), len(arch.block_bytes)
    H, a = arch.hidden, step.compute_bytes
    L = (step.img_tokens + step.txt_tokens) * step.batch
    P = sum(arch.lora_per_block) + arch.lora_other
    states = {"adamw8bit": 2 * P + 8 * -(-P // 256)}.get(step.optimizer, 8 * P)
    opt_temp = 0 if step.optimizer == "adamw8bit" else 4 * P  # foreach AdamW: one fp32 temporary
    # the batch (x_in, target: 1536 + 256 B per image token; T5 context: 16 KiB per text token) + rope
    inputs = step.batch * (step.img_tokens * 1792 + step.txt_tokens * 16384) + L * 1024  # rope: L x 64 x 2 x 2 fp32
    fixed = arch.other_bytes + sum(arch.block_bytes[n:]) + 4 * P + states + inputs
    saved = [0 if act_host else L * H * a] * nb
    grads = [4 * g for g in arch.lora_per_block]
    best = {"bytes": 0}
    for k in range(nb - 1, -1, -1):
        # k and the next ``prefetch`` (backward order); near the end, the first prefetch + 1 stay for the next step
        window = set(range(max(0, k - prefetch), k + 1)) | (set(range(prefetch + 1)) if k <= prefetch else set())
        flight = sum(arch.block_bytes[j] for j in window if j < n)
        kind = "double" if k < arch.double else "single"
        cast = KAPPA[kind] * arch.block_bytes[k] * a / step.storage_bytes if step.cast else 0
        work = TAU[kind, step.cast] * L * H * a + cast
        total = fixed + flight + sum(saved[:k]) + sum(grads[k:]) + 4 * arch.lora_other + work
        if total > best["bytes"]:
            best = {"bytes": int(total), "weights": arch.other_bytes + sum(arch.block_bytes[n:]) + flight,
                    "saved": sum(saved[:k]), "grads": sum(grads[k:]), "work": int(work), "at_block": k}
    kept = sum(arch.block_bytes[j] for j in range(min(n, prefetch + 1)))  # stay into the optimizer step
    optim = fixed + kept + 4 * P + opt_temp
    if optim > best["bytes"]:
        best = {"bytes": int(optim), "weights": arch.other_bytes + sum(arch.block_bytes[n:]) + kept, "saved": 0,
                "grads": 4 * P, "work": opt_temp, "at_block": -1}
    best["host_bytes"] = sum(arch.block_bytes[:n]) + (sum(L * H * a for _ in range(nb)) if act_host else 0)
    best["pinned_bytes"] = (2 * max(arch.block_bytes[:n]) if n else 0) + (nb * L * H * a if act_host else 0)
    # host -> device per step: forward + recompute, once only for the blocks that stay across a pass boundary
    head, tail = set(range(prefetch + 1)), set(range(nb - prefetch - 1, nb))
    best["copied_bytes"] = sum(b * (2 - (j in head) - (j in tail)) for j, b in enumerate(arch.block_bytes[:n]))
    return best


# --- the plan of a run ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    base_blocks: int        # blocks streamed (0..all)
    activations: bool
    blocks: int
    peak_gib: float         # predicted, margin included
    budget_gib: float       # 0: no device memory figure (the CPU without offload.memory_gib)
    pinned_gib: float
    host_gib: float


def step_of(cfg: Config, index: list[dict], device: torch.device, txt_tokens: int) -> Step:
    img = max((e["h"] // 16) * (e["w"] // 16) for e in index) if index else cfg.canvas.max_tokens
    storage = cfg.model.base_dtype if cfg.model.base_dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    mixed = cfg.train.mixed_precision != "no"
    compute = 2 if mixed or (storage == "bf16" and device.type == "cuda") else 4
    cast = storage == "fp8_e4m3fn" or (device.type != "cuda" and storage != "fp32")
    return Step(img, txt_tokens, cfg.train.batch_size, compute, cast, cfg.train.optimizer, DTYPE_BYTES[storage])


def text_tokens(index: list[dict]) -> int:
    """Text tokens of the cached prompts (the first entry's; one text encoder makes them all)."""
    from safetensors import safe_open

    if not index:
        return 512
    with safe_open(index[0]["path"], "pt") as f:
        return int(f.get_slice("ctx").get_shape()[0])


def free_device_gib(device: torch.device) -> float:
    if device.type != "cuda":
        return 0.0
    free, _ = torch.cuda.mem_get_info(device)
    return free / GIB


def available_host_gib() -> float:
    import psutil

    return psutil.virtual_memory().available / GIB


def choose(arch: Arch, step: Step, budget_gib: float, prefetch: int) -> Optional[tuple[int, bool, float]]:
    """The least offloading whose peak with margin fits: no block, then 1, 2, ... streamed blocks with
    the block inputs on the device (those copies overlap compute), then the same with them on the host."""
    for act in (False, True):
        for n in range(len(arch.block_bytes) + 1):
            gib = with_margin(predict(arch, step, n, act, prefetch)["bytes"]) / GIB
            if gib <= budget_gib:
                return n, act, gib
    return None


def plan(cfg: Config, shapes: dict[str, tuple], index: list[dict], device: torch.device,
         txt_tokens: Optional[int] = None) -> Optional[Plan]:
    """The run's offload plan (None when offloading is off); raises ``ConfigError`` before any weight
    is loaded when the card or the host memory is too small, naming the figures and the fix."""
    o = cfg.offload
    if not (o.base_blocks or o.activations or o.auto):
        return None
    step = step_of(cfg, index, device, text_tokens(index) if txt_tokens is None else txt_tokens)
    arch = Arch.from_shapes(shapes, step.storage_bytes, cfg)
    nb = len(arch.block_bytes)
    budget = o.memory_gib or free_device_gib(device)
    where = f"{step.img_tokens} image + {step.txt_tokens} text tokens, batch {step.batch}, LoRA rank {cfg.lora.rank}"
    if o.auto and not budget:
        log.info("offload.auto: no GPU and no offload.memory_gib, so nothing to fit; nothing is offloaded")
        n, act = 0, False
    elif o.auto:
        picked = choose(arch, step, budget, o.prefetch)
        if picked is None:
            _too_small(arch, step, budget, o.prefetch, where, cfg)
        n, act, _ = picked
    else:
        n, act = (nb if o.base_blocks < 0 else min(o.base_blocks, nb)), o.activations
    pred = predict(arch, step, n, act, o.prefetch)
    peak = with_margin(pred["bytes"]) / GIB
    if budget and peak > budget:
        _too_small(arch, step, budget, o.prefetch, where, cfg, (n, act, peak))
    pinned = pred["pinned_bytes"] / GIB
    host = available_host_gib()
    if pinned > 0.9 * host:
        staging = 2 * max(arch.block_bytes[:n]) / GIB if n else 0.0
        raise ConfigError(
            f"offload needs {pinned:.1f} GiB of pinned host memory ({staging:.2f} GiB staging for two blocks"
            f"{' + the block inputs at ' + where if act else ''}), but only {host:.1f} GiB of "
            "host memory is available. Free host memory, lower canvas.max_tokens, or set offload.activations = "
            "false if the card holds the block inputs (offload.auto picks it).")
    log.info("offload plan: %d of %d blocks stream from host memory, block inputs %s; predicted peak %.2f GiB with "
             "margin%s at %s; %.1f GiB pinned host memory", n, nb, "on the host" if act else "on the device", peak,
             f" of {budget:.2f} GiB" if budget else "", where, pinned)
    return Plan(n, act, nb, peak, budget, pinned, pred["host_bytes"] / GIB)


def _too_small(arch: Arch, step: Step, budget: float, prefetch: int, where: str, cfg: Config,
               chosen: Optional[tuple[int, bool, float]] = None) -> None:
    nb = len(arch.block_bytes)
    least = with_margin(predict(arch, step, nb, True, prefetch)["bytes"]) / GIB
    fits = choose(arch, step, budget, prefetch)
    head = (f"offload.base_blocks = {chosen[0]}, offload.activations = {str(chosen[1]).lower()} needs {chosen[2]:.2f} "
            f"GiB" if chosen else "offload.auto found no setting that fits")
    if fits is not None:
        fix = (f"stream more: offload.base_blocks = {fits[0]}, offload.activations = {str(fits[1]).lower()} "
               f"({fits[2]:.2f} GiB), or offload.auto = true")
    else:
        more = [f"train.optimizer = 'adamw8bit'" if cfg.train.optimizer != "adamw8bit" else "",
                "model.base_dtype = 'fp8_e4m3fn'" if step.storage_bytes > 1 else "",
                "train.batch_size = 1" if step.batch > 1 else ""]
        fix = (f"even with every block streamed and the block inputs on the host it needs {least:.2f} GiB: lower "
               f"lora.rank (now {cfg.lora.rank}) or canvas.max_tokens (the largest cached canvas has "
               f"{step.img_tokens} image tokens){''.join(', ' + m for m in more if m)}, or use a larger card")
    raise ConfigError(f"The card is too small for this run: {head} (predicted peak with margin) at {where}, but "
                      f"{budget:.2f} GiB is available (offload.memory_gib, else the card's free memory at the start; "
                      f"the prediction is the simulation's model, margin included). Fix: {fix}.")
