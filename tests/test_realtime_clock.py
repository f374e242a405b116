"""The A/V clock (Playout), the adaptive-steps rule, and a live session that falls behind: it lowers its
steps 4 -> 2 -> 1 before it drops anything."""
import asyncio
import time

import numpy as np
import pytest
import torch

from engine.generate.avatar import load_avatar, load_portrait, shipped_portraits
from realtime.adaptive import AdaptiveSteps
from realtime.clock import SAMPLES_PER_FRAME, TICK_SAMPLES, Playout, Segment
from realtime.config import SessionConfig
from realtime.session import Session, new_generator


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Sessions run on their own threads: one torch thread per op, as `talkstream serve` defaults to (and
    the process-wide setting is put back for the tests that follow)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def segment(n_frames, voiced, start, marks=(), value=0):
    frames = np.full((n_frames, 4, 4, 3), value, np.uint8)
    for i in range(n_frames):
        frames[i, 0, 0, 0] = i  # which frame of the segment
    audio = (np.arange(n_frames * SAMPLES_PER_FRAME) % 30000).astype(np.int16)
    return Segment(frames, audio, voiced, start, list(marks))


def test_each_frame_plays_with_its_own_audio():
    p = Playout()
    p.append(segment(1, False, 0))
    ticks = [p.tick()]  # the idle segment starts before speech arrives (else speech would skip it)
    p.append(segment(4, True, 640, marks=[(640 + 1000, "m")]))
    ticks += [p.tick() for _ in range(11)]
    frames = [(t.audio_pts, f) for t in ticks for f in t.frames]
    # a frame is due on the tick that starts its 640 samples, and the tick carries exactly those samples
    assert [pts for _, (pts, _, _) in frames] == [0, 1, 2, 3, 4]
    assert all(audio_pts == pts * SAMPLES_PER_FRAME for audio_pts, (pts, _, _) in frames)
    assert [t.audio_pts for t in ticks[:10]] == [i * TICK_SAMPLES for i in range(10)]
    events = [e for t in ticks for e in t.events]
    assert events[0] == {"type": "playback_started", "pts": 1}
    assert {"type": "mark", "name": "m"} in events
    # the mark is echoed on the tick that plays its sample, not before
    mark_tick = next(i for i, t in enumerate(ticks) if {"type": "mark", "name": "m"} in t.events)
    assert (mark_tick + 1) * TICK_SAMPLES >= 1640 > mark_tick * TICK_SAMPLES
    # then the audio runs dry: silence, no media pts, and the clock waits
    assert ticks[10].audio_pts is None and not ticks[10].audio.any() and p.underruns == 2


def test_utterance_edges_and_clear():
    p = Playout()
    p.append(segment(4, True, 0))
    p.append(segment(4, False, 2560))
    events = [e for _ in range(10) for e in p.tick().events]
    assert [e["type"] for e in events] == ["playback_started", "playback_finished"]
    assert events[1]["interrupted"] is False and events[1]["position"] == pytest.approx(0.16)
    p.append(segment(4, True, 5120, marks=[(9000, "later")]))
    p.tick()
    cleared = p.clear()
    assert cleared[0]["type"] == "playback_finished" and cleared[0]["interrupted"] is True
    assert {"type": "mark", "name": "later"} in cleared
    assert p.buffered_samples == 0 and p.tick().audio_pts is None
    assert p.clear()[0]["interrupted"] is False  # a clear with nothing playing still answers
    p.append(segment(4, True, 12000))  # speech queued but not started yet is cut too
    assert p.clear()[0]["interrupted"] is True


def test_adaptive_steps_walk_down_then_back_up():
    a = AdaptiveSteps(4)
    assert a.update(0.10, 0.16) == 4  # one slow chunk is noise
    assert a.update(0.16, 0.16) == 4
    assert a.update(0.16, 0.16) == 2  # two in a row: step down
    a.update(0.16, 0.16)
    assert a.update(0.16, 0.16) == 1
    assert a.update(0.5, 0.16) == 1  # nothing lower
    for _ in range(24):
        assert a.update(0.02, 0.16) == 1
    assert a.update(0.02, 0.16) == 2  # 25 fast chunks: back up
    assert AdaptiveSteps(4, enabled=False).update(1.0, 0.16) == 4


