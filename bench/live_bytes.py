"""Memory accounting on fake tensors for bench/simulate_full_size.py and bench/simulate_fsdp.py.

``LiveBytes`` counts the live storages a step allocates, by owner, with their peak (what
``torch.cuda.max_memory_allocated`` reports on a card, before allocator rounding). ``Adam8bitStates``
allocates exactly the optimizer states ``bnb.optim.AdamW8bit`` allocates, where bitsandbytes cannot run.
"""

from __future__ import annotations

import weakref
from collections import defaultdict


# --- live-storage tracker ------------------------------------------------------------------------

def _local(t):
    """A DTensor's own bytes are its local shard (the wrapper's storage reports the global size)."""
    return getattr(t, "_local_tensor", t)


def _storages(out):
    import torch
    from torch.utils._pytree import tree_leaves

    for t in tree_leaves(out):
        if isinstance(t, torch.Tensor):
            yield _local(t).untyped_storage()


class LiveBytes:
    """A ``TorchDispatchMode`` that tracks live storages by owner tag; peak and its breakdown.

    Every output storage of every op is counted once (views share it) under the current ``tag``
    and uncounted when the storage object dies (``weakref.finalize``). ``retag`` moves a tensor's
    storage to another owner (a gradient, an optimizer state) without counting it twice.
    Storages tagged ``HOST`` (offloaded weights and activations) live in host memory: they count in
    ``host_total`` / ``host_peak``, never in the device ``total`` / ``peak``.
    """

    HOST = "host"

    def __new__(cls):
        from torch.utils._python_dispatch import TorchDispatchMode

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(mode, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                name = str(func)
                if "scaled_dot_product" in name or "attention" in name:
                    mode.owner.attention_ops.add(name)
                for st in _storages(out):
                    mode.owner.add(st)
                return out

        self = object.__new__(cls)
        self.mode = _Mode()
        self.mode.owner = self
        self.live: dict[int, list] = {}
        self.totals = defaultdict(int)
        self.total = 0
        self.peak = 0
        self.host_total = 0
        self.host_peak = 0
        self.peak_by: dict[str, int] = {}
        self.tag = "temporaries"
        self.attention_ops: set[str] = set()
        return self

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)

    def add(self, st) -> None:
        key = st._cdata
        if key in self.live:
            return
        n = st.nbytes()
        self.live[key] = [n, self.tag]
        self.totals[self.tag] += n
        self._count(self.tag, n)
        weakref.finalize(st, self._drop, key)

    def _count(self, tag: str, n: int) -> None:
        """Add ``n`` bytes (negative: remove) to the device or the host total; track the peaks."""
        if tag == self.HOST:
            self.host_total += n
            self.host_peak = max(self.host_peak, self.host_total)
            return
        self.total += n
        if self.total > self.peak:
            self.peak = self.total
            self.peak_by = dict(self.totals)

    def _drop(self, key: int) -> None:
        n, tag = self.live.pop(key)
        self.totals[tag] -= n
        self._count(tag, -n)

    def retag(self, tensor, tag: str) -> None:
        st = _local(tensor).untyped_storage()
        if st._cdata not in self.live:
            self.add(st)
        entry = self.live[st._cdata]
        self.totals[entry[1]] -= entry[0]
        self._count(entry[1], -entry[0])
        self.totals[tag] += entry[0]
        entry[1] = tag
        self._count(tag, entry[0])

    def resized(self, st) -> None:
        """A storage resized in place (FSDP2 frees and re-allocates its all-gather buffers that way)."""
        if st._cdata not in self.live:
            return self.add(st)
        entry, n = self.live[st._cdata], st.nbytes()
        self.totals[entry[1]] += n - entry[0]
        self._count(entry[1], n - entry[0])
        entry[0] = n

    def reset_peak(self) -> None:
        self.peak = self.total
        self.peak_by = dict(self.totals)  # (host_peak: over the whole run)


# --- 8-bit AdamW states at bitsandbytes' size ----------------------------------------------------

class Adam8bitStates:
    """Stand-in for ``bnb.optim.AdamW8bit`` where bitsandbytes cannot run (fake or CPU tensors).

    States as bnb's ``Optimizer2State.init_state`` allocates them (block-wise, blocksize 256):
    ``state1``/``state2`` uint8 of the parameter's shape, ``absmax1``/``absmax2`` fp32 of
    ceil(numel / 256); parameters under ``min_8bit_size`` = 4096 elements keep two fp32 states.
    The update is applied in place (bnb's fused kernel dequantises and requantises in registers),
    so it adds no full-size temporaries; its arithmetic is not Adam's (memory and shapes only).
    """

    BLOCK, MIN_8BIT = 256, 4096

    def __init__(self, params, lr: float = 1e-4):
        import torch

        self.params = list(params)
        self.lr = lr
        self.state: dict = {}
        self.qmap = (torch.zeros(256), torch.zeros(256))  # bnb's shared "dynamic"/"udynamic" maps

    def init_states(self) -> None:
        """Allocate every state now (bnb does it at the first step)."""
        for p in self.params:
            self._state(p)

    def _state(self, p) -> dict:
        import torch

        st = self.state.get(p)
        if st is None:
            if p.numel() < self.MIN_8BIT:
                st = {"state1": torch.zeros_like(p, dtype=torch.float32),
                      "state2": torch.zeros_like(p, dtype=torch.float32)}
            else:
                blocks = -(-p.numel() // self.BLOCK)
                st = {"state1": torch.zeros_like(p, dtype=torch.uint8),
                      "state2": torch.zeros_like(p, dtype=torch.uint8),
                      "absmax1": torch.zeros(blocks, dtype=torch.float32, device=p.device),
                      "absmax2": torch.zeros(blocks, dtype=torch.float32, device=p.device)}
            self.state[p] = st
        return st

    def step(self) -> None:
        import torch

        for p in self.params:
            if p.grad is None:
                continue
            self._state(p)
            with torch.no_grad():
                p.add_(p.grad, alpha=-self.lr)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None
