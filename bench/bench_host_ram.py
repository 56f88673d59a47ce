"""Host RAM per rank for loading the DiT: ComfyUI's stock loader (copies) vs the trainer's memory map.

The 12 B FLUX.1-Fill file is 23.8 GB in bf16: it is not written here. Instead:

1. measure, each loader in a fresh process, on the ``tiny_fill`` fixture (real FLUX widths: hidden
   3072, 1 double + 1 single block, 392 M parameters, bf16, 0.78 GB): RssAnon (private memory, one
   copy per rank) and RssFile (file pages in the page cache, shared by every rank on the host and
   dropped under memory pressure) after loading and reading every weight once (as ``.to(cuda)`` does);
2. count the 12 B model exactly, on the meta device: ComfyUI's detection and Flux class built from
   the fixture's per-block shapes replicated to 19 double + 38 single blocks (no memory);
3. scale: private bytes per file byte x the 12 B file's bytes.

    python bench/bench_host_ram.py            # prints a JSON report and a summary line per loader
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _status_mb() -> dict[str, float]:
    text = Path("/proc/self/status").read_text()
    return {k: int(re.search(rf"^{k}:\s+(\d+) kB", text, re.M).group(1)) / 1024
            for k in ("VmRSS", "RssAnon", "RssFile", "VmHWM")}


def _child(which: str, path: str) -> dict:
    sys.path.insert(0, str(ROOT))
    from aceplus_host import import_comfy

    import_comfy()
    sys.path.append(str(ROOT))
    import torch

    import comfy.sd
    import comfy.utils

    before = _status_mb()
    if which == "stock":
        sd, meta = comfy.utils.load_torch_file(path, return_metadata=True)
        dit = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": torch.bfloat16},
                                                       metadata=meta).model.diffusion_model
        del sd
    else:
        from trainer.config import load_config
        from trainer.model import load_dit
        from trainer.testing import base_config

        cfg = load_config(data=base_config(Path(path), Path("v"), Path("m"), Path("o"),
                                           model={"base_dtype": "bf16"}))
        dit = load_dit(cfg, torch.device("cpu"))
    total = sum(float(p.float().sum()) for p in dit.parameters())  # read every page once, as .to(cuda) does
    after = _status_mb()
    nbytes = sum(p.numel() * p.element_size() for p in dit.parameters())
    return {"loader": which, "weights_mb": nbytes / 2**20, "checksum": total,
            **{f"{k}_mb": after[k] - before[k] for k in ("RssAnon", "RssFile")}, "peak_rss_mb": after["VmHWM"]}


def flux12b_bytes(path: str) -> dict:
    """FLUX.1-Fill at full depth on the meta device: parameter count and bf16 bytes."""
    sys.path.insert(0, str(ROOT))
    from aceplus_host import import_comfy

    import_comfy()
    import torch

    import comfy.model_detection
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    h = shapes["img_in.weight"][0]
    if not any(k.startswith("single_blocks.") for k in shapes):  # the fixture has none: FLUX's single block
        mlp = 4 * h
        shapes.update({"single_blocks.0.linear1.weight": (3 * h + mlp, h), "single_blocks.0.linear1.bias": (3 * h + mlp,),
                       "single_blocks.0.linear2.weight": (h, h + mlp), "single_blocks.0.linear2.bias": (h,),
                       "single_blocks.0.norm.query_norm.scale": (128,), "single_blocks.0.norm.key_norm.scale": (128,),
                       "single_blocks.0.modulation.lin.weight": (3 * h, h),
                       "single_blocks.0.modulation.lin.bias": (3 * h,)})
    sd = {}
    for k, shp in shapes.items():
        m = re.match(r"(double|single)_blocks\.0\.(.*)", k)
        meta = torch.empty(shp, dtype=torch.bfloat16, device="meta")
        if m:
            for i in range(19 if m.group(1) == "double" else 38):
                sd[f"{m.group(1)}_blocks.{i}.{m.group(2)}"] = meta
        elif not re.match(r"(double|single)_blocks\.\d+\.", k):
            sd[k] = meta
    unet = comfy.model_detection.detect_unet_config(sd, "")
    cfg = comfy.model_detection.model_config_from_unet_config(unet, sd)
    cfg.set_inference_dtype(torch.bfloat16, None)
    dit = cfg.get_model(sd, "", device=torch.device("meta")).diffusion_model
    n = sum(p.numel() for p in dit.parameters())
    return {"params": n, "bf16_bytes": 2 * n, "double": unet["depth"], "single": unet["depth_single_blocks"]}


def main() -> int:
    p = argparse.ArgumentParser(description="host RAM per rank: stock loader vs memory map")
    p.add_argument("--child", nargs=2, metavar=("LOADER", "FILE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        sys.stdout.write(json.dumps(_child(*args.child)) + "\n")
        return 0
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT))
    from aceplus_host import import_comfy

    import_comfy()
    from fixtures import ensure_fixtures

    path = str(ensure_fixtures()["tiny_fill"])
    file_mb = Path(path).stat().st_size / 2**20
    big = flux12b_bytes(path)
    big_gb = big["bf16_bytes"] / 1e9
    rows = []
    for which in ("stock", "mmap"):
        out = subprocess.run([sys.executable, __file__, "--child", which, path], capture_output=True, text=True,
                             cwd=ROOT, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        r["anon_per_file_byte"] = r["RssAnon_mb"] / file_mb
        r["flux12b_private_gb_per_rank"] = r["anon_per_file_byte"] * big_gb
        rows.append(r)
    report = {"fixture_mb": file_mb, "flux12b": big, "loaders": rows}
    sys.stdout.write(json.dumps(report, indent=1) + "\n")
    for r in rows:
        sys.stdout.write(f"{r['loader']:>5}: fixture {file_mb:.0f} MB -> private +{r['RssAnon_mb']:.0f} MB, "
                         f"file-backed (shared page cache) +{r['RssFile_mb']:.0f} MB; FLUX 12 B "
                         f"({big['params'] / 1e9:.2f} B params, {big_gb:.1f} GB bf16): "
                         f"~{r['flux12b_private_gb_per_rank']:.1f} GB private per rank\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
