"""Dubbing: an existing video made to speak new audio, regenerating only the mouth and face region.

    result = dub(avatar, "interview.mp4", "new-take.wav", "dubbed.mp4", DubConfig())

The method, in constant memory:
  1. the video is read with PyAV frame by frame (resampled to 25 fps by nearest time); the region the model
     works on is a square crop around the face, resized to the model's resolution;
  2. the crop is encoded with the causal VAE as it streams (the first frame alone, then groups of 4): the
     source latents;
  3. the long-video method (engine.generate.long_video: extension or fused windows, student or teacher)
     generates latents for the new audio by masked latent inpainting (RePaint's replacement, in
     engine.generate.windows.Known): before every model call, outside the mask the latents are the source's
     re-noised to the current σ; inside, the model's own; the finished latents outside the mask are the
     source's. The portrait (the sink) is the video's first frame;
  4. the decoded crop is resized back and composited into the original frame inside the mask box only
     (feathered inwards), so every pixel outside the box is the source pixel, unchanged; the new audio is
     muxed (cut or padded with silence to the video's length).
The mask box: a face's lower part (mouth, jaw, chin) found in the first frame (engine.generate.avatar), or
given in fractions of the frame. `measure_outside` then reads both videos back and says how much changed
outside the box (only the h264 round trip) and inside it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import numpy as np
import torch

from engine.audio.features import AudioFeatureConfig
from engine.audio.io import count_samples, read_pieces
from engine.errors import ImageError, VideoError
from engine.generate.avatar import EMOTIONS, Avatar, FaceBox, check_face
from engine.generate.long_video import LongVideoConfig, build_long_video
from engine.generate.mp4 import Mp4Writer
from engine.generate.render import AudioFeed, Progress, ShotPlan, _latents_for
from engine.generate.shots import Shot
from engine.generate.windows import Known
from engine.models.dit import emotion_tokens
from engine.models.vae import FeatureCache

AUDIO = AudioFeatureConfig()


@dataclass(frozen=True)
class DubConfig:
    video: LongVideoConfig = LongVideoConfig()
    decoder: str = "vae"
    seed: int = 0
    emotion: str = "neutral"
    feather_px: int = 3  # the composite's edge, faded in over this many pixels inside the box
    push_s: float = 2.0


@dataclass
class DubResult:
    frames: int
    seconds: float
    wall_s: float
    box: FaceBox  # the regenerated region, fractions of the frame
    box_pixels: tuple[int, int, int, int]  # (x0, y0, x1, y1)
    outside_identical_before_encoding: float  # share of outside-box pixels equal to the source's, as composited

    def lines(self) -> list[str]:
        x0, y0, x1, y1 = self.box_pixels
        return [f"{self.frames} frames ({self.seconds:.1f} s) in {self.wall_s:.1f} s; regenerated box x {x0}..{x1}, "
                f"y {y0}..{y1}; pixels outside it identical to the source before encoding: "
                f"{100 * self.outside_identical_before_encoding:.2f}%"]


# ----------------------------------------------------------------------------- the source video

class SourceVideo:
    """A video's frames at 25 fps, decoded as they are needed (frame n: the source frame shown at n/25 s)."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        try:
            with av.open(self.path) as container:
                if not container.streams.video:
                    raise VideoError(f"{self.path} holds no video stream")
                stream = container.streams.video[0]
                self.width, self.height = stream.codec_context.width, stream.codec_context.height
                self.source_fps = float(stream.average_rate or AUDIO.fps)
                self.source_frames = sum(1 for p in container.demux(stream) if p.size)
        except (av.FFmpegError, OSError, ValueError) as e:
            raise VideoError(f"cannot read video {self.path}: {e}") from e
        if not self.source_frames or self.width < 16 or self.height < 16:
            raise VideoError(f"{self.path} has no usable frames ({self.source_frames} frames of "
                             f"{self.width}x{self.height})")
        self.frames = max(1, round(self.source_frames / self.source_fps * AUDIO.fps))

    def __iter__(self) -> Iterator[np.ndarray]:
        """uint8 [H, W, 3] frames at 25 fps, `self.frames` of them."""
        wanted = 0
        try:
            with av.open(self.path) as container:
                for index, frame in enumerate(container.decode(video=0)):
                    image = None
                    while wanted < self.frames and min(int(wanted * self.source_fps / AUDIO.fps + 1e-6),
                                                       self.source_frames - 1) == index:
                        image = frame.to_ndarray(format="rgb24") if image is None else image
                        yield image
                        wanted += 1
        except (av.FFmpegError, ValueError) as e:
            raise VideoError(f"cannot decode video {self.path}: {e}") from e
        if wanted < self.frames:
            raise VideoError(f"{self.path} ended after {wanted} of {self.frames} frames")


