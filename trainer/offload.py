"""LoRA on small cards: the frozen base streams from host memory, block by block ([offload] options).

``BaseStreamer`` keeps the weights of the first ``offload.base_blocks`` transformer blocks (execution
order: FLUX.1's 19 double, then 38 single blocks) in host memory, the memory map of the model file,
and puts a device copy into the block just before it runs: in the forward pass, and again for the
checkpoint's recompute, which autograd runs right before that block's backward. The next
``offload.prefetch`` blocks are copied ahead on a side stream (CUDA) while the current one computes.
``BlockInputsToHost`` sends the block inputs that checkpointing saves to host memory with torch's
``save_on_cpu``. The LoRA, its gradients and optimizer state never leave the device.

Why our own swapper and not ComfyUI's per-layer offload (``comfy.ops.cast_bias_weight`` with its
offload streams, which the ACE++ nodes use for low-VRAM inference): see the README, "Training on
8-16 GB cards". In short: 0.33 casts into a per-stream buffer that the next cast reuses, while
autograd still holds the weight for the backward of the layer (training would read overwritten
weights); a layer's copy starts only when that layer is called, from pageable memory unless the whole
base is pinned; and FSDP2's ``CPUOffloadPolicy`` pins a private host copy of every parameter (the
whole 12 B base again, per rank) and is built for sharded full fine-tunes.

Safety rule: a block's weights are never changed in place. A device copy is *installed* (the module's
``_parameters`` entry points at a new Parameter) and later *released* (the host Parameter goes back);
a tensor autograd saved stays alive through autograd's own reference, so no release can corrupt a
backward; it can only free memory late. Release points: after the block's forward (checkpointing
saves nothing there), when the block before it starts its recompute in backward (its own recompute
is over), and a sweep when backward ends. Backward copies in reverse order; the last ``prefetch + 1``
blocks of the forward stay for the start of backward, the first ones after backward for the next
forward. At most ``prefetch + 1`` streamed blocks have device copies alive at once, counting what
autograd still holds (tested with weak references on FLUX's blocks, bf16/fp32 ops that save the
weight itself included).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from .config import Config, ConfigError

log = logging.getLogger(__name__)

ALIGN = 64  # bytes: every tensor's offset in a pinned staging slot (any dtype view stays aligned)


def enabled(cfg: Config) -> bool:
    o = cfg.offload
    return bool(o.base_blocks or o.activations or o.auto)


def blocks_of(dit: nn.Module) -> list[tuple[str, nn.Module]]:
    """(BFL name, block) in the order the DiT runs them: double blocks, then single blocks."""
    return ([(f"double_blocks.{i}", b) for i, b in enumerate(dit.double_blocks)]
            + [(f"single_blocks.{i}", b) for i, b in enumerate(dit.single_blocks)])


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def same_alignment_copy(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` in a new CPU buffer whose address has the same offset modulo ``ALIGN`` as ``t``'s.

    The CPU stands in for the device in the tests, and CPU matmul kernels may round differently for
    another alignment (measured: a weight at offset 8 in the memory-mapped file vs a 64-aligned copy
    differ by 1e-6): the copy keeps the alignment so the streamed run computes bit for bit the same."""
    try:
        ptr = t.data_ptr() if t.device.type == "cpu" and t.is_contiguous() else 0
    except RuntimeError:  # a fake tensor (the simulation) has no address
        ptr = 0
    if not ptr or ptr % ALIGN == 0:  # (empty_like is ALIGN-aligned already)
        return torch.empty_like(t).copy_(t)
    n = _nbytes(t)
    buf = torch.empty(n + ALIGN, dtype=torch.uint8)
    off = (ptr - buf.data_ptr()) % ALIGN
    out = buf[off:off + n].view(t.dtype).view(t.shape)
    return out.copy_(t)


