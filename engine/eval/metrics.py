"""The numbers `talkstream eval` prints, from per-frame readings:

  * lip sync: Pearson correlation between the mouth opening read from the video and the audio's true
    opening curve, and the lag at the peak of their cross-correlation (positive: the video is late);
  * identity: cosine similarity of each frame's identity embedding to the portrait's;
  * drift: identity similarity and colour statistics per minute, relative to the first 10 seconds.

All take plain arrays, so they score ground-truth clips (the ceiling) exactly as they score generated ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.errors import DataError


@dataclass(frozen=True)
class LipSync:
    correlation: float  # Pearson r at lag 0
    lag_ms: float  # lag at the cross-correlation peak; > 0: the mouth moves after the audio
    peak_correlation: float  # r at that lag


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def lip_sync(read: np.ndarray, truth: np.ndarray, fps: float = 25.0, max_lag_s: float = 0.4) -> LipSync:
    """read, truth: opening per frame [T] (equal lengths; the shorter one wins if they differ by a frame)."""
    n = min(len(read), len(truth))
    if n < 8:
        raise DataError(f"lip sync needs at least 8 frames, got {n}")
    read, truth = np.asarray(read[:n], np.float64), np.asarray(truth[:n], np.float64)
    max_lag = min(int(round(max_lag_s * fps)), n // 4)
    best_lag, best = 0, -2.0
    for lag in range(-max_lag, max_lag + 1):  # read[t + lag] against truth[t]
        r = pearson(read[max(lag, 0): n + min(lag, 0)], truth[max(-lag, 0): n - max(lag, 0)])
        if r > best + 1e-12 or (abs(r - best) <= 1e-12 and abs(lag) < abs(best_lag)):
            best_lag, best = lag, r
    return LipSync(pearson(read, truth), 1000.0 * best_lag / fps, best)


def quiet_frames(speaking: np.ndarray, fps: int = 25, margin_s: float = 0.2) -> np.ndarray:
    """Frames at least `margin_s` away from any speaking frame."""
    m = int(round(margin_s * fps))
    padded = np.convolve(speaking.astype(float), np.ones(2 * m + 1), mode="same") > 0
    return ~padded


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rows of a [N, D] against b [D] or [N, D]."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True).clip(1e-12)
    return (a * b).sum(-1)


def roc_auc(same: np.ndarray, different: np.ndarray) -> float:
    """Area under the ROC curve of scores for same-identity pairs against different-identity pairs
    (the Mann-Whitney U statistic, ties counted half)."""
    scores = np.concatenate([same, different])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of ties
        tie = scores == value
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    u = ranks[: len(same)].sum() - len(same) * (len(same) + 1) / 2
    return float(u / (len(same) * len(different)))


@dataclass
class DriftWindow:
    start_s: float
    identity: float  # mean cosine similarity to the portrait
    colour_mean: np.ndarray  # [3] mean RGB in [0, 255]
    colour_std: np.ndarray  # [3]


class DriftMeter:
    """Accumulates per-frame statistics in windows of `window_s` (a minute by default), the first
    `baseline_s` seconds, and every later stretch of that length (one small record each), without keeping frames."""

    def __init__(self, fps: float = 25.0, window_s: float = 60.0, baseline_s: float = 10.0):
        self.fps, self.window_s, self.baseline_s = fps, window_s, baseline_s
        self.frames = 0
        self.windows: list[DriftWindow] = []
        self._sums: dict[str, dict[str, np.ndarray | float]] = {}

    def _add(self, key: str, identity: float, mean: np.ndarray, sq: np.ndarray) -> None:
        s = self._sums.setdefault(key, {"n": 0.0, "id": 0.0, "mean": np.zeros(3), "sq": np.zeros(3)})
        s["n"] += 1
        s["id"] += identity
        s["mean"] = s["mean"] + mean
        s["sq"] = s["sq"] + sq

    def push(self, frames: np.ndarray, identity: np.ndarray) -> None:
        """frames uint8 [N, H, W, 3] and their identity similarities [N]."""
        x = frames.reshape(len(frames), -1, 3).astype(np.float64)
        means, sqs = x.mean(1), (x * x).mean(1)
        for i in range(len(frames)):
            t = self.frames / self.fps
            if t < self.baseline_s:
                self._add("baseline", float(identity[i]), means[i], sqs[i])
            self._add(f"s{int(t // self.baseline_s)}", float(identity[i]), means[i], sqs[i])
            self._add(f"w{int(t // self.window_s)}", float(identity[i]), means[i], sqs[i])
            self.frames += 1

    @staticmethod
    def _window(start_s: float, s: dict) -> DriftWindow:
        n = s["n"]
        mean = s["mean"] / n
        return DriftWindow(start_s, s["id"] / n, mean, np.sqrt(np.maximum(s["sq"] / n - mean ** 2, 0)))

    def report(self) -> tuple[DriftWindow, list[DriftWindow]]:
        """(the first `baseline_s` seconds, one window per `window_s`)."""
        if "baseline" not in self._sums:
            raise DataError("no frames were measured")
        base = self._window(0.0, self._sums["baseline"])
        keys = sorted((k for k in self._sums if k.startswith("w")), key=lambda k: int(k[1:]))
        return base, [self._window(int(k[1:]) * self.window_s, self._sums[k]) for k in keys]

    def spans(self) -> list[DriftWindow]:
        """Every consecutive stretch as long as the baseline (10 s): how far such a window moves on its own
        shows how much of a drift figure is the baseline's own noise (head motion, what is being said)."""
        keys = sorted((k for k in self._sums if k.startswith("s")), key=lambda k: int(k[1:]))
        return [self._window(int(k[1:]) * self.baseline_s, self._sums[k]) for k in keys]


def drift_percent(base: DriftWindow, window: DriftWindow) -> dict[str, float]:
    """Relative change (%) of each statistic from the baseline: identity similarity, colour mean (largest
    channel shift, relative to the mean brightness) and colour std."""
    return {
        "identity": 100.0 * (window.identity - base.identity) / max(abs(base.identity), 1e-6),
        "colour_mean": 100.0 * float(np.abs(window.colour_mean - base.colour_mean).max()) / max(base.colour_mean.mean(), 1e-6),
        "colour_std": 100.0 * float(np.abs(window.colour_std - base.colour_std).max()) / max(base.colour_std.mean(), 1e-6),
    }