def square_crop(width: int, height: int, box: FaceBox) -> tuple[int, int, int]:
    """(x, y, side) of the largest square in the frame centred as near the box's centre as fits."""
    side = min(width, height)
    x0, y0, x1, y1 = box.pixels(width, height)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    return min(max(0, cx - side // 2), width - side), min(max(0, cy - side // 2), height - side), side


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """float [n, 3, s, s] -> [n, 3, size, size] (area down, bilinear up)."""
    if images.shape[-1] == size:
        return images
    mode = "area" if images.shape[-1] > size else "bilinear"
    return torch.nn.functional.interpolate(images, size=(size, size), mode=mode,
                                           **({} if mode == "area" else {"align_corners": False}))


# ----------------------------------------------------------------------------- masks

def latent_mask(box: FaceBox, crop: tuple[int, int, int], width: int, height: int, grid: int) -> torch.Tensor:
    """[1, 1, 1, grid, grid]: 1 on every latent cell the box touches inside the crop, grown by one cell."""
    x, y, side = crop
    x0, y0, x1, y1 = box.pixels(width, height)
    cell = side / grid
    lo_x, hi_x = max(0, math.floor((x0 - x) / cell) - 1), min(grid, math.ceil((x1 - x) / cell) + 1)
    lo_y, hi_y = max(0, math.floor((y0 - y) / cell) - 1), min(grid, math.ceil((y1 - y) / cell) + 1)
    mask = torch.zeros(1, 1, 1, grid, grid)
    mask[..., lo_y:hi_y, lo_x:hi_x] = 1
    return mask


def pixel_alpha(box: FaceBox, width: int, height: int, feather: int) -> np.ndarray:
    """float [H, W, 1]: 0 outside the box, rising to 1 within `feather` pixels inside its edge."""
    x0, y0, x1, y1 = box.pixels(width, height)
    ys, xs = np.arange(height)[:, None], np.arange(width)[None, :]
    inside = np.minimum(np.minimum(xs - x0 + 1, x1 - xs), np.minimum(ys - y0 + 1, y1 - ys)).astype(np.float32)
    return np.clip(inside / max(feather, 1), 0, 1)[..., None]


# ----------------------------------------------------------------------------- the dub

@torch.no_grad()
def dub(avatar: Avatar, video: str | Path, audio: str | Path, out: str | Path, config: DubConfig = DubConfig(),
        mask_box: FaceBox | None = None, progress: Progress | None = None) -> DubResult:
    """Regenerate the mouth region of `video` for `audio`; write `out` (h264 + AAC). Bad input raises an
    EngineError (VideoError, AudioError, ImageError: no face found and no box given) before anything is
    written."""
    source = SourceVideo(video)
    width, height = source.width // 2 * 2, source.height // 2 * 2  # 4:2:0 needs even sides
    frames_in = iter(source)
    first = next(frames_in)[:height, :width]
    if mask_box is None:
        try:
            mask_box = check_face(first, "first frame of the video").lower_face()
        except ImageError as e:
            raise ImageError(f"{e}; or say where to regenerate with a box (--mask-box left,top,right,bottom in "
                             "fractions of the frame)") from e
    box = mask_box
    crop = square_crop(width, height, box)
    n_audio = count_samples(audio)
    plan = ShotPlan(Shot(Path(video), Path(audio)), first, Path(audio), 0, n_audio, source.frames,
                    _latents_for(source.frames))
    res, device = avatar.resolution, avatar.device
    dtype = next(avatar.model.parameters()).dtype
    cx, cy, side = crop

    def to_model(images: list[np.ndarray]) -> torch.Tensor:
        """full frames -> crop video [1, 3, n, res, res] in [-1, 1]."""
        x = torch.from_numpy(np.stack([im[cy:cy + side, cx:cx + side] for im in images])).permute(0, 3, 1, 2).float()
        return (_resize(x, res) / 127.5 - 1).permute(1, 0, 2, 3)[None].to(device, dtype)

    sink = avatar.vae.encode_chunk(to_model([first]), FeatureCache()).to(device, dtype)
    model = avatar.model
    text_kv = None
    if model.cfg.text_dim:
        text_kv = model.encode_text(emotion_tokens(torch.tensor([EMOTIONS.index(config.emotion)]),
                                                   model.cfg.text_dim).to(device))
    generator = torch.Generator(device=device).manual_seed(config.seed)
    method = build_long_video(config.video, model, sink, text_kv, generator)
    mask = latent_mask(box, crop, width, height, sink.shape[-1]).to(device, dtype)
    alpha = pixel_alpha(box, width, height, config.feather_px)
    feed = AudioFeed(plan, max(1, int(config.push_s * AUDIO.sample_rate)))
    decoder = avatar.decoder(config.decoder)
    encoder_cache = FeatureCache()
    pending: list[np.ndarray] = [first]  # source frames read, not yet composited
    pending_first = 0  # video frame index of pending[0]
    encoded = 0  # latent frames of source latents made
    spf = AUDIO.sample_rate // AUDIO.fps
    soundtrack = Soundtrack(Path(audio), min(n_audio, source.frames * spf))
    k = AUDIO.video_frames_per_latent
    done_latents = done_frames = 0
    outside_equal = outside_total = 0
    t0 = time.perf_counter()

    def source_latents(count: int) -> torch.Tensor:
        nonlocal encoded
        parts = []
        for j in range(encoded, encoded + count):
            lo, hi = (0, 1) if j == 0 else (k * j - (k - 1), k * j + 1)
            while pending_first + len(pending) < hi:  # read ahead (the tail repeats the last frame)
                nxt = next(frames_in, None)
                pending.append(pending[-1] if nxt is None else nxt[:height, :width])
            parts.append(avatar.vae.encode_chunk(to_model(pending[lo - pending_first:hi - pending_first]),
                                                 encoder_cache))
        encoded += count
        return torch.cat(parts, 2).to(device, dtype)

    with Mp4Writer(out, fps=AUDIO.fps, size=(width, height)) as writer:
        def emit(latents: torch.Tensor | None) -> None:
            nonlocal done_latents, done_frames, pending_first, outside_equal, outside_total
            if latents is None:
                return
            keep = latents[:, :, :plan.latent_frames - done_latents]
            if not keep.shape[2]:
                return
            decoded = decoder.decode(keep)[:source.frames - done_frames]  # [n, res, res, 3]
            made = _resize(decoded.permute(0, 3, 1, 2).float(), side).permute(0, 2, 3, 1).numpy()
            out_frames = []
            outside = alpha[..., 0] == 0
            for i in range(len(made)):
                original = pending[done_frames + i - pending_first]
                canvas = original.astype(np.float32)
                region = canvas[cy:cy + side, cx:cx + side]
                a = alpha[cy:cy + side, cx:cx + side]
                canvas[cy:cy + side, cx:cx + side] = a * made[i] + (1 - a) * region
                composite = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
                outside_equal += int((composite[outside] == original[outside]).all(-1).sum())
                outside_total += int(outside.sum())
                out_frames.append(composite)
            writer.write(np.stack(out_frames), soundtrack.take(len(made)))
            done_latents += keep.shape[2]
            done_frames += len(made)
            drop = done_frames - pending_first - 1  # keep the newest composited frame (a repeat source)
            if drop > 0:
                del pending[:drop]
                pending_first += drop
            if progress is not None:
                progress(done_frames / AUDIO.fps, source.frames / AUDIO.fps, time.perf_counter() - t0, 0.0)

        fed = 0
        while fed < plan.latent_frames:
            n = method.next_frames
            windows = feed.windows(n).to(device, dtype)
            emit(method.advance(windows, Known(source_latents(n), mask)))
            fed += n
        emit(method.finish())
    return DubResult(done_frames, done_frames / AUDIO.fps, time.perf_counter() - t0, box, box.pixels(width, height),
                     outside_equal / max(outside_total, 1))


class Soundtrack:
    """The new audio handed out frame by frame: the file's samples, then silence (read in pieces)."""

    def __init__(self, path: Path, samples: int):
        self.pieces = read_pieces(path, 1 << 15, 0, samples)
        self.buffer = np.zeros(0, np.float32)

    def take(self, frames: int) -> np.ndarray:
        need = frames * (AUDIO.sample_rate // AUDIO.fps)
        while len(self.buffer) < need:
            piece = next(self.pieces, None)
            if piece is None:
                piece = np.zeros(need - len(self.buffer), np.float32)
            self.buffer = np.concatenate([self.buffer, piece])
        out, self.buffer = self.buffer[:need], self.buffer[need:]
        return out


def measure_outside(source: str | Path, dubbed: str | Path, box: FaceBox, tolerance: int = 8) -> dict[str, float]:
    """Read both videos back (25 fps) and compare them outside the box and inside it: mean absolute difference
    per channel (0..255) and the share of pixels within `tolerance` -- outside, only the h264 round trip
    should show."""
    a, b = iter(SourceVideo(source)), iter(SourceVideo(dubbed))
    sums = np.zeros(4)  # outside |d| sum, outside within-tolerance count, inside |d| sum, frames
    counts = np.zeros(2)
    for x, y in zip(a, b):
        h, w = y.shape[:2]
        x = x[:h, :w].astype(np.int16)
        d = np.abs(x - y.astype(np.int16))
        inside = pixel_alpha(box, w, h, 1)[..., 0] > 0
        sums[0] += d[~inside].sum()
        sums[1] += (d[~inside].max(-1) <= tolerance).sum()
        sums[2] += d[inside].sum()
        sums[3] += 1
        counts += [(~inside).sum(), inside.sum()]
    return {"frames": float(sums[3]), "outside_mean_abs": float(sums[0] / max(3 * counts[0], 1)),
            "outside_within_tolerance": float(sums[1] / max(counts[0], 1)),
            "inside_mean_abs": float(sums[2] / max(3 * counts[1], 1))}
