"""Self-attention layouts of the DiT: who attends to whom, where the RoPE positions are, and the KV cache.

A token sequence is made of latent frames of `tokens_per_frame` tokens each. The first `sink_frames`
frames hold the reference portrait (the "sink"): they attend only to themselves, so their keys and values
never depend on the video and can be computed once per session. Every video frame attends to the sink.

Three layouts, one rule for positions (frame i of the video sits at position sink_frames + i; the sink
sits just before the oldest video frame a query can see):

* `SequenceLayout(causal_chunk=None)`: the bidirectional teacher; every video frame sees all frames.
* `SequenceLayout(causal_chunk=c, window_frames=W)`: the block-causal student over a whole sequence;
  frames are grouped in blocks of c, a block sees itself and the W frames before it (CausVid/Self-Forcing).
* `KVCache`: the same student, one chunk at a time. The sink's keys are kept before RoPE and rotated to
  the front of the window for every chunk; the last W frames' keys (after RoPE) live in a ring buffer of
  fixed size, so memory is constant for any length and the sink is never evicted.

Each layout is called as `layout(layer, q, k, v)` with q, k, v [B, L, heads, head_dim] before RoPE for the
L tokens of the current input, and returns the attention output [B, L, heads, head_dim].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.errors import ConfigError
from engine.models.rope import Rotation, rope_angles


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention, scale 1/sqrt(head_dim). q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D]."""
    # contiguous heads-first copies: the block-causal layout hands in slices of the sequence, and a CUDA
    # backward of SDPA on such views hit an illegal memory access on an H100 (torch 2.11, bf16)
    q, k, v = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2)


def _rotation(first_position: int, num_frames: int, grid_hw: tuple[int, int], head_dim: int,
              like: torch.Tensor) -> Rotation:
    positions = torch.arange(num_frames, dtype=torch.float64) + first_position
    dtype = torch.promote_types(like.dtype, torch.float32)
    return Rotation(rope_angles(positions, grid_hw, head_dim), device=like.device, dtype=dtype)


# ----------------------------------------------------------------------------- whole sequences

class SequenceLayout:
    """Attention over a whole sequence [sink frames | video frames] held in one input.

    causal_chunk None: bidirectional (teacher). Otherwise block-causal with blocks of `causal_chunk`
    frames, each seeing at most `window_frames` earlier frames (None: all of them).
    """

    def __init__(self, sink_frames: int, video_frames: int, grid_hw: tuple[int, int], head_dim: int,
                 causal_chunk: int | None = None, window_frames: int | None = None):
        if causal_chunk is not None and (causal_chunk < 1 or video_frames % causal_chunk):
            raise ConfigError(f"video_frames={video_frames} must be a multiple of causal_chunk={causal_chunk}")
        if window_frames is not None and window_frames < 0:
            raise ConfigError(f"window_frames must be >= 0, got {window_frames}")
        self.sink_frames, self.video_frames = sink_frames, video_frames
        self.grid_hw, self.head_dim = grid_hw, head_dim
        self.causal_chunk, self.window_frames = causal_chunk, window_frames
        self.tokens_per_frame = grid_hw[0] * grid_hw[1]

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        S, T, D = self.sink_frames, self.tokens_per_frame, self.head_dim
        ns = S * T
        q_sink, k_sink, v_sink = q[:, :ns], k[:, :ns], v[:, :ns]
        q_vid, k_vid, v_vid = q[:, ns:], k[:, ns:], v[:, ns:]
        # Video frames at absolute positions S.. ; the sink attends only to itself (any position will do).
        rot_vid = _rotation(S, self.video_frames, self.grid_hw, D, q)
        q_vid, k_vid = rot_vid(q_vid), rot_vid(k_vid)
        outs = []
        if S:
            rot_sink = _rotation(0, S, self.grid_hw, D, q)
            outs.append(attention(rot_sink(q_sink), rot_sink(k_sink), v_sink))
        if self.causal_chunk is None:
            k_all = torch.cat([rot_sink(k_sink), k_vid], 1) if S else k_vid
            v_all = torch.cat([v_sink, v_vid], 1)
            outs.append(attention(q_vid, k_all, v_all))
            return torch.cat(outs, 1)
        c, W = self.causal_chunk, self.window_frames
        for start in range(0, self.video_frames, c):
            lo = 0 if W is None else max(0, start - W)
            keys, values = k_vid[:, lo * T:(start + c) * T], v_vid[:, lo * T:(start + c) * T]
            if S:  # the sink sits just before the oldest visible frame
                keys = torch.cat([_rotation(lo, S, self.grid_hw, D, q)(k_sink), keys], 1)
                values = torch.cat([v_sink, values], 1)
            outs.append(attention(q_vid[:, start * T:(start + c) * T], keys, values))
        return torch.cat(outs, 1)


# ----------------------------------------------------------------------------- streaming

@dataclass(frozen=True)
class KVCacheConfig:
    """Sizes of a streaming KV cache; derive them from the model with `DiT.cache_config`."""

    num_layers: int
    num_heads: int
    head_dim: int
    grid_hw: tuple[int, int]
    sink_frames: int
    window_frames: int

    def __post_init__(self) -> None:
        if self.sink_frames < 0 or self.window_frames < 1:
            raise ConfigError(f"need sink_frames >= 0 and window_frames >= 1, got {self.sink_frames}, "
                              f"{self.window_frames}")

    @property
    def tokens_per_frame(self) -> int:
        return self.grid_hw[0] * self.grid_hw[1]


