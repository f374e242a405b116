"""Diffusion forcing (SkyReels-V2, spec E.2): every latent frame has its own noise level, and along time the
levels never decrease — earlier frames are always at least as clean as later ones.

`forcing_schedule` builds the inference step matrix: each row is one model call; each frame block carries a
counter into the extended template [999, t_1, …, t_N, 0] (0: not started, k: take step t_k, N+1: clean).
Block 0 — or any block whose predecessor finished its steps — advances by one per row; every other block
trails its predecessor by `ar_step` counters. ar_step = 0 denoises all frames together (N rows); ar_step > 0
staggers them (N + (blocks − 1)·ar_step rows).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.errors import ConfigError
from engine.diffusion.schedules import shift_sigmas


@dataclass(frozen=True)
class ForcingConfig:
    num_frames: int  # latent frames
    block: int = 1  # frames that share a noise level (causal_block_size)
    ar_step: int = 0  # counters by which a block trails its predecessor
    prefix_frames: int = 0  # clean frames given as history, never updated

    def __post_init__(self) -> None:
        if self.num_frames % self.block or self.prefix_frames % self.block:
            raise ConfigError(f"num_frames={self.num_frames} and prefix_frames={self.prefix_frames} must be "
                              f"multiples of block={self.block}")
        if self.ar_step < 0:
            raise ConfigError(f"ar_step must be >= 0, got {self.ar_step}")


@dataclass
class ForcingSchedule:
    timesteps: torch.Tensor  # [rows, num_frames] the timestep each frame is fed at in that row
    update: torch.Tensor  # [rows, num_frames] bool: the frame takes a denoising step in that row
    counters: torch.Tensor  # [rows, blocks] indices into the extended template


def forcing_schedule(config: ForcingConfig, template: torch.Tensor) -> ForcingSchedule:
    """template: the N sampling timesteps t_1 > … > t_N of the solver (e.g. 1000·flow_sigmas[:-1])."""
    n = len(template)
    extended = torch.cat([torch.tensor([999.0]), template.float(), torch.tensor([0.0])])
    blocks = config.num_frames // config.block
    previous = torch.zeros(blocks, dtype=torch.long)
    previous[: config.prefix_frames // config.block] = n + 1
    rows, updates = [], []
    while not bool((previous >= n).all()):
        row = torch.zeros(blocks, dtype=torch.long)
        for i in range(blocks):
            if i == 0 or previous[i - 1] >= n:
                row[i] = previous[i] + 1
            else:
                row[i] = row[i - 1] - config.ar_step
        row = row.clamp(0, n + 1)
        updates.append((row != previous) & (row != n + 1))
        rows.append(row)
        previous = row
    counters = torch.stack(rows)  # [rows, blocks]
    per_frame = counters.repeat_interleave(config.block, dim=1)
    return ForcingSchedule(extended[per_frame], torch.stack(updates).repeat_interleave(config.block, dim=1),
                           counters)


def sample_forcing_sigmas(batch: int, num_frames: int, block: int, shift: float,
                          generator: torch.Generator | None = None) -> torch.Tensor:
    """Training noise levels for diffusion forcing: one σ per block, sorted so that σ never decreases along
    time, then shifted. Returns [batch, num_frames]."""
    blocks = num_frames // block
    u = torch.rand(batch, blocks, generator=generator).sort(dim=1).values
    return shift_sigmas(u, shift).repeat_interleave(block, dim=1)
