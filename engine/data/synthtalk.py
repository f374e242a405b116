"""Reading SynthTalk: the shards `talkstream data synth` writes (mp4 or raw), clip by clip or all at once.

    data = SynthTalk("data/synthtalk-0", split="train")
    clip = data.load(0)            # ClipArrays: frames uint8 [T, S, S, 3], audio float32 16 kHz, truth arrays
    bank = data.bank(size=128)     # every clip of the split stacked, resized, for trainers that sample windows

The split comes from each clip's index line (eval clips hold out voices, sentences and identities), never
from file names.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.errors import DataError

SPLITS = ("train", "eval")


@dataclass
class ClipArrays:
    frames: np.ndarray  # uint8 [T, S, S, 3]
    audio: np.ndarray  # float32 [samples] at 16 kHz
    truth: dict[str, np.ndarray]  # per-frame ground truth (synth.GROUND_TRUTH) and `identity` [25]
    row: dict  # the clip's index line


class SynthTalk:
    """The clips of one split under a folder of shards (several dataset folders may be given)."""

    def __init__(self, folders: str | Path | list[str | Path], split: str = "train"):
        if split not in SPLITS:
            raise DataError(f"split must be one of {SPLITS}, got {split!r}")
        folders = [folders] if isinstance(folders, (str, Path)) else folders
        self.rows: list[tuple[Path, dict]] = []
        for folder in map(Path, folders):
            indexes = sorted(folder.glob("shard-*/index.jsonl"))
            if not indexes:
                raise DataError(f"no SynthTalk shards under {folder}: run `talkstream data synth --out {folder}`")
            for index in indexes:
                for line in index.read_text().splitlines():
                    row = json.loads(line)
                    if row["split"] == split:
                        self.rows.append((index.parent / f"clip-{row['id']:06d}", row))
        if not self.rows:
            raise DataError(f"no {split} clips under {[str(f) for f in folders]}")
        self.split = split

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, i: int) -> ClipArrays:
        stem, row = self.rows[i]
        truth = dict(np.load(stem.with_suffix(".npz")))
        if stem.with_suffix(".frames.npy").exists():
            frames = np.load(stem.with_suffix(".frames.npy"))
            audio = truth.pop("audio")
        else:
            from engine.audio.io import load_audio

            frames = read_frames(stem.with_suffix(".mp4"), row["size"])
            audio = load_audio(stem.with_suffix(".wav"))
        if len(frames) != row["frames"]:
            raise DataError(f"{stem}: {len(frames)} frames, the index says {row['frames']}")
        return ClipArrays(frames, audio.astype(np.float32), truth, row)

    def bank(self, size: int | None = None, device: str | torch.device = "cpu", limit: int | None = None) -> "Bank":
        """Every clip (up to `limit`) in memory as uint8 tensors on `device`, frames resized to `size` if
        given. Clips are loaded one at a time into preallocated tensors, so host memory holds one clip."""
        count = min(len(self), limit or len(self))
        frames = masks = None
        truth: dict[str, torch.Tensor] = {}
        audio, ids, rows = [], [], []
        for i in range(count):
            c = self.load(i)
            f = _resize(torch.from_numpy(c.frames), size)
            m = _resize(torch.from_numpy(np.stack([c.truth["face_mask"], c.truth["mouth_mask"]], -1)), size)
            if frames is None:
                frames = torch.empty((count, *f.shape), dtype=torch.uint8, device=device)
                masks = torch.empty((count, *m.shape), dtype=torch.uint8, device=device)
            elif f.shape != frames.shape[1:]:
                raise DataError(f"a bank stacks clips of one length and size; clip {c.row['id']} is "
                                f"{tuple(f.shape)}, the first was {tuple(frames.shape[1:])}")
            frames[i], masks[i] = f.to(device), m.to(device)
            for k in PER_FRAME:
                truth.setdefault(k, torch.empty((count, len(f)), device=device))[i] = \
                    torch.from_numpy(c.truth[k].astype(np.float32))
            audio.append(c.audio)
            ids.append(c.row["identity_id"])
            rows.append(c.row)
        assert frames is not None and masks is not None
        return Bank(frames, masks, truth, audio, torch.tensor(ids, device=device), rows)


PER_FRAME = ("mouth_open", "mouth_width", "mouth_round", "mouth_open_drawn", "speaking", "yaw", "pitch", "roll",
             "blink", "expression", "viseme")


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


def _resize(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """uint8 [T, S, S, C] -> uint8 [T, size, size, C] (area average)."""
    if size is None or size == x.shape[1]:
        return x
    y = F.interpolate(x.permute(0, 3, 1, 2).float(), size=(size, size), mode="area")
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


@dataclass
class Bank:
    """A split in memory: frames uint8 [N, T, S, S, 3], masks uint8 [N, T, S, S, 2] (face, mouth)."""

    frames: torch.Tensor
    masks: torch.Tensor
    truth: dict[str, torch.Tensor]  # float32 [N, T]
    audio: list[np.ndarray]
    identity_ids: torch.Tensor  # [N]
    rows: list[dict]

    def window_index(self, batch: int, frames: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows as (clip [B], frame indices [B, frames])."""
        n, t = self.frames.shape[:2]
        dev = self.frames.device
        clip = torch.randint(n, (batch,), generator=generator, device=dev)
        start = torch.randint(t - frames + 1, (batch,), generator=generator, device=dev)
        return clip, start[:, None] + torch.arange(frames, device=dev)

    def windows(self, batch: int, frames: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows: video [B, 3, frames, S, S] in [-1, 1] and masks [B, 2, frames, S, S] in [0, 1]."""
        clip, idx = self.window_index(batch, frames, generator)
        video = self.frames[clip[:, None], idx]  # [B, frames, S, S, 3]
        masks = self.masks[clip[:, None], idx]
        return (video.permute(0, 4, 1, 2, 3).float() / 127.5 - 1, masks.permute(0, 4, 1, 2, 3).float() / 255)
