"""StreamingGenerator: audio in, talking-portrait latents (and frames, with a decoder) out, chunk by chunk.

The method (Self-Forcing / CausVid inference, spec D.4), for each chunk of `chunk_frames` latent frames:
  1. x ← Gaussian noise;
  2. for each σ_i of the few-step list: v = DiT(x, σ_i, chunk audio) attending to [sink | window | itself]
     through the KV cache; x̂0 = x − σ_i·v; x ← (1 − σ_{i+1})·x̂0 + σ_{i+1}·fresh noise (not on the last step);
  3. one more pass at σ = 0 on x̂0 writes the chunk's clean keys and values into the cache; the window rolls.
The reference portrait's latent is the pinned sink, prefilled once per `reset`, and it is also the stream's
first latent frame: a stream opens on the portrait itself (one video frame), and generation starts at latent
frame 1. That is how every stage was trained -- a clip's latent frame 0 is its reference, and training
windows start at frame 1 or later, right after the sink -- so the DiT never learnt to make frame 0, a single
video frame that the causal decoders treat apart. Made from noise it came out washed out, and the decoders'
state and the first seconds of history carried that forward (held-out clips: the read opening in silence
p95 0.066 -> 0.048, identity +0.01).

Time: latent frame 0 is video frame 0; latent frame j ≥ 1 is video frames 4j−3 … 4j (the causal VAE's
layout); video frame n shows [n/fps, (n+1)/fps) of the audio. Audio is the master clock: the generator
keeps one timeline of 16 kHz samples, real where audio was pushed and silence where it was padded, and
every chunk carries the exact samples that play with its frames.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Iterator, Protocol

import numpy as np
import torch

from engine.audio.features import AudioFeatureConfig, StreamingAudioFeatures, samples_needed
from engine.audio.io import StreamResampler
from engine.diffusion.flow import add_noise, x0_from_velocity
from engine.diffusion.guidance import cfg as cfg_guidance
from engine.diffusion.schedules import warp_timesteps
from engine.errors import AudioError, ConfigError
from engine.models.attention import KVCache
from engine.models.dit import DiT

if TYPE_CHECKING:
    from engine.generate.windows import Known


class Decoder(Protocol):
    """Streaming latent decoder: `reset()`, then `decode(latents [1, C, F, h, w]) -> [n, H, W, 3] uint8`."""

    def reset(self) -> None: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


# Latent frames of its own history the student attends to, beside the portrait (the sink). The seventh demo student,
# distilled with 8, read best with 2: on 6 held-out clips r 0.762 and identity 0.867 (1: 0.759 / 0.859, 4:
# 0.757 / 0.855, 8: 0.755 / 0.835); a shorter history carries fewer of its own errors forward. The student stages of
# engine/train/dit.py train with it too (TrainDiTConfig.window): the eighth, distilled at 2, holds identity better
# on the 19 held-out clips (0.871 against 0.852) and the mouth still in recorded silence (docs/demo-model.md).
STUDENT_WINDOW = 2


@dataclass(frozen=True)
class StreamConfig:
    """How a session generates. `steps` may change per chunk (see `StreamingGenerator.steps`)."""

    chunk_frames: int = 1  # latent frames per chunk (1 latent frame = 4 video frames)
    window_frames: int = STUDENT_WINDOW  # latent frames of history in the rolling KV window
    steps: int = 4  # denoising steps: 4, 2 or 1
    shift: float = 5.0  # timestep shift of the few-step list (Self-Forcing warps with 5)
    audio_guidance: float = 1.0  # audio CFG scale; 1 = a single conditional pass

    def __post_init__(self) -> None:
        if self.chunk_frames < 1 or self.window_frames < self.chunk_frames:
            raise ConfigError(f"need 1 <= chunk_frames <= window_frames, got {self.chunk_frames}, "
                              f"{self.window_frames}")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")


@dataclass
class Chunk:
    """One generated chunk. `first_frame` and `num_frames` are video-frame pts in units of `time_base`."""

    latents: torch.Tensor  # [1, C, chunk_frames, h, w]
    frames: torch.Tensor | None  # [num_frames, H, W, 3] uint8, when a decoder is attached
    first_frame: int
    num_frames: int
    time_base: Fraction
    audio: np.ndarray  # float32 16 kHz samples that play with these frames
    voiced: bool  # real audio drove at least part of this chunk (False: silence, an idle face)
    steps: int

    @property
    def pts(self) -> range:
        return range(self.first_frame, self.first_frame + self.num_frames)


def sigma_list(steps: int, shift: float) -> list[float]:
    """The few-step σ list: [1000, 750, 500, 250]-style even timesteps warped by the shift (spec D.2)."""
    even = torch.linspace(1000.0, 0.0, steps + 1)[:-1]
    return [float(t) / 1000.0 for t in warp_timesteps(even, shift)]


def student_chunk(model: DiT, cache: KVCache, audio: torch.Tensor, text_kv: list | None, sigmas: list[float],
                  generator: torch.Generator, latent_shape: tuple[int, int, int], guidance: float = 1.0,
                  history_sigma: float = 0.0, known: "Known | None" = None,
                  context: torch.Tensor | None = None) -> torch.Tensor:
    """One chunk of the causal student through the KV cache (steps 1–3 of the module doc); audio tokens
    [1, c, A, Da] -> x̂0 [1, C, c, h, w]. Two options of the offline renders (engine.generate.extend):
    `history_sigma` > 0 writes the chunk into the cache re-noised to that σ (and at t = 1000σ) instead of
    clean -- SkyReels-V2's noisy history (`addnoise_condition`), Self-Forcing's `context_noise` -- and
    `known` (engine.generate.windows.Known) keeps the source outside a mask (dubbing). `context` is written
    into the cache in place of x̂0 (engine.eval.heldout's true-history row writes the true latents: what the
    student loses to its own history, exposure bias, apart from what it loses in each chunk). Noise is drawn from
    `generator` in a fixed order: the start, one per re-noising, one per inpainting step, the history's."""
    c = audio.shape[1]
    device, dtype = cache.k.device, cache.k.dtype
    shape = (1, latent_shape[0], c, *latent_shape[1:])
    x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    layout = cache.chunk(c)
    for i, sigma in enumerate(sigmas):
        if known is not None:
            x = known.impose(x, sigma, generator)
        t = torch.full((1, c), 1000.0 * sigma, device=device)
        v = model(x, t, layout, audio=audio, text_kv=text_kv)
        if guidance != 1.0:
            v = cfg_guidance(v, model(x, t, layout, audio=None, text_kv=text_kv), guidance)
        x0 = x0_from_velocity(x, v, sigma)
        if i + 1 < len(sigmas):
            noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
            x = add_noise(x0, noise, sigmas[i + 1])
    if known is not None:
        x0 = known.compose(x0)
    context, t_context = (x0 if context is None else context), torch.zeros(1, c, device=device)
    if history_sigma > 0:
        noise = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        context, t_context = add_noise(context, noise, history_sigma), t_context + 1000.0 * history_sigma
    model(context, t_context, cache.chunk(c, write=True), audio=audio, text_kv=text_kv)
    cache.advance(c)
    return x0


