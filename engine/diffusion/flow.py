"""Rectified flow as Wan trains it (spec C.1): x_σ = (1 − σ)·x0 + σ·ε, model timestep t = 1000·σ, and the
network predicts the velocity v = ε − x0.

`sigma` is a float or a tensor that broadcasts against the latents: for latents [B, C, F, H, W] with one
noise level per frame use shape [B, 1, F, 1, 1] (`per_frame`).
"""
from __future__ import annotations

import torch

Sigma = float | torch.Tensor


def per_frame(sigma: torch.Tensor) -> torch.Tensor:
    """σ [B, F] -> [B, 1, F, 1, 1], broadcastable against latents [B, C, F, H, W]."""
    return sigma[:, None, :, None, None]


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: Sigma) -> torch.Tensor:
    return (1 - sigma) * x0 + sigma * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The training target of the network: v = ε − x0."""
    return noise - x0


def x0_from_velocity(x: torch.Tensor, v: torch.Tensor, sigma: Sigma) -> torch.Tensor:
    return x - sigma * v


def noise_from_velocity(x: torch.Tensor, v: torch.Tensor, sigma: Sigma) -> torch.Tensor:
    return x + (1 - sigma) * v