class BaseStreamer:
    """Streams the frozen weights of ``blocks[:streamed]`` (see the module docstring).

    ``observer(k, tensors)`` sees every set of device copies (the simulation
    tags them; the residency test counts them). On the CPU the device copies are separate CPU buffers
    made at the same points of the schedule (synchronously: no side stream, no pinned staging).
    """

    def __init__(self, blocks: list[nn.Module], streamed: int, device: torch.device, prefetch: int = 1,
                 observer: Optional[Callable[[int, list[torch.Tensor]], None]] = None):
        if device.type == "cuda" and device.index is None:  # the copy thread must not fall back to GPU 0
            device = torch.device("cuda", torch.cuda.current_device())
        self.blocks, self.device, self.prefetch = blocks, device, prefetch
        self.streamed = set(range(min(streamed, len(blocks))))
        self.observer = observer
        n = len(blocks)
        self.head = set(range(min(n, prefetch + 1))) & self.streamed          # kept for the next forward
        self.tail = set(range(max(0, n - prefetch - 1), n)) & self.streamed   # kept for the start of backward
        # per block: (owner module, attribute, host tensor, is a parameter), in a fixed order
        self.entries = []
        for blk in blocks:
            rows = []
            for mod in blk.modules():
                rows += [(mod, a, t, True) for a, t in mod._parameters.items() if t is not None]
                rows += [(mod, a, t, False) for a, t in mod._buffers.items() if t is not None]
            self.entries.append(rows)
        self.block_bytes = [sum(_nbytes(r[2]) for r in rows) for rows in self.entries]
        self.loaded: dict[int, list[torch.Tensor]] = {}
        self.pending: dict = {}
        self.installed: set[int] = set()
        self._callback_task = None
        self.copies = 0          # block copies made (bytes moved = sum of their block_bytes)
        self.bytes_moved = 0
        self.max_loaded = 0
        self.cuda = device.type == "cuda"
        self.worker = None
        if self.cuda and self.streamed:
            self._start_worker()
        for k, blk in enumerate(blocks):
            blk.register_forward_pre_hook(functools.partial(self._enter, k), with_kwargs=True)
            blk.register_forward_hook(functools.partial(self._exit, k))

    # --- copies ---------------------------------------------------------------------------------

    def _start_worker(self) -> None:
        """A copy thread, a side stream and two pinned staging slots, each the size of the largest
        streamed block: the thread fills one slot from the memory map while the other one's DMA runs."""
        from concurrent.futures import ThreadPoolExecutor

        size = max(sum(_aligned(_nbytes(r[2])) for r in self.entries[k]) for k in self.streamed)
        self.stream = torch.cuda.Stream(self.device)
        try:
            self.slots = [[torch.empty(size, dtype=torch.uint8, pin_memory=True), None] for _ in range(2)]
        except RuntimeError as err:
            raise ConfigError(f"offload: could not pin {2 * size / 2**30:.2f} GiB of host memory for the two staging "
                              f"slots of the streamed blocks ({err}). Free host memory or lower offload.base_blocks "
                              "(the largest streamed block sets the slot size).") from err
        self.next_slot = 0
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="aceplus-offload")

    def _copy_cpu(self, k: int) -> list[torch.Tensor]:
        return [same_alignment_copy(t) for _, _, t, _ in self.entries[k]]

    def _copy_cuda(self, k: int):
        """Worker thread: memory map -> pinned slot (a CPU copy, multi-threaded by torch) -> device
        (non-blocking on the side stream). -> (device tensors, event recorded after the last copy)."""
        slot = self.slots[self.next_slot]
        self.next_slot = 1 - self.next_slot
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            if slot[1] is not None:
                slot[1].synchronize()  # the previous DMA out of this slot is done: it may be refilled
            out, off = [], 0
            for _, _, t, _ in self.entries[k]:
                n = _nbytes(t)
                stage = slot[0][off:off + n]
                stage.copy_(t.contiguous().reshape(-1).view(torch.uint8))
                dev = torch.empty(n, dtype=torch.uint8, device=self.device)
                dev.copy_(stage, non_blocking=True)
                out.append(dev.view(t.dtype).view(t.shape))
                off += _aligned(n)
            event = torch.cuda.Event()
            event.record(self.stream)
            slot[1] = event
        return out, event

    def _issue(self, k: int) -> None:
        if k not in self.streamed or k in self.loaded or k in self.pending:
            return
        self.copies += 1
        self.bytes_moved += self.block_bytes[k]
        if self.worker is None:
            self.loaded[k] = self._copy_cpu(k)
            self._observe(k)
        else:
            self.pending[k] = self.worker.submit(self._copy_cuda, k)

    def _ready(self, k: int) -> None:
        """Block ``k``'s device copy is complete and visible to the compute stream."""
        self._issue(k)
        if k in self.pending:
            tensors, event = self.pending.pop(k).result()
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(event)
            for t in tensors:  # freed memory is reused only after the compute stream is done with it
                t.record_stream(stream)
            self.loaded[k] = tensors
            self._observe(k)

    def _observe(self, k: int) -> None:
        self.max_loaded = max(self.max_loaded, len(self.loaded) + len(self.pending))
        if self.observer is not None:
            self.observer(k, self.loaded[k])

    def _install(self, k: int) -> None:
        if k in self.installed:
            return
        for (mod, attr, _, is_param), dev in zip(self.entries[k], self.loaded[k]):
            if is_param:
                mod._parameters[attr] = nn.Parameter(dev, requires_grad=False)
            else:
                mod._buffers[attr] = dev
        self.installed.add(k)

    def release(self, k: int) -> None:
        """The host tensors go back into block ``k``; its device copy dies with the last reference."""
        if k in self.pending:
            self._ready(k)
        if k in self.installed:
            for mod, attr, host, is_param in self.entries[k]:
                (mod._parameters if is_param else mod._buffers)[attr] = host
            self.installed.discard(k)
        self.loaded.pop(k, None)

    def _sweep(self, keep: set[int]) -> None:
        for k in list(self.loaded) + list(self.pending):
            if k not in keep:
                self.release(k)

    # --- the schedule ---------------------------------------------------------------------------

    def _enter(self, k: int, module, args, kwargs):
        """Before block ``k`` runs (forward, or its recompute in backward): install its copy, copy ahead."""
        backward = torch._C._current_graph_task_id() != -1
        if backward:
            self._backward_started()
            # the blocks after k are recomputed already: uninstall them. What autograd saved from them
            # stays alive through its own references until their backward nodes have run.
            for j in [j for j in [*self.loaded, *self.pending] if j > k and j not in self.head]:
                self.release(j)
        elif k == 0:  # a new forward pass: drop what an earlier pass left (keep the head)
            self._sweep(self.head)
        if k in self.streamed:
            self._ready(k)
            self._install(k)
        ahead = range(k - 1, k - 1 - self.prefetch, -1) if backward else range(k + 1, k + 1 + self.prefetch)
        for j in ahead:
            if 0 <= j < len(self.blocks):
                self._issue(j)

    def _backward_started(self) -> None:
        task = torch._C._current_graph_task_id()
        if self._callback_task != task:  # once per backward: release what is left when it ends
            self._callback_task = task
            torch.autograd.Variable._execution_engine.queue_callback(lambda: self._sweep(self.head))

    def _exit(self, k: int, module, args, out):
        if torch._C._current_graph_task_id() == -1 and k in self.streamed and k not in self.tail:
            self.release(k)  # forward: checkpointing saved none of this block's tensors


