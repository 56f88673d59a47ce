"""Multi-process training: FSDP2 sharding for full fine-tunes, DDP that moves only the LoRA, and the
collective checkpoint / export calls that go with them.

What runs where (``train.distributed``, "auto" picks):

- 1 process: nothing is wrapped.
- LoRA, >1 process -> **DDP** (through accelerate). The frozen base is on DDP's ignore list, so it is
  neither broadcast at construction nor all-reduced: only the LoRA factors move.
- full fine-tune, >1 process -> **FSDP2** (``torch.distributed.fsdp.fully_shard``), called here on
  every device. accelerate's FSDP plugin silently falls back to DDP on the CPU (``MULTI_CPU``), so we
  shard ourselves: the same code shards over NCCL on GPUs and over gloo on the CPU (what the tests run).
  One FSDP unit per double / single block, then the root (img_in, time/vector/guidance embedders,
  final layer); parameters are DTensors, each rank keeps ``1 / world`` of every weight (dim-0 shard),
  its gradient and its AdamW moments. ``mixed_precision = "bf16"`` -> ``MixedPrecisionPolicy(param
  bf16, reduce fp32)``: all-gathered weights are bf16, gradients are reduce-scattered in fp32 into the
  fp32 master shards.

Checkpoints of a sharded run are collective (every rank must call them, or the run hangs):
``torch.distributed.checkpoint`` with the Hugging Face safetensors storage: each rank writes its own
shard file (tensors only, metadata in the safetensors header, so nothing on disk is a pickle), and
the non-tensor optimizer hyper-parameters go to JSON. The export gathers the full weights
(``full_state_dict=True, cpu_offload=True``) to rank 0, which writes one BFL-key file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from .config import Config, ConfigError

log = logging.getLogger(__name__)

SHARDS = "sharded"          # folder inside a checkpoint: one safetensors file per rank
GROUPS = "optimizer_groups.json"


def shutdown(accelerator) -> None:
    """Leave the process group in an order that cannot abort at exit.

    Every rank finishes its collectives, accelerate's references to the wrapped model, optimizer and
    scheduler are dropped (the caller drops its own first) and collected, and only then is the process
    group destroyed. A DDP wrapper that outlives the group is freed during interpreter shutdown, where
    gloo's teardown can abort the process ("terminate called without an active exception", exit -6)
    after all the work was saved, and torchrun then reports the run as failed.
    """
    import gc

    accelerator.wait_for_everyone()
    accelerator.free_memory()
    gc.collect()
    accelerator.end_training()


def strategy(cfg: Config, world: int) -> str:
    """'single' | 'ddp' | 'fsdp' for this run (see the module docstring)."""
    want = cfg.train.distributed
    if world <= 1:  # FSDP of one process only when asked for and a process group exists (the GPU check)
        return "fsdp" if want == "fsdp" and not cfg.lora.enabled and dist.is_initialized() else "single"
    if want == "auto":
        return "ddp" if cfg.lora.enabled else "fsdp"
    if want == "fsdp" and cfg.lora.enabled:
        raise ConfigError("train.distributed = 'fsdp' shards full fine-tunes (lora.enabled = false); a LoRA run "
                          "replicates the frozen base and moves only the LoRA: use 'ddp' or 'auto'.")
    return want


def check(cfg: Config, world: int) -> str:
    """Strategy plus the combinations FSDP does not take; call before loading weights."""
    s = strategy(cfg, world)
    if s == "fsdp" and cfg.train.mixed_precision == "fp16":
        raise ConfigError("train.mixed_precision = 'fp16' with FSDP needs a sharded grad scaler, which this "
                          "trainer does not use; set train.mixed_precision = 'bf16' (the release's choice) or 'no'.")
    return s


def mixed_precision_policy(cfg: Config):
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if cfg.train.mixed_precision == "bf16":
        # all-gather bf16 weights for compute, reduce-scatter gradients in fp32 into fp32 master shards
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def fsdp_wrap(model: nn.Module, cfg: Config) -> nn.Module:
    """Shard ``Trainable`` in place: one FSDP2 unit per double / single block, then the root.

    The blocks still run through ``Trainable``'s per-block checkpointing (non-reentrant), which FSDP2
    supports: a block's weights are all-gathered again for the recompute in backward.
    """
    from torch.distributed.fsdp import fully_shard

    import warnings

    # Flux returns a view (unpatchify); nothing here updates it in place (the loss and the sampler are
    # out-of-place), which is what FSDP2's warning is about.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module \(FSDPTrainable\) returned a view tensor")
    mp = mixed_precision_policy(cfg)
    blocks = list(model.dit.double_blocks) + list(model.dit.single_blocks)
    for blk in blocks:
        fully_shard(blk, mp_policy=mp, reshard_after_forward=True)
    fully_shard(model, mp_policy=mp, reshard_after_forward=True)
    n_local = sum(p.to_local().numel() for p in model.parameters())
    n_full = sum(p.numel() for p in model.parameters())
    log.info("FSDP2: %d block units + root, %s; this rank holds %.2f M of %.2f M parameters",
             len(blocks), "bf16 params / fp32 reduce" if cfg.train.mixed_precision == "bf16" else "fp32",
             n_local / 1e6, n_full / 1e6)
    return model


def ddp_ignore_frozen(model: nn.Module) -> list[str]:
    """Put every frozen parameter and every buffer on DDP's ignore list (before ``prepare``).

    DDP broadcasts all parameters and buffers from rank 0 when it is constructed (``_sync_module_states``
    walks ``named_parameters()``, frozen or not) and, with ``broadcast_buffers``, buffers before every
    forward. For a LoRA run that would send the 12 B base (24 GB in bf16) over the wire at start-up:
    every rank loads the same file, so only the trainable LoRA factors need to move.
    """
    from torch.nn.parallel import DistributedDataParallel

    names = [n for n, p in model.named_parameters() if not p.requires_grad]
    names += [n for n, _ in model.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
    return names


def prepare_model(accelerator, model: nn.Module, cfg: Config) -> tuple[nn.Module, str]:
    """Wrap ``Trainable`` for this run; returns (model to call, strategy). Under FSDP the model is not
    passed to accelerate (its FSDP plugin would fall back to DDP on the CPU); accelerate still does
    autocast, backward and the reductions."""
    s = check(cfg, accelerator.num_processes)
    if s == "fsdp":
        return fsdp_wrap(model, cfg), s
    if s == "ddp":
        ignored = ddp_ignore_frozen(model)
        log.info("DDP: %d frozen tensors on the ignore list (never broadcast or all-reduced); %d trainable move",
                 len(ignored), sum(1 for p in model.parameters() if p.requires_grad))
    # offload: the streamed blocks stay in host memory, so accelerate must not move the model wholesale
    return accelerator.prepare(model, device_placement=[getattr(model, "streamer", None) is None]), s


def no_sync(accelerator, model: nn.Module, mode: str, sync: bool):
    """Skip the gradient reduction on accumulation micro-batches: DDP's ``no_sync``, FSDP2's
    ``set_requires_gradient_sync(False)`` (accelerate only knows the latter for its own plugin)."""
    if sync or mode == "single":
        return contextlib.nullcontext()
    if mode == "fsdp":
        return _fsdp_no_sync(model)
    return accelerator.no_sync(model)


@contextlib.contextmanager
def _fsdp_no_sync(model):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


# --- collective checkpoint state ---------------------------------------------------------------

def _options(full: bool = False):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(flatten_optimizer_state_dict=True, full_state_dict=full, cpu_offload=full)


def _split(optim_sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Flattened optimizer state -> (tensors for the shard files, JSON-able hyper-parameters)."""
    tensors, groups = {}, {}
    for k, v in optim_sd.items():
        if isinstance(v, torch.Tensor):
            tensors[k] = v
        else:
            groups[k] = list(v) if isinstance(v, tuple) else v
    return tensors, groups


