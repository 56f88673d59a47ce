"""The training loop: flow matching on LCU++ canvases with the context-aware loss, on accelerate.

One optimizer step = ``grad_accum`` micro-batches; micro-batch ``m`` is a global batch of
``batch_size x processes`` samples from one canvas-size bucket, and process ``r`` takes its
slice. Which (sample, canvas variant) entries form batch ``m`` depends only on (seed, m) (``BatchPlan``),
noise and timestep only on (seed, m, position), so one process with batch 2 and two processes with
batch 1 see the same data, and a resumed run (restarting at micro-batch ``step x grad_accum``)
continues the same loss curve.

``train()`` is the list of phases, in order: data (``check_inputs``), cache (``cache_phase``), model
(``build_model``), optimizer/resume (``prepare_training``, ``resume_phase``), step (``train_step``),
save/export (``save_phase``, ``sample_phase``, ``export_phase``).
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from pathlib import Path
from typing import Optional

import torch

from . import cache as cache_mod
from . import distributed
from . import checkpoint as ckpt
from . import offload, offload_plan
from .config import Config, ConfigError
from .data import load_samples
from .export import export
from .model import Trainable, check_dit_file, init_from_lora, load_dit

log = logging.getLogger(__name__)


class BatchPlan:
    """Deterministic global batches over cached (sample, variant) entries, bucketed by canvas size.

    Every entry is its own item: with ``canvas.variants = N`` a sample appears N times per epoch, once
    per variant, and each variant sits in the bucket of *its* canvas (h, w), so a global batch never
    mixes shapes. Per epoch (seeded by run.seed and the epoch): shuffle each bucket, chunk it into
    global batches (a remainder is dropped), shuffle the chunks. ``batch(m)`` -> [(sample, variant)].
    """

    def __init__(self, index: list[dict], global_batch: int, seed: int):
        self.seed, self.G = seed, global_batch
        self.buckets: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for e in index:
            self.buckets.setdefault((e["h"], e["w"]), []).append((e["sample"], e["variant"]))
        self.per_epoch = sum(len(v) // global_batch for v in self.buckets.values())
        if self.per_epoch == 0:
            sizes = {f"{h}x{w}": len(v) for (h, w), v in sorted(self.buckets.items())}
            raise ConfigError(f"No canvas-size bucket holds a full global batch of {global_batch} "
                              f"(batch_size x processes); bucket sizes (cached entries): {sizes}. Lower "
                              "train.batch_size, add data, or (with reference_height_jitter) raise canvas.variants.")
        dropped = sum(len(v) % global_batch for v in self.buckets.values())
        if dropped:
            log.info("bucketing: %d batches per epoch over %d canvas sizes; %d entr(y/ies) per epoch fall outside "
                     "full batches", self.per_epoch, len(self.buckets), dropped)
        self._epoch, self._batches = -1, []

    def batch(self, m: int) -> list[tuple[int, int]]:
        epoch, j = divmod(m, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            batches = []
            for key in sorted(self.buckets):
                ids = self.buckets[key]
                perm = [ids[i] for i in torch.randperm(len(ids), generator=g).tolist()]
                batches += [perm[k:k + self.G] for k in range(0, len(perm) - self.G + 1, self.G)]
            self._batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
            self._epoch = epoch
        return self._batches[j]


def draw(seed: int, m: int, pos: int, shape: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """eps ~ N(0, I) of ``shape`` (the loaded entry's latent); s = sigmoid(n), n ~ N(0, 1) (logit-normal,
    no shift, as the release). Depends only on (seed, micro-batch m, position in the global batch)."""
    from aceplus_core import logit_normal

    g = torch.Generator().manual_seed((seed * 1_000_003 + m) * 4099 + pos)
    s = logit_normal(1, generator=g)[0]
    return torch.randn(shape, generator=g), s


def make_optimizer(params, cfg: Config, device: torch.device):
    t = cfg.train
    kw = dict(lr=cfg.learning_rate, betas=tuple(t.betas), eps=t.eps, weight_decay=t.weight_decay)
    if t.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, **kw)
        except ImportError:
            log.warning("train.optimizer = 'adamw8bit' but bitsandbytes is not installed; using torch AdamW "
                        "(pip install bitsandbytes for 8-bit optimizer states)")
    if t.optimizer == "adamw_fused" and device.type == "cuda":
        return torch.optim.AdamW(params, fused=True, **kw)
    return torch.optim.AdamW(params, **kw)


def make_scheduler(optimizer, cfg: Config):
    warm, total = cfg.train.warmup_steps, cfg.run.max_steps

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.train.scheduler == "constant":
            return 1.0
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))  # cosine to 0 at max_steps

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def loss_of(model, batch: dict, layouts: list, eps: torch.Tensor, s: torch.Tensor, cfg: Config,
            device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Context-aware flow-matching loss of one micro-batch; also returns the per-sample loss.

    x_t = (1 - s) x0 + s eps (B, 16, h, w); target v = eps - x0; the model sees
    cat([x_t, cond, pack_mask(mask)]) (B, 96 | 112, h, w) exactly as ComfyUI's concat_cond builds it.
    loss_b = mean_t( w_t * mean_c (v_pred - v)^2 ) with w from the canvas regions (ref / target).
    """
    from aceplus_core import flow_matching_pair, pack_mask, patchify, region_weights

    x0 = batch["x0"].to(device)
    eps, s = eps.to(device), s.to(device)
    x_t, target = flow_matching_pair(x0, eps, s)                                 # B, 16, h, w each
    x_in = torch.cat([x_t, batch["cond"].to(device), pack_mask(batch["mask"].to(device))], dim=1)
    pred = model(x_in, s, batch["ctx"].to(device), batch["pooled"].to(device), cfg.train.guidance)
    err = patchify((pred.float() - target) ** 2).mean(-1)                        # B, T
    t = cfg.train
    w = torch.cat([region_weights(lay, t.ref_weight, t.target_weight, t.unmasked_weight,
                                  batch["mask"][i:i + 1] if t.unmasked_weight is not None else None)
                   for i, lay in enumerate(layouts)]).to(device)                  # B, T
    per_sample = (err * w).mean(-1)
    return per_sample.mean(), per_sample.detach()