class BlockInputsToHost:
    """``offload.activations``: called with a block's args, gives the saved-tensor hooks for its
    checkpoint. Checkpointing saves the block inputs; they go to host memory (CUDA: torch's
    ``save_on_cpu(pin_memory=True)``) and come back when backward recomputes the block. ``vec`` and
    ``pe``, shared by every block, stay where they are (one copy instead of 57).

    On the CPU, ``save_on_cpu`` would keep the tensor itself (``.cpu()`` is a no-op there): a copy is
    made each way instead, as on a GPU. ``on_pack`` / ``on_unpack`` see the copies (the simulation)."""

    def __init__(self, device: torch.device, on_pack=None, on_unpack=None):
        if device.type == "cuda":
            inner = torch.autograd.graph.save_on_cpu(pin_memory=True, device_type="cuda")
            self._pack, self._unpack = inner.pack_hook, inner.unpack_hook
        else:
            self._pack = lambda t: (t.device, same_alignment_copy(t))
            self._unpack = lambda p: same_alignment_copy(p[1])
        self.on_pack, self.on_unpack = on_pack, on_unpack
        self.packed_bytes = 0

    def __call__(self, args: dict):
        keep = [args.get("vec"), args.get("pe")]

        def pack(t):
            if any(t is k for k in keep):
                return None, t
            packed = self._pack(t)
            self.packed_bytes += _nbytes(packed[1])
            if self.on_pack is not None:
                self.on_pack(packed[1])
            return "host", packed

        def unpack(p):
            if p[0] is None:
                return p[1]
            t = self._unpack(p[1])
            if self.on_unpack is not None:
                self.on_unpack(t)
            return t

        return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


# --- the base in the run's dtype, one file for every process --------------------------------------

def _st_names() -> dict:
    from .cache import _ST_DTYPES

    return {v: k for k, v in _ST_DTYPES.items()}