def save_sharded(folder: Path, model: nn.Module, optimizer) -> None:
    """Every rank calls this: each writes its shard of weights + AdamW moments into ``folder/sharded``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer, options=_options())
    otensors, groups = _split(osd)
    state = {**{f"model.{k}": v for k, v in msd.items()}, **{f"optim.{k}": v for k, v in otensors.items()}}
    dcp.save(state, storage_writer=HuggingFaceStorageWriter(str(folder / SHARDS), save_distributed=True))
    if dist.get_rank() == 0:
        (folder / GROUPS).write_text(json.dumps(groups, indent=1))


def load_sharded(folder: Path, model: nn.Module, optimizer) -> None:
    """Every rank calls this: read this rank's slices (any world size: DCP reshards) into model and optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    src = folder / SHARDS
    if not src.is_dir():
        raise ValueError(f"checkpoint {folder} has no {SHARDS}/ folder: it was not written by a sharded (FSDP) "
                         "run. Resume it with the same train.distributed and lora.enabled settings it was saved with.")
    msd, osd = get_state_dict(model, optimizer, options=_options())  # also creates empty AdamW state to fill
    otensors, groups = _split(osd)
    state = {**{f"model.{k}": v for k, v in msd.items()}, **{f"optim.{k}": v for k, v in otensors.items()}}
    dcp.load(state, storage_reader=HuggingFaceStorageReader(str(src)))
    saved_groups = json.loads((folder / GROUPS).read_text())
    for k, v in saved_groups.items():
        groups[k] = tuple(v) if isinstance(groups.get(k), tuple) else v
    set_state_dict(model, optimizer,
                   model_state_dict={k[len("model."):]: v for k, v in state.items() if k.startswith("model.")},
                   optim_state_dict={**{k[len("optim."):]: v for k, v in state.items() if k.startswith("optim.")},
                                     **groups},
                   options=_options())


