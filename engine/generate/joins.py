"""Measuring the joins of a long video: colour shifts and identity jumps where one window (or chunk) of
generation hands over to the next -- the most common complaint about long avatar videos.

For every pair of consecutive frames the meter takes the difference of their mean colour (CIE Lab ΔE*76 of
the frame means, and the largest mean-RGB channel difference) and their identity distance (1 − cosine of the
identity embedder's vectors, engine.eval). Pairs that straddle a join and pairs inside a window are summed
apart, so the report says whether joins move more than frames do anyway: a ratio near 1 means an invisible
join. Per shot it also keeps the mean identity embedding and the similarity to the shot's portrait, for the
cross-shot identity of multi-shot films. Memory is constant: sums, maxima and counts only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from engine.eval.nets import IdentityEmbedder

STATS = ("lab", "rgb", "identity")


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 or [0, 255] float sRGB [..., 3] -> CIE L*a*b* [..., 3] (D65 white; IEC 61966-2-1 transfer)."""
    c = np.asarray(rgb, np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124564, 0.2126729, 0.0193339],
                             [0.3575761, 0.7151522, 0.1191920],
                             [0.1804375, 0.0721750, 0.9503041]])
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    eps = (6 / 29) ** 3
    f = np.where(xyz > eps, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


@dataclass
class JoinSummary:
    """Mean and largest step between consecutive frames, at joins and within windows, per statistic."""

    joins: int
    pairs_within: int
    at_joins: dict[str, tuple[float, float]]  # statistic -> (mean, max)
    within: dict[str, tuple[float, float]]
    shots: list[dict[str, float]]  # per shot: frames, identity to its portrait, to the first shot

    def ratio(self, stat: str) -> float:
        """Mean step at joins / mean step within windows (1: the joins do not show)."""
        return self.at_joins[stat][0] / max(self.within[stat][0], 1e-9)

    def lines(self) -> list[str]:
        names = {"lab": "colour ΔE (Lab)", "rgb": "colour mean RGB", "identity": "identity distance"}
        out = [f"joins: {self.joins} (step between consecutive frames at a join vs inside a window: mean, max)"]
        for s in STATS:
            if s in self.at_joins and s in self.within:
                (jm, jx), (wm, wx) = self.at_joins[s], self.within[s]
                out.append(f"  {names[s]:<18} at joins {jm:.4f} (max {jx:.4f})  within {wm:.4f} (max {wx:.4f})  "
                           f"ratio {self.ratio(s):.2f}")
        for i, shot in enumerate(self.shots):
            line = f"  shot {i}: {int(shot['frames'])} frames"
            if "identity_to_portrait" in shot:
                line += (f", identity to its portrait {shot['identity_to_portrait']:.3f}, to shot 0's frames "
                         f"{shot['identity_to_first_shot']:.3f}")
            out.append(line)
        return out


class JoinMeter:
    """Push the film's frames in order, saying which batches start a new window (a join before their first
    frame) or a new shot (a cut: not a join). `embedder` None measures colour only."""

    def __init__(self, embedder: IdentityEmbedder | None, shots: int):
        self.embedder = embedder
        self.sums = np.zeros((2, len(STATS), 3))  # [join/within, stat, (count, sum, max)]
        self.previous: dict[str, np.ndarray] | None = None
        dim = embedder.cfg.outputs if embedder is not None else 1
        self.shot_frames = np.zeros(shots)
        self.shot_embedding = np.zeros((shots, dim))  # sums of unit embeddings per shot
        self.shot_to_portrait = np.zeros(shots)  # sums of cosines to the shot's portrait
        self.portrait: np.ndarray | None = None

    def start_shot(self, portrait: np.ndarray) -> None:
        """A cut: the next frame is compared with nothing before it; `portrait` uint8 [H, W, 3]."""
        self.previous = None
        if self.embedder is not None:
            self.portrait = self.embedder.embed(torch.from_numpy(np.ascontiguousarray(portrait))[None])[0].numpy()

    def push(self, frames: np.ndarray, shot: int, join: bool) -> None:
        """frames uint8 [n, H, W, 3] of `shot`; `join`: a window (chunk) of generation starts at frames[0]."""
        x = frames.reshape(len(frames), -1, 3).astype(np.float64)
        stats = {"rgb": x.mean(1), "lab": srgb_to_lab(frames).reshape(len(frames), -1, 3).mean(1)}
        if self.embedder is not None:
            e = self.embedder.embed(torch.from_numpy(np.ascontiguousarray(frames))).numpy()
            stats["identity"] = e
            self.shot_embedding[shot] += e.sum(0)
            assert self.portrait is not None, "start_shot(portrait) before the shot's frames"
            self.shot_to_portrait[shot] += float((e @ self.portrait).sum())
        self.shot_frames[shot] += len(frames)
        for k, name in enumerate(STATS):
            if name not in stats:
                continue
            v = stats[name]
            prev = None if self.previous is None else self.previous[name]
            seq = v if prev is None else np.concatenate([prev[None], v])
            if name == "identity":
                steps = 1 - (seq[1:] * seq[:-1]).sum(-1)
            elif name == "lab":
                steps = np.linalg.norm(seq[1:] - seq[:-1], axis=-1)
            else:
                steps = np.abs(seq[1:] - seq[:-1]).max(-1)
            kinds = np.ones(len(steps), int)  # 0: the step across a join, 1: a step inside a window
            if prev is not None and join:
                kinds[0] = 0
            for kind in (0, 1):
                s = steps[kinds == kind]
                if len(s):
                    self.sums[kind, k, 0] += len(s)
                    self.sums[kind, k, 1] += s.sum()
                    self.sums[kind, k, 2] = max(self.sums[kind, k, 2], s.max())
        self.previous = {name: v[-1] for name, v in stats.items()}

    def summary(self) -> JoinSummary:
        def table(kind: int) -> dict[str, tuple[float, float]]:
            return {name: (float(self.sums[kind, k, 1] / self.sums[kind, k, 0]), float(self.sums[kind, k, 2]))
                    for k, name in enumerate(STATS) if self.sums[kind, k, 0]}
        shots = []
        first = self.shot_embedding[0] / max(np.linalg.norm(self.shot_embedding[0]), 1e-12)
        for i, n in enumerate(self.shot_frames):
            shot = {"frames": float(n)}
            if self.embedder is not None and n:
                mean = self.shot_embedding[i] / max(np.linalg.norm(self.shot_embedding[i]), 1e-12)
                # cosines, clipped to [-1, 1]: a unit vector against itself can come out at 1 + 1e-7
                shot["identity_to_portrait"] = float(np.clip(self.shot_to_portrait[i] / n, -1, 1))
                shot["identity_to_first_shot"] = float(np.clip(mean @ first, -1, 1))
            shots.append(shot)
        return JoinSummary(int(self.sums[0, 0, 0]), int(self.sums[1, 0, 0]), table(0), table(1), shots)

    # -- resumable: everything the meter has summed, as tensors

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {"sums": torch.from_numpy(self.sums), "shot_frames": torch.from_numpy(self.shot_frames),
                 "shot_embedding": torch.from_numpy(self.shot_embedding),
                 "shot_to_portrait": torch.from_numpy(self.shot_to_portrait)}
        for name, v in (self.previous or {}).items():
            state[f"previous.{name}"] = torch.from_numpy(np.asarray(v))
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.sums = state["sums"].numpy().copy()
        self.shot_frames = state["shot_frames"].numpy().copy()
        self.shot_embedding = state["shot_embedding"].numpy().copy()
        self.shot_to_portrait = state["shot_to_portrait"].numpy().copy()
        previous = {k.split(".", 1)[1]: v.numpy().copy() for k, v in state.items() if k.startswith("previous.")}
        self.previous = previous or None
