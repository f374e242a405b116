"""Runtime backends of the chunk step behind one interface.

A backend owns a stream's model-side state (KV cache, decoder state) and turns one chunk's audio tokens and
noise into clean latents and, with a decoder, video frames:

    backend.reset(reference)                        # reference latent [1, C, S, h, w]: prefill the sink
    out = backend.opening()                         # the stream's latent frame 0, the portrait (one video frame)
    out = backend.chunk(audio, noise, sigmas)       # audio tokens [1, c, tokens, audio_dim] (DiT.encode_audio);
                                                    # noise: one [1, C, c, h, w] per step; sigmas: the few-step list
    out.latents [1, C, c, h, w], out.frames [n, H, W, 3] uint8 (or None)

The caller draws the noise (the StreamingGenerator's seeded generator, in the engine's order), so every
backend produces the same stream for a seed. Backends:

* `torch`: eager PyTorch through the engine's own KVCache layouts (the reference).
* `torch-cudagraph`: the whole chunk -- every denoising pass, the cache write and the decode -- replayed
  from CUDA graphs over static buffers: one graph for the DiT part per step count (and per window state: the
  first chunk without a ring, a filling ring with a mask, a full one without), one for the decoder step, so a
  chunk is two replays and a stream's first chunk replays too (GPU only). The blocks are compiled
  (torch.compile) before the capture where Triton is installed. Without capture the same static-buffer code
  runs eagerly, which is how the CPU tests check it. Pinned buffers, streams and events come from torch, so cuda-python
  is not needed.
* `onnxruntime-cpu` / `onnxruntime-cuda`: the exported bundle (exporters.onnx_export) through IO binding
  over torch tensors; the ring and the decoder state ping-pong between two buffers, so each graph writes
  straight into the buffer the next chunk reads (no host copies).

`choose_backend(device, ...)` takes the fastest available for the device (order measured in
bench/backends.py), or the one named; an unavailable one falls back with one log line.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from engine.diffusion.flow import add_noise, x0_from_velocity
from engine.generate.decoders import TinyDecoder, VAEDecoder, to_uint8
from engine.models.attention import KVCache
from engine.models.dit import DiT
from engine.models.tiny_vae import TinyVAE
from engine.models.vae import CausalVAE
from exporters.chunk_graph import ChunkShape, CommitGraph, PassGraph, SinkGraph, rope_tables
from exporters.decoder_graph import DecoderState, TinyDecodeGraph, VAEDecodeGraph
from exporters.errors import BackendError

log = logging.getLogger(__name__)

BACKENDS = ("torch", "torch-cudagraph", "onnxruntime-cpu", "onnxruntime-cuda")
# Fastest first, measured by bench/backends.py (bench/RESULTS.md). CPU: onnxruntime 1.8x eager torch on the demo.
# CUDA (H200, demo fp16): torch-cudagraph 5.7 ms/chunk, onnxruntime-cuda 33.7, torch 50.7. torch closes every list.
PREFERENCE = {"cpu": ("onnxruntime-cpu", "torch"), "cuda": ("torch-cudagraph", "onnxruntime-cuda", "torch")}
# One CUDA graph capture at a time in a process: served sessions each own a backend and capture on their own
# worker threads, while the other sessions keep launching work.
_CAPTURE = threading.Lock()

Decoder = CausalVAE | TinyVAE


@dataclass
class ChunkResult:
    latents: torch.Tensor  # [1, C, chunk, h, w], a tensor of its own (not a reused buffer)
    frames: torch.Tensor | None  # [n, H, W, 3] uint8 on the CPU, when the backend decodes


class Backend(Protocol):
    name: str
    shape: ChunkShape
    decodes: bool  # chunk() returns frames
    frames_written: int

    def reset(self, reference: torch.Tensor) -> None: ...

    def opening(self) -> ChunkResult: ...

    def chunk(self, audio: torch.Tensor, noise: Sequence[torch.Tensor], sigmas: Sequence[float]) -> ChunkResult: ...


def decoder_kind(decoder: Decoder | None) -> str | None:
    return None if decoder is None else "vae" if isinstance(decoder, CausalVAE) else "tiny"


def sample(velocity: Callable[[torch.Tensor, float], torch.Tensor], noise: Sequence[torch.Tensor],
           sigmas: Sequence[float]) -> torch.Tensor:
    """The few-step sampler of StreamingGenerator._denoise (Self-Forcing inference, spec D.4): x ← noise[0];
    for each σ_i: x̂0 = x − σ_i·v(x, σ_i); x ← (1 − σ_{i+1})·x̂0 + σ_{i+1}·noise[i+1] except after the last."""
    if len(noise) != len(sigmas):
        raise BackendError(f"need one noise tensor per step: {len(noise)} for {len(sigmas)} steps")
    x = noise[0]
    for i, sigma in enumerate(sigmas):
        x0 = x0_from_velocity(x, velocity(x, sigma), sigma)
        if i + 1 < len(sigmas):
            x = add_noise(x0, noise[i + 1], sigmas[i + 1])
    return x0


def _timesteps(sigma: float, chunk: int, device: torch.device) -> torch.Tensor:
    return torch.full((1, chunk), 1000.0 * sigma, device=device)


# ----------------------------------------------------------------------------- torch eager

class TorchBackend:
    """The engine's eager path: KVCache layouts and the engine's streaming decoders."""

    name = "torch"

    def __init__(self, model: DiT, shape: ChunkShape, decoder: Decoder | None = None):
        p = next(model.parameters())
        self.model, self.shape = model.eval(), shape
        self.cache = KVCache(shape.cache_config(model), batch=1, device=p.device, dtype=p.dtype)
        self.frames_written = 0
        self.decoder = None if decoder is None else \
            VAEDecoder(decoder) if isinstance(decoder, CausalVAE) else TinyDecoder(decoder)
        self.decodes = decoder is not None

    @torch.no_grad()
    def reset(self, reference: torch.Tensor) -> None:
        self.cache.reset()  # the ring's old rows stay but are hidden until written again
        S = reference.shape[2]
        self.model(reference, torch.zeros(1, S, device=reference.device), self.cache.sink(), sink_frames=S)
        if self.decoder is not None:
            self.decoder.reset()
        self.reference = reference[:, :, :1].clone()
        self.frames_written = 0

    @torch.no_grad()
    def opening(self) -> ChunkResult:
        """The stream's latent frame 0 is the portrait's latent (engine.generate.streaming): decoded as its
        first video frame; the DiT's ring starts with the frame after it."""
        return ChunkResult(self.reference.clone(),
                           self.decoder.decode(self.reference) if self.decoder is not None else None)

    @torch.no_grad()
    def chunk(self, audio: torch.Tensor, noise: Sequence[torch.Tensor], sigmas: Sequence[float]) -> ChunkResult:
        c, model, cache = self.shape.chunk_frames, self.model, self.cache
        layout = cache.chunk(c)
        x0 = sample(lambda x, s: model(x, _timesteps(s, c, x.device), layout, audio=audio), noise, sigmas)
        model(x0, torch.zeros(1, c, device=x0.device), cache.chunk(c, write=True), audio=audio)
        cache.advance(c)
        self.frames_written = cache.frames_written
        return ChunkResult(x0, self.decoder.decode(x0) if self.decoder is not None else None)


