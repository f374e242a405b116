"""BackendGenerator: the engine's StreamingGenerator with its chunk step (denoise, cache write, decode) run
by a Backend. Everything else -- audio ingestion, the timeline, timestamps, interrupt -- is the engine's.

Until the engine takes a backend itself, this adapter overrides the generator's `reset` and `_denoise`
and hands the backend's frames to it through a decoder that returns them. The generator's `reset` still
builds its own KV cache and runs the sink prefill in it; the adapter then swaps that cache for an empty one
that only counts frames (a transient cost the engine hook would remove).
"""
from __future__ import annotations

from dataclasses import replace

import torch

from engine.audio.features import AudioFeatureConfig
from engine.generate.streaming import StreamConfig, StreamingGenerator, sigma_list
from engine.models.attention import KVCache
from engine.models.dit import DiT
from exporters.backends import Backend
from exporters.errors import BackendError

_STREAM, _AUDIO = StreamConfig(), AudioFeatureConfig()


class _BackendFrames:
    """The generator's Decoder: returns the frames the backend made for the latents it just returned."""

    def __init__(self) -> None:
        self.frames: torch.Tensor | None = None
        self.latents: torch.Tensor | None = None

    def reset(self) -> None:
        self.frames = self.latents = None

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        assert latents is self.latents and self.frames is not None, "decode() follows the chunk that made it"
        return self.frames


class BackendGenerator(StreamingGenerator):
    """A StreamingGenerator whose chunks come from `backend` (see exporters.backends). Same seed, same
    noise, same stream as the eager generator, within the backend's numerical tolerance."""

    def __init__(self, model: DiT, backend: Backend, config: StreamConfig = _STREAM,
                 audio_config: AudioFeatureConfig = _AUDIO):
        if config.audio_guidance != 1.0:
            raise BackendError(f"backend {backend.name!r} runs the conditional pass only; audio_guidance "
                               f"{config.audio_guidance} needs the eager StreamingGenerator")
        shape = backend.shape
        if (shape.chunk_frames, shape.window_frames) != (config.chunk_frames, config.window_frames):
            raise BackendError(f"backend {backend.name!r} was built for chunks of {shape.chunk_frames} and a "
                               f"window of {shape.window_frames}; the stream asks for {config.chunk_frames} "
                               f"and {config.window_frames}")
        self.backend = backend
        self._frames = _BackendFrames() if backend.decodes else None
        super().__init__(model, config, audio_config, decoder=self._frames)

    def reset(self, reference: torch.Tensor, seed: int = 0) -> None:
        super().reset(reference, seed)
        assert self.cache is not None
        # The generator's own cache only counts frames from here on: keep the counter, drop the tensors.
        self.cache = KVCache(replace(self.cache.config, num_layers=0), batch=1, device=self.device, dtype=self.dtype)
        self.backend.reset(reference.to(self.device, self.dtype))

    def _open(self) -> torch.Tensor:
        out = self.backend.opening()
        if self._frames is not None:
            self._frames.latents, self._frames.frames = out.latents, out.frames
        return out.latents

    def _denoise(self, audio: torch.Tensor) -> torch.Tensor:
        assert self.cache is not None
        c = self.config.chunk_frames
        shape = (1, self.latent_shape[0], c, *self.latent_shape[1:])
        sigmas = sigma_list(self.steps, self.config.shift)
        # The engine's order of draws: the starting noise, then one re-noising per step but the last.
        noise = [torch.randn(shape, generator=self.noise, device=self.device, dtype=self.dtype) for _ in sigmas]
        out = self.backend.chunk(audio.detach(), noise, sigmas)
        if self._frames is not None:
            self._frames.latents, self._frames.frames = out.latents, out.frames
        self.cache.advance(c)
        return out.latents
