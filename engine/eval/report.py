"""`talkstream eval VIDEO --portrait P --audio A`: read a talking-portrait video and score it.

The video is decoded frame by frame through PyAV (constant memory: a 10-minute video is read in batches),
each frame read by the mouth reader and the identity embedder; the drift meter keeps per-minute sums.
The audio's true opening curve comes, in order of preference, from a SynthTalk ground-truth file
(`--truth clip.npz`, or the npz beside the audio), from a transcript (`--text`: espeak-ng speaks it and
DTW aligns it to the audio, engine.data.realspeech), or else from the loudness envelope of the audio
(an approximation, and the report says so).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engine.audio.io import load_audio
from engine.errors import DataError
from engine.eval.metrics import DriftMeter, LipSync, drift_percent, lip_sync
from engine.eval.nets import IdentityEmbedder, MouthReader
from engine.generate.avatar import fit_square, load_portrait


@dataclass
class Report:
    frames: int
    fps: float
    truth_source: str
    lip_sync: LipSync
    identity: float
    drift: list[dict[str, float]]
    read_open: np.ndarray = field(repr=False)
    true_open: np.ndarray = field(repr=False)
    span_identity: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)  # per 10 s

    def baseline_noise(self) -> str:
        """How the first 10 s (the drift baseline) sit among every 10 s of the video."""
        s = self.span_identity
        if len(s) < 2:
            return ""
        rank = 1 + int((s > s[0]).sum())
        return (f"identity per 10 s: mean {s.mean():.3f}, std {s.std():.3f} ({100 * s.std() / s.mean():.1f}% of the "
                f"mean); the first 10 s read {s[0]:.3f}, {rank} of {len(s)} from the top")

    def lines(self) -> list[str]:
        out = [f"frames: {self.frames} at {self.fps:g} fps ({self.frames / self.fps:.1f} s); true opening from "
               f"{self.truth_source}",
               f"lip sync: r = {self.lip_sync.correlation:.3f} at lag 0; peak r = {self.lip_sync.peak_correlation:.3f} "
               f"at lag {self.lip_sync.lag_ms:+.0f} ms",
               f"identity: mean cosine similarity to the portrait {self.identity:.3f}"]
        for d in self.drift:
            out.append(f"  minute {int(d['start_s'] // 60)}: identity {d['identity_sim']:.3f} "
                       f"({d['identity']:+.2f}%), colour mean {d['colour_mean']:.2f}%, colour std {d['colour_std']:.2f}% "
                       "vs the first 10 s")
        if len(self.span_identity) >= 2:
            out.append(self.baseline_noise())
        return out


def true_opening(audio: np.ndarray, frames: int, fps: float, truth: str | None = None,
                 audio_path: str | None = None, text: str | None = None) -> tuple[np.ndarray, str]:
    """The audio's mouth-opening curve per video frame, and where it came from."""
    sidecar = Path(audio_path).with_suffix(".npz") if audio_path else None
    for path in (truth, sidecar):
        if path and Path(path).exists():
            data = np.load(path)
            if "mouth_open" not in data:
                raise DataError(f"{path} has no 'mouth_open' array")
            return data["mouth_open"][:frames].astype(np.float32), f"ground truth ({path})"
    if text:
        from engine.data.realspeech import align_audio
        from engine.data.visemes import mouth_track

        alignment = align_audio(audio, text)
        track = mouth_track(alignment.phonemes, len(audio) / 16000, int(round(fps)))
        return track.open[:frames], "the transcript aligned to the audio (espeak-ng + DTW)"
    from engine.data.visemes import frame_rms

    rms = frame_rms(audio, 16000, frames, int(round(fps)))
    return np.sqrt(rms / max(rms.max(), 1e-9)).astype(np.float32), "the loudness envelope (approximate)"