# ----------------------------------------------------------------------------- torch + CUDA graphs

class CudaGraphBackend:
    """The whole chunk over static buffers: the cache, RoPE tables, position, audio, noise, latents, video
    and decoder state live at fixed addresses; each chunk copies its inputs in and replays two CUDA graphs:
    the DiT's (every pass and the cache write; one per step count) and the decoder's step. The stream's
    opening frame (the portrait's latent) is decoded eagerly: the causal VAE's first latent frame takes its own
    path, and the tiny decoder's is a step of one frame. capture=False runs the same code eagerly (the CPU
    tests, a device without CUDA)."""

    name = "torch-cudagraph"

    def __init__(self, model: DiT, shape: ChunkShape, decoder: Decoder | None = None, capture: bool | None = None,
                 prefer_cudnn: bool = True, compile: bool | None = None):
        p = next(model.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.capture = self.device.type == "cuda" if capture is None else capture
        if self.capture and self.device.type != "cuda":
            raise BackendError("CUDA graphs need the model on a CUDA device")
        # compiled blocks inside the captured graph (None: wherever graphs are captured and inductor can build)
        self.compiled = self.capture and (can_compile() if compile is None else compile)
        if self.compiled:
            compile_blocks(model)
        self.model, self.shape = model.eval(), shape
        self.cache = shape.cache_config(model)
        cache = KVCache(self.cache, batch=1, device=self.device, dtype=self.dtype)
        self.sink_k, self.sink_v, self.ring_k, self.ring_v = cache.sink_k, cache.sink_v, cache.k, cache.v
        self.position = torch.zeros((), dtype=torch.int64, device=self.device)
        self.tables = [t.clone() for t in rope_tables(self.cache, shape.chunk_frames, 0, self.dtype, self.device)]
        self.audio = torch.zeros(shape.audio(model), device=self.device, dtype=self.dtype)
        self.latents = torch.zeros(shape.latents(model), device=self.device, dtype=self.dtype)
        self.noise: dict[int, torch.Tensor] = {}  # [steps, 1, C, c, h, w] per step count
        self.sink_graph = SinkGraph(model, shape)
        # Three versions of the step, by window state (_ring_state): the stream's first chunk attends to the sink
        # alone (no ring, no mask: the first-chunk latency), the chunks while the window fills to the whole ring
        # with a mask hiding its empty slots, and once it is full, to the whole ring without a mask, so SDPA may
        # pick mask-free kernels (cuDNN's).
        self.steps: dict[int | None, tuple[PassGraph, CommitGraph]] = {}
        # the DiT graphs share one memory pool: they never run at once and keep no outputs (they write static
        # buffers), so one pass's activations serve them all
        self.pool = torch.cuda.graph_pool_handle() if self.capture else None
        self.cudnn_first = self.device.type == "cuda" and prefer_cudnn and _can_rank_sdpa()
        self.kind = decoder_kind(decoder)
        self.decodes = decoder is not None
        self.decoder_state: list[torch.Tensor] = []
        self.trim = 0
        if decoder is not None:
            decoder.eval()
            layout = DecoderState.discover(decoder, shape.latents(model))
            self.decoder_state = layout.zeros(self.device, self.dtype)
            if isinstance(decoder, CausalVAE):
                self.decode_first: torch.nn.Module = VAEDecodeGraph(decoder, layout, first=True)
                self.decode_step: torch.nn.Module = VAEDecodeGraph(decoder, layout, first=False)
            else:  # zero state is the tiny decoder's start: its opening frame is a step with frames to drop
                self.decode_first = self.decode_step = TinyDecodeGraph(decoder, layout)
                self.trim = decoder.frames_to_trim
        self.graphs: dict[object, tuple[torch.cuda.CUDAGraph, torch.Tensor | None]] = {}
        self.frames_written = 0

    @torch.no_grad()
    def reset(self, reference: torch.Tensor) -> None:
        sink_k, sink_v = self.sink_graph(reference.to(self.device, self.dtype))
        self.sink_k.copy_(sink_k)
        self.sink_v.copy_(sink_v)
        self.ring_k.zero_()
        self.ring_v.zero_()
        for s in self.decoder_state:
            s.zero_()
        self.reference = reference[:, :, :1].to(self.device, self.dtype).clone()
        self.frames_written = 0

    @torch.no_grad()
    def opening(self) -> ChunkResult:
        """The stream's latent frame 0, the portrait's latent, decoded eagerly from the zero state."""
        if not self.decodes:
            return ChunkResult(self.reference.clone(), None)
        if self.kind == "vae":
            video, *state = self.decode_first(self.reference)
        else:
            video, *state = self.decode_step(self.reference, *self.decoder_state)
            video = video[:, :, self.trim:]
        for s, new in zip(self.decoder_state, state):
            s.copy_(new)
        return ChunkResult(self.reference.clone(), to_uint8(video))

    # -- the two captured bodies: they read and write static buffers only

    def _ring_state(self) -> int | None:
        """The ring frames the next chunk's graph is built for: 0 (the first chunk), the window once it is full,
        None (the whole ring with a mask) between."""
        if self.frames_written == 0 or self.frames_written >= self.shape.window_frames:
            return min(self.frames_written, self.shape.window_frames)
        return None

    def _dit(self, sigmas: tuple[float, ...], filled: int | None) -> None:
        """Every denoising pass, then the cache write; x̂0 lands in self.latents. The first chunk's passes run
        uncompiled: its ring of no rows is a shape of its own, and a new shape makes the compiled blocks
        recompile for dynamic shapes, which ran a full window's pass as slowly as uncompiled blocks (wan-1.3b
        512², H200: 131.7 ms/chunk against 83.3 when every fill state had its own ring length)."""
        if filled == 0 and self.compiled:
            with torch.compiler.set_stance("force_eager"):
                return self._dit_passes(sigmas, filled)
        return self._dit_passes(sigmas, filled)

    def _dit_passes(self, sigmas: tuple[float, ...], filled: int | None) -> None:
        c = self.shape.chunk_frames
        cache = (self.sink_k, self.sink_v, self.ring_k, self.ring_v, self.position, *self.tables)
        noise = self.noise[len(sigmas)]
        if filled not in self.steps:
            self.steps[filled] = (PassGraph(self.model, self.shape, filled_frames=filled),
                                  CommitGraph(self.model, self.shape, inplace=True, filled_frames=filled))
        step, commit = self.steps[filled]
        x0 = sample(lambda x, s: step(x, _timesteps(s, c, x.device), self.audio, *cache), list(noise.unbind(0)),
                    sigmas)
        commit(x0, self.audio, *cache)
        self.latents.copy_(x0)

    def _decode_step(self) -> torch.Tensor:
        """Decode self.latents from the static state and write the new state back; video [1, 3, T, H, W]."""
        video, *state = self.decode_step(self.latents, *self.decoder_state)
        for s, new in zip(self.decoder_state, state):
            s.copy_(new)
        return video

    def _replay(self, key: object, body: Callable[[], torch.Tensor | None],
                mutable: list[torch.Tensor], pool: Any = None) -> torch.Tensor | None:
        """Replay the graph of `key`, capturing it on first use (in `pool`, shared by graphs with no outputs).
        The warm-up run before a capture writes the `mutable` buffers (the ring, the decoder state), so they are
        restored before the capture (which runs nothing) and the replay that does the real work."""
        if key not in self.graphs:
            with _CAPTURE:
                saved = [t.clone() for t in mutable]
                side = torch.cuda.Stream(self.device)
                side.wait_stream(torch.cuda.current_stream(self.device))
                with torch.cuda.stream(side):
                    body()
                torch.cuda.current_stream(self.device).wait_stream(side)
                for t, s in zip(mutable, saved):
                    t.copy_(s)
                graph = torch.cuda.CUDAGraph()
                # "thread_local": only this thread must avoid unsafe calls (cudaMalloc, syncs) while it captures;
                # in the default "global" mode such a call from another session's thread fails, ending the capture
                with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
                    out = body()
                self.graphs[key] = (graph, out)
        graph, out = self.graphs[key]
        graph.replay()
        return out

    @torch.no_grad()
    def chunk(self, audio: torch.Tensor, noise: Sequence[torch.Tensor], sigmas: Sequence[float]) -> ChunkResult:
        key = tuple(float(s) for s in sigmas)
        if len(key) not in self.noise:
            self.noise[len(key)] = torch.zeros(len(key), *self.latents.shape, device=self.device, dtype=self.dtype)
        buffer = self.noise[len(key)]
        for i, n in enumerate(noise):
            buffer[i].copy_(n)
        self.audio.copy_(audio)
        tables = rope_tables(self.cache, self.shape.chunk_frames, self.frames_written, self.dtype)
        for static, t in zip(self.tables, tables):
            static.copy_(t)
        self.position.fill_(self.frames_written)
        filled = self._ring_state()
        video = None
        with _attention_kernels(self.cudnn_first):  # kernels are chosen when a graph is captured
            if self.capture:
                self._replay(("dit", key, filled), lambda: self._dit(key, filled), [self.ring_k, self.ring_v],
                             self.pool)
            else:
                self._dit(key, filled)
            if self.decodes:
                video = self._replay("decode", self._decode_step, self.decoder_state) if self.capture \
                    else self._decode_step()
        self.frames_written += self.shape.chunk_frames
        return ChunkResult(self.latents.clone(), to_uint8(video) if video is not None else None)


def can_compile() -> bool:
    """Whether torch.compile's inductor can build GPU kernels here (it needs Triton)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        log.warning("triton is not installed: the CUDA-graph backend runs uncompiled blocks")
        return False
    return True


def compile_blocks(model: DiT) -> None:
    """torch.compile each block of the model in place (regional compilation: the blocks share one compiled
    code, their weights are inputs). Inductor fuses what runs between the matmuls and attention — the
    float32 norms and modulation, RoPE, the cache concatenation and the heads-first copies — which were 60%
    of a wan-1.3b pass's kernel time on an H200 (bench/pass_profile.py). Every user of the model runs the
    compiled blocks afterwards; compiling happens at the first call (seconds), before a graph is captured."""
    # per block the layer index becomes a dynamic int on the second layer; the few layouts (mask or none,
    # recording keys or not) each compile once, which can pass dynamo's default limit of 8 variants
    dynamo = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo, name):
            setattr(dynamo, name, max(getattr(dynamo, name), 64))
    for block in model.blocks:
        if getattr(block, "_compiled_call_impl", None) is None:
            block.compile()


def _can_rank_sdpa() -> bool:
    """Whether this torch can put cuDNN's attention first in SDPA's order (sdpa_kernel's set_priority)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH], set_priority=True):
            return True
    except (ImportError, TypeError, AttributeError, RuntimeError) as e:
        log.warning("cuDNN attention cannot be ranked first here (%s); SDPA keeps its own order", e)
        return False


def _attention_kernels(cudnn_first: bool) -> contextlib.AbstractContextManager:
    """SDPA's order with cuDNN first (shared/calib, H100: cuDNN's attention 400–488 TFLOP/s where the default
    FlashAttention-2 gives 252), falling through to FlashAttention, memory-efficient and math kernels
    wherever cuDNN's cannot run (float32, masks it does not take)."""
    if not cudnn_first:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    return sdpa_kernel(order, set_priority=True)


# ----------------------------------------------------------------------------- onnxruntime

class OrtBackend:
    """The exported bundle on ONNX Runtime (CPU, or the CUDA execution provider), all through IO binding."""

    def __init__(self, bundle_dir: str | Path, device: torch.device | str = "cpu", decoder: str | None = None,
                 threads: int = 0, spin: bool = False):
        from exporters.onnx_export import Bundle
        from exporters.ort import OrtGraph

        self.bundle = bundle = Bundle.load(bundle_dir)
        self.device, self.dtype, self.shape = torch.device(device), bundle.dtype, bundle.shape
        self.name = "onnxruntime-cuda" if self.device.type == "cuda" else "onnxruntime-cpu"

        def graph(part: str, name: str) -> OrtGraph:
            return OrtGraph(bundle.graph(part, name), self.device, threads, spin)

        self.sink, self.pass_, self.commit = graph("dit", "sink"), graph("dit", "pass"), graph("dit", "commit")
        self.cache = bundle.cache_config()
        T, L = self.cache.tokens_per_frame, self.cache.num_layers
        H, D, S, W = self.cache.num_heads, self.cache.head_dim, self.shape.sink_frames, self.shape.window_frames

        def zeros(*size: int) -> torch.Tensor:
            return torch.zeros(size, device=self.device, dtype=self.dtype)

        self.sink_k, self.sink_v = zeros(L, 1, S * T, H, D), zeros(L, 1, S * T, H, D)
        self.rings = [(zeros(L, 1, W * T, H, D), zeros(L, 1, W * T, H, D)) for _ in range(2)]
        # the DiT's head returns float32 whatever the weights' dtype (as the engine's does): so does the sampler
        self.velocity = torch.zeros(1, bundle.dit_config().out_dim, self.shape.chunk_frames, *self.shape.latent_hw,
                                    device=self.device, dtype=self.pass_.output_dtypes["velocity"])
        self.kind, self.decodes = decoder, decoder is not None
        self.decoders: dict[str, OrtGraph] = {}
        if decoder is not None:
            self.decoders = {name: graph(decoder, name) for name in bundle.decoder(decoder)["graphs"]}
            layout = bundle.decoder_state(decoder)
            self.states = [layout.zeros(self.device, self.dtype) for _ in range(2)]
            self.state_names = layout.names
            self.videos = {name: zeros(*g.session.get_outputs()[0].shape) for name, g in self.decoders.items()}
            self.trim = bundle.frames_to_trim(decoder)
        self.frames_written = 0

    def reset(self, reference: torch.Tensor) -> None:
        self.sink.run({"reference": reference.to(self.device, self.dtype).contiguous()},
                      {"sink_k": self.sink_k, "sink_v": self.sink_v})
        for k, v in self.rings:
            k.zero_()
            v.zero_()
        for state in self.states if self.decodes else []:
            for s in state:
                s.zero_()
        self.reference = reference[:, :, :1].to(self.device, self.dtype).contiguous()
        self.frames_written = 0

    def _decode_with(self, name: str, z: torch.Tensor) -> torch.Tensor:
        """Run decoder graph `name` from the current state into the other one, then swap; returns the video."""
        old, new = self.states
        inputs = {"z": z.contiguous(), **dict(zip(self.state_names, old))}
        outputs = {"video": self.videos[name], **{f"new_{n}": s for n, s in zip(self.state_names, new)}}
        self.decoders[name].run(inputs, outputs)
        self.states = [new, old]
        return self.videos[name]

    def opening(self) -> ChunkResult:
        """The stream's latent frame 0, the portrait's latent: the VAE's `first` graph (it takes no state and
        writes a fresh one), or the tiny decoder's one-frame step from the zero state."""
        if not self.decodes:
            return ChunkResult(self.reference.clone(), None)
        if self.kind == "tiny":
            video = self._decode_with("step_1", self.reference)[:, :, self.trim:]
        else:
            _, new = self.states
            self.decoders["first"].run({"z": self.reference},
                                       {"video": self.videos["first"],
                                        **{f"{n}": s for n, s in zip(self.state_names, new)}})
            self.states = list(reversed(self.states))
            video = self.videos["first"]
        return ChunkResult(self.reference.clone(), to_uint8(video))

    @torch.no_grad()
    def chunk(self, audio: torch.Tensor, noise: Sequence[torch.Tensor], sigmas: Sequence[float]) -> ChunkResult:
        c = self.shape.chunk_frames
        tables = rope_tables(self.cache, c, self.frames_written, self.dtype, self.device)
        (ring_k, ring_v), (next_k, next_v) = self.rings
        cache = {"sink_k": self.sink_k, "sink_v": self.sink_v, "ring_k": ring_k, "ring_v": ring_v,
                 "position": torch.tensor(self.frames_written, dtype=torch.int64, device=self.device),
                 "cos_chunk": tables[0], "sin_chunk": tables[1], "cos_sink": tables[2], "sin_sink": tables[3],
                 "audio": audio.to(self.device, self.dtype).contiguous()}

        def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:  # x in the weights' dtype, as the DiT casts it
            self.pass_.run({"x": x.to(self.dtype).contiguous(), "t": _timesteps(sigma, c, self.device), **cache},
                           {"velocity": self.velocity})
            return self.velocity

        x0 = sample(velocity, noise, sigmas)
        latents = x0.to(self.dtype).contiguous()
        self.commit.run({"x0": latents, **cache}, {"new_ring_k": next_k, "new_ring_v": next_v})
        self.rings.reverse()
        frames = to_uint8(self._decode_with(f"step_{c}", latents)) if self.decodes else None
        self.frames_written += c
        return ChunkResult(x0, frames)


# ----------------------------------------------------------------------------- choosing one

def _unavailable(name: str, device: torch.device, onnx_dir: str | Path | None) -> str | None:
    """Why backend `name` cannot run here, or None."""
    if name in ("torch-cudagraph", "onnxruntime-cuda") and device.type != "cuda":
        return "it needs a CUDA device"
    if name.startswith("onnxruntime"):
        from exporters.ort import providers_available

        providers = providers_available()
        if not providers:
            return "onnxruntime is not installed (pip install talkstream[onnx])"
        if name == "onnxruntime-cuda" and "CUDAExecutionProvider" not in providers:
            return "onnxruntime here has no CUDAExecutionProvider (it needs onnxruntime-gpu)"
        if onnx_dir is None:
            return "no exported bundle was given (write one with `talkstream export onnx --out DIR`)"
    return None


def make_backend(name: str, model: DiT, shape: ChunkShape, decoder: Decoder | None = None,
                 onnx_dir: str | Path | None = None, threads: int = 0, compile: bool | None = None) -> Backend:
    """Build backend `name` for this model and chunk shape; BackendError if it cannot run here. `compile`
    (torch-cudagraph only): compile the blocks before capture (None: where Triton is installed)."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {list(BACKENDS)}")
    device = next(model.parameters()).device
    reason = _unavailable(name, device, onnx_dir)
    if reason is not None:
        raise BackendError(f"backend {name!r} cannot run here: {reason}")
    if name == "torch":
        return TorchBackend(model, shape, decoder)
    if name == "torch-cudagraph":
        return CudaGraphBackend(model, shape, decoder, compile=compile)
    from exporters.onnx_export import Bundle

    assert onnx_dir is not None
    kind = decoder_kind(decoder)
    Bundle.load(onnx_dir).check_matches(model, shape, decoder, kind)
    return OrtBackend(onnx_dir, device, kind, threads)


def choose_backend(device: torch.device | str, model: DiT, shape: ChunkShape, decoder: Decoder | None = None,
                   name: str | None = None, onnx_dir: str | Path | None = None, threads: int = 0) -> Backend:
    """The named backend, or the fastest that runs on `device` (PREFERENCE). One that cannot run here falls
    back to the next, with one log line saying why; eager torch always runs."""
    device = torch.device(device)
    if name is not None and name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {list(BACKENDS)}")
    if next(model.parameters()).device.type != device.type:
        raise BackendError(f"the model is on {next(model.parameters()).device}, the backend was asked for {device}")
    order = [name] if name is not None else list(PREFERENCE.get(device.type, ()))
    for candidate in [*order, "torch"]:
        try:
            return make_backend(candidate, model, shape, decoder, onnx_dir, threads)
        except BackendError as e:
            if candidate == "torch":
                raise
            log.warning("%s; falling back", e)
    raise AssertionError("unreachable: torch always runs")