class _Stop:
    """SIGINT -> finish the current step, save a checkpoint, export, exit cleanly."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:  # second Ctrl-C: give up immediately
                raise KeyboardInterrupt
            log.warning("Ctrl-C: saving a checkpoint after this step (press again to abort without saving)")
            self.requested = True
        try:
            self._old = signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


# --- phases -----------------------------------------------------------------------------------
# train() below is the list of them; each returns what the next one needs.


def check_inputs(cfg: Config):
    """Data phase: everything that can fail on user input fails here, before any weight is loaded."""
    dit_shapes = check_dit_file(cfg)
    samples, report = load_samples(cfg)
    return dit_shapes, samples, report


def make_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import ProjectConfiguration

    out = Path(cfg.run.output_dir)
    # accelerate keeps the mixed-precision setting in a process-wide singleton and refuses a second
    # Accelerator with another one; reset that part (never the process group) so train() can be called
    # again in the same process (tests, notebooks) with a different train.mixed_precision.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),  # without it accelerate ignores torchrun's WORLD_SIZE on CPU machines
        mixed_precision=cfg.train.mixed_precision, log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")))
    log.info("accelerate: %s, %d process(es), device %s, mixed precision %s", accelerator.distributed_type,
             accelerator.num_processes, accelerator.device, accelerator.mixed_precision)
    return accelerator


def cache_phase(cfg: Config, samples, dit_shapes: dict, accelerator) -> list[dict]:
    """Encode what is missing on the main process; every process then reads the same index."""
    keys = cache_mod.run_cache_pass(cfg, samples, dit_shapes, is_main=accelerator.is_main_process)
    accelerator.wait_for_everyone()
    return cache_mod.read_index(cfg, keys)


def build_model(cfg: Config, device: torch.device, plan=None, accelerator=None) -> Trainable:
    """Model phase: the DiT with adapters (or all weights trainable), optionally from a released LoRA;
    with an offload ``plan``, built on the host and placed by ``trainer.offload``."""
    torch.manual_seed(cfg.run.seed)
    if plan is not None:
        main = accelerator is None or accelerator.is_main_process
        model = offload.build(cfg, device, plan, main, accelerator.wait_for_everyone if accelerator else lambda: None)
    else:
        model = Trainable(load_dit(cfg, device), cfg)
    if cfg.lora.init_from:
        if not cfg.lora.enabled:
            raise ConfigError("lora.init_from needs lora.enabled = true; for a full fine-tune set model.dit instead.")
        init_from_lora(model, cfg.lora.init_from)
    return model


def prepare_training(model: Trainable, cfg: Config, accelerator):
    """Optimizer phase: wrap (DDP / FSDP) first, then build the optimizer from the *prepared* model's
    trainable parameters, so a sharded model gets an optimizer over its shards."""
    model, mode = distributed.prepare_model(accelerator, model, cfg)  # DDP (base ignored) or FSDP2 shards
    params = [p for p in model.parameters() if p.requires_grad]
    log.info("training %s: %.2f M trainable parameters", "LoRA" if cfg.lora.enabled else "all weights",
             sum(p.numel() for p in params) / 1e6)
    optimizer = make_optimizer(params, cfg, accelerator.device)
    if mode != "fsdp":  # FSDP: the optimizer steps the DTensor shards directly (DCP checkpoints it)
        optimizer = accelerator.prepare(optimizer)
    scheduler = make_scheduler(optimizer, cfg)  # stepped by us once per optimizer step (not prepared)
    model.train()
    return model, optimizer, scheduler


def resume_phase(cfg: Config, raw: Trainable, optimizer, scheduler, accelerator) -> tuple[int, int]:
    """Restore weights, optimizer, schedule and RNG from ``run.resume``; -> (step, micro-batch)."""
    step, micro = 0, 0
    if accelerator.is_main_process:
        ckpt.clean_temp(cfg.run.output_dir)
    resume = ckpt.find_resume(cfg.run.output_dir, cfg.run.resume)
    if resume is not None:
        state = ckpt.load_checkpoint(resume)
        mode = distributed.strategy(cfg, accelerator.num_processes)
        distributed.check_resume_layout(resume, mode)
        if mode == "fsdp":  # collective: each rank reads its slices of weights and AdamW state
            distributed.resume(resume, raw, optimizer)
        else:
            raw.load_trainable_state(state["trainable"])
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        step, micro = state["step"], state["micro"]
        log.info("resumed from %s at step %d (micro-batch %d)", resume, step, micro)
    return step, micro


def open_logs(cfg: Config, accelerator, step: int) -> None:
    """metrics.jsonl keeps exactly steps 1..step of this run (a resumed run appends); TensorBoard starts."""
    if not accelerator.is_main_process:
        return
    mpath = Path(cfg.run.output_dir) / "metrics.jsonl"
    kept = [ln for ln in (mpath.read_text().splitlines() if mpath.exists() else [])
            if json.loads(ln)["step"] <= step]
    mpath.parent.mkdir(parents=True, exist_ok=True)
    mpath.write_text("".join(ln + "\n" for ln in kept))
    accelerator.init_trackers("aceplus")


def micro_batch(plan: "BatchPlan", paths: dict, cfg: Config, micro: int, rank: int):
    """This process's slice of global micro-batch ``micro``: the cached entries and their noise/timestep,
    each drawn at the shape of the entry actually loaded."""
    b = cfg.train.batch_size
    gbatch = plan.batch(micro)
    mine = list(range(rank * b, (rank + 1) * b))
    batch, layouts = cache_mod.load_batch([paths[gbatch[pos]] for pos in mine])
    shape = tuple(batch["x0"].shape[1:])  # 16, h, w: one shape per global batch (the plan buckets by it)
    draws = [draw(cfg.run.seed, micro, pos, shape) for pos in mine]
    return batch, layouts, torch.stack([d[0] for d in draws]), torch.stack([d[1] for d in draws])


def train_step(model, optimizer, scheduler, plan, paths, cfg: Config, accelerator, micro: int) -> torch.Tensor:
    """Step phase: ``grad_accum`` micro-batches, clip through the prepared model, one optimizer step.
    -> the mean loss over every process (a sync point)."""
    GA, world = cfg.train.grad_accum, accelerator.num_processes
    acc = torch.zeros((), device=accelerator.device)
    for k in range(GA):
        batch, layouts, eps, s = micro_batch(plan, paths, cfg, micro + k, accelerator.process_index)
        ctx = distributed.no_sync(accelerator, model, distributed.strategy(cfg, world), sync=k == GA - 1)
        with ctx, accelerator.autocast():
            loss, _ = loss_of(model, batch, layouts, eps, s, cfg, accelerator.device)
            accelerator.backward(loss / GA)
        acc += loss.detach() / GA
    if cfg.train.max_grad_norm > 0:
        accelerator.clip_grad_norm_(model.parameters(), cfg.train.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return accelerator.reduce(acc, "mean")


def log_step(cfg: Config, accelerator, step: int, loss: float, lr: float) -> None:
    if step % cfg.run.log_every == 0:
        accelerator.log({"loss": loss, "lr": lr}, step=step)
    if accelerator.is_main_process:  # plain-text loss curve next to TensorBoard (appended on resume)
        with open(Path(cfg.run.output_dir) / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"step": step, "loss": loss, "lr": lr, "time": time.time()}) + "\n")


def save_phase(cfg: Config, raw: Trainable, optimizer, scheduler, accelerator, step: int, micro: int) -> None:
    """Save phase: a checkpoint of this step (main process writes; every process waits)."""
    if distributed.strategy(cfg, accelerator.num_processes) == "fsdp":  # collective: every rank writes shards
        distributed.save_checkpoint(cfg, raw, optimizer, scheduler, accelerator, step, micro)
        return
    if accelerator.is_main_process:
        ckpt.save_checkpoint(cfg.run.output_dir, step, micro, raw.trainable_state(), optimizer.state_dict(),
                             scheduler.state_dict(), cfg.to_json(), cfg.run.keep_checkpoints)
    accelerator.wait_for_everyone()


def sample_phase(cfg: Config, raw: Trainable, samples, paths: dict, accelerator, step: int) -> None:
    """Render sample images; runs after the checkpoint of this step. An error in it is logged (with
    its traceback) instead of ending the run: a broken preview never costs training. Under FSDP it
    ends the run instead: every rank renders together, and a rank that gave up mid-render would leave
    the others waiting in a collective it never joins (a hang until the collective times out)."""
    fsdp = distributed.strategy(cfg, accelerator.num_processes) == "fsdp"
    if not accelerator.is_main_process and not fsdp:
        return
    from .sample import render_samples

    try:
        if fsdp:  # every forward of a sharded model is a collective: every rank renders
            distributed.render_samples(cfg, raw, samples, paths, step, accelerator)
        else:
            render_samples(raw, cfg, samples, paths, step, accelerator)
    except Exception as err:
        if fsdp:
            raise RuntimeError(
                f"sample rendering at step {step} failed on rank {accelerator.process_index} of a sharded (FSDP) "
                f"run: {err}. Every rank renders together, so the other ranks cannot go on without this one; "
                "the run stops here. The checkpoint of this step is saved: fix the cause (or set "
                "run.sample_every = 0) and continue with run.resume = 'latest'.") from err
        log.exception("sample rendering at step %d failed; training continues (the checkpoint is saved)", step)


def export_phase(cfg: Config, raw: Trainable, accelerator, step: int) -> Optional[Path]:
    full = None
    if distributed.strategy(cfg, accelerator.num_processes) == "fsdp":  # collective gather, rank 0 receives
        full = distributed.gather_full_state(raw)
    if not accelerator.is_main_process:
        return None
    name = "aceplus_lora.safetensors" if cfg.lora.enabled else "aceplus_full.safetensors"
    return export(raw, cfg, step, Path(cfg.run.output_dir) / name,
                  state=distributed.bfl_state(full) if full is not None else None)


def train(cfg: Config) -> dict:
    """Cache (if needed), then train; returns {"step", "losses", "export", ...} for callers and tests."""
    from tqdm.auto import tqdm

    dit_shapes, samples, report = check_inputs(cfg)                        # data
    accelerator = make_accelerator(cfg)
    distributed.check(cfg, accelerator.num_processes)                      # strategy fails before any load
    index = cache_phase(cfg, samples, dit_shapes, accelerator)             # cache
    if cfg.cache.only:
        log.info("cache.only: %d entries cached in %s; stopping", len(index), cache_mod.cache_root(cfg))
        accelerator.end_training()
        return {"step": 0, "losses": [], "cached": len(index)}
    paths = {(e["sample"], e["variant"]): e["path"] for e in index}
    plan = BatchPlan(index, cfg.train.batch_size * accelerator.num_processes, cfg.run.seed)
    fit = offload_plan.plan(cfg, dit_shapes, index, accelerator.device)   # offload: fits before any load
    model = build_model(cfg, accelerator.device, fit, accelerator)        # model
    model, optimizer, scheduler = prepare_training(model, cfg, accelerator)  # optimizer / resume
    raw = accelerator.unwrap_model(model)
    step, micro = resume_phase(cfg, raw, optimizer, scheduler, accelerator)
    open_logs(cfg, accelerator, step)

    losses: list[tuple[int, float]] = []
    pbar = tqdm(total=cfg.run.max_steps, initial=step, disable=not accelerator.is_main_process, desc="train",
                unit="step", dynamic_ncols=True)
    t0, stopped = time.perf_counter(), False
    with _Stop() as stop:
        while step < cfg.run.max_steps:                                   # step
            loss = train_step(model, optimizer, scheduler, plan, paths, cfg, accelerator, micro).item()
            step, micro = step + 1, micro + cfg.train.grad_accum
            lr = scheduler.get_last_lr()[0]
            losses.append((step, loss))
            pbar.update(1)
            pbar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            log_step(cfg, accelerator, step, loss, lr)
            stopped = accelerator.reduce(torch.tensor(float(stop.requested), device=accelerator.device),
                                         "max").item() > 0
            if stopped or step == cfg.run.max_steps or (cfg.run.save_every and step % cfg.run.save_every == 0):
                save_phase(cfg, raw, optimizer, scheduler, accelerator, step, micro)   # save before sampling
            if cfg.run.sample_every and step % cfg.run.sample_every == 0:
                sample_phase(cfg, raw, samples, paths, accelerator, step)
            if stopped:
                break
    pbar.close()
    elapsed = time.perf_counter() - t0
    result = {"step": step, "losses": losses, "stopped": stopped, "report": report, "seconds": elapsed,
              "export": export_phase(cfg, raw, accelerator, step)}                 # export
    if accelerator.is_main_process:
        log.info("done: step %d, last loss %.4f, %.2f s; %s", step, losses[-1][1] if losses else float("nan"),
                 elapsed, report.summary())
    del model, optimizer, scheduler  # the wrappers go before the process group does
    distributed.shutdown(accelerator)
    result["model"] = raw
    return result
