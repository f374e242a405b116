"""The DiT chunk step as pure functions of tensors: what the ONNX graphs and the CUDA-graph backend run.

The engine's `KVCache.chunk(n)` layout reads the cache's frame counter as a Python int and builds its RoPE
tables, visibility mask and ring slots from it on the host; a captured or exported graph cannot see that
int. Here the same step takes the cache as explicit tensors and the write position as a tensor:

    sink_k, sink_v  [layers, 1, S*T, heads, head_dim]  sink keys (before RoPE) and values
    ring_k, ring_v  [layers, 1, W*T, heads, head_dim]  the window ring (keys after RoPE); slot of frame i: i mod W
    position        []  int64                          video frames written so far (the chunk's first frame)
    cos/sin tables  [1, n*T, 1, head_dim/2]            RoPE of the chunk (at S + position) and of the sink
                                                       (at max(0, position - W)), formed on the host

The mask (ring slots not yet filled are hidden) and the ring slots are computed in the graph from
`position`. A graph built for a known number of filled ring frames (`filled_frames`, as the CUDA-graph backend
captures one per window state) needs no mask: it attends to exactly [sink | the filled ring | chunk]. RoPE tables stay on the host because the engine forms the angles in float64 from absolute
positions (so a stream may run past 1024 frames without losing accuracy); float64 trigonometry is slow or
missing on accelerators, and the tables are a few kilobytes.

Three modules: `SinkGraph` (reference latent -> sink keys/values, once per session), `PassGraph` (one
denoising pass reading the cache -> velocity) and `CommitGraph` (the pass at t = 0 on the clean chunk ->
the ring with the chunk written in). Tests prove them equal to the engine's layouts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from engine.errors import ConfigError
from engine.generate.streaming import STUDENT_WINDOW
from engine.models.attention import KVCache, KVCacheConfig, attention
from engine.models.dit import DiT
from engine.models.rope import Rotation, rope_angles

# ----------------------------------------------------------------------------- shapes

@dataclass(frozen=True)
class ChunkShape:
    """What one set of graphs is built for. Every shape is static: ONNX Runtime plans its memory once and a
    CUDA graph replays fixed addresses."""

    latent_hw: tuple[int, int]
    sink_frames: int = 1
    chunk_frames: int = 1
    window_frames: int = STUDENT_WINDOW

    def __post_init__(self) -> None:
        if self.sink_frames < 1:
            raise ConfigError(f"the exported step needs a reference (sink_frames >= 1), got {self.sink_frames}")
        if not 1 <= self.chunk_frames <= self.window_frames:
            raise ConfigError(f"need 1 <= chunk_frames <= window_frames, got {self.chunk_frames}, "
                              f"{self.window_frames}")

    def cache_config(self, model: DiT) -> KVCacheConfig:
        return model.cache_config(model.token_grid(self.latent_hw), self.sink_frames, self.window_frames)

    def latents(self, model: DiT, frames: int | None = None) -> tuple[int, ...]:
        """[1, C, frames, h, w]; frames defaults to a chunk."""
        return (1, model.cfg.in_dim, self.chunk_frames if frames is None else frames, *self.latent_hw)

    def audio(self, model: DiT) -> tuple[int, ...]:
        """Audio tokens of a chunk, [1, chunk, tokens, audio_dim] (the output of `DiT.encode_audio`)."""
        return (1, self.chunk_frames, model.cfg.audio_tokens, model.cfg.audio_dim)


# ----------------------------------------------------------------------------- host side: RoPE tables

RopeTables = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # cos/sin chunk, cos/sin sink


def rope_tables(cache: KVCacheConfig, chunk_frames: int, position: int, dtype: torch.dtype = torch.float32,
                device: torch.device | str = "cpu") -> RopeTables:
    """The engine's RoPE for a chunk starting at video frame `position`: the chunk sits at sink_frames +
    position, the sink just before the oldest frame the chunk sees (attention.ChunkStep's rule)."""
    table_dtype = torch.promote_types(dtype, torch.float32)
    sink_at = max(0, position - cache.window_frames)
    tables = []
    for first, count in ((cache.sink_frames + position, chunk_frames), (sink_at, cache.sink_frames)):
        rot = Rotation(rope_angles(torch.arange(count, dtype=torch.float64) + first, cache.grid_hw, cache.head_dim),
                       device=device, dtype=table_dtype)
        tables += [rot.cos, rot.sin]  # [1, count*T, 1, head_dim/2]
    return tables[0], tables[1], tables[2], tables[3]


def _rotation(cos: torch.Tensor, sin: torch.Tensor) -> Rotation:
    """The engine's Rotation applied with given tables (graph inputs, static buffers) instead of angles."""
    rot = Rotation.__new__(Rotation)
    rot.cos, rot.sin = cos, sin
    return rot


# ----------------------------------------------------------------------------- the layout

def visible_keys(position: torch.Tensor, cache: KVCacheConfig, chunk_frames: int) -> torch.Tensor:
    """bool [queries, keys] over [sink | ring | chunk]: ring slots not written yet are hidden. One row per
    query (a broadcast view), because ONNX's fused Attention takes no mask that broadcasts over queries."""
    T, S, W = cache.tokens_per_frame, cache.sink_frames, cache.window_frames
    idx = torch.arange((S + W + chunk_frames) * T, device=position.device)
    filled = torch.clamp(position, max=W) * T
    hidden = (idx >= S * T + filled) & (idx < (S + W) * T)
    return (~hidden)[None].expand(chunk_frames * T, -1)


def ring_slots(position: torch.Tensor, cache: KVCacheConfig, chunk_frames: int) -> torch.Tensor:
    """int64 [chunk*T]: ring rows of the chunk's tokens (frame i goes to slot i mod W)."""
    T = cache.tokens_per_frame
    frames = (position + torch.arange(chunk_frames, device=position.device)) % cache.window_frames
    return (frames[:, None] * T + torch.arange(T, device=position.device)[None, :]).reshape(-1)


class TensorChunkLayout:
    """attention.ChunkStep with the cache and positions as tensors. With `record`, the chunk's keys (after
    RoPE) and values of every layer are kept in `new_k`/`new_v` for the caller to write into the ring."""

    def __init__(self, sink_k: torch.Tensor, sink_v: torch.Tensor, ring_k: torch.Tensor, ring_v: torch.Tensor,
                 mask: torch.Tensor | None, tables: RopeTables, record: bool):
        """ring_k/ring_v [layers, 1, R, heads, head_dim]: the whole ring (with a mask) or its filled rows."""
        self.sink_k, self.sink_v, self.ring_k, self.ring_v, self.mask = sink_k, sink_v, ring_k, ring_v, mask
        self.rot_chunk, self.rot_sink = _rotation(*tables[:2]), _rotation(*tables[2:])
        self.record = record
        self.new_k: list[torch.Tensor] = []
        self.new_v: list[torch.Tensor] = []

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q, k = self.rot_chunk(q), self.rot_chunk(k)
        keys = torch.cat([self.rot_sink(self.sink_k[layer]), self.ring_k[layer], k], 1)
        values = torch.cat([self.sink_v[layer], self.ring_v[layer], v], 1)
        if self.record:
            self.new_k.append(k)
            self.new_v.append(v)
        return attention(q, keys, values, self.mask)


# ----------------------------------------------------------------------------- the three graphs

class SinkGraph(nn.Module):
    """reference latent [1, C, S, h, w] -> sink_k, sink_v [layers, 1, S*T, heads, head_dim], through the
    engine's own KVCache.sink() layout."""

    def __init__(self, model: DiT, shape: ChunkShape):
        super().__init__()
        self.model, self.cache = model, shape.cache_config(model)

    def forward(self, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cache = KVCache(self.cache, batch=1, device=reference.device, dtype=reference.dtype)
        S = self.cache.sink_frames
        self.model(reference, torch.zeros(1, S, device=reference.device), cache.sink(), sink_frames=S)
        return cache.sink_k, cache.sink_v


def _ring_view(filled_frames: int | None, shape: ChunkShape) -> int | None:
    """Check a graph's `filled_frames`: None (a mask computed from `position`: any position), or the number
    of leading ring frames that hold the stream's frames (0 <= n <= window; the window once it is full)."""
    if filled_frames is not None and not 0 <= filled_frames <= shape.window_frames:
        raise ConfigError(f"filled_frames must be within [0, {shape.window_frames}] (the window), "
                          f"got {filled_frames}")
    return filled_frames


def _layout(cache: KVCacheConfig, chunk_frames: int, filled_frames: int | None, position: torch.Tensor,
            sink: tuple[torch.Tensor, torch.Tensor], ring: tuple[torch.Tensor, torch.Tensor], tables: RopeTables,
            record: bool) -> TensorChunkLayout:
    """The chunk's attention layout: masked by `position`, or over the filled ring rows only (no mask)."""
    if filled_frames is None:
        return TensorChunkLayout(*sink, *ring, visible_keys(position, cache, chunk_frames), tables, record)
    rows = filled_frames * cache.tokens_per_frame  # a frame's slot is i mod W: a filling ring fills from row 0
    return TensorChunkLayout(*sink, ring[0][:, :, :rows], ring[1][:, :, :rows], None, tables, record)


class PassGraph(nn.Module):
    """One denoising pass of a chunk through the cache -> velocity [1, C_out, chunk, h, w].

    `filled_frames=n` builds the step for a stream that has written n frames (n < window) or whose window is
    full (n = window): no mask at all, so a GPU's SDPA may pick its fastest (mask-free) kernels, and a filling
    window costs only its filled part. None (the exported graphs) keeps the mask and serves every position."""

    def __init__(self, model: DiT, shape: ChunkShape, filled_frames: int | None = None):
        super().__init__()
        self.model, self.cache, self.chunk_frames = model, shape.cache_config(model), shape.chunk_frames
        self.filled_frames = _ring_view(filled_frames, shape)

    def forward(self, x: torch.Tensor, t: torch.Tensor, audio: torch.Tensor, sink_k: torch.Tensor,
                sink_v: torch.Tensor, ring_k: torch.Tensor, ring_v: torch.Tensor, position: torch.Tensor,
                cos_chunk: torch.Tensor, sin_chunk: torch.Tensor, cos_sink: torch.Tensor,
                sin_sink: torch.Tensor) -> torch.Tensor:
        """x [1, C, chunk, h, w] noisy latents; t [1, chunk] timesteps in [0, 1000]; audio tokens
        [1, chunk, tokens, audio_dim]; the cache and positions as in the module doc."""
        layout = _layout(self.cache, self.chunk_frames, self.filled_frames, position, (sink_k, sink_v),
                         (ring_k, ring_v), (cos_chunk, sin_chunk, cos_sink, sin_sink), record=False)
        return self.model(x, t, layout, audio=audio)


class CommitGraph(nn.Module):
    """The pass at t = 0 on the clean chunk: returns the ring with the chunk's keys and values written at
    its slots (the velocity of this pass is not used, so the graph leaves out the last block's tail and the
    head). `inplace` writes into ring_k/ring_v themselves (static buffers of a CUDA graph) and returns them;
    `filled_frames` as for PassGraph."""

    def __init__(self, model: DiT, shape: ChunkShape, inplace: bool = False, filled_frames: int | None = None):
        super().__init__()
        self.model, self.cache, self.chunk_frames = model, shape.cache_config(model), shape.chunk_frames
        self.inplace, self.filled_frames = inplace, _ring_view(filled_frames, shape)

    def forward(self, x0: torch.Tensor, audio: torch.Tensor, sink_k: torch.Tensor, sink_v: torch.Tensor,
                ring_k: torch.Tensor, ring_v: torch.Tensor, position: torch.Tensor, cos_chunk: torch.Tensor,
                sin_chunk: torch.Tensor, cos_sink: torch.Tensor,
                sin_sink: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.chunk_frames
        layout = _layout(self.cache, c, self.filled_frames, position, (sink_k, sink_v), (ring_k, ring_v),
                         (cos_chunk, sin_chunk, cos_sink, sin_sink), record=True)
        self.model(x0, torch.zeros(1, c, device=x0.device), layout, audio=audio)
        slots = ring_slots(position, self.cache, c)
        new_k = torch.stack(layout.new_k).to(ring_k.dtype)  # [layers, 1, chunk*T, heads, head_dim]
        new_v = torch.stack(layout.new_v).to(ring_v.dtype)
        if self.inplace:  # every layer has read its ring already: the writes come after the whole pass
            return ring_k.index_copy_(2, slots, new_k), ring_v.index_copy_(2, slots, new_v)
        return ring_k.index_copy(2, slots, new_k), ring_v.index_copy(2, slots, new_v)
