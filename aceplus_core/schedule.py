"""Flow-matching schedule pieces: resolution-dependent shift, training pairs, timestep draws."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

from .layout import CanvasLayout


def flux_shift_mu(tokens: int, base_shift: float = 0.5, max_shift: float = 1.15,
                  x1: int = 256, x2: int = 4096) -> float:
    """Linear in the token count: ``mu = tokens * m + b`` through (x1, base_shift) and (x2, max_shift).

    Same line as ComfyUI's ModelSamplingFlux node (tokens = W * H / 256) and the release.
    """
    m = (max_shift - base_shift) / (x2 - x1)
    b = base_shift - m * x1
    return float(tokens * m + b)


def shift_sigmas(sigmas: torch.Tensor, mu: float) -> torch.Tensor:
    """``sigma' = e^mu / (e^mu + (1 / sigma - 1))``; sigma 0 stays 0 and 1 stays 1."""
    e = math.exp(mu)
    safe = torch.where(sigmas > 0, sigmas, torch.ones_like(sigmas))
    shifted = e / (e + (1.0 / safe - 1.0))
    return torch.where(sigmas > 0, shifted, torch.zeros_like(sigmas))


def canvas_mu(layout: CanvasLayout, **kwargs: float) -> float:
    """The shift for a canvas: ``flux_shift_mu(layout.tokens)``."""
    return flux_shift_mu(layout.tokens, **kwargs)


def flow_matching_pair(x0: torch.Tensor, eps: torch.Tensor, s: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """``x_t = (1 - s) x0 + s eps`` and the velocity target ``eps - x0``; s is (B,) or a scalar."""
    s = torch.as_tensor(s, dtype=x0.dtype, device=x0.device)
    if s.ndim == 1:
        s = s.view(-1, *([1] * (x0.ndim - 1)))           # B, 1, 1, ...
    return (1.0 - s) * x0 + s * eps, eps - x0


def logit_normal(n: int, generator: Optional[torch.Generator] = None, mean: float = 0.0,
                 std: float = 1.0, device: Optional[torch.device] = None) -> torch.Tensor:
    """``s = sigmoid(N(mean, std))``, n draws (the release's training timesteps, no shift)."""
    z = torch.randn(n, generator=generator, device=device) * std + mean
    return torch.sigmoid(z)
