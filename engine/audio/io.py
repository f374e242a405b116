"""Audio in: files of any container/codec and live PCM at any rate, to float32 mono 16 kHz, through PyAV
(libswresample) — never resampled by hand."""
from __future__ import annotations

import os
from typing import BinaryIO, Iterator

import numpy as np

from engine.errors import AudioError

TARGET_RATE = 16000


def _resampler(rate: int):
    import av

    return av.AudioResampler(format="flt", layout="mono", rate=rate)


def load_audio(source: str | os.PathLike[str] | BinaryIO, sample_rate: int = TARGET_RATE) -> np.ndarray:
    """Decode the first audio stream of a file to float32 mono in [-1, 1] at `sample_rate`."""
    import av

    try:
        container = av.open(source if not isinstance(source, os.PathLike) else os.fspath(source))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise AudioError(f"cannot read audio from {source!r}: {err}") from err
    with container:
        if not container.streams.audio:
            raise AudioError(f"{source!r} holds no audio stream")
        resampler = _resampler(sample_rate)
        parts: list[np.ndarray] = []
        try:
            for frame in container.decode(audio=0):
                parts.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
            parts.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
        except (av.FFmpegError, ValueError) as err:
            raise AudioError(f"cannot decode audio in {source!r}: {err}") from err
    if not parts or sum(len(p) for p in parts) == 0:
        raise AudioError(f"{source!r} decodes to no samples")
    return np.concatenate(parts).astype(np.float32)


def as_float(pcm: np.ndarray) -> np.ndarray:
    """Mono PCM as float32 in [-1, 1]: int16 is scaled by 1/32768, float32/float64 are taken as they are."""
    if not isinstance(pcm, np.ndarray) or pcm.ndim != 1:
        raise AudioError(f"PCM must be a 1-D numpy array (mono), got {getattr(pcm, 'shape', type(pcm))}")
    if pcm.dtype == np.int16:
        return pcm.astype(np.float32) / 32768.0
    if pcm.dtype in (np.float32, np.float64):
        return pcm.astype(np.float32, copy=False)
    raise AudioError(f"PCM must be int16 or float32, got {pcm.dtype}")


class StreamResampler:
    """Stateful resampler for live audio: push mono chunks of any length at `in_rate`, get 16 kHz float32.
    A few milliseconds stay inside the filter until more audio (or `flush`) pushes them out."""

    def __init__(self, in_rate: int, out_rate: int = TARGET_RATE):
        if not 4000 <= in_rate <= 384000:
            raise AudioError(f"sample rate {in_rate} Hz is outside 4000..384000")
        self.in_rate, self.out_rate = in_rate, out_rate
        self.reset()

    def reset(self) -> None:
        """Drop whatever is inside the filter (barge-in)."""
        self._resampler = None if self.in_rate == self.out_rate else _resampler(self.out_rate)
        self._pts = 0

    def push(self, pcm: np.ndarray) -> np.ndarray:
        x = as_float(pcm)
        if self._resampler is None or len(x) == 0:  # 16 kHz in: no PyAV needed
            return x.copy()
        import av

        frame = av.AudioFrame.from_ndarray(x[None, :], format="flt", layout="mono")
        frame.sample_rate = self.in_rate
        frame.pts = self._pts
        self._pts += len(x)
        return self._collect(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        if self._resampler is None:
            return np.zeros(0, np.float32)
        out = self._collect(self._resampler.resample(None))
        self.reset()
        return out

    @staticmethod
    def _collect(frames) -> np.ndarray:
        parts = [f.to_ndarray().reshape(-1) for f in frames]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


# ----------------------------------------------------------------------------- long files, in pieces

def count_samples(source: str | os.PathLike[str], sample_rate: int = TARGET_RATE) -> int:
    """Decode a whole file once, keeping nothing, and count its samples at `sample_rate`: the length of a
    long film, found in constant memory (and proof, before any rendering, that the file decodes to the end)."""
    return sum(len(piece) for piece in read_pieces(source, 1 << 16, sample_rate=sample_rate))


def read_pieces(source: str | os.PathLike[str], piece_samples: int, start: int = 0, end: int | None = None,
                sample_rate: int = TARGET_RATE) -> Iterator[np.ndarray]:
    """Samples [start, end) of a file as float32 mono pieces of `piece_samples` (the last one shorter), decoded
    and resampled as they are needed: memory is one piece whatever the file's length. The file is always
    decoded from its beginning (samples before `start` are dropped), so a stateful resampler sees the same
    stream and a piece read from the middle equals the same samples read from the start."""
    import av

    if piece_samples < 1 or start < 0 or (end is not None and end < start):
        raise AudioError(f"need piece_samples >= 1 and 0 <= start <= end, got {piece_samples}, {start}, {end}")
    try:
        container = av.open(os.fspath(source))
    except (av.FFmpegError, OSError, ValueError) as err:
        raise AudioError(f"cannot read audio from {os.fspath(source)!r}: {err}") from err
    with container:
        if not container.streams.audio:
            raise AudioError(f"{os.fspath(source)!r} holds no audio stream")
        resampler = _resampler(sample_rate)
        position = 0  # samples decoded so far
        pending: list[np.ndarray] = []
        pending_len = 0

        def decoded() -> Iterator[np.ndarray]:
            try:
                for frame in container.decode(audio=0):
                    yield from (f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
                yield from (f.to_ndarray().reshape(-1) for f in resampler.resample(None))
            except (av.FFmpegError, ValueError) as err:
                raise AudioError(f"cannot decode audio in {os.fspath(source)!r}: {err}") from err

        for samples in decoded():
            lo, hi = position, position + len(samples)
            position = hi
            keep = samples[max(0, start - lo): len(samples) if end is None else max(0, min(len(samples), end - lo))]
            if len(keep):
                pending.append(keep.astype(np.float32))
                pending_len += len(keep)
            while pending_len >= piece_samples:
                joined = np.concatenate(pending)
                yield joined[:piece_samples]
                pending, pending_len = [joined[piece_samples:]], pending_len - piece_samples
            if end is not None and position >= end:
                break
        if pending_len:
            yield np.concatenate(pending)
