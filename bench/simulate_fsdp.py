"""The full fine-tune under FSDP2 on a fake process group: rank 0's real step on fake tensors.

``simulate_full_size.py`` calls ``run_fsdp_step`` for the ``full_ft_fsdp<world>_*`` row. It runs the
trainer's own sharded path, not arithmetic:

- a process group of ``world`` ranks on torch's ``fake`` backend (``FakeStore``): this process is rank 0,
  every collective returns at once without moving data, and each buffer it fills has its real shape;
- ComfyUI's ``Flux`` built at full size under ``FakeTensorMode``, wrapped in ``trainer.model.Trainable``
  (per-block checkpointing, out-of-place adds), sharded by ``trainer.distributed.fsdp_wrap`` (one FSDP2
  unit per double / single block, then the root; bf16 params, fp32 reduce);
- the optimizer from ``trainer.loop.make_optimizer`` over the sharded DTensor parameters (AdamW,
  ``foreach`` as on CUDA), then forward + backward under bf16 autocast, ``clip_grad_norm_``, ``step``.

Counting (``LiveBytes``): a DTensor's bytes are its local shard's storage, never the wrapper's global
size. FSDP2 frees and re-allocates its all-gather buffers and unsharded parameters by resizing their
storages in place (``free_storage`` / ``alloc_storage``), which no dispatch mode sees; both are wrapped
here so the tracker follows the resize. Two simulation-only patches, neither changing what runs:
``DeviceMesh`` is created before the fake mode (its rank map is read back with ``tolist``), and
``fully_shard``'s default mesh is that one.

Checked at reduced size (tests/test_simulate_full_size.py): the shards are exactly 1/8; the fake-tensor
peak equals the same step's on real CPU tensors; and on real tensors torch's own ``FSDPMemTracker``
reports exactly this tracker's peak less the inputs made before it starts. ``FSDPMemTracker`` itself
is not used for the row: under ``FakeTensorMode`` it over-counts (75.0 MB against 33.7 MB at 1 + 1
blocks, hidden 256).

Tags: weights = the fp32 master shards; grads = the sharded fp32 gradients (reduce-scatter outputs);
optimizer = AdamW moments of the shards; activations = tensors made in the forward pass outside the
all-gathers; temporaries = all-gathered bf16 blocks, unsharded gradients before reduce-scatter,
recomputation and optimizer temporaries.
"""

from __future__ import annotations

import contextlib
import functools

WORLD = 8


