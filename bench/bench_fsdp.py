"""Full fine-tune: FSDP2 over 2 CPU processes (gloo) vs 1 process, same global batch.

Time per optimizer step (from the run's metrics.jsonl timestamps, first two steps dropped) and peak
RSS of every process (``ru_maxrss``), through the real trainer (``trainer/run.py`` code path):

    python bench/bench_fsdp.py [--hidden 512 --depth 2 --depth-single 2 --steps 8 --threads 1]

1 process: batch 2. 2 processes (torchrun, FSDP2, each holding half of the weights, gradients and
AdamW moments): batch 1 each. Each process gets ``--threads`` threads.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _child(toml: str, report: str) -> None:
    sys.path.insert(0, str(ROOT))
    from aceplus_host import import_comfy

    import_comfy()
    sys.path.append(str(ROOT))
    import torch

    from trainer.config import load_config
    from trainer.loop import train

    import threading
    import time

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    samples, done = [], threading.Event()

    def sample_rss():  # (time, VmRSS, RssAnon MB) every 20 ms: the peak *during the steps* is read later
        while not done.is_set():
            st = {ln.split(":")[0]: int(ln.split()[1]) / 1024 for ln in
                  Path("/proc/self/status").read_text().splitlines() if ln.startswith(("VmRSS:", "RssAnon:"))}
            samples.append((time.time(), st["VmRSS"], st["RssAnon"]))
            time.sleep(0.02)

    thread = threading.Thread(target=sample_rss, daemon=True)
    thread.start()
    cfg = load_config(toml)
    result = train(cfg)
    done.set()
    thread.join()
    n = sum(p.numel() for p in result["model"].parameters())
    rank = int(os.environ.get("RANK", "0"))
    Path(report).mkdir(parents=True, exist_ok=True)
    (Path(report) / f"rank{rank}.json").write_text(json.dumps(
        {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "params": n, "rss": samples}))


def _step_time(out: Path, skip: int = 2) -> float:
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    t = [r["time"] for r in rows[skip - 1:]]
    return (t[-1] - t[0]) / (len(t) - 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--depth-single", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--size", type=int, default=128, help="image side of the synthetic samples (px)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    if args.child:
        _child(*args.child)
        return 0
    sys.path.insert(0, str(ROOT))
    from aceplus_host import cache_dir, import_comfy

    import_comfy()
    sys.path.append(str(ROOT))
    from trainer import testing

    tmp = Path(tempfile.mkdtemp(prefix="bench_fsdp_"))
    tiny = cache_dir() / "trainer_tiny"
    dit = testing.tiny_flux_file(tiny / f"fill_h{args.hidden}_d{args.depth}_{args.depth_single}.safetensors",
                                 hidden=args.hidden, depth=args.depth, depth_single=args.depth_single)
    vae = testing.tiny_vae_file(tiny / "vae.safetensors")
    manifest = testing.write_copy_dataset(tmp / "data", n=4, size=args.size)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads),
           "BENCH_THREADS": str(args.threads)}
    rows = {}
    for name, procs, batch in (("1 process", 1, 2), ("FSDP2, 2 processes", 2, 1)):
        out = tmp / name.replace(" ", "_").replace(",", "")
        cfg = testing.base_config(dit, vae, manifest, out, run={"max_steps": args.steps, "save_every": 0},
                                  lora={"enabled": False},
                                  canvas={"max_tokens": 2 * (args.size // 16) ** 2, "target_tokens": (args.size // 16) ** 2},
                                  train={"batch_size": batch, "scheduler": "constant"})
        cfg["cache"] = {"dir": str(tmp / "cache")}
        toml = tmp / f"{procs}.toml"
        toml.write_text(testing.to_toml(cfg))
        launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs)]
                    if procs > 1 else [sys.executable])
        subprocess.run([*launcher, __file__, "--child", str(toml), str(out / "report")], cwd=ROOT, env=env,
                       check=True, capture_output=True)
        ranks = [json.loads((out / "report" / f"rank{r}.json").read_text()) for r in range(procs)]
        times = [json.loads(ln)["time"] for ln in (out / "metrics.jsonl").read_text().splitlines()]
        # steady state: from the end of step 1 (model loaded, sharded, optimizer state created) to the last
        # step's end (before the final checkpoint and export, whose serialisation has its own peak)
        steady = [max(m for t, m, _ in r["rss"] if times[0] <= t <= times[-1]) for r in ranks]
        anon = [max(a for t, _, a in r["rss"] if times[0] <= t <= times[-1]) for r in ranks]
        rows[name] = {"s_per_step": _step_time(out), "peak_rss_mb_per_process": [r["peak_rss_mb"] for r in ranks],
                      "training_rss_mb_per_process": steady, "training_private_mb_per_process": anon,
                      "params": ranks[0]["params"]}
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    sys.stdout.write(json.dumps({"args": vars(args), "results": rows}) + "\n")
    for name, r in rows.items():
        sys.stdout.write(f"{name}: {r['s_per_step']:.3f} s/step, RSS per process during the steps "
                         f"{', '.join(f'{m:.0f}' for m in r['training_rss_mb_per_process'])} MB (private "
                         f"{', '.join(f'{m:.0f}' for m in r['training_private_mb_per_process'])} MB), peak overall "
                         f"{', '.join(f'{m:.0f}' for m in r['peak_rss_mb_per_process'])} MB "
                         f"({r['params'] / 1e6:.1f} M params)\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
