"""The streaming decoders' chunk step as pure functions of tensors: latents and state in, video and state out.

The engine's decoders keep their history in Python lists (`FeatureCache` for the causal VAE, `MemoryState`
for the tiny decoder) whose slots appear on the first chunk. A graph needs a fixed list of tensors, so the
state is normalised to one fixed shape per slot:

* causal VAE: every causal convolution keeps the last CACHE_T (2) frames of its input. A slot holding
  fewer frames (after the stream's first chunk) is padded in front with zero frames, and an empty slot is
  all zeros: a causal convolution pads its past with zeros, so both give the same output. The stream's
  first latent frame takes a different path (the temporal upsampling lets it through as one frame), so
  the VAE has two graphs: `first` (no state in) and `step`.
* tiny decoder: every memory block keeps its input's last frame; zeros are what it uses before the first
  chunk, so one `step` graph serves the whole stream and the host drops the first chunk's extra frames.

`DecoderState.discover` runs the eager decoder once on zeros to learn the slots' shapes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.tiny_vae import MemoryState, TinyVAE
from engine.models.vae import CACHE_T, CausalVAE, FeatureCache


@dataclass(frozen=True)
class DecoderState:
    """Shapes of the state tensors of one decoder stream, in the order the engine's state lists them.
    `markers`: VAE slots that only say "the stream has started" (no data; kept out of the graph)."""

    kind: str  # "vae" or "tiny"
    shapes: tuple[tuple[int, ...], ...]
    markers: tuple[int, ...] = ()

    @staticmethod
    def discover(model: CausalVAE | TinyVAE, latents: tuple[int, ...]) -> DecoderState:
        """Decode two chunks of zero latents [1, C, n, h, w] eagerly and read the state's slots."""
        p = next(model.parameters())
        z = torch.zeros(latents, device=p.device, dtype=p.dtype)
        with torch.no_grad():
            if isinstance(model, TinyVAE):
                state = MemoryState()
                model.decode_chunk(z, state)
                return DecoderState("tiny", tuple(tuple(s.shape) for s in state.slots if s is not None))
            cache = FeatureCache()
            model.decode_chunk(z[:, :, :1], cache)
            model.decode_chunk(z, cache)  # fills the slots the first chunk leaves empty
        markers = tuple(i for i, s in enumerate(cache.slots) if s is not None and s.numel() == 0)
        shapes = []
        for i, s in enumerate(cache.slots):
            if i not in markers:
                assert s is not None and s.ndim == 5, (i, s)
                shapes.append((*s.shape[:2], CACHE_T, *s.shape[3:]))  # [B, C, CACHE_T, H, W]
        return DecoderState("vae", tuple(shapes), markers)

    def zeros(self, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        return [torch.zeros(s, device=device, dtype=dtype) for s in self.shapes]

    @property
    def names(self) -> list[str]:
        return [f"state_{i}" for i in range(len(self.shapes))]


def _pad_history(slot: torch.Tensor | None, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """A VAE slot as exactly CACHE_T frames: zero frames in front of a short one, zeros for an empty one."""
    if slot is None:
        return like.new_zeros(shape)
    return F.pad(slot, (0, 0, 0, 0, CACHE_T - slot.shape[2], 0))


class VAEDecodeGraph(nn.Module):
    """Causal VAE: (z [1, C, n, h, w], *state) -> (video [1, 3, T, H, W] in [-1, 1], *new state).
    `first`: the stream's first latent frame (n = 1, T = 1), which takes no state in."""

    def __init__(self, vae: CausalVAE, state: DecoderState, first: bool):
        super().__init__()
        self.vae, self.state, self.first = vae, state, first

    def forward(self, z: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = FeatureCache()
        if not self.first:
            given = iter(state)
            count = len(self.state.shapes) + len(self.state.markers)
            cache.slots = [z.new_zeros(0) if i in self.state.markers else next(given) for i in range(count)]
        video = self.vae.decode_chunk(z, cache)
        slots = [s for i, s in enumerate(cache.slots) if i not in self.state.markers]
        slots += [None] * (len(self.state.shapes) - len(slots))
        return (video, *(_pad_history(s, shape, z) for s, shape in zip(slots, self.state.shapes)))


class TinyDecodeGraph(nn.Module):
    """Tiny decoder: (z [1, C, n, h, w], *state) -> (video [1, 3, 4n, H, W] in [-1, 1], *new state); the
    stream's first chunk starts from zero state and its first `frames_to_trim` frames are dropped by the
    caller."""

    def __init__(self, tiny: TinyVAE, state: DecoderState):
        super().__init__()
        self.tiny, self.state = tiny, state

    def forward(self, z: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        memory = MemoryState()
        memory.slots = list(state)
        video = self.tiny.decode_chunk(z, memory)  # slots are present: nothing is trimmed here
        return (video, *[s for s in memory.slots if s is not None])
