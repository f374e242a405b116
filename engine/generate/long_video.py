"""Long video in constant memory: the two methods of `talkstream render` behind one small interface.

    method = build_long_video(LongVideoConfig(method="fuse", model="teacher", steps=24, guidance=2.0),
                              model, sink, text_kv, torch.Generator().manual_seed(0))
    while more audio:
        latents = method.advance(audio_windows[:, :method.next_frames])   # finished latent frames, in order
    latents = method.finish()                                              # whatever it still holds

  * "extend": diffusion-forcing extension (SkyReels-V2), engine.generate.extend -- the student through its
    KV cache, or the teacher over windows with P frames of history; optional re-noised history;
  * "fuse": sliding windows fused in their overlap at every step (SkyReels-Audio), engine.generate.fuse.

Every method holds a fixed number of latent frames (`held_latent_frames`) and can save and restore all of
its state (`state_dict` / `load_state_dict`; the noise generator is saved by the caller), so a render can
stop anywhere and go on with the same latents.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from engine.errors import ConfigError
from engine.generate.extend import StudentExtend, TeacherExtend
from engine.generate.fuse import WindowFuse
from engine.generate.streaming import STUDENT_WINDOW
from engine.generate.windows import MODELS, Known
from engine.models.dit import DiT

METHODS = ("extend", "fuse")
DEFAULT_STEPS = {"student": 4, "teacher": 24}  # the student's distilled steps; the teacher's Euler grid
DEFAULT_GUIDANCE = {"student": 1.0, "teacher": 2.0}  # audio CFG: the student has it distilled in
WINDOW = 8  # latent frames of a teacher's window or of a fused one


@dataclass(frozen=True)
class LongVideoConfig:
    method: str = "extend"  # extend | fuse
    model: str = "student"  # student (causal, few steps) | teacher (bidirectional, many steps)
    steps: int = 4
    shift: float = 5.0  # timestep shift of the σ grid
    guidance: float = 1.0  # audio CFG scale (1: one conditional pass)
    # student extend: its KV window (default STUDENT_WINDOW); teacher extend and fuse: the window's length (WINDOW)
    window_frames: int | None = None
    overlap_frames: int = 2  # fuse: frames two windows share; teacher extend: frames of history
    chunk_frames: int = 1  # the student's block of latent frames
    history_sigma: float = 0.0  # extend: σ the history is re-noised to (0: kept clean)

    def __post_init__(self) -> None:
        if self.window_frames is None:
            kv = (self.method, self.model) == ("extend", "student")
            object.__setattr__(self, "window_frames", STUDENT_WINDOW if kv else WINDOW)
        if self.method not in METHODS:
            raise ConfigError(f"unknown long-video method {self.method!r}; choose one of {list(METHODS)}")
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; choose one of {list(MODELS)}")
        if self.steps < 1 or self.chunk_frames < 1 or self.window_frames < self.chunk_frames:
            raise ConfigError(f"need steps >= 1 and 1 <= chunk_frames <= window_frames, got {self.steps}, "
                              f"{self.chunk_frames}, {self.window_frames}")
        if not 0 <= self.history_sigma < 1:
            raise ConfigError(f"history_sigma must be in [0, 1), got {self.history_sigma}")
        if self.method == "extend" and self.model == "teacher" and not 0 < self.overlap_frames < self.window_frames:
            raise ConfigError(f"teacher extension keeps 0 < history frames (overlap_frames) < window_frames, got "
                              f"{self.overlap_frames} and {self.window_frames}")
        if self.method == "fuse" and not 0 <= 2 * self.overlap_frames <= self.window_frames:
            raise ConfigError(f"fused windows need 0 <= 2 x overlap_frames <= window_frames, got "
                              f"{self.overlap_frames} and {self.window_frames}")

    @staticmethod
    def for_model(model: str, **overrides: object) -> "LongVideoConfig":
        """The model's default steps and guidance, with `overrides`."""
        if model not in MODELS:
            raise ConfigError(f"unknown model {model!r}; choose one of {list(MODELS)}")
        values: dict[str, object] = {"model": model, "steps": DEFAULT_STEPS[model],
                                     "guidance": DEFAULT_GUIDANCE[model]}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return LongVideoConfig(**values)  # type: ignore[arg-type]


class LongVideo(Protocol):
    @property
    def next_frames(self) -> int:
        """Latent frames of audio windows the next `advance` takes."""

    @property
    def held_latent_frames(self) -> int:
        """Latent frames (or their keys and values) held now: bounded, whatever the film's length."""

    def advance(self, windows: torch.Tensor, known: Known | None = None) -> torch.Tensor:
        """windows [1, next_frames, window, mels] -> the latents finished now [1, C, n, h, w], in order."""

    def finish(self) -> torch.Tensor | None:
        """The latents still held at the end of the audio, or None."""

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


def build_long_video(config: LongVideoConfig, model: DiT, sink: torch.Tensor, text_kv: list | None,
                     generator: torch.Generator) -> LongVideo:
    """The method of `config` for the sink latents [1, C, S, h, w] (S frames: the portrait and any context)."""
    c = config
    if c.method == "fuse":
        return WindowFuse(model, sink, text_kv, generator, model_kind=c.model, steps=c.steps, shift=c.shift,
                          guidance=c.guidance, window_frames=c.window_frames, overlap_frames=c.overlap_frames,
                          chunk_frames=c.chunk_frames)
    if c.model == "student":
        return StudentExtend(model, sink, text_kv, generator, steps=c.steps, shift=c.shift, guidance=c.guidance,
                             window_frames=c.window_frames, chunk_frames=c.chunk_frames,
                             history_sigma=c.history_sigma)
    return TeacherExtend(model, sink, text_kv, generator, steps=c.steps, shift=c.shift, guidance=c.guidance,
                         window_frames=c.window_frames, history_frames=c.overlap_frames,
                         history_sigma=c.history_sigma)
