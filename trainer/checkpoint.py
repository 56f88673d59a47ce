"""Atomic, rotated checkpoints and ``--resume latest``; nothing in them is a pickle.

A checkpoint is a folder ``<output_dir>/checkpoints/step-00000010/`` holding

- ``trainable.safetensors``  LoRA factors (or all DiT weights for a full fine-tune)
- ``state.safetensors``      every tensor of the optimizer, scheduler and RNG state
- ``state.json``             step, micro-batch position, the resolved config, and the optimizer,
                             scheduler and RNG state as JSON trees whose tensors point into
                             ``state.safetensors`` (``{"__tensor__": "optimizer/3"}``)

Loading therefore never unpickles anything: a checkpoint from an older version (``*.pt`` files) is
read with ``torch.load(weights_only=True)``, and one that holds a pickled object is refused.
The API takes plain data (``save_checkpoint(..., trainable tensors, optimizer.state_dict(),
scheduler.state_dict(), ...)``), so a sharded run can gather full state dicts and pass them in.

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
from typing import Any, Optional

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


def to_json_tree(obj: Any, tensors: dict[str, torch.Tensor], prefix: str) -> Any:
    """A state tree (dicts, lists, tuples, numbers, strings, tensors, numpy arrays) -> JSON-able data;
    tensors move into ``tensors`` under ``prefix/<n>``. Non-string dict keys and tuples are tagged so
    ``from_json_tree`` restores them exactly (optimizer state is keyed by int)."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}/{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"{prefix}/{len(tensors)}"
        wide = obj.astype(np.int64) if obj.dtype.kind == "u" else obj  # torch/safetensors lack most unsigned
        tensors[key] = torch.from_numpy(np.ascontiguousarray(wide)).clone()
        return {"__ndarray__": key, "dtype": obj.dtype.str}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: to_json_tree(v, tensors, prefix) for k, v in obj.items()}}
        return {"__items__": [[to_json_tree(k, tensors, prefix), to_json_tree(v, tensors, prefix)]
                              for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [to_json_tree(v, tensors, prefix) for v in obj]}
    if isinstance(obj, list):
        return [to_json_tree(v, tensors, prefix) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    raise TypeError(f"checkpoint state holds a {type(obj).__name__} ({obj!r:.80}); only tensors, numbers, "
                    "strings and containers of them are stored (no pickles)")


def from_json_tree(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [from_json_tree(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__ndarray__" in obj:
        return tensors[obj["__ndarray__"]].numpy().astype(np.dtype(obj["dtype"]))
    if "__tuple__" in obj:
        return tuple(from_json_tree(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {from_json_tree(k, tensors): from_json_tree(v, tensors) for k, v in obj["__items__"]}
    return {k: from_json_tree(v, tensors) for k, v in obj["__dict__"].items()}


def save_checkpoint(output_dir: str, step: int, micro: int, trainable: dict[str, torch.Tensor], optimizer: dict,
                    scheduler: dict, config_json: str, keep: int, rng: Optional[dict] = None,
                    into: Optional[Path] = None) -> Path:
    """Write ``trainable`` (tensors), ``optimizer`` / ``scheduler`` (their ``state_dict()``s) and the RNG
    state (this process's, unless given) as safetensors + JSON; atomic, then rotate to ``keep``.
    ``into``: a temp folder that already holds files every rank wrote (a sharded run's shards,
    ``trainer.distributed``); it becomes the checkpoint."""
    root = ckpt_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:08d}"
    tmp = into if into is not None else root / f".tmp-{final.name}-{os.getpid()}"
    if into is None:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    save_file({k: v.contiguous().cpu() for k, v in trainable.items()}, str(tmp / "trainable.safetensors"),
              metadata={"step": str(step)})
    tensors: dict[str, torch.Tensor] = {}
    trees = {name: to_json_tree(tree, tensors, name) for name, tree in
             (("optimizer", optimizer), ("scheduler", scheduler), ("rng", rng if rng is not None else rng_state()))}
    save_file(tensors, str(tmp / "state.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step, "micro": micro, "config": json.loads(config_json),
                                                **trees}, indent=1))
    for f in [f for f in tmp.rglob("*") if f.is_file()]:  # data on disk before the rename makes it visible
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


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely or completely."""


def _load_legacy(path: Path, name: str) -> Any:
    """``name``.pt of a checkpoint written before state.safetensors existed: tensors and plain data only."""
    try:
        return torch.load(path / f"{name}.pt", weights_only=True, map_location="cpu")
    except Exception as e:  # torch raises UnpicklingError (or others) for anything beyond plain data
        raise CheckpointError(
            f"{path / (name + '.pt')} holds pickled Python objects, which the trainer never loads (unpickling "
            f"runs arbitrary code): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}. Resume from a "
            "checkpoint written by this version (state.safetensors + state.json), or start fresh with "
            "run.resume = '' (lora.init_from can continue from an exported LoRA).") from e


def load_checkpoint(path: Path) -> dict:
    """-> {"step", "micro", "config", "trainable", "optimizer", "scheduler", "rng"}; unpickles nothing."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    out = {"step": state["step"], "micro": state["micro"], "config": state["config"],
           "trainable": load_file(str(path / "trainable.safetensors"))}
    if (path / "state.safetensors").is_file():
        tensors = load_file(str(path / "state.safetensors"))
        for name in ("optimizer", "scheduler", "rng"):
            if name not in state:
                raise CheckpointError(f"{path / 'state.json'} has no {name!r} entry; the checkpoint is incomplete.")
            out[name] = from_json_tree(state[name], tensors)
    else:
        for name in ("optimizer", "scheduler", "rng"):
            out[name] = _load_legacy(path, name)
    return out
