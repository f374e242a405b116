"""Random windows of video frames from a folder of mp4 files, decoded with PyAV, for autoencoder training.

Each item is [3, T, H, W] float in [-1, 1] with T = 1 + 4k (the causal VAE's clip layout). Files are split
by name into train and held-out sets deterministically, so evaluation never sees training clips.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from engine.errors import DataError


def split_of(path: Path, held_out_fraction: float) -> str:
    """'eval' or 'train', from a hash of the file name (stable across machines and runs)."""
    h = int(hashlib.sha1(path.name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "eval" if h < held_out_fraction else "train"


def read_frames(path: Path, size: int) -> np.ndarray:
    """All frames of a video as uint8 [T, size, size, 3] (resized by FFmpeg's scaler through PyAV)."""
    import av

    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24", width=size, height=size) for f in container.decode(video=0)]
    except (av.FFmpegError, OSError) as err:
        raise DataError(f"cannot decode video {path}: {err}") from err
    if not frames:
        raise DataError(f"{path} has no video frames")
    return np.stack(frames)


class VideoClips:
    """Random clips of `frames` frames at `size`×`size` from the mp4 files of one split of a folder."""

    def __init__(self, folder: str | Path, frames: int, size: int, split: str = "train",
                 held_out_fraction: float = 0.1, cache_videos: int = 64):
        files = sorted(Path(folder).rglob("*.mp4"))
        self.files = [f for f in files if split_of(f, held_out_fraction) == split]
        if not self.files:
            raise DataError(f"no {split} mp4 files under {folder} (found {len(files)} in all)")
        if (frames - 1) % 4:
            raise DataError(f"clips have 1 + 4k frames, got {frames}")
        self.frames, self.size, self.cache_videos = frames, size, cache_videos
        self._cache: dict[Path, np.ndarray] = {}

    def _video(self, path: Path) -> np.ndarray:
        if path not in self._cache:
            if len(self._cache) >= self.cache_videos:
                self._cache.pop(next(iter(self._cache)))
            self._cache[path] = read_frames(path, self.size)
        return self._cache[path]

    def sample(self, batch: int, rng: np.random.Generator) -> torch.Tensor:
        """[batch, 3, frames, size, size] in [-1, 1]."""
        clips = []
        while len(clips) < batch:
            video = self._video(self.files[int(rng.integers(len(self.files)))])
            if len(video) < self.frames:
                continue
            start = int(rng.integers(len(video) - self.frames + 1))
            clips.append(video[start:start + self.frames])
        x = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float()  # [B, 3, T, H, W]
        return x / 127.5 - 1
