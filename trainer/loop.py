"""The training loop: flow matching on LCU++ canvases with the context-aware loss, on accelerate.

One optimizer step = ``grad_accum`` micro-batches; micro-batch ``m`` is a global batch of
``batch_size x processes`` samples from one canvas-size bucket, and process ``r`` takes its
slice. Noise, timestep and canvas variant of a sample depend only on (seed, m, position), so
one process with batch 2 and two processes with batch 1 see the same data, and a resumed run
(restarting at micro-batch ``step x grad_accum``) continues the same loss curve.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import time
from pathlib import Path

import torch

from . import cache as cache_mod
from . import checkpoint as ckpt
from .config import Config, ConfigError
from .data import load_samples
from .export import export
from .model import Trainable, check_dit_file, init_from_lora, load_dit

log = logging.getLogger(__name__)


class BatchPlan:
    """Deterministic global batches: per epoch, shuffle each bucket, chunk, shuffle the chunks."""

    def __init__(self, index: list[dict], global_batch: int, seed: int):
        self.seed, self.G = seed, global_batch
        self.buckets: dict[tuple[int, int], list[int]] = {}
        for e in index:
            if e["variant"] == 0:
                self.buckets.setdefault((e["h"], e["w"]), []).append(e["sample"])
        self.per_epoch = sum(len(v) // global_batch for v in self.buckets.values())
        if self.per_epoch == 0:
            sizes = {f"{h}x{w}": len(v) for (h, w), v in sorted(self.buckets.items())}
            raise ConfigError(f"No canvas-size bucket holds a full global batch of {global_batch} "
                              f"(batch_size x processes); bucket sizes: {sizes}. Lower train.batch_size or add data.")
        dropped = sum(len(v) % global_batch for v in self.buckets.values())
        if dropped:
            log.info("bucketing: %d batches per epoch; %d sample(s) per epoch fall outside full batches",
                     self.per_epoch, dropped)
        self._epoch, self._batches = -1, []

    def batch(self, m: int) -> list[int]:
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


def draw(seed: int, m: int, pos: int, shape: tuple, variants: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """eps ~ N(0, I) of ``shape``; s = sigmoid(n), n ~ N(0, 1) (logit-normal, no shift, as the release)."""
    from aceplus_core import logit_normal

    g = torch.Generator().manual_seed((seed * 1_000_003 + m) * 4099 + pos)
    s = logit_normal(1, generator=g)[0]
    variant = int(torch.randint(variants, (), generator=g))
    return torch.randn(shape, generator=g), s, variant


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


def train(cfg: Config) -> dict:
    """Cache (if needed), then train; returns {"step", "losses", "export", ...} for callers and tests."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration
    from tqdm.auto import tqdm

    # --- everything that can fail on user input fails here, before any weight is loaded ---------
    dit_shapes = check_dit_file(cfg)
    samples, report = load_samples(cfg)
    out = Path(cfg.run.output_dir)
    # accelerate keeps the mixed-precision setting in a process-wide singleton and refuses a second
    # Accelerator with another one; reset that part (never the process group) so train() can be called
    # again in the same process (tests, notebooks) with a different train.mixed_precision.
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),  # without it accelerate ignores torchrun's WORLD_SIZE on CPU machines
        mixed_precision=cfg.train.mixed_precision, log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")))
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    log.info("accelerate: %s, %d process(es), device %s, mixed precision %s", accelerator.distributed_type, world,
             device, accelerator.mixed_precision)
    keys = cache_mod.run_cache_pass(cfg, samples, dit_shapes, is_main=accelerator.is_main_process)
    accelerator.wait_for_everyone()
    index = cache_mod.read_index(cfg, keys)
    if cfg.cache.only:
        log.info("cache.only: %d entries cached in %s; stopping", len(index), cache_mod.cache_root(cfg))
        accelerator.end_training()
        return {"step": 0, "losses": [], "cached": len(index)}
    paths = {(e["sample"], e["variant"]): e["path"] for e in index}
    sizes = {e["sample"]: (e["h"], e["w"]) for e in index if e["variant"] == 0}
    plan = BatchPlan(index, cfg.train.batch_size * world, cfg.run.seed)

    # --- model, optimizer, schedule --------------------------------------------------------------
    torch.manual_seed(cfg.run.seed)
    model = Trainable(load_dit(cfg, device), cfg)
    if cfg.lora.init_from:
        if not cfg.lora.enabled:
            raise ConfigError("lora.init_from needs lora.enabled = true; for a full fine-tune set model.dit instead.")
        init_from_lora(model, cfg.lora.init_from)
    params = [p for p in model.parameters() if p.requires_grad]
    log.info("training %s: %.2f M trainable parameters", "LoRA" if cfg.lora.enabled else "all weights",
             sum(p.numel() for p in params) / 1e6)
    optimizer = make_optimizer(params, cfg, device)
    scheduler = make_scheduler(optimizer, cfg)  # stepped by us once per optimizer step (not prepared)
    step, micro = 0, 0
    ckpt.clean_temp(cfg.run.output_dir) if accelerator.is_main_process else None
    resume = ckpt.find_resume(cfg.run.output_dir, cfg.run.resume)
    if resume is not None:
        state = ckpt.load_checkpoint(resume)
        model.load_trainable_state(state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        step, micro = state["step"], state["micro"]
        log.info("resumed from %s at step %d (micro-batch %d)", resume, step, micro)
    if accelerator.is_main_process:  # the loss curve file holds exactly steps 1..step of this run
        mpath = out / "metrics.jsonl"
        kept = [ln for ln in (mpath.read_text().splitlines() if mpath.exists() else [])
                if json.loads(ln)["step"] <= step]
        mpath.parent.mkdir(parents=True, exist_ok=True)
        mpath.write_text("".join(ln + "\n" for ln in kept))
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    if accelerator.is_main_process:
        accelerator.init_trackers("aceplus")

    GA, b = cfg.train.grad_accum, cfg.train.batch_size
    losses: list[tuple[int, float]] = []
    pbar = tqdm(total=cfg.run.max_steps, initial=step, disable=not accelerator.is_main_process, desc="train",
                unit="step", dynamic_ncols=True)
    raw = accelerator.unwrap_model(model)
    t0, stopped = time.perf_counter(), False
    with _Stop() as stop:
        while step < cfg.run.max_steps:
            acc = torch.zeros((), device=device)
            for k in range(GA):
                gbatch = plan.batch(micro)
                mine = list(range(rank * b, (rank + 1) * b))
                draws = []
                for pos in mine:
                    h, w = sizes[gbatch[pos]]
                    shape = (16, h // 8, w // 8)  # latent of the canvas (VAE factor 8)
                    draws.append(draw(cfg.run.seed, micro, pos, shape, cfg.canvas.variants))
                batch, layouts = cache_mod.load_batch([paths[(gbatch[p], d[2])] for p, d in zip(mine, draws)])
                eps = torch.stack([d[0] for d in draws])
                s = torch.stack([d[1] for d in draws])
                sync = k == GA - 1
                ctx = accelerator.no_sync(model) if (not sync and world > 1) else _null()
                with ctx, accelerator.autocast():
                    loss, _ = loss_of(model, batch, layouts, eps, s, cfg, device)
                    accelerator.backward(loss / GA)
                acc += loss.detach() / GA
                micro += 1
            if cfg.train.max_grad_norm > 0:
                accelerator.clip_grad_norm_(params, cfg.train.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            mean_loss = accelerator.reduce(acc, "mean").item()  # a sync point: every rank's loss
            losses.append((step, mean_loss))
            pbar.update(1)
            pbar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if step % cfg.run.log_every == 0:
                accelerator.log({"loss": mean_loss, "lr": scheduler.get_last_lr()[0]}, step=step)
            if accelerator.is_main_process:  # plain-text loss curve next to TensorBoard (appended on resume)
                with open(out / "metrics.jsonl", "a") as fh:
                    fh.write(json.dumps({"step": step, "loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                                         "time": time.time()}) + "\n")
            if accelerator.is_main_process and cfg.run.sample_every and step % cfg.run.sample_every == 0:
                from .sample import render_samples

                render_samples(raw, cfg, samples, paths, step, accelerator)
            want_stop = accelerator.reduce(torch.tensor(float(stop.requested), device=device), "max").item() > 0
            periodic = cfg.run.save_every and step % cfg.run.save_every == 0
            if (periodic or want_stop or step == cfg.run.max_steps) and accelerator.is_main_process:
                ckpt.save_checkpoint(cfg.run.output_dir, step, micro, raw.trainable_state(), optimizer, scheduler,
                                     cfg.to_json(), cfg.run.keep_checkpoints)
            accelerator.wait_for_everyone()
            if want_stop:
                stopped = True
                break
    pbar.close()
    elapsed = time.perf_counter() - t0
    result = {"step": step, "losses": losses, "stopped": stopped, "report": report, "seconds": elapsed}
    if accelerator.is_main_process:
        name = "aceplus_lora.safetensors" if cfg.lora.enabled else "aceplus_full.safetensors"
        result["export"] = export(raw, cfg, step, out / name)
        log.info("done: step %d, last loss %.4f, %.2f s; %s", step, losses[-1][1] if losses else float("nan"),
                 elapsed, report.summary())
    accelerator.wait_for_everyone()
    accelerator.end_training()  # without it, gloo/NCCL processes abort at exit
    result["model"] = raw
    return result


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
