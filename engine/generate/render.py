"""Offline render of any length by diffusion-forcing extension: the causal student generates chunk after
chunk, each attending to the pinned portrait and a rolling window of its own clean history (the KV cache),
so memory stays constant however long the audio is; frames and their audio go straight into the mp4.

    render(avatar, portrait, audio, "film.mp4", RenderConfig(steps=4), progress=print_progress)

The audio is read in one piece here (an hour of 16 kHz float32 is 230 MB; streaming it in is next), pushed
chunk by chunk as it is consumed. The output appears only when complete (Mp4Writer writes beside it).
Not yet here (issue 8): sliding-window fusion with the teacher, re-noised history, resume from checkpoints,
multi-shot scripts, dubbing.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from engine.errors import AudioError, ConfigError
from engine.generate.avatar import EMOTIONS, Avatar
from engine.generate.mp4 import Mp4Writer
from engine.generate.streaming import StreamConfig

Progress = Callable[[float, float, float], None]  # (seconds rendered, seconds in all, wall seconds so far)


@dataclass(frozen=True)
class RenderConfig:
    steps: int = 4
    window_frames: int = 8
    decoder: str = "vae"
    emotion: str = "neutral"
    seed: int = 0
    push_s: float = 2.0  # audio handed to the generator at a time

    def __post_init__(self) -> None:
        if self.emotion not in EMOTIONS:
            raise ConfigError(f"unknown emotion {self.emotion!r}; choose one of {list(EMOTIONS)}")
        if self.push_s <= 0:
            raise ConfigError(f"push_s must be positive, got {self.push_s}")


def print_progress(done_s: float, total_s: float, wall_s: float) -> None:
    """A one-line progress bar with speed and ETA, on stderr."""
    share = done_s / max(total_s, 1e-9)
    speed = done_s / max(wall_s, 1e-9)
    eta = (total_s - done_s) / max(speed, 1e-9)
    bar = "#" * int(30 * share)
    print(f"\r[{bar:<30}] {done_s:7.1f}/{total_s:.1f} s  {speed:.2f}x real time  ETA {eta:6.0f} s",
          end="" if done_s < total_s else "\n", file=sys.stderr, flush=True)


@torch.no_grad()
def render(avatar: Avatar, portrait: np.ndarray, audio: np.ndarray, out: str | Path,
           config: RenderConfig = RenderConfig(), progress: Progress | None = None) -> dict[str, float]:
    """Render `audio` (float32 16 kHz) spoken by `portrait` (uint8 [H, W, 3]) into the mp4 `out`."""
    if audio.ndim != 1 or not len(audio):
        raise AudioError(f"render needs mono audio with samples, got shape {audio.shape}")
    total_s = len(audio) / 16000
    gen = avatar.generator(StreamConfig(steps=config.steps, window_frames=config.window_frames),
                           decoder=config.decoder, emotion=EMOTIONS.index(config.emotion))
    gen.reset(avatar.reference(portrait), seed=config.seed)
    step = int(config.push_s * 16000)
    pushed, frames, t0 = 0, 0, time.perf_counter()
    with Mp4Writer(out, fps=25, size=avatar.resolution) as writer:
        while True:
            if pushed < len(audio) and not gen.ready():
                gen.push_audio(audio[pushed:pushed + step], 16000)
                pushed += step
                continue
            chunk = gen.step(allow_silence=pushed >= len(audio))
            if chunk is None:
                continue
            writer.write(chunk.frames.numpy(), chunk.audio)
            frames += chunk.num_frames
            if progress is not None:
                progress(min(frames / 25, total_s), total_s, time.perf_counter() - t0)
            if pushed >= len(audio) and frames / 25 >= total_s:
                break
    wall = time.perf_counter() - t0
    return {"seconds": frames / 25, "frames": frames, "wall_s": wall, "real_time_factor": frames / 25 / wall}
