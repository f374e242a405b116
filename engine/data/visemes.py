"""Phonemes → visemes → mouth-shape curves per video frame, with coarticulation.

Each espeak-ng phoneme maps to one of 16 visemes, each a target (opening, width, rounding). The curve is the
piecewise-constant target track, moved `anticipation_s` earlier (lips start to move before the sound: the
articulatory lead measured in speech research is roughly 40–80 ms) and smoothed by a Gaussian (coarticulation);
bilabial closures are then enforced so that /p b m/ really shut the lips, and pauses longer than
`rest_after_s` return the mouth to rest. Values are averaged over each video frame's interval.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.data.espeak import Phoneme

# id: (name, opening 0..1, width 0..1 with 0.5 neutral, rounding 0..1)
VISEMES: list[tuple[str, float, float, float]] = [
    ("rest", 0.0, 0.5, 0.0),
    ("p b m", 0.0, 0.45, 0.1),
    ("f v", 0.12, 0.55, 0.0),
    ("th", 0.22, 0.55, 0.0),
    ("t d n l", 0.28, 0.55, 0.0),
    ("s z", 0.15, 0.7, 0.0),
    ("sh ch j", 0.25, 0.35, 0.6),
    ("k g ng", 0.32, 0.5, 0.0),
    ("r", 0.25, 0.4, 0.5),
    ("w", 0.12, 0.2, 1.0),
    ("open a", 0.95, 0.6, 0.0),
    ("mid e", 0.6, 0.65, 0.0),
    ("close i", 0.3, 0.95, 0.0),
    ("round o", 0.65, 0.3, 0.8),
    ("close u", 0.28, 0.25, 0.95),
    ("h", 0.45, 0.5, 0.0),
]
REST, CLOSED = 0, 1

# espeak-ng English mnemonics (stress marks and length stripped) -> viseme id
_PHONEME_VISEME = {
    "p": 1, "b": 1, "m": 1, "f": 2, "v": 2, "T": 3, "D": 3, "t": 4, "d": 4, "n": 4, "l": 4, "t#": 4, "d#": 4,
    "s": 5, "z": 5, "S": 6, "Z": 6, "tS": 6, "dZ": 6, "k": 7, "g": 7, "N": 7, "x": 7, "r": 8, "r-": 8, "w": 9,
    "j": 12, "h": 15, "?": 0,
    "a": 10, "A": 10, "aI": 10, "aU": 10, "V": 10, "a#": 10, "A@": 10, "aI@": 10, "aU@": 10,
    "e": 11, "E": 11, "eI": 11, "@": 11, "@2": 11, "@5": 11, "3": 11, "e@": 11, "@L": 4, "I2": 12, "I#": 12,
    "i": 12, "I": 12, "i@": 12, "i@3": 12, "IR": 12,
    "o": 13, "O": 13, "oU": 13, "0": 13, "OI": 13, "O@": 13, "o@": 13, "0@": 13, "ju": 14,
    "u": 14, "U": 14, "U@": 14,
}


def viseme_of(phoneme: str) -> int:
    """Viseme id of an espeak mnemonic; pauses ("", "_", "_:") are rest."""
    p = phoneme.replace("'", "").replace(",", "").replace(":", "").replace(";", "")
    if not p or p.startswith("_"):
        return REST
    while p and p not in _PHONEME_VISEME:
        p = p[:-1]  # fall back to the longest known prefix ("aI3" -> "aI")
    return _PHONEME_VISEME.get(p, 11)


@dataclass
class MouthTrack:
    """Per video frame: opening, width, rounding in [0, 1], viseme id and whether speech sounds."""

    open: np.ndarray
    width: np.ndarray
    round: np.ndarray
    viseme: np.ndarray
    speaking: np.ndarray
    fps: int

    def __len__(self) -> int:
        return len(self.open)

    @staticmethod
    def concat(tracks: list["MouthTrack"]) -> "MouthTrack":
        return MouthTrack(*(np.concatenate([getattr(t, f) for t in tracks])
                            for f in ("open", "width", "round", "viseme", "speaking")), fps=tracks[0].fps)


@dataclass(frozen=True)
class CoarticulationConfig:
    anticipation_s: float = 0.06
    smoothing_s: float = 0.025  # Gaussian sigma
    rest_after_s: float = 0.15  # pauses longer than this close the mouth
    resolution_s: float = 0.001


def mouth_track(phonemes: list[Phoneme], duration_s: float, fps: int = 25,
                cfg: CoarticulationConfig = CoarticulationConfig()) -> MouthTrack:
    """Mouth curves for `duration_s` of audio whose phoneme onsets are `phonemes` (sorted by time)."""
    n = int(np.ceil(duration_s / cfg.resolution_s))
    ids = np.zeros(n, np.int64)  # viseme per 1 ms, rest outside speech
    segments = []
    for k, ph in enumerate(phonemes):
        start = ph.start_s
        end = phonemes[k + 1].start_s if k + 1 < len(phonemes) else duration_s
        v = viseme_of(ph.name)
        if v == REST and end - start < cfg.rest_after_s and segments:
            v = segments[-1][2]  # a short pause keeps the previous shape
        segments.append((start, end, v))
    speaking = np.zeros(n, bool)
    for start, end, v in segments:
        a, b = int(start / cfg.resolution_s), int(end / cfg.resolution_s)
        ids[a:b] = v
        speaking[a:b] = v != REST
    lead = int(cfg.anticipation_s / cfg.resolution_s)
    ids_led = np.concatenate([ids[lead:], np.full(lead, ids[-1] if n else REST)])  # shape precedes sound
    table = np.array([v[1:] for v in VISEMES], np.float32)
    targets = table[ids_led]  # [n, 3]
    sigma = cfg.smoothing_s / cfg.resolution_s
    x = np.arange(-int(4 * sigma), int(4 * sigma) + 1)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    pad = len(x) // 2
    smooth = np.stack([np.convolve(np.pad(targets[:, c], pad, mode="edge"), kernel, mode="valid")
                       for c in range(3)], 1)
    closed = ids_led == CLOSED  # bilabials shut the lips for their whole (led) interval
    smooth[closed, 0] = 0.0
    # frame averages: frame f covers [f/fps, (f+1)/fps)
    frames = int(np.ceil(duration_s * fps))
    edges = np.minimum((np.arange(frames + 1) / fps / cfg.resolution_s).astype(int), n)
    per_frame = lambda a: np.array([a[edges[f]:max(edges[f + 1], edges[f] + 1)].mean(0)  # noqa: E731
                                    for f in range(frames)])
    values = per_frame(smooth)
    viseme = np.array([np.bincount(ids_led[edges[f]:max(edges[f + 1], edges[f] + 1)], minlength=len(VISEMES)).argmax()
                       for f in range(frames)])
    return MouthTrack(values[:, 0].astype(np.float32), values[:, 1].astype(np.float32),
                      values[:, 2].astype(np.float32), viseme.astype(np.int64),
                      per_frame(speaking.astype(np.float32)) > 0.5, fps)
