"""Face motion over a clip: head movement (nods, sway, small turns), blinks, expressions, idle motion in
silence, and the mouth curves from speech, gathered in one `FaceState` the renderer draws."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EXPRESSIONS = ("neutral", "happy", "sad", "surprised", "angry")


@dataclass
class FaceState:
    """Per frame (arrays of length T): mouth opening/width/rounding in [0, 1] (width 0.5 neutral), head
    yaw/pitch/roll in radians, translation tx/ty in image fractions, blink (1 closed), expression id and
    strength."""

    mouth_open: np.ndarray
    mouth_width: np.ndarray
    mouth_round: np.ndarray
    yaw: np.ndarray
    pitch: np.ndarray
    roll: np.ndarray
    tx: np.ndarray
    ty: np.ndarray
    blink: np.ndarray
    expression: np.ndarray
    expression_strength: np.ndarray

    def __len__(self) -> int:
        return len(self.yaw)

    def slice(self, start: int, stop: int) -> "FaceState":
        return FaceState(**{k: v[start:stop] for k, v in self.__dict__.items()})


def smooth_noise(rng: np.random.Generator, n: int, fps: int, period_s: float) -> np.ndarray:
    """Zero-mean noise of unit standard deviation, smooth on the scale of `period_s`."""
    sigma = max(1.0, period_s * fps / 2)
    x = np.arange(-int(3 * sigma), int(3 * sigma) + 1)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    out = np.convolve(rng.standard_normal(n + len(x)), kernel / kernel.sum(), mode="same")[len(x) // 2:][:n]
    return (out - out.mean()) / (out.std() + 1e-8)


def blinks(rng: np.random.Generator, n: int, fps: int) -> np.ndarray:
    """Blinks every 2–6 s, each closing over ~60 ms and opening over ~90 ms (about 150 ms in all)."""
    out = np.zeros(n, np.float32)
    t = rng.uniform(0.5, 3.0)
    while t * fps < n:
        close_s, open_s = 0.06, 0.09
        times = np.arange(n) / fps
        shape = np.where(times < t, 1 - (t - times) / close_s, 1 - (times - t) / open_s)
        out = np.maximum(out, np.clip(shape, 0, 1))
        t += rng.uniform(2.0, 6.0)
    return out


def sample_motion(rng: np.random.Generator, num_frames: int, fps: int, speaking: np.ndarray,
                  expression: int) -> dict[str, np.ndarray]:
    """Head pose, blinks and expression for a clip; more head motion while speaking, a gentle breathing sway
    when silent. Returns the FaceState fields other than the mouth."""
    padded = np.pad(speaking.astype(np.float32), fps)
    talk = np.convolve(padded, np.ones(fps) / fps, mode="same")[fps:fps + num_frames]  # ~1 s of activity
    amount = 0.35 + 0.65 * talk
    nod = smooth_noise(rng, num_frames, fps, 0.6) * 0.05 * amount
    breathe = 0.01 * np.sin(2 * np.pi * np.arange(num_frames) / fps / rng.uniform(3.5, 5.0) + rng.uniform(0, 6.3))
    strength = np.full(num_frames, rng.uniform(0.6, 1.0) if expression else 0.0, np.float32)
    return {
        "yaw": (smooth_noise(rng, num_frames, fps, 1.5) * 0.1 * amount).astype(np.float32),
        "pitch": (nod + breathe).astype(np.float32),
        "roll": (smooth_noise(rng, num_frames, fps, 2.0) * 0.04 * amount).astype(np.float32),
        "tx": (smooth_noise(rng, num_frames, fps, 2.5) * 0.012).astype(np.float32),
        "ty": (smooth_noise(rng, num_frames, fps, 2.5) * 0.008 + breathe * 0.5).astype(np.float32),
        "blink": blinks(rng, num_frames, fps),
        "expression": np.full(num_frames, expression, np.int64),
        "expression_strength": strength,
    }


def face_state(mouth_open: np.ndarray, mouth_width: np.ndarray, mouth_round: np.ndarray,
               motion: dict[str, np.ndarray]) -> FaceState:
    return FaceState(mouth_open.astype(np.float32), mouth_width.astype(np.float32),
                     mouth_round.astype(np.float32), **motion)


def caption(expression: int, description: str) -> str:
    mood = {"neutral": "a calm", "happy": "a smiling", "sad": "a sad", "surprised": "a surprised",
            "angry": "an angry"}[EXPRESSIONS[expression]]
    return f"{mood} person {description}".strip()
