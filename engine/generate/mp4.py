"""Writing what a generator makes: h264 video with the audio muxed (AAC), through PyAV, as it streams.

    with Mp4Writer("talk.mp4", fps=25, size=128) as out:
        for chunk in gen.flush():
            out.write(chunk.frames.numpy(), chunk.audio)

Frames and audio arrive together (each chunk carries the exact samples that play with its frames), so both
streams are interleaved as they come and memory stays constant. The file appears under its name only when
complete (written beside it, then renamed), so a crash never leaves a truncated mp4 that looks finished.

Resumable renders write the video in segments instead (`VideoSegment`: h264 only, one per checkpoint, each
starting on a key frame) and `assemble` joins them at the end: the segments' packets are copied, not
re-encoded, and the audio is encoded once, in pieces, interleaved with them (AAC segments could not be
joined without a gap of encoder priming at every seam).
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import av
import numpy as np


def _h264(container: av.container.OutputContainer, fps: int, size: int | tuple[int, int], crf: int):
    width, height = (size, size) if isinstance(size, int) else size
    stream = container.add_stream("libx264", rate=fps, options={"crf": str(crf), "preset": "veryfast"})
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    return stream


def _encode_audio(container: av.container.OutputContainer, stream, audio: np.ndarray, first_sample: int,
                  sample_rate: int) -> None:
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)[None]
    frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
    frame.sample_rate = sample_rate
    frame.pts = first_sample
    frame.time_base = Fraction(1, sample_rate)
    for packet in stream.encode(frame):
        container.mux(packet)


class Mp4Writer:
    def __init__(self, path: str | os.PathLike[str], fps: int, size: int | tuple[int, int], sample_rate: int = 16000,
                 crf: int = 20):
        """`size`: a square's side, or (width, height) -- even numbers (4:2:0 chroma)."""
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.container = av.open(str(self.partial), "w", format="mp4")
        self.video = _h264(self.container, fps, size, crf)
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
            _encode_audio(self.container, self.audio, audio, self.samples_written, self.sample_rate)
            self.samples_written += len(audio)

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


# ----------------------------------------------------------------------------- segments of a resumable render

class VideoSegment:
    """Video only, h264, written beside its name and renamed when closed. Opened on the first frame."""

    def __init__(self, path: str | os.PathLike[str], fps: int, size: int | tuple[int, int], crf: int = 20):
        self.path, self.fps, self.size, self.crf = Path(path), fps, size, crf
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.container: av.container.OutputContainer | None = None
        self.frames_written = 0

    def write(self, frames: np.ndarray) -> None:
        """frames uint8 [n, H, W, 3]."""
        if self.container is None:
            self.container = av.open(str(self.partial), "w", format="mp4")
            self.stream = _h264(self.container, self.fps, self.size, self.crf)
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            frame.pts = self.frames_written
            self.frames_written += 1
            for packet in self.stream.encode(frame):
                self.container.mux(packet)

    def close(self) -> Path | None:
        """Finish the file under its name; None if no frame was written."""
        if self.container is None:
            return None
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()
        self.container = None
        self.partial.replace(self.path)
        return self.path

    def abort(self) -> None:
        if self.container is not None:
            try:
                self.container.close()
            except (av.FFmpegError, OSError):
                pass  # closing a file on a full disk may fail again; the partial file is removed anyway
            self.container = None
        self.partial.unlink(missing_ok=True)


def segment_frames(path: str | os.PathLike[str]) -> int:
    with av.open(os.fspath(path)) as container:
        return sum(1 for packet in container.demux(video=0) if packet.size)


def assemble(segments: list[Path], audio: Iterable[np.ndarray], out: str | os.PathLike[str], fps: int = 25,
             sample_rate: int = 16000) -> Path:
    """Join video segments (same codec settings, in order) and float32 mono audio pieces into one mp4 at
    `out`, written beside it and renamed when complete. The audio is cut or padded with silence to the video's
    length; memory is one segment's packets at a time."""
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    pieces: Iterator[np.ndarray] = iter(audio)
    pending = np.zeros(0, np.float32)
    with av.open(os.fspath(segments[0])) as first:
        container = av.open(str(partial), "w", format="mp4")
        video = container.add_stream_from_template(first.streams.video[0])
    try:
        stream = container.add_stream("aac", rate=sample_rate, layout="mono")
        frames, samples = 0, 0
        for path in segments:
            with av.open(os.fspath(path)) as segment:
                source = segment.streams.video[0]
                offset = round(Fraction(frames, fps) / source.time_base)
                for packet in segment.demux(source):
                    if packet.dts is None:
                        continue  # the demuxer's empty flush packet
                    packet.pts += offset
                    packet.dts += offset
                    packet.stream = video
                    container.mux(packet)
                frames += source.frames or segment_frames(path)
            target = frames * sample_rate // fps  # the audio up to the end of this segment's video
            while len(pending) < target - samples:
                piece = next(pieces, None)
                if piece is None:
                    break
                pending = np.concatenate([pending, piece.astype(np.float32)])
            take = pending[:target - samples]
            take = np.concatenate([take, np.zeros(target - samples - len(take), np.float32)])
            pending = pending[target - samples:]
            if len(take):
                _encode_audio(container, stream, take, samples, sample_rate)
                samples += len(take)
        for packet in stream.encode(None):
            container.mux(packet)
        container.close()
    except BaseException:
        container.close()
        partial.unlink(missing_ok=True)
        raise
    partial.replace(out)
    return out
