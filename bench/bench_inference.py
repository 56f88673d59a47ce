"""Inference benchmark: the ACE++ node path against a stock-node graph doing the same work.

    python bench/bench_inference.py                  # tiny models on the CPU (the CI-sized run)
    python bench/bench_inference.py --full-size-cuda # random full-size FLUX.1-Fill (12 B) on a GPU

1. Ratio: time of ACE++ Conditioning + ACE++ Sampler (sample, decode, crop back + composite) over a
   stock graph on the same canvas: stitch by hand (torch.cat), InpaintModelConditioning, FluxGuidance,
   KSampler, VAEDecode and an ImageCrop-style slice. Same model, steps, seed and canvas size; runs
   alternate and the median is reported, with the VAE encode/decode calls of each path. Target < 1.0.
2. Pre/post-processing alone for a 1024x1024 edit with one 1024x1024 reference: canvas building
   (preset, budget, stitching, masks), the noise mask, and crop-back with composite (no VAE, no
   model). Target < 150 ms on the CPU.

``--full-size-cuda`` builds a random-weight FLUX.1-Fill with the BFL layout (19 double + 38 single
blocks, hidden 3072, context 4096) directly on the CUDA device in bf16, and measures the same ratio
and the time per sampling step at 1024x1024 with one 1024x1024 reference. The VAE there is a
random TAESD-layout one (the real AutoencoderKL's cost is the same for both paths).
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

log = logging.getLogger("acepp.bench")


def setup(cpu: bool):
    from aceplus_host import import_comfy, init_builtin_nodes, load_pack

    import_comfy(cpu=cpu)
    init_builtin_nodes()
    return load_pack()


def timed(fn, sync=None) -> float:
    if sync:
        sync()
    t = time.perf_counter()
    fn()
    if sync:
        sync()
    return time.perf_counter() - t


def text_cond(ctx_dim: int, tokens: int, device):
    import torch

    g = torch.Generator().manual_seed(0)
    return [[torch.randn(1, tokens, ctx_dim, generator=g).to(device), {"pooled_output": torch.randn(1, 768, generator=g).to(device)}]]


def ace_path(pack, model, vae, cond, image, mask, ref, steps):
    C, S = pack.nodes.conditioning.Conditioning, pack.nodes.sampler.Sampler
    pos, neg, latent, bundle, _ = C.execute(cond, cond, vae, model, "repainting", -1.0, "pad", "target_first", 8192,
                                            4096, 1024, 1024, 50.0, "crop", True, False, edit_image=image, mask=mask,
                                            reference=ref).args
    return S.execute(model, pos, neg, latent, bundle, vae, 0, steps, 1.0, "euler", "simple", True, True, 0).args[0]


def stock_path(model, vae, cond, image, mask, ref, steps, layout):
    """What a user builds from stock nodes for the same canvas (no resize back, no composite)."""
    import torch
    import torch.nn.functional as F

    import nodes
    from comfy_extras.nodes_flux import FluxGuidance

    ch, tx = layout.canvas_h, layout.target_box.x
    # stitch by hand: reference resized to its cell, edit resized to the target box, side by side
    ref_cell = F.interpolate(ref.movedim(-1, 1), size=(ch, tx), mode="bilinear").movedim(1, -1)
    tgt = F.interpolate(image.movedim(-1, 1), size=(ch, layout.target_box.w), mode="bilinear").movedim(1, -1)
    pixels = torch.cat([ref_cell, tgt], dim=2)
    m = F.interpolate(mask[:, None], size=(ch, layout.target_box.w), mode="nearest")[:, 0]
    full_mask = torch.cat([torch.zeros(1, ch, tx), m], dim=2)
    pos, neg, latent = nodes.InpaintModelConditioning().encode(cond, cond, pixels, vae, full_mask, noise_mask=False)
    pos = FluxGuidance.execute(pos, 50.0)[0]
    latent = nodes.common_ksampler(model, 0, steps, 1.0, "euler", "simple", pos, neg, latent)[0]
    decoded = nodes.VAEDecode().decode(vae, latent)[0]
    return decoded[:, :, tx:, :]  # ImageCrop: x = reference width


class CountingVAE:
    """The VAE with its encode/decode calls counted, to state the VAE work of each path."""

    def __init__(self, vae):
        self._vae, self.calls = vae, {"encode": 0, "decode": 0}

    def encode(self, pixels):
        self.calls["encode"] += 1
        return self._vae.encode(pixels)

    def decode(self, latent):
        self.calls["decode"] += 1
        return self._vae.decode(latent)

    def __getattr__(self, name):
        return getattr(self._vae, name)


def ratio_bench(pack, model, vae, cond, image, mask, ref, steps, repeats, sync=None) -> dict:
    core = pack.aceplus_core
    layout = core.build_canvas(core.to_bchw(image), core.mask_to_b1hw(mask), [core.to_bchw(ref)]).layout
    counted = {"ours": CountingVAE(vae), "stock": CountingVAE(vae)}
    ace_path(pack, model, counted["ours"], cond, image, mask, ref, steps)  # also the warm-up
    stock_path(model, counted["stock"], cond, image, mask, ref, steps, layout)
    ours = lambda: ace_path(pack, model, vae, cond, image, mask, ref, steps)  # noqa: E731
    stock = lambda: stock_path(model, vae, cond, image, mask, ref, steps, layout)  # noqa: E731
    t_ours, t_stock = [], []
    for _ in range(repeats):
        t_ours.append(timed(ours, sync))
        t_stock.append(timed(stock, sync))
    mo, ms = statistics.median(t_ours), statistics.median(t_stock)
    return {"canvas": f"{layout.canvas_h}x{layout.canvas_w} ({layout.tokens} tokens)", "steps": steps,
            "ours_s": mo, "stock_s": ms, "ratio": mo / ms, "runs": repeats,
            "vae_calls_ours": counted["ours"].calls, "vae_calls_stock": counted["stock"].calls}


def prepost_bench(pack, repeats: int = 10) -> dict:
    """Canvas + noise mask + crop-back for a 1024x1024 edit with one 1024x1024 reference (no VAE/model)."""
    import torch

    cond_mod, samp_mod = pack.nodes.conditioning, pack.nodes.sampler
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1024, 1024, 3, generator=g)
    ref = torch.rand(1, 1024, 1024, 3, generator=g)
    mask = torch.zeros(1, 1024, 1024)
    mask[:, 256:768, 256:768] = 1.0
    spec = cond_mod.canvas_spec(-1.0, "pad", "target_first", 8192, 4096, 1024, 1024, "crop", False, "fill")  # defaults
    LayoutBundle = pack.nodes.types.LayoutBundle

    def pre():
        canvas, img, m = cond_mod.make_canvas(image, mask, [pack.aceplus_core.to_bchw(ref)], spec, "repainting")
        return canvas, LayoutBundle(canvas.layout, img, m, "fill")

    canvas, bundle = pre()
    decoded = torch.rand(1, canvas.layout.canvas_h, canvas.layout.canvas_w, 3, generator=g)
    post = lambda: samp_mod.finish(decoded, bundle, True, 0)  # noqa: E731
    pre(), post()
    t_pre = statistics.median(timed(pre) for _ in range(repeats))
    t_post = statistics.median(timed(post) for _ in range(repeats))
    return {"canvas": f"{canvas.layout.canvas_h}x{canvas.layout.canvas_w}", "pre_ms": 1e3 * t_pre,
            "post_ms": 1e3 * t_post, "total_ms": 1e3 * (t_pre + t_post), "runs": repeats}


def tiny_run(pack, args) -> dict:
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from fixtures import ensure_fixtures

    import comfy.sd
    import comfy.utils

    paths = ensure_fixtures()
    model = comfy.sd.load_diffusion_model(str(paths["tiny_fill"]))
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(paths["tiny_vae"])))
    g = torch.Generator().manual_seed(1)
    image, ref = torch.rand(1, 256, 256, 3, generator=g), torch.rand(1, 256, 256, 3, generator=g)
    mask = torch.zeros(1, 256, 256)
    mask[:, 64:192, 64:192] = 1.0
    return ratio_bench(pack, model, vae, text_cond(64, 16, "cpu"), image, mask, ref, args.steps or 4, args.repeats)


def full_size_run(pack, args) -> dict:
    import torch

    import comfy.sd
    import comfy.utils
    from aceplus_host.tiny_models import KINDS, flux_state_dict, tiny_vae_state_dict

    dev = torch.device("cuda")
    t = time.perf_counter()
    sd = flux_state_dict(KINDS["fill"], depth=19, depth_single=38, context_dim=4096, device=dev)
    model = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": torch.bfloat16})
    del sd
    log.info("full-size random FLUX.1-Fill built in %.1f s", time.perf_counter() - t)
    vae = comfy.sd.VAE(sd=tiny_vae_state_dict())
    g = torch.Generator().manual_seed(1)
    image, ref = torch.rand(1, 1024, 1024, 3, generator=g), torch.rand(1, 1024, 1024, 3, generator=g)
    mask = torch.zeros(1, 1024, 1024)
    mask[:, 256:768, 256:768] = 1.0
    steps = args.steps or 28
    res = ratio_bench(pack, model, vae, text_cond(4096, 512, "cpu"), image, mask, ref, steps, args.repeats,
                      sync=torch.cuda.synchronize)
    res["per_step_s"] = res["ours_s"] / steps  # upper bound: includes encode/decode/pre/post
    res["device"] = torch.cuda.get_device_name(0)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full-size-cuda", action="store_true", help="random full-size FLUX.1-Fill on the CUDA device")
    p.add_argument("--steps", type=int, default=None, help="sampling steps (default 4 tiny, 28 full size)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per path (median reported)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    if args.full_size_cuda and not torch.cuda.is_available():
        p.error("--full-size-cuda needs a CUDA device, but torch.cuda.is_available() is False.")
    pack = setup(cpu=not args.full_size_cuda)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    results = {"machine": machine, "command": "python bench/bench_inference.py " + " ".join(argv or sys.argv[1:])}
    results["ratio"] = full_size_run(pack, args) if args.full_size_cuda else tiny_run(pack, args)
    results["prepost_1024"] = prepost_bench(pack)
    for key, value in results.items():
        print(f"{key}: {value}")  # noqa: T201 - the benchmark's report
    return 0


if __name__ == "__main__":
    sys.exit(main())
