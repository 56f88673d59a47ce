"""Tiny models and synthetic datasets for the trainer's tests and CPU benchmarks (never for real runs).

The synthetic task "copy the reference into the mask": each sample has a random-colour-block
reference R, an edit image E (other blocks) with a rectangular mask M, and the target
T = E outside M and R (resized to the box) inside M. The prompt is constant.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def tiny_flux_file(path: Path, kind: str = "fill", hidden: int = 256, depth: int = 1, depth_single: int = 1,
                   seed: int = 0, context_dim: int = 64) -> Path:
    """A random BFL-key FLUX file (hidden = 128 x heads; context 64 or T5-XXL's 4096, pooled 768) for
    ``model.num_heads = 0``.

    Built by the shared ``aceplus_host.tiny_models.flux_state_dict`` (seeded, every weight drawn), in fp32.
    """
    import torch

    from aceplus_host.tiny_models import KINDS, ensure_built, flux_state_dict

    ctx = "" if context_dim == 64 else f"_ctx{context_dim}"
    return ensure_built(path, lambda: flux_state_dict(KINDS[kind], depth=depth, depth_single=depth_single,
                                                      hidden=hidden, context_dim=context_dim, seed=seed,
                                                      dtype=torch.float32),
                        f"trainer_tiny_{kind}_h{hidden}{ctx}_seed{seed}")


def _blocks(rng: np.random.Generator, size: int) -> np.ndarray:
    img = np.zeros((size, size, 3), np.uint8)
    img[:] = rng.integers(0, 256, 3)
    for _ in range(3):
        y, x = rng.integers(0, size - size // 4, 2)
        h, w = rng.integers(size // 4, size // 2 + 1, 2)
        img[y:y + h, x:x + w] = rng.integers(0, 256, 3)
    return img


def write_copy_dataset(root: Path, n: int = 4, size: int = 64, fmt: str = "jsonl", seed: int = 0,
                       data_type: str = "subject") -> Path:
    """n samples of the copy-reference-into-mask task; returns the manifest path (jsonl or release csv)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        ref, edit = _blocks(rng, size), _blocks(rng, size)
        m = np.zeros((size, size), np.uint8)
        y0, x0 = size // 4, size // 4
        m[y0:y0 + size // 2, x0:x0 + size // 2] = 255
        box = np.asarray(Image.fromarray(ref).resize((size // 2, size // 2), Image.BILINEAR))
        tgt = edit.copy()
        tgt[y0:y0 + size // 2, x0:x0 + size // 2] = box
        names = {}
        for key, arr in (("ref", ref), ("edit", edit), ("mask", m), ("target", tgt)):
            names[key] = f"{key}_{i}.png"
            Image.fromarray(arr).save(root / names[key])
        rows.append({"edit_image": names["edit"], "edit_mask": names["mask"], "references": [names["ref"]],
                     "target_image": names["target"], "prompt": "copy the reference into the mask",
                     "data_type": data_type})
    if fmt == "jsonl":
        path = root / "train.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        path = root / "train.csv"
        lines = ["edit_image#;#edit_mask#;#ref_image#;#target_image#;#prompt#;#data_type"]
        lines += ["#;#".join([r["edit_image"], r["edit_mask"], r["references"][0], r["target_image"], r["prompt"],
                              r["data_type"]]) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    return path


def base_config(dit: Path, vae: Path, manifest: Path, out: Path, **sections) -> dict:
    """A small CPU config dict for tests/benchmarks (stub text encoder: TEST ONLY)."""
    cfg = {
        "run": {"output_dir": str(out), "max_steps": 4, "save_every": 0, "seed": 1},
        "model": {"dit": str(dit), "vae": str(vae), "text_encoder": "stub_test_only", "kind": "fill"},
        "lora": {"rank": 4, "alpha": 4.0},
        "data": {"manifest": str(manifest)},
        "canvas": {"max_tokens": 64, "target_tokens": 16},
        "train": {},
    }
    for sec, vals in sections.items():
        cfg.setdefault(sec, {}).update(vals)
    return cfg


def tiny_vae_file(path: Path, seed: int = 0) -> Path:
    """The shared tiny TAESD-layout VAE (``aceplus_host.tiny_models.tiny_vae_state_dict``: 16 latent
    channels, FLUX scale/shift, every weight drawn from ``seed`` and calibrated), cached at ``path``.

    A cached file from an older builder (its metadata version is below ``TINY_VAE_VERSION``) is rebuilt.
    """
    from aceplus_host.tiny_models import TINY_VAE_VERSION, ensure_built, tiny_vae_state_dict

    return ensure_built(path, lambda: tiny_vae_state_dict(seed), f"trainer_tiny_vae_seed{seed}", TINY_VAE_VERSION)


def evaluate(model, cfg, index: list, s_value: float = 0.5, seed: int = 1234) -> dict:
    """Fixed-noise evaluation over the cached dataset: the training loss and the L1 error of the
    predicted x0 = x_t - s v inside the masked target region (latent pixels), averaged."""
    import torch
    import torch.nn.functional as F

    from aceplus_core import flow_matching_pair, pack_mask
    from trainer.cache import load_batch
    from trainer.loop import loss_of

    losses, l1s = [], []
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for e in [e for e in index if e["variant"] == 0]:
            batch, layouts = load_batch([e["path"]])
            eps = torch.randn(batch["x0"].shape, generator=g)
            s = torch.tensor([s_value])
            loss, _ = loss_of(model, batch, layouts, eps, s, cfg, device)
            x_t, _ = flow_matching_pair(batch["x0"], eps, s)
            x_in = torch.cat([x_t, batch["cond"], pack_mask(batch["mask"])], 1)
            v = model(x_in, s, batch["ctx"], batch["pooled"], cfg.train.guidance).float()
            x0_hat = x_t - s_value * v
            m = F.max_pool2d(batch["mask"], 8)  # B, 1, h, w: latent pixels with any masked pixel
            l1s.append(float(((x0_hat - batch["x0"]).abs() * m).sum() / (m.sum() * 16)))
            losses.append(float(loss))
    return {"loss": sum(losses) / len(losses), "masked_l1": sum(l1s) / len(l1s)}


def to_toml(cfg: dict) -> str:
    """Two-level dict of scalars/lists -> TOML (JSON literals are valid TOML for these types)."""
    lines = []
    for sec, vals in cfg.items():
        lines.append(f"[{sec}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in vals.items() if v is not None]
        lines.append("")
    return "\n".join(lines)


def mapped_ranges(path: Path) -> list[tuple[int, int]]:
    """Address ranges of this process that map ``path`` (from /proc/self/maps; Linux)."""
    out = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(None, 5)
        if len(parts) == 6 and Path(parts[5].strip()) == Path(path).resolve():
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi))
    return out
