"""Denoising a window of latent frames as a whole, the piece both long-video methods share.

A window is [sink frames | F video frames] in one DiT input: the sink (the reference portrait, and in
multi-shot films earlier shots' latents) at t = 0, each video frame at its own noise level (diffusion
forcing lets history frames sit at a lower level than the frames being made). The teacher attends
bidirectionally; the causal student block-causally (engine.models.attention.SequenceLayout).

Two samplers, one step signature `Sampler.next(x, v, i, noise)`, both over σ_0 > … > σ_{N−1} and σ_N = 0:
  * Euler on the probability-flow ODE (the teacher, many steps): x ← x + (σ_{i+1} − σ_i)·v;
  * re-noising (the few-step student, CausVid / Self-Forcing, spec D.4): x̂0 = x − σ_i·v, then
    x ← (1 − σ_{i+1})·x̂0 + σ_{i+1}·ε with fresh noise ε (none after the last step).
With σ_N = 0 both end on the clean sample. Audio CFG: v = v_u + g·(v − v_u), v_u with the audio dropped.

`Known` is masked latent inpainting (RePaint's replacement, Lugmayr et al. 2022): before every evaluation the
latents outside the mask are replaced by the source latents re-noised to the current σ, and the result
outside the mask is the source itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.diffusion.flow import add_noise, x0_from_velocity
from engine.diffusion.guidance import cfg
from engine.diffusion.schedules import flow_sigmas
from engine.errors import ConfigError
from engine.generate.streaming import sigma_list
from engine.models.attention import SequenceLayout
from engine.models.dit import DiT

MODELS = ("student", "teacher")


@dataclass(frozen=True)
class Sampler:
    sigmas: tuple[float, ...]  # σ_0 > … > σ_{N−1} > 0, where the model is evaluated; σ_N = 0
    renoise: bool  # True: the student's re-noising sampler; False: Euler (the teacher)

    @staticmethod
    def for_model(model: str, steps: int, shift: float) -> "Sampler":
        """The teacher: Euler over Wan's shifted grid (spec C.2); the student: its warped few-step list (D.2)."""
        if model == "teacher":
            return Sampler(tuple(float(s) for s in flow_sigmas(steps, shift)[:-1]), renoise=False)
        if model == "student":
            return Sampler(tuple(sigma_list(steps, shift)), renoise=True)
        raise ConfigError(f"unknown model {model!r}; choose one of {list(MODELS)}")

    def __len__(self) -> int:
        return len(self.sigmas)

    def needs_noise(self, i: int) -> bool:
        """Step i draws fresh noise for x_{i+1}."""
        return self.renoise and i + 1 < len(self.sigmas)

    def next(self, x: torch.Tensor, v: torch.Tensor, i: int, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_{i+1} from x_i and the velocity at σ_i; `noise` (same shape as x) where `needs_noise(i)`."""
        sigma = self.sigmas[i]
        following = self.sigmas[i + 1] if i + 1 < len(self.sigmas) else 0.0
        if not self.renoise or following == 0.0:
            return x + (following - sigma) * v
        assert noise is not None, "the re-noising sampler needs noise for every step but the last"
        return add_noise(x0_from_velocity(x, v, sigma), noise, following)


@dataclass
class Known:
    """Source latents [1, C, F, h, w] of the frames being made, and a mask [1, 1, 1, h, w]: 1 where the model
    generates, 0 where the source is kept (dubbing keeps everything but the face)."""

    latents: torch.Tensor
    mask: torch.Tensor

    def impose(self, x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
        """Outside the mask, the source re-noised to σ (fresh noise drawn from `generator`)."""
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return self.mask * x + (1 - self.mask) * add_noise(self.latents, noise, sigma)

    def compose(self, x0: torch.Tensor) -> torch.Tensor:
        """The finished latents: generated inside the mask, the source outside."""
        return self.mask * x0 + (1 - self.mask) * self.latents

    def frames(self, start: int, stop: int) -> "Known":
        return Known(self.latents[:, :, start:stop], self.mask)


class WindowModel:
    """v(x) for a window [sink | x]: the DiT with the sink at t = 0, each video frame at its σ, and audio CFG."""

    def __init__(self, model: DiT, sink: torch.Tensor, text_kv: list | None, causal_chunk: int | None,
                 guidance: float):
        self.model, self.sink, self.text_kv, self.guidance = model, sink, text_kv, guidance
        self.causal_chunk = causal_chunk  # None: bidirectional (the teacher); c: block-causal (the student)
        self.grid = model.token_grid(sink.shape[-2:])
        self.head_dim = model.cfg.dim // model.cfg.num_heads

    def __call__(self, x: torch.Tensor, sigmas: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """x [1, C, F, h, w]; sigmas [F] per frame; audio tokens [1, F, A, Da] -> v [1, C, F, h, w]."""
        S, F = self.sink.shape[2], x.shape[2]
        layout = SequenceLayout(S, F, self.grid, self.head_dim, causal_chunk=self.causal_chunk)
        t = torch.cat([torch.zeros(S, device=x.device), 1000.0 * sigmas.to(x.device)])[None]  # [1, S + F]
        inp = torch.cat([self.sink, x], 2)
        v = self.model(inp, t, layout, audio=audio, text_kv=self.text_kv, sink_frames=S)[:, :, S:]
        if self.guidance != 1.0:
            v_u = self.model(inp, t, layout, audio=None, text_kv=self.text_kv, sink_frames=S)[:, :, S:]
            v = cfg(v, v_u, self.guidance)
        return v
