"""Samplers for flow matching, one signature: `sample_x(velocity_fn, x, sigmas, ...) -> x at σ = sigmas[-1]`.

`velocity_fn(x, sigma) -> v` with sigma a float; `sigmas` decreasing, ending at 0 for a full sample.
No timing or printing in the loops: observe through `callback(i, x, x0)`.
"""
from __future__ import annotations

from typing import Callable

import torch

from engine.diffusion.flow import add_noise, x0_from_velocity

VelocityFn = Callable[[torch.Tensor, float], torch.Tensor]
Callback = Callable[[int, torch.Tensor, torch.Tensor], None] | None


def sample_euler(velocity_fn: VelocityFn, x: torch.Tensor, sigmas: torch.Tensor,
                 callback: Callback = None) -> torch.Tensor:
    """Euler on the probability-flow ODE dx/dσ = v (rectified flow): x ← x + (σ_{i+1} − σ_i)·v."""
    s = [float(v) for v in sigmas]
    for i in range(len(s) - 1):
        v = velocity_fn(x, s[i])
        if callback is not None:
            callback(i, x, x0_from_velocity(x, v, s[i]))
        x = x + (s[i + 1] - s[i]) * v
    return x


def sample_dpmpp_2m(velocity_fn: VelocityFn, x: torch.Tensor, sigmas: torch.Tensor,
                    callback: Callback = None) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2) in data prediction for the flow x_σ = α·x0 + σ·ε with
    α = 1 − σ: λ = log(α/σ), x ← (σ_{i+1}/σ_i)·x − α_{i+1}·(e^{−h} − 1)·D, h = λ_{i+1} − λ_i, where D is
    x̂0 (first step, and the last step into σ = 0) or the second-order blend (1 + 1/2r)·x̂0_i − (1/2r)·x̂0_{i−1}."""
    s = [float(v) for v in sigmas]
    old_x0, old_h = None, None
    for i in range(len(s) - 1):
        x0 = x0_from_velocity(x, velocity_fn(x, s[i]), s[i])
        if callback is not None:
            callback(i, x, x0)
        if s[i + 1] == 0:
            x = x0
            break
        lam = lambda sig: torch.log(torch.tensor((1 - sig) / sig, dtype=torch.float64))  # noqa: E731
        h = float(lam(s[i + 1]) - lam(s[i]))
        d = x0
        if old_x0 is not None and old_h is not None:
            r = old_h / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * old_x0
        x = (s[i + 1] / s[i]) * x - (1 - s[i + 1]) * torch.expm1(torch.tensor(-h)).item() * d
        old_x0, old_h = x0, h
    return x


def sample_renoise(velocity_fn: VelocityFn, x: torch.Tensor, sigmas: torch.Tensor,
                   generator: torch.Generator | None = None, callback: Callback = None) -> torch.Tensor:
    """The few-step student's sampler (CausVid / Self-Forcing, spec D.4): predict x̂0 at σ_i, then re-noise
    it to σ_{i+1} with fresh Gaussian noise. Returns x̂0 of the last step."""
    s = [float(v) for v in sigmas]
    x0 = x
    for i, sigma in enumerate(s):
        if sigma == 0:
            break
        x0 = x0_from_velocity(x, velocity_fn(x, sigma), sigma)
        if callback is not None:
            callback(i, x, x0)
        if i + 1 < len(s) and s[i + 1] > 0:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x = add_noise(x0, noise, s[i + 1])
    return x0
