"""The offloaded rows of ``simulate_full_size.py``: the trainer's streamed step on fake tensors.

A row with ``offload_blocks`` / ``offload_act`` runs ``trainer.offload.attach`` on the full-size
``Trainable`` exactly as a training run does: the streamed blocks' weights stay where ComfyUI built
them (the host), each block gets a device copy just before it runs, block inputs saved by
checkpointing go through ``BlockInputsToHost``. The fake device is the CPU, so "host" and "device"
are told apart by tags: the streamed blocks' own weights and the packed block inputs are tagged
``host`` (``LiveBytes.HOST``: counted in ``host_peak``, never in the device peak); the device copies
are ``weights`` while installed, the unpacked inputs ``temporaries``. Copies are made at the points of
the schedule where a GPU run makes them, so the device peak includes the blocks in flight.

Bytes moved per step (measured on the last step, the steady state) give the time estimate:
``est = max(compute, weight copies) + activation copies``. Weight copies overlap compute because the
streamer prefetches on a side stream; ``save_on_cpu`` copies on the compute stream, so activation
copies are added, not overlapped. The host-side staging copy (memory map -> pinned slot, on a
worker thread) is assumed not to be the bottleneck; ``bench/gpu_check.sh`` measures the real step.

Also here: the largest-canvas search with offloading (``--search offload``) and ``--guidance``: for
8, 12 and 16 GB cards and LoRA rank 16 / 64, the setting ``offload.auto`` picks from the trainer's
memory model, then simulated (the README's memory-guidance table).
"""

from __future__ import annotations

import logging
from dataclasses import replace

log = logging.getLogger("simulate_full_size")
GIB = 2 ** 30
SEARCH_CAP = 32768  # largest canvas searched with offloading (4x the paper's 8192 tokens)
# Practical host-to-device rates for pinned copies (an assumption, ~80 % of the raw link rate):
# PCIe 4.0 x16 = 16 GT/s x 16 lanes, 128b/130b = 31.5 GB/s per direction (PCI-SIG), ~25 GB/s in
# practice; PCIe 5.0 x16 = 63 GB/s raw, ~50 GB/s. An RTX 4090 has a PCIe 4.0 x16 link, an H100 SXM
# a PCIe 5.0 x16 host link.
LINK_GBPS = {"H100 SXM": 50.0, "RTX 4090": 25.0}


def offload_specs(base) -> list:
    """Streamed rows: every block from host memory, with the block inputs in host memory too (the
    ``_offload`` rows, the least device memory) or on the device (``_offload_base``)."""
    t = base.img_tokens
    rows = []
    for rank in (16, 64):
        rows.append(replace(base, name=f"lora_r{rank}_fp8_offload_{t}", rank=rank, offload_blocks=-1,
                            offload_act=True))
        rows.append(replace(base, name=f"lora_r{rank}_fp8_offload_base_{t}", rank=rank, offload_blocks=-1))
    rows.append(replace(base, name=f"lora_r64_bf16_offload_{t}", rank=64, base="bf16", offload_blocks=-1,
                        offload_act=True))
    rows.append(replace(base, name=f"fft_lora_r64_fp8_offload_{t}", kind="fft", offload_blocks=-1, offload_act=True))
    return rows


def attach_offload(spec, model, tracker):
    """``trainer.offload.attach`` for a row that offloads (else None), with the host / device tags."""
    if not (spec.offload_blocks or spec.offload_act):
        return None
    import torch

    from trainer.offload import attach, blocks_of

    n = len(blocks_of(model.dit)) if spec.offload_blocks < 0 else spec.offload_blocks
    for _, blk in blocks_of(model.dit)[:n]:
        for p in blk.parameters():
            tracker.retag(p, tracker.HOST)

    def device_copies(k, tensors):
        for t in tensors:
            tracker.retag(t, "weights")

    return attach(model, spec.offload_blocks, spec.offload_act, torch.device("cpu"), spec.prefetch,
                  observer=device_copies, on_pack=lambda t: tracker.retag(t, tracker.HOST))


def transfer_counters(model, streamer, moved: dict):
    """``before_step`` / ``after_backward`` for ``measured_steps``: the bytes the last step moves
    (weights host -> device; block inputs device -> host and back) into ``moved``."""
    acts = model.saved_block_inputs
    start = {}

    def before(i):
        start["w"] = streamer.bytes_moved if streamer else 0
        start["a"] = acts.packed_bytes if acts else 0

    def after(last):
        if last:
            moved["h2d_weight_bytes"] = (streamer.bytes_moved if streamer else 0) - start["w"]
            moved["act_bytes"] = (acts.packed_bytes if acts else 0) - start["a"]

    return before, after


def transfer_estimates(r: dict, compute_s: dict[str, float]) -> dict[str, float]:
    """Estimated s/step per card: max(compute, weight copies) + activation copies (both ways)."""
    out = {}
    for card, gbps in LINK_GBPS.items():
        w = r.get("h2d_weight_bytes", 0) / (gbps * 1e9)
        a = 2 * r.get("act_bytes", 0) / (gbps * 1e9)
        out[card] = max(compute_s[card], w) + a
    return out


