"""Log-mel audio features, one fixed window per latent frame, computed the same way whole or streaming.

Mel frame m covers samples [m·hop, m·hop + win) — no centre padding, so frames can be computed as audio
arrives. Video frame n shows [n/fps, (n+1)/fps); latent frame 0 is video frame 0 and latent frame j ≥ 1 is
video frames k·j − (k−1) … k·j (k video frames per latent frame, the causal VAE's layout). The window of
latent frame j is `window_mel_frames` mel frames ending `lookahead` frames after the end of its last video
frame; mel frames before time 0 are the silence floor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from engine.errors import AudioError, ConfigError


@dataclass(frozen=True)
class AudioFeatureConfig:
    sample_rate: int = 16000
    win_length: int = 400  # 25 ms
    hop_length: int = 160  # 10 ms
    n_fft: int = 512
    n_mels: int = 80
    fmin: float = 20.0
    fmax: float = 8000.0
    fps: int = 25  # video frames per second
    video_frames_per_latent: int = 4  # the VAE's temporal compression
    lookahead_mel_frames: int = 4  # 40 ms of audio after a latent frame's last video frame
    lookback_mel_frames: int = 4  # 40 ms before its first one
    floor: float = 1e-5  # power floor: silence gives log(floor)

    def __post_init__(self) -> None:
        if self.sample_rate % self.fps or (self.sample_rate // self.fps) % self.hop_length:
            raise ConfigError(f"a video frame ({self.sample_rate}/{self.fps} samples) must be a whole number of "
                              f"hops ({self.hop_length})")
        if self.win_length > self.n_fft:
            raise ConfigError(f"win_length {self.win_length} exceeds n_fft {self.n_fft}")

    @property
    def mel_frames_per_video_frame(self) -> int:
        return self.sample_rate // self.fps // self.hop_length

    @property
    def window_mel_frames(self) -> int:
        own = self.video_frames_per_latent * self.mel_frames_per_video_frame
        return own + self.lookahead_mel_frames + self.lookback_mel_frames

    @property
    def silence(self) -> float:
        return math.log(self.floor)


# ----------------------------------------------------------------------------- log-mel

def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + f / 700.0)  # HTK formula


def mel_filterbank(cfg: AudioFeatureConfig) -> torch.Tensor:
    """Triangular HTK-mel filters [n_mels, n_fft/2 + 1], each with unit peak."""
    bins = np.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    edges = np.linspace(_hz_to_mel(np.array(cfg.fmin)), _hz_to_mel(np.array(cfg.fmax)), cfg.n_mels + 2)
    hz = 700.0 * (10 ** (edges / 2595.0) - 1.0)
    lower, centre, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    rising = (bins[None] - lower) / (centre - lower)
    falling = (upper - bins[None]) / (upper - centre)
    return torch.from_numpy(np.clip(np.minimum(rising, falling), 0, None)).float()


def log_mel(samples: np.ndarray | torch.Tensor, cfg: AudioFeatureConfig = AudioFeatureConfig(),
            first_frame: int = 0) -> torch.Tensor:
    """16 kHz mono samples -> [M, n_mels] log-mel, one frame per hop that fits entirely in the samples.
    `first_frame` only names where the samples start (mel frame index), for streaming callers."""
    del first_frame
    x = torch.as_tensor(np.asarray(samples, dtype=np.float32))
    if len(x) < cfg.win_length:
        return torch.zeros(0, cfg.n_mels)
    frames = x.unfold(0, cfg.win_length, cfg.hop_length)  # [M, win]
    window = torch.hann_window(cfg.win_length, periodic=True)
    spectrum = torch.fft.rfft(frames * window, n=cfg.n_fft)  # [M, n_fft/2+1]
    power = spectrum.real ** 2 + spectrum.imag ** 2
    return torch.log(torch.clamp(power @ mel_filterbank(cfg).T, min=cfg.floor))


def window_end(latent_frame: int, cfg: AudioFeatureConfig) -> int:
    """One past the last mel frame of the window of `latent_frame`."""
    k = cfg.video_frames_per_latent
    end_video = 1 if latent_frame == 0 else k * latent_frame + 1
    return end_video * cfg.mel_frames_per_video_frame + cfg.lookahead_mel_frames


def samples_needed(num_latent_frames: int, cfg: AudioFeatureConfig = AudioFeatureConfig()) -> int:
    """Samples that must exist before the windows of latent frames 0 … num_latent_frames−1 are complete."""
    if num_latent_frames <= 0:
        return 0
    return (window_end(num_latent_frames - 1, cfg) - 1) * cfg.hop_length + cfg.win_length


def _windows(mel: torch.Tensor, mel_offset: int, first_latent: int, count: int,
             cfg: AudioFeatureConfig) -> torch.Tensor:
    """Gather [count, window, n_mels] from mel frames starting at index `mel_offset`; frames outside are silence."""
    w = cfg.window_mel_frames
    ends = torch.tensor([window_end(j, cfg) for j in range(first_latent, first_latent + count)])
    index = ends[:, None] - w + torch.arange(w)[None, :] - mel_offset  # [count, window]
    valid = (index >= 0) & (index < len(mel))
    padded = torch.cat([mel, torch.full((1, cfg.n_mels), cfg.silence)])
    return padded[torch.where(valid, index, len(mel))]


def latent_audio_windows(mel: torch.Tensor, num_latent_frames: int,
                         cfg: AudioFeatureConfig = AudioFeatureConfig()) -> torch.Tensor:
    """Whole-clip windows: mel [M, n_mels] from `log_mel` -> [num_latent_frames, window, n_mels]."""
    return _windows(mel, 0, 0, num_latent_frames, cfg)


# ----------------------------------------------------------------------------- streaming

class StreamingAudioFeatures:
    """Windows of latent frames in order, as audio arrives; equal to the whole-clip computation.

    Keeps only the samples from the start of the next window on, so memory is bounded by the audio that is
    buffered ahead. `truncate(n)` forgets every sample after the first n of the stream (barge-in)."""

    def __init__(self, cfg: AudioFeatureConfig = AudioFeatureConfig()):
        self.cfg = cfg
        self.buffer = np.zeros(0, np.float32)
        self.buffer_start = 0  # stream index of buffer[0]
        self.pushed = 0  # samples pushed so far
        self.next_latent = 0  # latent frame of the next window to pop

    def push(self, samples: np.ndarray) -> None:
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise AudioError(f"push 1-D mono samples, got shape {x.shape}")
        self.buffer = np.concatenate([self.buffer, x])
        self.pushed += len(x)

    def ready_latent_frames(self) -> int:
        n = 0
        while samples_needed(self.next_latent + n + 1, self.cfg) <= self.pushed:
            n += 1
        return n

    def pop(self, count: int) -> torch.Tensor:
        """Windows of the next `count` latent frames, [count, window, n_mels]; their audio must be pushed."""
        cfg = self.cfg
        first = self.next_latent
        if samples_needed(first + count, cfg) > self.pushed:
            raise AudioError(f"windows of latent frames {first}..{first + count - 1} need "
                             f"{samples_needed(first + count, cfg)} samples, only {self.pushed} pushed")
        start_mel = max(0, window_end(first, cfg) - cfg.window_mel_frames)
        end_mel = window_end(first + count - 1, cfg)
        lo = start_mel * cfg.hop_length - self.buffer_start
        hi = (end_mel - 1) * cfg.hop_length + cfg.win_length - self.buffer_start
        mel = log_mel(self.buffer[lo:hi], cfg)  # mel frames start_mel .. end_mel-1
        out = _windows(mel, start_mel, first, count, cfg)
        self.next_latent = first + count
        keep_from = max(0, window_end(self.next_latent, cfg) - cfg.window_mel_frames) * cfg.hop_length
        drop = max(0, keep_from - self.buffer_start)
        self.buffer, self.buffer_start = self.buffer[drop:], self.buffer_start + drop
        return out

    def truncate(self, total_samples: int) -> None:
        """Forget samples after the first `total_samples` of the stream (those not yet played)."""
        keep = max(0, total_samples - self.buffer_start)
        self.buffer = self.buffer[:keep]
        self.pushed = min(self.pushed, self.buffer_start + len(self.buffer))