def gather_full_state(model: nn.Module) -> Optional[dict[str, torch.Tensor]]:
    """Every rank calls this; rank 0 gets the full, unsharded ``Trainable`` state dict on the CPU, the
    others ``None`` (gathered unit by unit, so rank 0 holds one copy of the weights, never world copies)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    sd = get_model_state_dict(model, options=_options(full=True))
    return sd if dist.get_rank() == 0 else None


def local_shard_report(model: nn.Module) -> dict[str, dict]:
    """{param name: {"global": shape, "local": shape, "placements": str}} of this rank (tests, logs)."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, p in model.named_parameters():
        if isinstance(p, DTensor):
            out[name] = {"global": list(p.shape), "local": list(p.to_local().shape),
                         "placements": str(p.placements)}
        else:
            out[name] = {"global": list(p.shape), "local": list(p.shape), "placements": "replicated"}
    return out


def bfl_state(full: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``Trainable`` keys (``dit.double_blocks.0...``) -> the DiT's BFL keys (``double_blocks.0...``)."""
    return {k[len("dit."):]: v for k, v in full.items() if k.startswith("dit.")}


# --- checkpoint / resume / sample / export of a sharded run (loop call sites) --------------------

def save_checkpoint(cfg: Config, model: nn.Module, optimizer, scheduler, accelerator, step: int, micro: int) -> None:
    """Collective: every rank writes its shards into one temp folder, then the main process adds the
    schedule, RNG and state.json and renames it into place (``checkpoint.save_checkpoint``, atomic)."""
    from . import checkpoint as ckpt

    root = ckpt.ckpt_dir(cfg.run.output_dir)
    tmp = root / f".tmp-{ckpt.PREFIX}{step:08d}-sharded"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_sharded(tmp, model, getattr(optimizer, "optimizer", optimizer))
    accelerator.wait_for_everyone()  # every shard is on disk
    if accelerator.is_main_process:
        ckpt.save_checkpoint(cfg.run.output_dir, step, micro, {}, {}, scheduler.state_dict(), cfg.to_json(),
                             cfg.run.keep_checkpoints, into=tmp)
    accelerator.wait_for_everyone()


def resume(folder: Path, model: nn.Module, optimizer) -> None:
    load_sharded(Path(folder), model, getattr(optimizer, "optimizer", optimizer))


def check_resume_layout(folder: Path, mode: str) -> None:
    sharded = (Path(folder) / SHARDS).is_dir()
    if sharded != (mode == "fsdp"):
        raise ValueError(
            f"checkpoint {folder} was written by a {'sharded (FSDP)' if sharded else 'non-sharded'} run, but this "
            f"run is {'sharded (FSDP)' if mode == 'fsdp' else mode}. Resume with the same lora.enabled and "
            "train.distributed settings and more than one process for FSDP (any number: the shards reshard).")


def render_samples(cfg: Config, model: nn.Module, samples, paths: dict, step: int, accelerator) -> None:
    """Sampling under FSDP: every forward is a collective, so every rank renders; only the main
    process writes into ``output_dir/samples`` (the others into a scratch folder, then removed)."""
    import dataclasses
    import tempfile

    from .sample import render_samples as render

    if accelerator.is_main_process:
        render(model, cfg, samples, paths, step, accelerator)
        return
    scratch = tempfile.mkdtemp(prefix="aceplus_samples_")
    try:
        render(model, dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_dir=scratch)), samples,
               paths, step, None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
