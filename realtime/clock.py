"""The A/V clock of a session, with audio as the master.

Generated chunks wait here as segments: n video frames and exactly the n x 640 samples of 16 kHz audio
that play with them. The session's pacer calls `tick()` every 20 ms of wall time (one Opus frame); a tick
plays 320 samples, and a video frame becomes due when the audio reaches its first sample. So video can
never run ahead of or behind its audio: when generation is late the audio runs dry, the tick plays
silence, and the media clock waits (a rebuffer) instead of drifting.

Times: `pts` of a played frame counts frames of the output timeline (time base 1/25); audio `pts` counts
its samples (1/16000). The output timeline is gap-free: frame p plays with samples [640p, 640p + 640).
Engine timeline positions (`engine_start`, marks) may jump forward after a clear; the output never does.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

SAMPLE_RATE = 16000  # the engine's audio timeline
FPS = 25
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
TICK_SAMPLES = SAMPLE_RATE // 50  # 20 ms: WebRTC's Opus frame


@dataclass
class Segment:
    """One generated chunk waiting to play."""

    frames: np.ndarray  # [n, H, W, 3] uint8
    audio: np.ndarray  # [n * 640] int16, the samples that play with the frames
    voiced: bool  # real audio drove it (False: silence, an idle face)
    engine_start: int  # engine timeline sample of audio[0]
    marks: list[tuple[int, str]] = field(default_factory=list)  # (engine sample, name): echo once played
    steps: int = 0
    compute_s: float = 0.0
    input_at: float | None = None  # when the audio of its first frame arrived (monotonic s; None: silence)

    def __post_init__(self) -> None:
        assert len(self.audio) == len(self.frames) * SAMPLES_PER_FRAME, (len(self.audio), len(self.frames))


@dataclass
class Tick:
    """What one 20 ms tick plays."""

    audio: np.ndarray  # [320] int16; zeros on an underrun
    audio_pts: int | None  # output sample of audio[0]; None when this is underrun silence
    frames: list[tuple[int, np.ndarray, bool]]  # (pts, rgb [H, W, 3], voiced) of each frame now due
    events: list[dict]  # playback_started / playback_finished / mark
    started: Segment | None  # the segment whose first frame plays now (for latency and stats)


class Playout:
    """Segments in, ticks out. No clocks of its own: the caller ticks it in real time."""

    def __init__(self) -> None:
        self._queue: deque[Segment] = deque()
        self._current: Segment | None = None
        self._offset = 0  # samples of the current segment already played
        self.played_samples = 0  # output timeline: samples played (underruns excluded)
        self.underruns = 0  # ticks that found no audio
        self.skipped_samples = 0  # idle audio skipped so that speech starts sooner
        self.speaking = False
        self._utterance_start = 0  # output sample where the current utterance began

    @property
    def buffered_samples(self) -> int:
        """Audio waiting to play, i.e. how far generation is ahead of playback."""
        current = len(self._current.audio) - self._offset if self._current is not None else 0
        return current + sum(len(s.audio) for s in self._queue)

    def append(self, segment: Segment) -> None:
        """Queue a segment. Speech skips the idle segments still waiting ahead of it: they were made
        before anyone spoke only to keep the face moving, and playing them would delay the speech by as
        much (their marks move onto the speech segment)."""
        if segment.voiced:
            while self._queue and not self._queue[-1].voiced:
                idle = self._queue.pop()
                self.skipped_samples += len(idle.audio)
                segment.marks = [(segment.engine_start, name) for _, name in idle.marks] + segment.marks
        self._queue.append(segment)

    def tick(self) -> Tick:
        events: list[dict] = []
        started = None
        if self._current is None or self._offset >= len(self._current.audio):
            self._current, self._offset = (self._queue.popleft(), 0) if self._queue else (None, 0)
            if self._current is not None:
                started = self._current
                events += self._utterance_edge(self._current.voiced)
        seg = self._current
        if seg is None:
            self.underruns += 1
            return Tick(np.zeros(TICK_SAMPLES, np.int16), None, [], events, None)
        o = self._offset
        frames = []
        if o % SAMPLES_PER_FRAME == 0:  # this tick starts a frame: it is due now
            index = o // SAMPLES_PER_FRAME
            frames.append((self.played_samples // SAMPLES_PER_FRAME, seg.frames[index], seg.voiced))
        audio = seg.audio[o:o + TICK_SAMPLES]
        tick = Tick(audio, self.played_samples, frames, events, started)
        self._offset += TICK_SAMPLES
        self.played_samples += TICK_SAMPLES
        reached = seg.engine_start + self._offset
        due = [m for m in seg.marks if m[0] <= reached]
        seg.marks = [m for m in seg.marks if m[0] > reached]
        events += [{"type": "mark", "name": name} for _, name in due]
        return tick

    def clear(self) -> list[dict]:
        """Barge-in: drop everything not yet played. Returns the events a client is owed: playback_finished
        (always, `interrupted` says whether speech was cut) and the marks that will now never play."""
        pending = ([self._current] if self._current is not None else []) + list(self._queue)
        cut = self.speaking or any(s.voiced for s in self._queue) or (
            self._current is not None and self._current.voiced and self._offset < len(self._current.audio))
        position = (self.played_samples - self._utterance_start) / SAMPLE_RATE if self.speaking else 0.0
        events: list[dict] = [{"type": "playback_finished", "position": round(position, 3), "interrupted": cut,
                               "pts": self.played_samples // SAMPLES_PER_FRAME}]
        events += [{"type": "mark", "name": name} for s in pending for _, name in s.marks]
        self._queue.clear()
        self._current, self._offset = None, 0
        self.speaking = False
        return events

    def _utterance_edge(self, voiced: bool) -> list[dict]:
        """Speech starts with the first voiced segment and ends with the first silent one after it."""
        if voiced and not self.speaking:
            self.speaking, self._utterance_start = True, self.played_samples
            return [{"type": "playback_started", "pts": self.played_samples // SAMPLES_PER_FRAME}]
        if not voiced and self.speaking:
            self.speaking = False
            position = (self.played_samples - self._utterance_start) / SAMPLE_RATE
            return [{"type": "playback_finished", "position": round(position, 3), "interrupted": False,
                     "pts": self.played_samples // SAMPLES_PER_FRAME}]
        return []
