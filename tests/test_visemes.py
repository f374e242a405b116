"""Visemes and mouth curves: the table covers what the synthesisers say, the mouth is shut in silences and
on bilabials, it moves ahead of the sound, and its opening follows the loudness of the audio."""
import itertools

import numpy as np
import pytest

from engine.data.espeak import ACCENTS, Espeak, VoiceConfig, voice_configs
from engine.data.sentences import sentences
from engine.data.visemes import (ARPABET, CLOSED, ESPEAK, OPEN, REST, ROUND_U, SPREAD, VISEMES,
                                 CoarticulationConfig, MouthTrack, Phoneme, frame_rms, mouth_track, phone_set,
                                 segments, viseme_of)
from engine.errors import ConfigError, DataError

RICH = ("Sure, the boy's pleasure in choice and joy: a thing usual, fire, poor, our hour, here, there, near, "
        "bird, cure, tour, button, little, lawyer, oil, measure, bath, cloth, north, force, start, nurse.")


@pytest.fixture(scope="module")
def engine():
    try:
        return Espeak()
    except DataError as err:
        pytest.skip(f"espeak-ng unavailable: {err}")


def track(*events: tuple[str, float], duration_s: float, fps: int = 25) -> MouthTrack:
    return mouth_track([Phoneme(n, t) for n, t in events], duration_s, fps)


def test_table_shapes():
    assert len(VISEMES) == 15 and VISEMES[CLOSED].open == 0 and VISEMES[REST].open == 0
    assert viseme_of("p") == viseme_of("b") == viseme_of("m") == viseme_of("m", "arpabet") == CLOSED
    assert viseme_of("_:") == viseme_of("") == viseme_of("pau", "arpabet") == REST
    assert VISEMES[viseme_of("'a")].open > VISEMES[viseme_of("i:")].open  # stress and length marks stripped
    assert viseme_of("u:") == ROUND_U and VISEMES[ROUND_U].round > 0.9 and VISEMES[SPREAD].width > 0.8
    assert ESPEAK.visemes("aI") == (OPEN, SPREAD) and ARPABET.visemes("ay") == (OPEN, SPREAD)  # diphthongs
    with pytest.raises(ConfigError, match="phone set"):
        phone_set("ipa")


def test_the_table_knows_every_phoneme_espeak_says(engine):
    rng = np.random.default_rng(0)
    texts = [RICH] + sentences(rng, 6)
    unknown = {p.name for accent in ACCENTS for text in texts
               for p in engine.synthesize(text, VoiceConfig(accent)).phonemes if not ESPEAK.known(p.name)}
    assert not unknown


def test_mouth_is_shut_in_silence_and_on_bilabials():
    t = track(("_", 0.0), ("h", 0.5), ("a", 0.56), ("p", 0.75), ("a", 0.85), ("_:", 1.1), duration_s=2.0)
    times = (np.arange(len(t)) + 0.5) / 25
    assert len(t) == 50 and t.open.dtype == np.float32
    assert np.all(t.open[times < 0.4] == 0) and np.all(t.open[times > 1.18] == 0)  # rest, closed lips
    assert np.all(t.open[(times > 0.75) & (times < 0.85)] == 0)  # /p/
    assert t.open.max() > 0.5 and np.all((t.open >= 0) & (t.open <= 1) & (t.width >= 0) & (t.width <= 1))
    assert np.array_equal(t.speaking, (times >= 0.5) & (times < 1.1))
    assert set(t.viseme[(times > 0.6) & (times < 0.75)]) == {OPEN}


def test_segments_tile_the_clip_whatever_the_events():
    events = [("_", 0.0), ("n", 0.1), ("i", 0.15), (";", 0.25), ("I", 0.3), ("_:", 0.3), ("aI", 0.5),
              ("zz", 0.7)]
    segs = segments([Phoneme(n, t) for n, t in events], 1.0)
    assert segs[0].start_s == 0 and segs[-1].end_s == 1.0
    assert all(a.end_s == b.start_s for a, b in itertools.pairwise(segs))
    assert [s.viseme for s in segs][-3:] == [OPEN, SPREAD, viseme_of("zz")]  # a diphthong, an unknown name
    t = track(*events, duration_s=1.0, fps=100)
    assert all(np.isfinite(getattr(t, f)).all() for f in ("open", "width", "round"))


