"""Writing what a generator makes: h264 video with the audio muxed (AAC), through PyAV, as it streams.

    with Mp4Writer("talk.mp4", fps=25, size=128) as out:
        for chunk in gen.flush():
            out.write(chunk.frames.numpy(), chunk.audio)

Frames and audio arrive together (each chunk carries the exact samples that play with its frames), so both
streams are interleaved as they come and memory stays constant. The file appears under its name only when
complete (written beside it, then renamed), so a crash never leaves a truncated mp4 that looks finished.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


class Mp4Writer:
    def __init__(self, path: str | os.PathLike[str], fps: int, size: int, sample_rate: int = 16000,
                 crf: int = 20):
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.container = av.open(str(self.partial), "w", format="mp4")
        self.video = self.container.add_stream("libx264", rate=fps, options={"crf": str(crf), "preset": "veryfast"})
        self.video.width = self.video.height = size
        self.video.pix_fmt = "yuv420p"
        self.audio = self.container.add_stream("aac", rate=sample_rate, layout="mono")
        self.sample_rate = sample_rate
        self.samples_written = 0
        self.frames_written = 0

    def write(self, frames: np.ndarray, audio: np.ndarray | None = None) -> None:
        """frames uint8 [n, H, W, 3]; audio float32 mono samples at `sample_rate` that play with them."""
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames_written
            self.frames_written += 1
            for packet in self.video.encode(frame):
                self.container.mux(packet)
        if audio is not None and len(audio):
            pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)[None]
            frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
            frame.sample_rate = self.sample_rate
            frame.pts = self.samples_written
            frame.time_base = Fraction(1, self.sample_rate)
            self.samples_written += pcm.shape[1]
            for packet in self.audio.encode(frame):
                self.container.mux(packet)

    def close(self) -> Path:
        for stream in (self.video, self.audio):
            for packet in stream.encode(None):
                self.container.mux(packet)
        self.container.close()
        self.partial.replace(self.path)
        return self.path

    def abort(self) -> None:
        self.container.close()
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> "Mp4Writer":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()
