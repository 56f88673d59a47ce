"""Training benchmarks: time per step and peak memory.

CPU, ours vs ComfyUI's own ``TrainLoraNode`` (same model file, rank, canvas latent size, steps; each
side in its own child process so peak RSS is its own). Compute-bound size (hidden 3072, 1 double +
1 single block, 500 M params; 368 px images: our canvas packs to 966 image tokens, and TrainLoraNode
gets latents of exactly that shape), the comparison that counts::

    python bench/bench_train.py --hidden 3072 --size 368 --steps 3 --rank 16

Overhead-bound size (hidden 256, 32 image tokens: measures per-step overhead, not the step)::

    python bench/bench_train.py --steps 12 --rank 16

Full-size FLUX.1-Fill (random weights, built on the device; 8192 image tokens + 512 text tokens)::

    python bench/bench_train.py --full-size-cuda [--base-dtype fp8_e4m3fn] [--rank 64]
    python bench/bench_train.py --full-size-cuda --device cpu --depth 1 --depth-single 1 --hidden 256   # dry run
    python bench/bench_train.py --full-size-cuda --offload --cap-gib 12   # + the offloaded step, card capped

Reports step time, peak memory and MFU = model FLOPs per second / measured bf16 matmul rate
(model FLOPs = 3 x forward matmul+attention FLOPs, the usual 6 N T convention; the recompute of
checkpointing and the skipped weight gradients of LoRA are not counted as useful work).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from aceplus_host import cache_dir, import_comfy  # noqa: E402

log = logging.getLogger("bench_train")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _tiny_setup(tmp: Path, size: int, hidden: int = 256):
    from trainer import testing

    tiny = cache_dir() / "trainer_tiny"
    dit = testing.tiny_flux_file(tiny / f"fill_h{hidden}.safetensors", hidden=hidden, depth=1, depth_single=1)
    vae = testing.tiny_vae_file(tiny / "vae.safetensors")
    manifest = testing.write_copy_dataset(tmp / "data", n=4, size=size)
    return dit, vae, manifest


def child_ours(args) -> dict:
    import torch

    from trainer.config import load_config
    from trainer.loop import train
    from trainer.testing import base_config

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_ours_"))
    dit, vae, manifest = _tiny_setup(tmp, args.size, args.hidden)
    cfg = load_config(data=base_config(dit, vae, manifest, tmp / "out", run={"max_steps": args.steps, "save_every": 0},
                                       lora={"rank": args.rank, "alpha": float(args.rank)},
                                       canvas={"max_tokens": 4096, "target_tokens": 4096}))
    r = train(cfg)
    rows = [json.loads(x) for x in (tmp / "out" / "metrics.jsonl").read_text().splitlines()]
    per_step = (rows[-1]["time"] - rows[0]["time"]) / (len(rows) - 1)  # excludes the first (warm-up) step
    lat = r["model"].loras  # noqa: F841 - keep the model alive until here
    from safetensors import safe_open

    with safe_open(str(next((tmp / "out" / "cache").glob("*.safetensors"))), "pt") as f:
        h, w = f.get_slice("x0").get_shape()[-2:]  # latent of the cached canvas
    return {"side": "ours", "s_per_step": per_step, "peak_rss_mb": peak_rss_mb(), "image_tokens": h * w // 4,
            "latent_hw": f"{h}x{w}",
            "trainable_params": sum(p.numel() for p in r["model"].loras.parameters())}


def child_comfy(args) -> dict:
    """ComfyUI's TrainLoraNode on the same DiT (its adapters: every Linear + bias diffs)."""
    import torch

    import comfy.model_patcher
    from comfy_extras.nodes_train import TrainLoraNode

    from trainer.config import load_config
    from trainer.model import load_base_model
    from trainer.testing import base_config

    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_comfy_"))
    dit, vae, manifest = _tiny_setup(tmp, args.size, args.hidden)
    cfg = load_config(data=base_config(dit, vae, manifest, tmp / "out"))
    base = load_base_model(cfg, torch.device("cpu"))
    patcher = comfy.model_patcher.ModelPatcher(base, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    # the latent shape of our cached canvas (passed by the parent after our side ran), else [ref | target]
    h, w = map(int, args.latent_hw.split("x")) if args.latent_hw else (args.size // 8, 2 * args.size // 8)
    g = torch.Generator().manual_seed(0)
    # a list of one-sample latents: 0.3.75 leaves `multi_res` unset for a single batched latent dict
    latents = [{"samples": torch.randn(1, 16, h, w, generator=g)} for _ in range(4)]
    cond = [[torch.randn(1, 8, 64, generator=g), {"pooled_output": torch.randn(1, 768, generator=g), "guidance": 1.0}]]

    def run(steps: int) -> float:
        t = time.perf_counter()
        TrainLoraNode.execute(model=[patcher], latents=latents, positive=[cond], batch_size=[1], steps=[steps],
                              grad_accumulation_steps=[1], learning_rate=[1e-3], rank=[args.rank],
                              optimizer=["AdamW"], loss_function=["MSE"], seed=[0], training_dtype=["fp32"],
                              lora_dtype=["fp32"], algorithm=["LoRA"], gradient_checkpointing=[True],
                              existing_lora=["[None]"])
        return time.perf_counter() - t

    t1 = run(1)
    tn = run(args.steps)
    return {"side": "comfy", "s_per_step": (tn - t1) / (args.steps - 1), "peak_rss_mb": peak_rss_mb(),
            "image_tokens": (h // 2) * (w // 2)}


def full_size(args) -> dict:
    """Random-weight full-size FLUX.1-Fill (or --depth-reduced) LoRA step on a device."""
    import torch

    import comfy.ops
    from comfy.ldm.flux.model import Flux

    from aceplus_host.tiny_models import flux_config
    from trainer.config import load_config
    from trainer.model import Trainable

    dev = torch.device(args.device)
    storage = {"bf16": torch.bfloat16, "fp8_e4m3fn": torch.float8_e4m3fn, "fp32": torch.float32}[args.base_dtype]
    compute = torch.bfloat16 if dev.type == "cuda" else torch.float32
    ops = comfy.ops.manual_cast if storage != compute else comfy.ops.disable_weight_init
    hidden = args.hidden or 3072
    heads = hidden // 128  # FLUX: 128-dim heads (3072 -> 24)
    with torch.device(dev):
        dit = Flux(**flux_config(image_model="flux", in_channels=96, out_channels=16, vec_in_dim=768,
                                 context_in_dim=4096, hidden_size=hidden, mlp_ratio=4.0, num_heads=heads,
                                 depth=args.depth, depth_single_blocks=args.depth_single, axes_dim=[16, 56, 56],
                                 theta=10000, patch_size=2, qkv_bias=True, guidance_embed=True),
                   dtype=storage, device=dev, operations=ops)
    with torch.no_grad():
        for p in dit.parameters():  # weight init is disabled in ComfyUI ops: fill every tensor
            p.copy_((torch.randn(p.shape, device=dev, dtype=torch.float32) * 0.02).to(storage))
    cfg = load_config(data={"model": {"dit": "random", "gradient_checkpointing": True},
                            "lora": {"rank": args.rank, "alpha": float(args.rank)}, "data": {"manifest": "none"}})
    model = Trainable(dit, cfg).to(dev).train()
    for lora in model.loras.values():
        lora.to(torch.float32)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=1e-2)
    H, W = args.height, args.width  # canvas pixels: [1024 ref | 1024 target] -> 64 x 128 tokens = 8192
    h, w = H // 8, W // 8
    x_in = torch.randn(1, 96, h, w, device=dev)
    ctx, pooled = torch.randn(1, args.text_tokens, 4096, device=dev), torch.randn(1, 768, device=dev)
    target = torch.randn(1, 16, h, w, device=dev)
    s = torch.full((1,), 0.5, device=dev)

    def step():
        with torch.autocast(dev.type, dtype=compute, enabled=dev.type == "cuda"):
            loss = ((model(x_in, s, ctx, pooled, 1.0).float() - target) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def timed() -> float:
        step()  # warm-up (and, offloaded, the first copies)
        sync()
        t = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        return (time.perf_counter() - t) / args.steps

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    dt = timed()
    # forward FLOPs: 2 x (matmul params) x tokens + attention 4 x L^2 x hidden per block
    T, L = (h // 2) * (w // 2), (h // 2) * (w // 2) + args.text_tokens
    blocks = args.depth + args.depth_single
    matmul_params = sum(m.weight.numel() for m in dit.modules() if isinstance(m, torch.nn.Linear)
                        and m.weight.dim() == 2)
    fwd = 2 * matmul_params * L + 4 * L * L * hidden * blocks
    result = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "s_per_step": dt,
              "tokens_image": T, "tokens_text": args.text_tokens, "rank": args.rank, "base_dtype": args.base_dtype,
              "depth": [args.depth, args.depth_single], "model_tflops_per_step": 3 * fwd / 1e12,
              "trainable_params": sum(p.numel() for p in params)}
    if dev.type == "cuda":
        result["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        for _ in range(3):
            a @ a
        sync()
        t = time.perf_counter()
        for _ in range(20):
            a @ a
        sync()
        rate = 20 * 2 * 8192**3 / (time.perf_counter() - t)
        result["bf16_matmul_tflops"] = rate / 1e12
        result["mfu"] = 3 * fwd / dt / rate
    else:
        result["peak_rss_mb"] = peak_rss_mb()
    if args.offload:
        result["offload"] = offloaded(args, model, dit, timed, dev, compute, h, w)
        result["offload"]["vs_resident"] = result["offload"]["s_per_step"] / dt
    return result


def offloaded(args, model, dit, timed, dev, compute, h: int, w: int) -> dict:
    """The same step with trainer.offload, the card capped at ``--cap-gib`` (CUDA): the plan offload.auto
    makes for that budget from the model's shapes, the streamed blocks moved to pageable host memory (as
    the memory map of a real run), then s/step, max_memory_allocated, host RSS and the bytes moved."""
    import torch

    from trainer import offload, offload_plan
    from trainer.config import load_config

    cfg = load_config(data={"model": {"dit": "random", "base_dtype": args.base_dtype},
                            "lora": {"rank": args.rank, "alpha": float(args.rank)}, "data": {"manifest": "none"},
                            "train": {"optimizer": "adamw", "mixed_precision": "bf16" if dev.type == "cuda" else "no"}})
    shapes = {k: tuple(v.shape) for k, v in dit.state_dict().items()}
    itemsize = next(dit.double_blocks.parameters()).element_size()
    arch = offload_plan.Arch.from_shapes(shapes, itemsize, cfg)
    step = offload_plan.Step((h // 2) * (w // 2), args.text_tokens, 1, 2 if compute == torch.bfloat16 else 4,
                             args.base_dtype == "fp8_e4m3fn", "adamw", itemsize)
    if dev.type == "cuda":
        total = torch.cuda.get_device_properties(dev).total_memory / 2**30
        picked = offload_plan.choose(arch, step, args.cap_gib, args.prefetch)
        if picked is None:
            return {"error": f"no offload setting fits {args.cap_gib:.2f} GiB"}
        n, act, predicted = picked
    else:  # the CPU dry run: every path (every block streamed, block inputs on the host)
        n, act = len(arch.block_bytes), True
        predicted = offload_plan.with_margin(offload_plan.predict(arch, step, n, act, args.prefetch)["bytes"]) / 2**30
    for _, blk in offload.blocks_of(dit)[:n]:
        blk.to("cpu")  # pageable host memory, like the memory-mapped file of a real run
    streamer = offload.attach(model, n, act, dev, args.prefetch)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib / total), dev)
        torch.cuda.reset_peak_memory_stats()
    before = streamer.bytes_moved if streamer else 0
    dt = timed()
    out = {"s_per_step": dt, "blocks_streamed": n, "blocks": len(arch.block_bytes), "activations_on_host": act,
           "prefetch": args.prefetch, "predicted_peak_gib_margin": predicted, "peak_rss_mb": peak_rss_mb(),
           "h2d_gib_per_step": ((streamer.bytes_moved if streamer else 0) - before) / (args.steps + 1) / 2**30}
    if dev.type == "cuda":
        out.update(cap_gib=args.cap_gib, peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30,
                   reserved_gib=torch.cuda.max_memory_reserved() / 2**30)
        torch.cuda.set_per_process_memory_fraction(1.0, dev)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--size", type=int, default=64, help="CPU: edit/target image size (px); canvas = size x 2 size")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--hidden", type=int, default=None,
                   help="hidden size, 128 x heads (default: 256 on the CPU, 3072 with --full-size-cuda)")
    p.add_argument("--child", choices=["ours", "comfy"], help=argparse.SUPPRESS)
    p.add_argument("--latent-hw", default="", help=argparse.SUPPRESS)
    p.add_argument("--full-size-cuda", action="store_true")
    p.add_argument("--device", default="cuda")
    p.add_argument("--depth", type=int, default=19)
    p.add_argument("--depth-single", type=int, default=38)
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--text-tokens", type=int, default=512)
    p.add_argument("--base-dtype", default="fp8_e4m3fn", choices=["bf16", "fp8_e4m3fn", "fp32"])
    p.add_argument("--offload", action="store_true",
                   help="then the same step with trainer.offload, the card capped at --cap-gib (offload.auto's plan)")
    p.add_argument("--cap-gib", type=float, default=12.0)
    p.add_argument("--prefetch", type=int, default=1)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING if args.child else logging.INFO, format="%(message)s")
    if args.hidden is None and not args.full_size_cuda:
        args.hidden = 256
    import_comfy(cpu=None if args.full_size_cuda and args.device == "cuda" else True)
    sys.path.append(str(ROOT))
    if args.full_size_cuda:
        log.info("%s", json.dumps(full_size(args)))
        return 0
    if args.child:
        res = child_ours(args) if args.child == "ours" else child_comfy(args)
        sys.stdout.write("RESULT " + json.dumps(res) + "\n")
        return 0
    results = {}
    for side in ("ours", "comfy"):
        out = subprocess.run([sys.executable, __file__, "--child", side, "--steps", str(args.steps), "--rank",
                              str(args.rank), "--size", str(args.size), "--threads", str(args.threads),
                              "--hidden", str(args.hidden),
                              "--latent-hw", results.get("ours", {}).get("latent_hw", "")],
                             capture_output=True, text=True)
        line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
        if out.returncode or not line:
            log.error("%s side failed:\n%s", side, out.stderr[-4000:])
            return 1
        results[side] = json.loads(line[0][7:])
    ratio = results["ours"]["s_per_step"] / results["comfy"]["s_per_step"]
    log.info("FLUX hidden %d, 1+1 blocks, %d px images, %d image tokens (ours) / %d (TrainLoraNode), rank %d, "
             "%d steps, %d thread(s)", args.hidden, args.size, results["ours"]["image_tokens"],
             results["comfy"]["image_tokens"], args.rank, args.steps, args.threads)
    for side, r in results.items():
        log.info("  %-5s %.4f s/step  peak RSS %.0f MB", side, r["s_per_step"], r["peak_rss_mb"])
    log.info("  ours / TrainLoraNode time per step = %.2f", ratio)
    log.info("%s", json.dumps({"ratio": ratio, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