def write_converted(path: Path, weights: dict[str, torch.Tensor], dtypes: dict[str, torch.dtype],
                    metadata: dict[str, str]) -> None:
    """``weights`` converted to ``dtypes`` as a safetensors file, one tensor at a time (no second
    full copy in memory), written to a temp name and renamed into place."""
    names = _st_names()
    header, off = {"__metadata__": metadata}, 0
    for k, v in weights.items():
        n = v.numel() * dtypes[k].itemsize
        header[k] = {"dtype": names[dtypes[k]], "shape": list(v.shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for k, v in weights.items():
            f.write(v.to(dtypes[k]).contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    os.replace(tmp, path)


def shared_conversion(cfg: Config, is_main: bool, barrier: Callable[[], None]):
    """``convert`` for ``trainer.model.load_dit``: a base whose dtype differs from the file (fp8 from a
    bf16 file) is converted ONCE into ``<cache>/base/`` by the main process and memory-mapped by every
    process, so the page cache holds one copy per machine (not a private conversion per rank)."""
    from .cache import cache_root

    def convert(weights: dict, dtypes: dict) -> dict:
        if all(v.dtype == dtypes[k] for k, v in weights.items()):
            return weights
        import comfy.utils

        src = Path(cfg.model.dit).resolve()
        st = src.stat()
        ident = json.dumps([str(src), st.st_size, st.st_mtime_ns, sorted((k, str(d)) for k, d in dtypes.items())])
        dt = sorted({_st_names()[d].lower() for d in dtypes.values()})  # e.g. ["f8_e4m3"], ["bf16", "f32"]
        digest = hashlib.sha256(ident.encode()).hexdigest()[:12]
        path = cache_root(cfg) / "base" / f"{src.stem}-{'-'.join(dt)}-{digest}.safetensors"
        if is_main and not path.exists():
            log.info("offload: writing the base in %s once to %s (every process memory-maps it)", dt, path)
            write_converted(path, weights, dtypes, {"aceplus_source": str(src)})
        barrier()
        if not path.exists():
            raise ConfigError(f"offload: the converted base {path} is missing after the main process wrote it; "
                              "cache.dir must be a folder every process can read.")
        log.info("offload: base memory-mapped from %s", path)
        return comfy.utils.load_torch_file(str(path))

    return convert


# --- building the model ---------------------------------------------------------------------------

def attach(model, base_blocks: int, activations: bool, device: torch.device, prefetch: int = 1,
           observer=None, on_pack=None, on_unpack=None) -> Optional[BaseStreamer]:
    """Put ``Trainable`` ``model`` (built on the host) on ``device`` except the streamed blocks, and
    install the streamer and the activation hooks. -> the streamer (None when no block streams)."""
    dit = model.dit
    blocks = blocks_of(dit)
    n = len(blocks) if base_blocks < 0 else min(base_blocks, len(blocks))
    streamer = None
    if n:
        for name, child in dit.named_children():
            if name not in ("double_blocks", "single_blocks"):
                child.to(device)
        for _, blk in blocks[n:]:
            blk.to(device)
        for name, t in list(dit._buffers.items()):  # tensors of the DiT itself (FLUX.1 has none)
            if t is not None:
                dit._buffers[name] = t.to(device)
        for name, t in list(dit._parameters.items()):
            if t is not None:
                dit._parameters[name] = nn.Parameter(t.to(device), requires_grad=t.requires_grad)
        streamer = BaseStreamer([b for _, b in blocks], n, device, prefetch, observer)
    else:
        dit.to(device)
    model.loras.to(device)
    model.streamer = streamer
    if activations:
        model.saved_block_inputs = BlockInputsToHost(device, on_pack, on_unpack)
    if device.type == "cpu":
        log.info("offload on the CPU: %d of %d blocks stream%s; the 'device' copies are separate CPU buffers made "
                 "exactly as for a GPU, so this saves no memory here", n, len(blocks),
                 ", block inputs to host" if activations else "")
    else:
        log.info("offload: %d of %d blocks stream from host memory (%d ahead), block inputs %s", n, len(blocks),
                 prefetch, "in host memory" if activations else "on the device")
    return streamer


def build(cfg: Config, device: torch.device, plan, is_main: bool = True, barrier: Callable[[], None] = lambda: None):
    """``trainer.loop.build_model`` for an offloaded run: the base loaded on the host (converted dtypes
    from one shared file when blocks stream), wrapped in ``Trainable``, then ``attach``."""
    from .model import Trainable, load_dit

    convert = shared_conversion(cfg, is_main, barrier) if plan.base_blocks else None
    model = Trainable(load_dit(cfg, device, convert=convert, on_host=True), cfg)
    attach(model, plan.base_blocks, plan.activations, device, cfg.offload.prefetch)
    return model


def streams(model) -> bool:
    """True when ``model`` (a ``Trainable``) keeps blocks on the host: nothing may move it wholesale."""
    return getattr(model, "streamer", None) is not None