@contextlib.contextmanager
def fake_process_group(world: int, tracker):
    """Rank 0 of a ``world``-rank fake process group, with FSDP2's storage resizes reported to ``tracker``."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    import torch.distributed.fsdp._fully_shard._fsdp_param as fsdp_param
    import torch.distributed.fsdp._fully_shard._fsdp_param_group as fsdp_group
    import torch.distributed.fsdp._fully_shard._fully_shard as fully
    from torch.testing._internal.distributed.fake_pg import FakeStore

    started = not dist.is_initialized()
    if started:
        dist.init_process_group("fake", rank=0, world_size=world, store=FakeStore())
    elif dist.get_world_size() != world:
        raise RuntimeError(f"a process group of {dist.get_world_size()} ranks is already running; the FSDP "
                           f"simulation needs {world}: run it in its own process.")
    mesh = init_device_mesh("cpu", (world,))

    def resizing(fn):
        @functools.wraps(fn)
        def wrapped(tensor):
            fn(tensor)
            tracker.resized(tensor.untyped_storage())
        return wrapped

    def tagged(fn, tag):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            before, tracker.tag = tracker.tag, tag
            try:
                return fn(*args, **kwargs)
            finally:
                tracker.tag = before
        return wrapped

    def retag_grads(fn):
        @functools.wraps(fn)
        def wrapped(group, *args, **kwargs):
            out = fn(group, *args, **kwargs)
            for fp in group.fsdp_params:
                if fp.sharded_param.grad is not None:
                    tracker.retag(fp.sharded_param.grad, "grads")
            return out
        return wrapped

    G = fsdp_group.FSDPParamGroup
    saved = [(fully, "_init_default_mesh"), (fsdp_param, "alloc_storage"), (fsdp_param, "free_storage"),
             (fsdp_group, "alloc_storage"), (G, "unshard"), (G, "wait_for_unshard"), (G, "post_backward")]
    saved = [(obj, name, getattr(obj, name)) for obj, name in saved]
    fully._init_default_mesh = lambda *a, **k: mesh
    fsdp_param.alloc_storage = fsdp_group.alloc_storage = resizing(fsdp_param.alloc_storage)
    fsdp_param.free_storage = resizing(fsdp_param.free_storage)
    G.unshard = tagged(G.unshard, "temporaries")
    G.wait_for_unshard = tagged(G.wait_for_unshard, "temporaries")
    G.post_backward = retag_grads(G.post_backward)
    try:
        yield mesh
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
        if started:
            dist.destroy_process_group()


def local_bytes(tensors) -> int:
    """Bytes of the distinct local storages behind ``tensors`` (DTensors: their shard)."""
    seen = {}
    for t in tensors:
        st = getattr(t, "_local_tensor", t).untyped_storage()
        seen[st._cdata] = st.nbytes()
    return sum(seen.values())


def run_fsdp_step(spec, world: int = WORLD, steps: int = 2, count_flops: bool = True, fake: bool = True,
                  seed: int = 0, torch_tracker: bool = False) -> dict:
    """Rank 0's peak over ``steps`` full fine-tune steps of ``spec`` sharded over ``world`` fake ranks
    (memory in the last step, FLOPs in the first; see ``simulate_full_size.run_step``). Also returns the
    sharded weights / grads / AdamW bytes this rank holds (``sharded``) and their unsharded size (``full``).
    ``fake=False`` runs the same on real CPU tensors (reduced sizes: the check that the simulation counts
    what a real run allocates; the fake collectives leave the gathered values unset, the bytes are real).
    ``torch_tracker`` also runs torch's own ``FSDPMemTracker`` over the steps (an independent count) and
    returns its peak as ``torch_tracker_peak``; it does not see the inputs made before it starts
    (``input_bytes``), which ``peak_bytes`` includes."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode

    import simulate_full_size as S
    from trainer.distributed import fsdp_wrap
    from trainer.loop import make_optimizer
    from trainer.model import Trainable

    if spec.rank:
        raise ValueError("the FSDP row is a full fine-tune (rank 0): LoRA runs use DDP, not FSDP")
    cfg = S._config(spec)
    tracker = S.LiveBytes()
    h, w = S.latent_hw(spec.img_tokens)
    in_ch = {"fill": 96, "fft": 112}[spec.kind]
    outer = FakeTensorMode() if fake else contextlib.nullcontext()
    with fake_process_group(world, tracker), outer, tracker:
        dit = S.build_dit(spec, tracker, real_init_seed=None if fake else seed)
        with S.noop_to_for_fake():
            model = Trainable(dit, cfg).train()
        del dit
        n_full = sum(p.numel() for p in model.parameters())
        full = {"weights": sum(p.numel() * p.element_size() for p in model.parameters())}
        fsdp_wrap(model, cfg)
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            tracker.retag(p, "weights")
        opt = make_optimizer(params, cfg, torch.device("cpu"))
        for group in opt.param_groups:
            group["foreach"] = True  # AdamW's default on CUDA tensors
        tracker.tag = "activations"
        x_in, ctx = torch.randn(1, in_ch, h, w), torch.randn(1, spec.txt_tokens, 4096)
        pooled, target, s = torch.randn(1, 768), torch.randn(1, 16, h, w), torch.full((1,), 0.5)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec.compute == "bf16")
        sharded = {"weights": local_bytes(params)}
        input_bytes = local_bytes([x_in, ctx, pooled, target, s])
        theirs = None
        if torch_tracker:
            from torch.distributed._tools.fsdp2_mem_tracker import FSDPMemTracker

            theirs = FSDPMemTracker(model, opt)

        def before_step(i: int) -> None:  # per-module stats cover one iteration; the peak covers all
            if theirs is not None:
                theirs.__enter__() if i == 0 else theirs.reset_mod_stats()

        def after_backward(last: bool) -> None:
            for p in params:
                tracker.retag(p.grad, "grads")
            if last:
                sharded["grads"] = local_bytes(p.grad for p in params)

        flops, phases, states = S.measured_steps(model, params, opt, (x_in, s, ctx, pooled, target), cfg, tracker,
                                                 steps, autocast, count_flops, before_step, after_backward)
        sharded["optimizer"] = local_bytes(states)
        live = {t: tracker.totals.get(t, 0) for t in ("weights", "grads", "optimizer")}
        if theirs is not None:
            theirs.__exit__(None, None, None)
            theirs_peak = sum(v["Total"] for v in theirs.get_tracker_snapshot("peak").values())
        full["grads"] = full["weights"]             # fp32 gradients of fp32 masters
        full["optimizer"] = 2 * full["weights"]     # AdamW exp_avg + exp_avg_sq
        peak, by = max(phases.values(), key=lambda v: v[0])
        ops = sorted(tracker.attention_ops)
    return {"peak_bytes": peak, "by_tag": by, "flops": flops, "trainable_params": n_full, "base_params": n_full,
            "phases": {k: {"peak_bytes": v[0], "by_tag": v[1]} for k, v in phases.items()},
            "attention_ops": ops, "img_tokens": spec.img_tokens, "txt_tokens": spec.txt_tokens, "world": world,
            "sharded": sharded, "full": full, "live_after_step": live, "input_bytes": input_bytes,
            "torch_tracker_peak": theirs_peak if theirs is not None else None,
            "note": f"FSDP2 (trainer.distributed.fsdp_wrap) on a fake process group of {world} ranks: rank 0"}
