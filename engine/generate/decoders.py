"""Streaming decoders a session can choose between: the causal VAE (quality) or the tiny decoder (speed).
Both turn the generator's latent chunks into uint8 RGB frames, keeping their state between chunks."""
from __future__ import annotations

import torch

from engine.models.tiny_vae import MemoryState, TinyVAE
from engine.models.vae import CausalVAE, FeatureCache


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """[1, 3, T, H, W] in [-1, 1] -> [T, H, W, 3] uint8."""
    return ((video[0].permute(1, 2, 3, 0).float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu()


class VAEDecoder:
    def __init__(self, vae: CausalVAE):
        self.vae = vae.eval()
        self.cache = FeatureCache()

    def reset(self) -> None:
        self.cache = FeatureCache()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        p = next(self.vae.parameters())
        return to_uint8(self.vae.decode_chunk(latents.to(p.device, p.dtype), self.cache))


class TinyDecoder:
    def __init__(self, tiny: TinyVAE):
        self.tiny = tiny.eval()
        self.state = MemoryState()

    def reset(self) -> None:
        self.state = MemoryState()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        p = next(self.tiny.parameters())
        return to_uint8(self.tiny.decode_chunk(latents.to(p.device, p.dtype), self.state))