class Slowed:
    """The real generator with a fixed delay added to each step: a dummy that only injects slowness."""

    def __init__(self, gen, delay_s):
        self.gen, self.delay_s = gen, delay_s

    def step(self, allow_silence=False):
        time.sleep(self.delay_s)
        return self.gen.step(allow_silence)

    def __getattr__(self, name):
        return getattr(self.gen, name)

    def __setattr__(self, name, value):
        if name in ("gen", "delay_s"):
            object.__setattr__(self, name, value)
        else:
            setattr(self.gen, name, value)


@pytest.mark.slow
@pytest.mark.asyncio
@pytest.mark.timeout(60)
async def test_a_live_session_behind_real_time_lowers_steps_before_dropping():
    avatar = load_avatar(resolution=64)
    reference = avatar.reference(load_portrait(next(iter(shipped_portraits().values()))))
    config = SessionConfig(steps=4, live_backlog_s=0.6)
    gen = Slowed(new_generator(avatar, config), 0.2)  # 0.2 s extra per 0.16 s chunk: behind at any step
    session = Session("slow", gen, reference, config, live=True)
    seen = []
    session.start()
    t0 = time.monotonic()
    for i in range(150):  # 3 s of a live caller, in 20 ms frames at 48 kHz
        await asyncio.sleep(max(0.0, t0 + i * 0.02 - time.monotonic()))
        session.push_audio(np.full(960, 1000 * (i % 7), np.int16), 48000)
        seen.append((session.steps, session.stats.dropped_frames))
    await session.close()
    steps = [s for s, _ in seen]
    assert steps[0] == 4 and 2 in steps and steps[-1] == 1
    first_drop = next(i for i, (_, d) in enumerate(seen) if d > 0)
    assert all(s == 1 for s, _ in seen[first_drop:]), "dropped frames before reaching the lowest step"
    assert session.stats.dropped_frames > 0


def test_speech_skips_idle_segments_waiting_ahead_of_it():
    p = Playout()
    p.append(segment(4, False, 0))
    p.tick()  # the first idle segment is playing: it plays out
    p.append(segment(4, False, 2560, marks=[(3000, "idle-mark")]))
    p.append(segment(4, False, 5120))
    p.append(segment(4, True, 7680))
    assert p.skipped_samples == 2 * 2560 and p.buffered_samples == 2560 - TICK_SAMPLES + 2560
    events = [e for _ in range(16) for e in p.tick().events]
    # speech follows the idle segment that was playing; the skipped segment's mark is not lost
    assert events[0] == {"type": "playback_started", "pts": 4}
    assert {"type": "mark", "name": "idle-mark"} in events


class Failing(Slowed):
    """The real generator failing on its fourth step: a dummy that only injects a fault."""

    def step(self, allow_silence=False):
        self.delay_s += 1
        if self.delay_s > 3:
            raise RuntimeError("injected fault")
        return self.gen.step(allow_silence)


class Events:
    def __init__(self):
        self.events = []

    def video(self, *a):
        pass

    def audio(self, *a):
        pass

    def event(self, e):
        self.events.append(e)


@pytest.mark.asyncio
@pytest.mark.timeout(30)
async def test_a_generation_error_ends_the_session_and_says_why():
    avatar = load_avatar(resolution=64)
    reference = avatar.reference(load_portrait(next(iter(shipped_portraits().values()))))
    config = SessionConfig(steps=1)
    session = Session("faulty", Failing(new_generator(avatar, config), 0), reference, config)
    sink, released = Events(), []
    session.attach(sink)
    session.on_close.append(released.append)
    session.start()
    await asyncio.wait_for(session.done.wait(), 10)
    errors = [e for e in sink.events if e["type"] == "error"]
    assert errors and errors[0]["fatal"] and "injected fault" in errors[0]["message"]
    assert session.close_reason == "generation failed" and released == [session]
    assert not session._thread.is_alive()
