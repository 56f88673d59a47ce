"""Worker for the multi-process trainer tests, started by ``torchrun --nproc_per_node 2`` (gloo, CPU).

    dist_worker.py train CONFIG.toml REPORT_DIR   train(), then each rank writes REPORT_DIR/rank<r>.json
                                                  with its parameter shards (what it really holds)
    dist_worker.py offload CONFIG.toml REPORT_DIR  LoRA steps with the base resident, then streamed
                                                  ([offload] of the config), in one process group
    dist_worker.py ddp_base CONFIG.toml REPORT_DIR [--stock]
        LoRA under DDP with a different base weight on each rank: one training step, then each rank
        reports checksums of its base and its LoRA. --stock wraps with accelerate only (no ignore
        list), the control that shows stock DDP broadcasts the base.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from aceplus_host import import_comfy  # noqa: E402

import_comfy()
sys.path.append(str(ROOT))

import torch  # noqa: E402


def _write(report_dir: str, rank: int, data: dict) -> None:
    Path(report_dir).mkdir(parents=True, exist_ok=True)
    (Path(report_dir) / f"rank{rank}.json").write_text(json.dumps(data, indent=1))


WRAPPERS_AT_DESTROY: list[int] = []


def _count_wrappers_at_destroy() -> None:
    """Record how many DDP wrappers are still alive when the process group is destroyed. One that
    outlives the group is freed at interpreter exit, where gloo's teardown aborts the process about
    half the time ("terminate called without an active exception"): the count must be 0."""
    import gc

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    real = dist.destroy_process_group

    def spy(group=None):
        gc.collect()
        WRAPPERS_AT_DESTROY.append(sum(issubclass(type(o), DistributedDataParallel) for o in gc.get_objects()))
        return real(group)

    dist.destroy_process_group = spy


def train_mode(toml: str, report_dir: str) -> None:
    from trainer import distributed as D
    from trainer.config import load_config
    from trainer.loop import train

    result = train(load_config(toml))
    _write(report_dir, int(os.environ["RANK"]), {"shards": D.local_shard_report(result["model"]),
                                                  "step": result["step"], "wrappers_at_destroy": WRAPPERS_AT_DESTROY})


def ddp_base_mode(toml: str, report_dir: str, stock: bool) -> None:
    from accelerate import Accelerator

    from trainer import distributed as D
    from trainer.config import load_config
    from trainer.model import Trainable, load_dit

    cfg = load_config(toml)
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    model = Trainable(load_dit(cfg, accelerator.device), cfg)
    with torch.no_grad():  # a different frozen base on each rank: DDP must leave it alone
        model.dit.img_in.weight.add_(float(rank))
    before = float(model.dit.img_in.weight.double().sum())
    model = accelerator.prepare(model) if stock else D.prepare_model(accelerator, model, cfg)[0]
    raw = accelerator.unwrap_model(model)
    opt = torch.optim.AdamW([p for p in raw.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(rank)  # different data per rank: LoRA grads differ until all-reduced
    x, s = torch.randn(1, 96, 8, 16, generator=g), torch.tensor([0.4])
    ctx, pooled = torch.randn(1, 8, 64, generator=g), torch.randn(1, 768, generator=g)
    for lora in raw.loras.values():
        torch.nn.init.normal_(lora.up, std=0.02, generator=torch.Generator().manual_seed(7))
    loss = (model(x, s, ctx, pooled, 1.0).float() ** 2).mean()
    accelerator.backward(loss)
    opt.step()
    report = {
        "base_before": before, "base_after": float(raw.dit.img_in.weight.double().sum()),
        "lora": float(sum(p.detach().double().sum() for p in raw.loras.parameters())),
        "lora_grad": float(sum(p.grad.double().abs().sum() for p in raw.loras.parameters())),
    }
    del model, raw, opt
    D.shutdown(accelerator)
    _write(report_dir, rank, {**report, "wrappers_at_destroy": WRAPPERS_AT_DESTROY})


def offload_mode(toml: str, report_dir: str) -> None:
    """The same 2 LoRA steps under DDP, base resident and base streamed (config's [offload]), in one
    process group; each rank reports both LoRAs and where its streamed host weights live."""
    from accelerate import Accelerator

    from trainer import distributed as D
    from trainer import offload_plan
    from trainer.testing import mapped_ranges
    from trainer.config import load_config
    from trainer.loop import build_model
    from trainer.model import check_dit_file

    cfg = load_config(toml)
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    fit = offload_plan.plan(cfg, check_dit_file(cfg), [], accelerator.device, 8)
    report = {}
    for name, plan in (("resident", None), ("streamed", fit)):
        model = build_model(cfg, accelerator.device, plan, accelerator)
        wrapped = D.prepare_model(accelerator, model, cfg)[0]
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for lora in model.loras.values():
            torch.nn.init.normal_(lora.up, std=0.02, generator=torch.Generator().manual_seed(7))
        g = torch.Generator().manual_seed(rank)  # different data per rank: LoRA grads differ until all-reduced
        losses = []
        for _ in range(2):
            x, s = torch.randn(1, 96, 8, 16, generator=g), torch.tensor([0.4])
            ctx, pooled = torch.randn(1, 8, 64, generator=g), torch.randn(1, 768, generator=g)
            loss = (wrapped(x, s, ctx, pooled, 1.0).float() ** 2).mean()
            accelerator.backward(loss)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
        report[name] = {"losses": losses, "lora": [p.detach().double().sum().item() for p in model.loras.parameters()]}
        if plan is not None:
            host = [t for rows in model.streamer.entries for _, _, t, _ in rows]
            files = {Path(ln.split(None, 5)[5].strip()) for ln in Path("/proc/self/maps").read_text().splitlines()
                     if len(ln.split(None, 5)) == 6 and ln.split(None, 5)[5].endswith(".safetensors")}
            inside = {str(f): sum(any(lo <= t.data_ptr() < hi for lo, hi in mapped_ranges(f)) for t in host)
                      for f in files}
            path = max(inside, key=inside.get)
            report["mapping"] = {"file": path, "inode": os.stat(path).st_ino, "inside": inside[path], "host": len(host)}
        del wrapped, model, opt
    D.shutdown(accelerator)
    _write(report_dir, rank, report)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    torch.set_num_threads(1)
    mode, toml, report = sys.argv[1:4]
    _count_wrappers_at_destroy()
    if mode == "train":
        train_mode(toml, report)
    elif mode == "offload":
        offload_mode(toml, report)
    else:
        ddp_base_mode(toml, report, "--stock" in sys.argv)