class KVCache:
    """Keys and values of the sink and of the last `window_frames` video frames, for every layer.

    Fixed-size buffers: `sink_k/sink_v` [layers, B, S*T, H, D] (sink keys before RoPE) and a ring
    `k/v` [layers, B, W*T, H, D] (keys after RoPE at their absolute positions). `frames_written` counts
    video frames committed so far; the ring slot of video frame i is i mod W.
    """

    def __init__(self, config: KVCacheConfig, batch: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        c = config
        self.config = c
        T = c.tokens_per_frame
        sink_shape = (c.num_layers, batch, c.sink_frames * T, c.num_heads, c.head_dim)
        ring_shape = (c.num_layers, batch, c.window_frames * T, c.num_heads, c.head_dim)
        self.sink_k = torch.zeros(sink_shape, device=device, dtype=dtype)
        self.sink_v = torch.zeros(sink_shape, device=device, dtype=dtype)
        self.k = torch.zeros(ring_shape, device=device, dtype=dtype)
        self.v = torch.zeros(ring_shape, device=device, dtype=dtype)
        self.frames_written = 0

    def reset(self) -> None:
        """Forget the video frames (the sink stays)."""
        self.frames_written = 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.sink_k, self.sink_v, self.k, self.v))

    def sink(self) -> "SinkPrefill":
        """Layout for one forward over the sink frames alone; stores their keys and values."""
        return SinkPrefill(self)

    def chunk(self, num_frames: int, write: bool = False) -> "ChunkStep":
        """Layout for the next `num_frames` video frames. With write=True the pass stores the chunk's keys
        and values in the ring (the clean-context pass); call `advance(num_frames)` after it."""
        if num_frames > self.config.window_frames:
            raise ConfigError(f"a chunk of {num_frames} frames does not fit a window of "
                              f"{self.config.window_frames} frames")
        return ChunkStep(self, num_frames, write)

    def advance(self, num_frames: int) -> None:
        self.frames_written += num_frames


class SinkPrefill:
    """x holds only the sink frames: they attend to themselves; their keys (before RoPE) and values are kept."""

    def __init__(self, cache: KVCache):
        c = cache.config
        self.cache = cache
        self.rot: Rotation | None = None
        self.grid_hw, self.head_dim, self.frames = c.grid_hw, c.head_dim, c.sink_frames

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.rot is None:
            self.rot = _rotation(0, self.frames, self.grid_hw, self.head_dim, q)
        self.cache.sink_k[layer].copy_(k)
        self.cache.sink_v[layer].copy_(v)
        return attention(self.rot(q), self.rot(k), v)


class ChunkStep:
    """x holds the next `num_frames` video frames; they see the sink, the ring and themselves."""

    def __init__(self, cache: KVCache, num_frames: int, write: bool):
        c = cache.config
        T, W, S = c.tokens_per_frame, c.window_frames, c.sink_frames
        start = cache.frames_written
        lo = max(0, start - W)  # oldest frame in the ring
        self.cache, self.write = cache, write
        self.start, self.num_frames = start, num_frames
        self.grid_hw, self.head_dim, self.sink_frames = c.grid_hw, c.head_dim, S
        self.positions = (S + start, lo)  # first position of the chunk, first position of the sink
        filled = min(start, W) * T
        ring_tokens = W * T
        device = cache.k.device
        self.mask: torch.Tensor | None = None
        if filled < ring_tokens:  # ring not full yet: hide its empty slots
            keys = S * T + ring_tokens + num_frames * T
            mask = torch.ones(keys, dtype=torch.bool, device=device)
            mask[S * T + filled:S * T + ring_tokens] = False
            self.mask = mask[None, :]  # [1, keys], broadcast over heads and queries
        frames = torch.arange(start, start + num_frames) % W
        self.slots = (frames[:, None] * T + torch.arange(T)[None, :]).reshape(-1).to(device)  # [num_frames*T]
        self._rot: tuple[Rotation, Rotation] | None = None

    def _rotations(self, like: torch.Tensor) -> tuple[Rotation, Rotation]:
        if self._rot is None:
            chunk_pos, sink_pos = self.positions
            self._rot = (_rotation(chunk_pos, self.num_frames, self.grid_hw, self.head_dim, like),
                         _rotation(sink_pos, self.sink_frames, self.grid_hw, self.head_dim, like))
        return self._rot

    def __call__(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        cache = self.cache
        rot_chunk, rot_sink = self._rotations(q)
        q, k = rot_chunk(q), rot_chunk(k)
        keys = torch.cat([rot_sink(cache.sink_k[layer]), cache.k[layer], k], 1)
        values = torch.cat([cache.sink_v[layer], cache.v[layer], v], 1)
        out = attention(q, keys, values, self.mask)
        if self.write:
            cache.k[layer].index_copy_(1, self.slots, k.to(cache.k.dtype))
            cache.v[layer].index_copy_(1, self.slots, v.to(cache.v.dtype))
        return out
