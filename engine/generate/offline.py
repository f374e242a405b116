"""Whole-clip generation with the bidirectional teacher: every latent frame denoised together.

    latents = generate_clip(model, reference, windows, steps=24, audio_guidance=2.0, emotion=0)

The method: x ← noise; Euler on the flow ODE over the shifted σ grid (spec D.2), the velocity at each σ
guided by audio CFG (conditional and audio-dropped passes, engine.diffusion.guidance). Long films slide
this over windows (engine.generate.long_video, issue 8); here one window is the whole clip.
"""
from __future__ import annotations

import torch

from engine.diffusion.guidance import cfg as guidance
from engine.diffusion.schedules import flow_sigmas
from engine.models.attention import SequenceLayout
from engine.models.dit import DiT


@torch.no_grad()
def generate_clip(model: DiT, reference: torch.Tensor, windows: torch.Tensor, steps: int = 24,
                  shift: float = 5.0, audio_guidance: float = 2.0, emotion: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """reference [1, C, 1, h, w]; windows [1, F, window, mels] (one per latent frame); emotion: text
    tokens [1, Lc, text_dim] or None -> latents [1, C, F, h, w]."""
    p = next(model.parameters())
    ref = reference.to(p.device, p.dtype)
    frames = windows.shape[1]
    grid = model.token_grid(ref.shape[-2:])
    layout = SequenceLayout(1, frames, grid, model.cfg.dim // model.cfg.num_heads)
    audio = model.encode_audio(windows.to(p.device))
    text_kv = model.encode_text(emotion.to(p.device)) if emotion is not None else None
    x = torch.randn((1, model.cfg.out_dim, frames, *ref.shape[-2:]), generator=generator, device=p.device,
                    dtype=p.dtype)
    sigmas = flow_sigmas(steps, shift)
    for i in range(steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        t = torch.cat([torch.zeros(1, 1, device=p.device), torch.full((1, frames), 1000 * s, device=p.device)], 1)
        v = model(torch.cat([ref, x], 2), t, layout, audio=audio, text_kv=text_kv, sink_frames=1)[:, :, 1:]
        if audio_guidance != 1.0:
            v_u = model(torch.cat([ref, x], 2), t, layout, audio=None, text_kv=text_kv, sink_frames=1)[:, :, 1:]
            v = guidance(v, v_u, audio_guidance)
        x = x + (s_next - s) * v
    return x
