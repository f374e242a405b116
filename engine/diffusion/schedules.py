"""Noise-level schedules of flow matching: the timestep shift, Wan's sampling grid, Self-Forcing's warped
few-step list, and training draws. σ ∈ [0, 1]; timesteps t = 1000·σ.
"""
from __future__ import annotations

import torch


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """σ' = s·σ / (1 + (s − 1)·σ) (SD3 / Wan timestep shift): s > 1 spends more steps at high noise."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_sigmas(num_steps: int, shift: float, sigma_max: float = 0.999) -> torch.Tensor:
    """Wan's UniPC grid (spec C.2): linspace(σ_max, 0, N+1) without its end, shifted, then a trailing 0.
    Returns N+1 values, decreasing to 0. N=4, s=5 gives timesteps 999, 937, 833, 624."""
    base = torch.linspace(sigma_max, 0.0, num_steps + 1, dtype=torch.float64)[:-1]
    return torch.cat([shift_sigmas(base, shift), torch.zeros(1, dtype=torch.float64)]).float()


def warp_timesteps(timesteps: torch.Tensor, shift: float, num_train_timesteps: int = 1000) -> torch.Tensor:
    """Self-Forcing's `warp_denoising_step` (spec D.2): timestep T becomes entry 1000 − T of the shifted
    1000-entry training table σ_k = shift(1 − k/1000) (with a 0 appended), times 1000.
    [1000, 750, 500, 250] with shift 5 → [1000, 937.5, 833.3, 625]."""
    n = num_train_timesteps
    table = shift_sigmas(1 - torch.arange(n, dtype=torch.float64) / n, shift)
    table = torch.cat([table, torch.zeros(1, dtype=torch.float64)]) * n
    index = (n - torch.as_tensor(timesteps, dtype=torch.float64)).round().long()
    return table[index].float()


def sample_training_sigmas(shape: tuple[int, ...], shift: float, generator: torch.Generator | None = None,
                           kind: str = "uniform") -> torch.Tensor:
    """Training noise levels: σ = shift(u) with u uniform in [0, 1), or logit-normal (SD3's choice)."""
    if kind == "uniform":
        u = torch.rand(shape, generator=generator)
    elif kind == "logit_normal":
        u = torch.sigmoid(torch.randn(shape, generator=generator))
    else:
        raise ValueError(f"unknown sigma distribution {kind!r}; choose 'uniform' or 'logit_normal'")
    return shift_sigmas(u, shift)