def test_short_pauses_hold_the_shape():
    t = track(("a", 0.1), ("_", 0.4), ("a", 0.5), ("_:", 0.8), duration_s=1.0, fps=100)
    assert t.open[40:50].min() > 0.5 and t.speaking[40:50].all()  # 100 ms comma pause: no closing
    t = track(("a", 0.1), ("_", 0.4), ("a", 0.7), ("_:", 0.9), duration_s=1.0, fps=100)
    assert t.open[50:60].max() == 0 and not t.speaking[45:65].any()  # 300 ms: closed


def test_bilabial_closures_reach_zero_in_speech(engine):
    text = "Maybe Bob and Pam bump the big map. Stop, please, mum!"
    u = engine.synthesize(text, VoiceConfig("en-us", "f3"))
    t = u.mouth(25)
    times = (np.arange(len(t)) + 0.5) / 25
    closures = [s for s in segments(u.phonemes, u.seconds) if s.viseme == CLOSED]
    assert len(closures) >= 10
    for s in closures:  # every closure shows on at least one frame, fully shut
        shown = (times >= min(s.start_s, s.end_s - 1 / 25)) & (times <= s.end_s)
        assert t.open[shown].min() == 0.0 and CLOSED in t.viseme[shown]


def test_the_mouth_opens_ahead_of_the_sound(engine):
    """After a pause, the mouth starts to open (opening > 0.01) 40–80 ms before the next sound starts."""
    leads = []
    for voice in voice_configs()[::16]:
        for text in ["Anyway, I think so. Oh, apple pie!", "Sure, we will. Look, four cats. Each day, yes."]:
            u = engine.synthesize(text, voice)
            t = u.mouth(fps=1000)  # 1 ms frames to measure the lead
            segs = segments(u.phonemes, u.seconds)
            for pause, sound in itertools.pairwise(segs):
                if pause.viseme == REST and pause.end_s - pause.start_s >= 0.15 and sound.viseme != CLOSED:
                    onset = int(sound.start_s * 1000)
                    first = onset - np.argmax(t.open[:onset][::-1] <= 0.01)  # last closed instant before it
                    leads.append(onset - first)
    assert len(leads) >= 20 and 40 <= min(leads) and max(leads) <= 80, leads


def test_rounding_anticipates_through_a_consonant(engine):
    u = engine.synthesize("See two.", VoiceConfig("en-us", "m1"))
    t = u.mouth(fps=1000)
    onset = int(next(p.start_s for p in u.phonemes if viseme_of(p.name) == ROUND_U) * 1000)
    start = onset - np.argmax(t.round[:onset][::-1] <= 0.1 * t.round.max())
    assert onset - start >= 40  # the lips round during the /t/ before /u:/


def test_opening_follows_the_loudness(engine):
    rs = []
    for i, voice in enumerate(voice_configs()[::10]):
        u = engine.synthesize(sentences(np.random.default_rng(i), 1)[0], voice)
        t = u.mouth(25)
        rs.append(np.corrcoef(t.open, frame_rms(u.audio_16k, 16000, len(t)))[0, 1])
    u = engine.synthesize("Mama made a big apple pie. Then, we all ate it.", VoiceConfig("en-us", "m1"))
    t = u.mouth(25)
    assert np.corrcoef(t.open, frame_rms(u.audio_16k, 16000, len(t)))[0, 1] > 0.5
    assert min(rs) > 0.3 and np.mean(rs) > 0.45, rs


def test_tracks_validate_and_join():
    a = track(("a", 0.1), duration_s=0.4)
    assert len(MouthTrack.concat([a, a])) == 2 * len(a) == 20
    with pytest.raises(ConfigError, match="one length"):
        MouthTrack(a.open, a.width[:-1], a.round, a.viseme, a.speaking, 25)
    with pytest.raises(ConfigError, match="anticipation_s"):
        CoarticulationConfig(anticipation_s=0.0)
    assert len(track(duration_s=0.0)) == 0 and len(track(duration_s=1.0)) == 25
    assert np.array_equal(frame_rms(np.ones(1280, np.float32), 16000, 3), [1.0, 1.0, 0.0])
