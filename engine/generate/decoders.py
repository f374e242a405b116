"""Streaming decoders a session can choose between: the causal VAE (quality) or the tiny decoder (speed).
Both turn the generator's latent chunks into uint8 RGB frames, keeping their state between chunks."""
from __future__ import annotations

import torch

from engine.models.tiny_vae import MemoryState, TinyVAE
from engine.models.vae import CausalVAE, FeatureCache


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """[1, 3, T, H, W] in [-1, 1] -> [T, H, W, 3] uint8."""
    return ((video[0].permute(1, 2, 3, 0).float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu()


class StreamDecoder:
    """A causal VAE (FeatureCache) or a tiny decoder (MemoryState) decoding one stream: both models offer
    `decode_chunk(latents, state)`; `reset()` starts a new stream."""

    def __init__(self, model: CausalVAE | TinyVAE, new_state: type[FeatureCache] | type[MemoryState]):
        self.model, self.new_state = model.eval(), new_state
        self.state = new_state()

    def reset(self) -> None:
        self.state = self.new_state()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        p = next(self.model.parameters())
        return to_uint8(self.model.decode_chunk(latents.to(p.device, p.dtype), self.state))  # type: ignore[arg-type]


def VAEDecoder(vae: CausalVAE) -> StreamDecoder:  # noqa: N802  (reads as a class at call sites)
    return StreamDecoder(vae, FeatureCache)


def TinyDecoder(tiny: TinyVAE) -> StreamDecoder:  # noqa: N802
    return StreamDecoder(tiny, MemoryState)
