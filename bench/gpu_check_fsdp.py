"""GPU check of the sharded full fine-tune: the parts the CPU tests (gloo) cannot reach.

What only a CUDA machine exercises (the CPU tests cover everything else with 2 gloo processes):

1. FSDP2 over **NCCL**: all-gather / reduce-scatter of the per-block units on GPUs.
2. ``MixedPrecisionPolicy(param bf16, reduce fp32)`` with **CUDA bf16 kernels**: ComfyUI builds the
   fp32 master model with its plain ops on CUDA (no manual cast), so the all-gathered bf16 weights
   meet bf16 inputs (FSDP casts the root's inputs) under accelerate's CUDA autocast.
3. The collective checkpoint (DCP, safetensors shards + JSON) and resume with CUDA tensors and the
   CUDA RNG state, and the consolidated export gathered to rank 0 with ``cpu_offload``.

It trains a tiny random FLUX (hidden 256, 2 double + 2 single blocks) as a full fine-tune with
``train.distributed = "fsdp"`` and ``mixed_precision = "bf16"`` for 4 steps on every visible GPU
(``torchrun --nproc_per_node <GPUs>``; one GPU = FSDP over a 1-process NCCL group, which still runs
the DTensor / all-gather code), kills nothing, resumes to step 6 from the step-4 checkpoint, and
checks: finite, falling losses; parameters are DTensors; one shard file per rank; the resumed
losses continue the curve; the export loads through ComfyUI's detection into its Flux class.

    python bench/gpu_check_fsdp.py              # on a CUDA machine; exit code 0 = every check passed
    python bench/gpu_check_fsdp.py --dry-run    # the same script on the CPU (2 gloo processes)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _child(toml: str, report: str) -> None:
    """One rank (under torchrun): train, then report what this rank holds."""
    sys.path.insert(0, str(ROOT))
    from aceplus_host import import_comfy

    import_comfy()
    sys.path.append(str(ROOT))
    import logging

    import torch
    import torch.distributed as dist

    logging.basicConfig(level=logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    if int(os.environ.get("WORLD_SIZE", "1")) == 1 and torch.cuda.is_available():
        dist.init_process_group("nccl")  # one GPU: FSDP over a 1-process group (explicit train.distributed)
    from torch.distributed.tensor import DTensor

    from trainer.config import load_config
    from trainer.loop import train

    result = train(load_config(toml))
    model = result["model"]
    rank = int(os.environ.get("RANK", "0"))
    Path(report).mkdir(parents=True, exist_ok=True)
    (Path(report) / f"rank{rank}.json").write_text(json.dumps({
        "dtensor": all(isinstance(p, DTensor) for p in model.parameters()),
        "device": str(next(model.parameters()).device), "losses": result["losses"]}))


def _run(n: int, toml: Path, report: Path, extra: list[str]) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), __file__,
           "--child", str(toml), str(report), *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    if proc.returncode != 0:
        sys.stdout.write(out[-6000:])
        raise SystemExit(f"FAIL: torchrun exited with {proc.returncode}")
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="run on the CPU with 2 gloo processes")
    p.add_argument("--child", nargs=2, metavar=("TOML", "REPORT"), help=argparse.SUPPRESS)
    p.add_argument("--keep", action="store_true", help="keep the temp folder")
    args, extra = p.parse_known_args()
    if args.child:
        _child(*args.child)
        return 0
    sys.path.insert(0, str(ROOT))
    import torch

    from aceplus_host import import_comfy

    import_comfy()
    sys.path.append(str(ROOT))
    from trainer import testing

    if not args.dry_run and not torch.cuda.is_available():
        print("FAIL: no CUDA device; use --dry-run to check the script on the CPU")
        return 2
    n = 2 if args.dry_run else torch.cuda.device_count()
    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_fsdp_"))
    dit = testing.tiny_flux_file(tmp / "dit.safetensors", depth=2, depth_single=2)
    vae = testing.tiny_vae_file(tmp / "vae.safetensors")
    manifest = testing.write_copy_dataset(tmp / "data", n=2 * n, size=64)
    cfg = testing.base_config(dit, vae, manifest, tmp / "out",
                              run={"max_steps": 4, "save_every": 2, "keep_checkpoints": 0},
                              lora={"enabled": False},
                              train={"lr": 1e-4, "scheduler": "constant", "mixed_precision": "bf16",
                                     "distributed": "fsdp"})
    toml = tmp / "run.toml"
    toml.write_text(testing.to_toml(cfg))
    checks: list[tuple[str, bool, str]] = []
    log1 = _run(n, toml, tmp / "r1", [])
    reports = [json.loads((tmp / "r1" / f"rank{r}.json").read_text()) for r in range(n)]
    losses = [v for _, v in reports[0]["losses"]]
    want_dev = "cpu" if args.dry_run else "cuda"
    checks.append(("FSDP2 wrapped (log)", "FSDP2:" in log1, ""))
    checks.append(("parameters are DTensors on every rank", all(r["dtensor"] for r in reports), ""))
    checks.append((f"parameters on {want_dev}", all(r["device"].startswith(want_dev) for r in reports),
                   str({r["device"] for r in reports})))
    finite = all(v == v and abs(v) < 1e6 for v in losses)
    checks.append(("losses finite and falling", finite and losses[-1] < losses[0], str(losses)))
    ck = tmp / "out" / "checkpoints" / "step-00000004"
    shards = sorted((ck / "sharded").glob("*.safetensors")) if ck.is_dir() else []
    checks.append((f"{n} shard file(s) in the step-4 checkpoint", len(shards) == n, str([s.name for s in shards])))
    cfg2 = {**cfg, "run": {**cfg["run"], "max_steps": 6, "resume": str(ck)}}
    toml2 = tmp / "resume.toml"
    toml2.write_text(testing.to_toml(cfg2))
    log2 = _run(n, toml2, tmp / "r3", [])
    resumed = [v for _, v in json.loads((tmp / "r3" / "rank0.json").read_text())["losses"]]
    checks.append(("resumed from the sharded checkpoint", "resumed from" in log2, ""))
    checks.append(("resumed steps 5-6 finite", len(resumed) == 2 and all(v == v for v in resumed), str(resumed)))
    from trainer.config import load_config
    from trainer.model import load_dit

    export = tmp / "out" / "aceplus_full.safetensors"
    try:
        load_dit(load_config(data={**cfg, "model": {**cfg["model"], "dit": str(export)}}), torch.device("cpu"))
        checks.append(("consolidated export loads through ComfyUI's detection", True, str(export)))
    except Exception as e:  # report, do not hide
        checks.append(("consolidated export loads through ComfyUI's detection", False, repr(e)))
    for name, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {name} {detail}")
    print(f"device: {'CPU dry run (gloo, 2 processes)' if args.dry_run else torch.cuda.get_device_name(0)}, "
          f"{n} process(es); folder {tmp}")
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