def read_video(path: str, mouth: MouthReader, identity: IdentityEmbedder, portrait: np.ndarray,
               batch: int = 64) -> tuple[np.ndarray, np.ndarray, DriftMeter, float]:
    """Decode and read every frame: (read opening [T], identity similarity [T], drift meter, fps)."""
    import av

    size = mouth.cfg.input_size
    ref = identity.embed(torch.from_numpy(fit_square(portrait, size))[None])[0]
    reads, sims = [], []
    try:
        container = av.open(path)
    except (av.FFmpegError, OSError) as e:
        raise DataError(f"cannot open video {path}: {e}") from e
    with container:
        if not container.streams.video:
            raise DataError(f"{path} has no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or 25)
        meter = DriftMeter(fps)
        pending: list[np.ndarray] = []

        def flush() -> None:
            frames = torch.from_numpy(np.stack(pending))
            reads.append(mouth.read(frames)[:, 0].numpy())
            sim = (identity.embed(frames) @ ref).numpy()
            sims.append(sim)
            meter.push(np.stack(pending), sim)
            pending.clear()

        for frame in container.decode(stream):
            pending.append(fit_square(frame.to_ndarray(format="rgb24"), size))
            if len(pending) == batch:
                flush()
        if pending:
            flush()
    if not reads:
        raise DataError(f"{path} has no frames")
    return np.concatenate(reads), np.concatenate(sims), meter, fps


def evaluate_video(video: str, portrait: str, audio: str, mouth: MouthReader, identity: IdentityEmbedder,
                   truth: str | None = None, text: str | None = None) -> Report:
    image = load_portrait(portrait)
    samples = load_audio(audio)
    read, sims, meter, fps = read_video(video, mouth, identity, image)
    true_open, source = true_opening(samples, len(read), fps, truth, audio, text)
    sync = lip_sync(read, true_open, fps)
    base, windows = meter.report()
    drift = [{"start_s": w.start_s, "identity_sim": w.identity, **drift_percent(base, w)} for w in windows]
    spans = np.array([w.identity for w in meter.spans()])
    return Report(len(read), fps, source, sync, float(sims.mean()), drift, read, true_open, spans)


# ----------------------------------------------------------------------------- the picture

def plot_png(report: Report, path: str, width: int = 900, height: int = 420) -> None:
    """Read (blue) against true (orange) mouth opening over time, and below it the identity similarity per
    minute (green bars): drawn with numpy, written as PNG through PyAV."""
    img = np.full((height, width, 3), 255, np.uint8)
    top_h = int(height * 0.62)

    def line(values: np.ndarray, colour: tuple[int, int, int], y0: int, h: int, lo: float, hi: float) -> None:
        n = len(values)
        if n < 2:
            return
        xs = np.linspace(10, width - 10, n)
        ys = y0 + h - 10 - (np.clip(values, lo, hi) - lo) / max(hi - lo, 1e-9) * (h - 20)
        for i in range(n - 1):
            steps = int(max(abs(xs[i + 1] - xs[i]), abs(ys[i + 1] - ys[i]), 1)) + 1
            xx = np.linspace(xs[i], xs[i + 1], steps).round().astype(int)
            yy = np.linspace(ys[i], ys[i + 1], steps).round().astype(int)
            for d in (0, 1):
                img[np.clip(yy + d, 0, height - 1), np.clip(xx, 0, width - 1)] = colour

    hi = float(max(report.true_open.max(), report.read_open.max(), 0.1))
    img[top_h - 10, 10:width - 10] = 200
    line(report.true_open, (240, 140, 30), 0, top_h, 0.0, hi)
    line(report.read_open, (40, 90, 220), 0, top_h, 0.0, hi)
    if report.drift:  # one bar per minute: identity similarity from 0.8 to 1.0
        n = len(report.drift)
        bar_w = max(4, (width - 20) // n - 4)
        for i, d in enumerate(report.drift):
            h = int(np.clip((d["identity_sim"] - 0.8) / 0.2, 0, 1) * (height - top_h - 20))
            x = 10 + i * (bar_w + 4)
            img[height - 10 - h:height - 10, x:x + bar_w] = (60, 170, 90)
    import av

    with av.open(path, "w", format="image2") as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = width, height, "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
