"""espeak-ng through ctypes: events, the 16 kHz audio, the voice set and its split, clips, clear errors."""
import threading

import numpy as np
import pytest

from engine.data import espeak
from engine.data.espeak import Espeak, VoiceConfig, held_out_voice, speak_clip, voice_configs
from engine.data.sentences import held_out_sentence, sentences
from engine.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def engine():
    try:
        return Espeak()
    except DataError as err:
        pytest.skip(f"espeak-ng unavailable: {err}")


def test_a_fresh_handle_speaks_as_a_new_process_does(engine):
    """The shared library's pitch flutter carries over from what it spoke before; a fresh copy's does not."""
    text = "The quick brown fox jumps over the lazy dog."
    for voice in (VoiceConfig("en-us", "m1"), VoiceConfig("en-us", "f3", rate=110)):  # flutter; breath noise (rand)
        with Espeak.fresh() as first:
            a = first.synthesize(text, voice)
            copy = first._copy
        for other in ("Something else, first?", "And another thing."):
            engine.synthesize(other, VoiceConfig("en", "f2"))  # the shared library moves on
        with Espeak.fresh() as second:
            second.synthesize("Something else, first?", VoiceConfig("en", "f3"))
        with Espeak.fresh() as third:
            b = third.synthesize(text, voice)
        assert np.array_equal(a.audio, b.audio) and a.phonemes == b.phonemes, voice.name
    assert copy is not None and not __import__("os").path.exists(copy)  # closed: the private copy is gone
    assert engine.synthesize("Still here.", voice).seconds > 0.3  # the shared library is untouched


def test_events_are_ordered_and_inside_the_audio(engine):
    text = "Hello there, Maria. The map is on the table."
    u = engine.synthesize(text, VoiceConfig("en-us", "f3"))
    starts = [p.start_s for p in u.phonemes]
    assert starts == sorted(starts) and 0 <= starts[0] and starts[-1] <= u.seconds
    words = text.replace(",", "").replace(".", "").split()
    spoken = [w.text for w in u.words]  # espeak joins some function words to the next ("on the")
    assert len(spoken) >= len(words) - 2 and all(w in words for w in spoken) and spoken[:3] == words[:3]
    assert [w.start_s for w in u.words] == sorted(w.start_s for w in u.words)
    assert u.sample_rate == engine.sample_rate and np.abs(u.audio).max() > 0.1
    assert abs(len(u.audio_16k) - u.seconds * 16000) <= 2 and u.audio_16k.dtype == np.float32


def test_16k_audio_keeps_the_event_times(engine):
    """PyAV's resampler is aligned: the 16 kHz audio lines up with the library's own within 2 ms (the lag of best
    correlation against a plain interpolation; the loudest sample alone may jump between near-equal peaks)."""
    u = engine.synthesize("Sad, sorry sister.", VoiceConfig("en-us", "m1"))
    t = np.arange(len(u.audio_16k)) / 16000
    plain = np.interp(t, np.arange(len(u.audio)) / u.sample_rate, u.audio)
    lags = np.arange(-80, 81)
    score = [float(np.dot(np.roll(plain, k), u.audio_16k)) for k in lags]
    assert abs(lags[int(np.argmax(score))]) / 16000 < 0.002


def test_voice_set_is_varied_and_held_out_by_voice(engine):
    voices = voice_configs()
    assert len({v.key for v in voices}) == len(voices) >= 20
    train, held = voice_configs("train"), voice_configs("eval")
    assert set(train) | set(held) == set(voices) and not set(train) & set(held)
    assert all(held_out_voice(v) for v in held) and 0.1 < len(held) / len(voices) < 0.35
    # a held-out timbre and a held-out accent that training never hears
    assert {v.variant for v in held} - {v.variant for v in train}
    assert {v.voice for v in held} - {v.voice for v in train}
    durations = {round(engine.synthesize("Testing the voices.", v).seconds, 2) for v in voices}  # all speak
    assert len(durations) >= 20  # rates really differ


def test_bad_voices_are_clear_errors(engine):
    with pytest.raises(DataError, match="no voice"):
        engine.synthesize("hi", VoiceConfig("xx-nowhere"))
    with pytest.raises(ConfigError, match="rate"):
        VoiceConfig(rate=10)
    with pytest.raises(ConfigError, match="split"):
        voice_configs("test")


def test_missing_library_says_how_to_install(monkeypatch):
    monkeypatch.setattr(espeak.ctypes.util, "find_library", lambda name: None)
    monkeypatch.setitem(__import__("sys").modules, "espeakng_loader", None)  # import fails
    with pytest.raises(DataError, match=r"apt-get install espeak-ng.*pip install espeakng-loader"):
        espeak.find_library()


def test_the_wheel_library_speaks_too():
    loader = pytest.importorskip("espeakng_loader")
    import os

    wheel = Espeak(loader.get_library_path(), os.path.dirname(loader.get_data_path()))
    u = wheel.synthesize("Sure, we will.", VoiceConfig("en-us", "f3"))
    assert len(u.phonemes) > 5 and u.phonemes[-1].start_s <= u.seconds


def test_syntheses_from_threads_take_turns(engine):
    texts = ["One two three.", "Four five six.", "Seven eight nine."]
    serial = [[p.name for p in engine.synthesize(t).phonemes] for t in texts]
    out: dict[int, list[str]] = {}

    def speak(i: int) -> None:
        u = Espeak().synthesize(texts[i])
        assert u.phonemes[-1].start_s <= u.seconds
        out[i] = [p.name for p in u.phonemes]
    threads = [threading.Thread(target=speak, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [out[i] for i in range(3)] == serial


def test_speak_clip_fills_the_clip_with_sentences_of_its_split(engine, monkeypatch):
    drawn: list[str] = []
    monkeypatch.setattr(espeak, "sentences", lambda *args: drawn.extend(sentences(*args)) or drawn[-1:])
    a = speak_clip(np.random.default_rng(3), 6.0, "eval", engine=engine)
    assert len(a.audio) == 96000 and len(a.mouth) == 150 and a.audio.dtype == np.float32
    assert held_out_voice(a.voice) and all(held_out_sentence(s) for s in drawn)
    assert a.text.startswith(drawn[0])
    assert a.mouth.speaking.any() and not a.mouth.speaking[:3].any()  # it starts in silence
    assert a.mouth.open.max() > 0.3 and a.mouth.open[~a.mouth.speaking].min() == 0.0
    b = speak_clip(np.random.default_rng(3), 6.0, "eval", engine=engine)
    assert a.text == b.text and a.voice == b.voice  # the same clip from the same seed (espeak's pitch flutter
    assert np.abs(a.mouth.open - b.mouth.open).mean() < 0.02  # phase carries over, so not to the sample)
    drawn.clear()
    c = speak_clip(np.random.default_rng(4), 3.0, "train", engine=engine)
    assert not held_out_voice(c.voice) and not any(held_out_sentence(s) for s in drawn)