class StreamingGenerator:
    """push_audio → step → Chunk, with interrupt and reset. Deterministic for a seed; constant memory."""

    def __init__(self, model: DiT, config: StreamConfig = StreamConfig(),
                 audio_config: AudioFeatureConfig = AudioFeatureConfig(), decoder: Decoder | None = None,
                 text: torch.Tensor | None = None):
        self.model, self.config, self.audio_config, self.decoder = model.eval(), config, audio_config, decoder
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.text_kv = model.encode_text(text.to(self.device)) if text is not None else None
        self.steps = config.steps
        self._resamplers: dict[int, StreamResampler] = {}
        self.cache: KVCache | None = None

    # ------------------------------------------------------------------ session state

    def reset(self, reference: torch.Tensor, seed: int = 0) -> None:
        """Start a stream for the reference latent [1, C, S, h, w] (S sink frames; the first is the portrait,
        the stream's first frame): clears audio and history."""
        if reference.ndim != 5 or reference.shape[0] != 1 or reference.shape[1] != self.model.cfg.in_dim:
            raise ConfigError(f"reference latent must be [1, {self.model.cfg.in_dim}, S, h, w], "
                              f"got {tuple(reference.shape)}")
        ref = reference.to(self.device, self.dtype)
        self.opening = ref[:, :, :1].clone()  # latent frame 0 of the stream
        self.latents_out = 0  # latent frames handed out (the opening included)
        self.latent_shape = (self.model.cfg.out_dim, *ref.shape[-2:])
        grid = self.model.token_grid(ref.shape[-2:])
        cache_cfg = self.model.cache_config(grid, ref.shape[2], self.config.window_frames)
        self.cache = KVCache(cache_cfg, batch=1, device=self.device, dtype=self.dtype)
        with torch.no_grad():
            self.model(ref, torch.zeros(1, ref.shape[2], device=self.device), self.cache.sink(),
                       text_kv=self.text_kv, sink_frames=ref.shape[2])
        self.noise = torch.Generator(device=self.device).manual_seed(seed)
        self.features = StreamingAudioFeatures(self.audio_config)
        self.timeline = np.zeros(0, np.float32)  # samples not yet played, from sample `self.played`
        self.played = 0  # samples of the timeline handed out with chunks
        self.pushed = 0  # samples of the timeline pushed so far (real or silence)
        self.voiced_until = 0  # timeline sample up to which real audio was pushed
        self._resamplers.clear()
        if self.decoder is not None:
            self.decoder.reset()

    def push_audio(self, pcm: np.ndarray, sample_rate: int) -> None:
        """Append mono PCM (int16, or float32 in [-1, 1]) at any rate; it is resampled to 16 kHz."""
        if pcm.ndim != 1:
            raise AudioError(f"push mono PCM as a 1-D array, got shape {pcm.shape}")
        if sample_rate not in self._resamplers:
            self._resamplers[sample_rate] = StreamResampler(sample_rate, self.audio_config.sample_rate)
        samples = self._resamplers[sample_rate].push(pcm)
        self._append(samples)
        self.voiced_until = self.pushed

    def interrupt(self) -> None:
        """Barge-in: drop every sample not yet played; the next chunk is driven by silence."""
        self.features.truncate(self.played)
        self.timeline = self.timeline[:0]
        self.pushed = self.played
        self.voiced_until = min(self.voiced_until, self.played)
        for r in self._resamplers.values():
            r.reset()

    # ------------------------------------------------------------------ generation

    @property
    def frames_written(self) -> int:
        """Latent frames of the stream so far, the opening portrait frame included."""
        return 0 if self.cache is None else self.latents_out

    @property
    def next_count(self) -> int:
        """Latent frames of the next chunk: the opening frame alone, then `chunk_frames` at a time."""
        return 1 if self.frames_written == 0 else self.config.chunk_frames

    def ready(self) -> bool:
        """Enough audio (look-ahead included) is buffered for the next chunk."""
        end = self.frames_written + self.next_count
        return self.pushed >= samples_needed(end, self.audio_config)

    def step(self, allow_silence: bool = False) -> Chunk | None:
        """Generate the next chunk; None if audio is missing and `allow_silence` is False (else silence pads).
        The first chunk of a stream is the opening: the portrait's latent, one video frame."""
        if self.cache is None:
            raise ConfigError("call reset(reference) before step()")
        c = self.next_count
        start = self.frames_written
        need = samples_needed(start + c, self.audio_config)
        if self.pushed < need:
            if not allow_silence:
                return None
            self._append(np.zeros(need - self.pushed, np.float32))
        windows = torch.as_tensor(self.features.pop(c))[None].to(self.device, self.dtype)  # [1, c, win, mels]
        with torch.no_grad():
            x0 = self._open() if start == 0 else self._denoise(self.model.encode_audio(windows))
        self.latents_out += c
        first, count = self._video_frames(start, c)
        samples = self._take_audio(first, count)
        frames = self.decoder.decode(x0) if self.decoder is not None else None
        voiced = self.voiced_until > first * self._samples_per_frame
        return Chunk(x0, frames, first, count, Fraction(1, self.audio_config.fps), samples, voiced, self.steps)

    def flush(self) -> Iterator[Chunk]:
        """Generate until every pushed sample has played, padding the tail with silence."""
        while self.played < self.voiced_until:
            chunk = self.step(allow_silence=True)
            assert chunk is not None
            yield chunk

    def _open(self) -> torch.Tensor:
        """The stream's latent frame 0: the portrait (its audio window is consumed and not used)."""
        return self.opening.clone()

    def _denoise(self, audio: torch.Tensor) -> torch.Tensor:
        """Steps 1–3 of the method above for one chunk; returns x̂0 [1, C, c, h, w]."""
        assert self.cache is not None
        return student_chunk(self.model, self.cache, audio, self.text_kv, sigma_list(self.steps, self.config.shift),
                             self.noise, self.latent_shape, self.config.audio_guidance)

    # ------------------------------------------------------------------ the audio timeline

    @property
    def _samples_per_frame(self) -> int:
        return self.audio_config.sample_rate // self.audio_config.fps

    def _video_frames(self, start: int, count: int) -> tuple[int, int]:
        """Video frames of latent frames [start, start+count): (first frame, number of frames)."""
        k = self.audio_config.video_frames_per_latent
        first = 0 if start == 0 else k * start - (k - 1)
        last = k * (start + count - 1)  # latent frame j ends at video frame k·j
        return first, last - first + 1

    def _append(self, samples: np.ndarray) -> None:
        self.features.push(samples)
        self.timeline = np.concatenate([self.timeline, samples.astype(np.float32)])
        self.pushed += len(samples)

    def _take_audio(self, first_frame: int, num_frames: int) -> np.ndarray:
        """The samples of video frames [first, first+num) — all pushed already (look-ahead ≥ 0)."""
        spf = self._samples_per_frame
        start, end = first_frame * spf, (first_frame + num_frames) * spf
        assert start == self.played, (start, self.played)
        out = self.timeline[: end - start].copy()
        self.timeline = self.timeline[end - start:]
        self.played = end
        return out
