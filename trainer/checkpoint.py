"""Atomic, rotated checkpoints and ``--resume latest``.

A checkpoint is a folder ``<output_dir>/checkpoints/step-00000010/`` holding

- ``trainable.safetensors``  LoRA factors (or all DiT weights for a full fine-tune)
- ``optimizer.pt`` / ``scheduler.pt`` / ``rng.pt``
- ``state.json``  step, micro-batch position and the resolved config

It is written into a hidden temp folder and renamed into place (``os.rename`` of a folder is
atomic on POSIX), so a run killed at any instant leaves either the complete folder or none.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger(__name__)

PREFIX = "step-"


def ckpt_dir(output_dir: str) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str) -> list[Path]:
    root = ckpt_dir(output_dir)
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX):]))


def clean_temp(output_dir: str) -> None:
    """Remove temp folders left by a run killed while writing (never a finished checkpoint)."""
    root = ckpt_dir(output_dir)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-"):
                log.info("removing unfinished checkpoint %s", p)
                shutil.rmtree(p, ignore_errors=True)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: str, step: int, micro: int, trainable: dict[str, torch.Tensor], optimizer,
                    scheduler, config_json: str, keep: int) -> Path:
    root = ckpt_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.contiguous().cpu() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"),
              metadata={"step": str(step)})
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(rng_state(), tmp / "rng.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, "micro": micro, "config": json.loads(config_json)},
                                               indent=1))
    for f in tmp.iterdir():  # data on disk before the rename makes the folder visible
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # re-saving the same step (e.g. Ctrl-C right after a periodic save)
        shutil.rmtree(final)
    os.rename(tmp, final)
    log.info("checkpoint %s", final)
    if keep > 0:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def find_resume(output_dir: str, resume: str) -> Optional[Path]:
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            log.info("--resume latest: no checkpoint in %s yet; starting fresh", ckpt_dir(output_dir))
            return None
        return found[-1]
    path = Path(resume)
    if not (path / "state.json").is_file():
        raise ValueError(f"run.resume {resume!r} is not a checkpoint folder (no state.json); use 'latest' or a "
                         f"folder under {ckpt_dir(output_dir)}.")
    return path


def load_checkpoint(path: Path) -> dict:
    state = json.loads((path / "state.json").read_text())
    return {
        "step": state["step"], "micro": state["micro"], "config": state["config"],
        "trainable": load_file(str(path / "trainable.safetensors")),
        "optimizer": torch.load(path / "optimizer.pt", weights_only=False),
        "scheduler": torch.load(path / "scheduler.pt", weights_only=False),
        "rng": torch.load(path / "rng.pt", weights_only=False),
    }
