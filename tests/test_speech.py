"""SynthTalk speech: espeak-ng events, the voice set, sentences and their splits, viseme curves."""
import numpy as np
import pytest

from engine.data.sentences import held_out_sentence, sentence, sentences
from engine.data.visemes import VISEMES, MouthTrack, mouth_track, viseme_of

espeak = pytest.importorskip("engine.data.espeak")
try:
    ENGINE = espeak.Espeak()
except Exception as err:  # DataError: library missing
    pytest.skip(f"espeak-ng unavailable: {err}", allow_module_level=True)


def frame_rms(audio, sr, frames, fps=25):
    spf = sr // fps
    return np.array([np.sqrt(np.mean(audio[f * spf:(f + 1) * spf] ** 2)) if f * spf < len(audio) else 0.0
                     for f in range(frames)])


def test_events_are_ordered_and_inside_the_audio():
    u = ENGINE.synthesize("Hello there. The map is on the table.", espeak.VoiceConfig("en-us", "f3"))
    starts = [p.start_s for p in u.phonemes]
    assert starts == sorted(starts) and 0 <= starts[0] and starts[-1] <= u.seconds
    assert len(u.words) >= 6 and u.sample_rate == 22050 and np.abs(u.audio).max() > 0.1


def test_voice_set_is_varied_and_splits_voices():
    voices = espeak.voice_configs()
    assert len({v.key for v in voices}) >= 20
    held = [v for v in voices if espeak.held_out_voice(v)]
    assert 0 < len(held) < len(voices) // 2
    durations = {round(ENGINE.synthesize("Testing the voices.", v).seconds, 2) for v in voices[:12]}
    assert len(durations) >= 6  # rates really differ


def test_missing_voice_is_a_clear_error():
    with pytest.raises(espeak.DataError, match="no voice"):
        ENGINE.synthesize("hi", espeak.VoiceConfig("xx-nowhere"))


def test_thousands_of_sentences_and_disjoint_splits():
    rng = np.random.default_rng(0)
    assert len({sentence(rng) for _ in range(5000)}) > 4900
    train, held = sentences(rng, 300, "train"), sentences(rng, 30, "eval")
    assert not set(train) & set(held) and all(held_out_sentence(s) for s in held)


def test_viseme_table():
    assert viseme_of("p") == viseme_of("b") == viseme_of("m") == 1
    assert viseme_of("_:") == viseme_of("") == 0
    assert VISEMES[viseme_of("'a")][1] > VISEMES[viseme_of("i:")][1]  # /a/ opens wider than /i/
    assert VISEMES[viseme_of("u:")][3] > 0.8 and VISEMES[viseme_of("i:")][2] > 0.8


def test_mouth_curves_follow_the_speech():
    u = ENGINE.synthesize("Mama made a big apple pie. Then, we all ate it.", espeak.VoiceConfig("en-us", "m1"))
    t = mouth_track(u.phonemes, u.seconds + 0.5)
    rms = frame_rms(u.audio, u.sample_rate, len(t))
    assert np.corrcoef(t.open, rms)[0, 1] > 0.4
    assert t.open[-8:].max() < 0.02 and not t.speaking[-8:].any()  # closed and silent after the end
    bilabial = [p for p in u.phonemes if viseme_of(p.name) == 1]
    closed = [t.open[int((p.start_s - 0.06 + 0.02) * 25)] for p in bilabial]
    assert min(closed) < 0.05


def test_anticipation_moves_the_mouth_before_the_sound():
    u = ENGINE.synthesize("Spa.", espeak.VoiceConfig("en-us", "m1"))
    onset = next(p.start_s for p in u.phonemes if viseme_of(p.name) == 10)
    t = mouth_track(u.phonemes, u.seconds + 0.3, fps=1000)  # 1 ms frames to measure the lead
    first_open = np.argmax(t.open > 0.5) / 1000  # past the /s p/ shapes, on the way to /a/
    assert 0.02 <= onset - first_open <= 0.1


def test_concat_keeps_fields():
    a = MouthTrack(*(np.zeros(3),) * 3, np.zeros(3, int), np.zeros(3, bool), 25)
    assert len(MouthTrack.concat([a, a])) == 6