def fmt_offload_row(name: str, r: dict, compute_s: dict[str, float], tags) -> str:
    by = r["by_tag"]
    cells = " | ".join(f"{by.get(t, 0) / GIB:.2f}" for t in tags)
    est = transfer_estimates(r, compute_s)
    moved = (r.get("h2d_weight_bytes", 0) + r.get("act_bytes", 0)) / GIB
    return (f"| {name} | {r['img_tokens']}+{r['txt_tokens']} | {cells} | {r['peak_gib']:.2f} | "
            f"**{r['peak_gib_margin']:.2f}** | {r['host_peak_bytes'] / GIB:.2f} | {moved:.1f} | "
            f"{r.get('act_bytes', 0) / GIB:.1f} | {est['H100 SXM']:.2f} | {est['RTX 4090']:.2f} |")


OFFLOAD_HEADER = ("| row | tokens (img+txt) | weights (device) | LoRA | grads | optimizer | activations | "
                  "temporaries | device peak GiB | + margin GiB | host GiB | host->device GiB/step | device->host GiB/step | "
                  "est. s/step H100 (PCIe 5.0 ~50 GB/s) | est. s/step 4090 (PCIe 4.0 ~25 GB/s) |")


def print_offload_rows(results: dict, estimates, tags, mfu: float) -> None:
    offloaded = {name: r for name, r in results.items() if r.get("offload")}
    if not offloaded:
        return
    log.info("")
    log.info("Offloaded rows (trainer.offload; device and host counted apart; times are ESTIMATES: "
             "max(compute at %.0f%% MFU, weight copies on the side stream) + activation copies)", 100 * mfu)
    log.info("%s", OFFLOAD_HEADER)
    log.info("|%s", "---|" * (OFFLOAD_HEADER.count("|") - 1))
    for name, r in offloaded.items():
        log.info("%s", fmt_offload_row(name, r, estimates(r["flops"]), tags))


def offload_search(sim, base, summary: dict) -> None:
    """Largest canvas on 16, 12 and 8 GB cards, LoRA rank 16 and 64, every block streamed and the
    block inputs on the host (``sim``: the simulate_full_size module; its ``largest_canvas``, searched up
    to ``SEARCH_CAP``)."""
    for rank in (16, 64):
        known: dict[int, float] = {}
        for budget in (16, 12, 8):
            tokens, peak, known = sim.largest_canvas(replace(base, rank=rank, offload_blocks=-1, offload_act=True),
                                                 budget, known, cap=SEARCH_CAP)
            log.info("largest canvas, LoRA rank %d, fp8 base streamed + block inputs on the host, 8-bit AdamW, "
                     "%d GB card: %s image tokens (%.2f GiB with margin)", rank, budget,
                     f">= {tokens}" if tokens == SEARCH_CAP else tokens, peak)
            summary[f"max_tokens_r{rank}_fp8_offload_{budget}gb"] = tokens


def print_guidance(sim, base, summary: dict) -> None:
    log.info("")
    log.info("| card | LoRA rank | image tokens | offload.auto's pick (fp8 base, 8-bit AdamW, 1 ahead) | "
             "model GiB (+ margin) | simulated GiB (+ margin) |")
    log.info("|---|---|---|---|---|---|")
    for row in guidance(sim, base):
        log.info("%s", fmt_guidance(row, base.depth + base.single))
        if row["pick"] is not None:
            summary[f"guidance_r{row['rank']}_{row['card']}gb"] = round(row["simulated_gib"], 3)


def guidance(sim, base, cards=(8, 12, 16), ranks=(16, 64)) -> list[dict]:
    """The README's memory-guidance table: for each card and LoRA rank at ``base``'s canvas, the setting
    ``offload.auto`` picks from the trainer's model (``trainer.offload_plan.choose``), then the same step
    simulated with that setting (peak with margin): the model's choice checked by the simulation."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from trainer import offload_plan as P

    with FakeTensorMode():
        shapes = {k: tuple(v.shape) for k, v in sim.build_dit(base).state_dict().items()}
    rows = []
    for rank in ranks:
        spec = replace(base, rank=rank)
        arch = P.Arch.from_shapes(shapes, P.DTYPE_BYTES[spec.base], sim._config(spec))
        step = P.Step(spec.img_tokens, spec.txt_tokens, 1, 2, spec.base == "fp8_e4m3fn", spec.optim,
                      P.DTYPE_BYTES[spec.base])
        for card in cards:
            pick = P.choose(arch, step, card, spec.prefetch)
            row = {"card": card, "rank": rank, "tokens": spec.img_tokens, "pick": pick}
            if pick is not None:
                r = sim.run_step(replace(spec, offload_blocks=pick[0], offload_act=pick[1]), steps=2,
                                 count_flops=False)
                row["simulated_gib"] = P.with_margin(r["peak_bytes"]) / GIB
            rows.append(row)
    return rows


def fmt_guidance(row: dict, blocks: int) -> str:
    if row["pick"] is None:
        return f"| {row['card']} GB | {row['rank']} | {row['tokens']} | does not fit | - | - |"
    n, act, model = row["pick"]
    what = ("nothing offloaded" if not n and not act else
            f"{'every' if n == blocks else n} block{'s' if n != 1 else ''} streamed" + (", block inputs on the host"
                                                                                        if act else ""))
    over = " (over the card)" if row["simulated_gib"] > row["card"] else ""
    return (f"| {row['card']} GB | {row['rank']} | {row['tokens']} | {what} | {model:.2f} | "
            f"**{row['simulated_gib']:.2f}**{over} |")
