"""Speech beyond espeak: DTW alignment (checked where the truth is known), the asterisk prompts aligned to
their transcripts, and flite's phone timings."""
import difflib
import shutil

import numpy as np
import pytest

from engine.data import realspeech
from engine.data.espeak import Espeak, VoiceConfig
from engine.data.realspeech import (Prompt, align, align_audio, dtw, envelope_correlation, flite_synthesize,
                                    prompts, sibilant_onset_errors)
from engine.data.visemes import ARPABET, frame_rms
from engine.errors import DataError


@pytest.fixture(scope="module")
def engine():
    try:
        return Espeak()
    except DataError as err:
        pytest.skip(f"espeak-ng unavailable: {err}")


@pytest.fixture(scope="module")
def asterisk():
    try:
        return {p.name: p for p in prompts()}
    except DataError as err:
        pytest.skip(str(err))


def test_dtw_recovers_a_known_warp():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 3))
    b = np.repeat(a, [1, 2, 3, 1] * 10, axis=0)  # a, with frames held for 1–3 steps
    cost, path = dtw(np.linalg.norm(a[:, None] - b[None], axis=-1))
    assert cost == 0.0 and np.array_equal(path[0], [0, 0]) and np.array_equal(path[-1], [39, len(b) - 1])
    owner = np.repeat(np.arange(40), [1, 2, 3, 1] * 10)
    assert all(owner[j] == i for i, j in path)
    assert np.all(np.diff(path, axis=0) >= 0) and np.all(np.diff(path, axis=0).sum(1) >= 1)


def test_alignment_is_accurate_where_the_truth_is_known(engine):
    """A different espeak voice, rate and pitch stands in for the recording: its own events are the truth."""
    text = "Please enter your password, followed by the pound key."
    truth = engine.synthesize(text, VoiceConfig("en-us", "m3", rate=135, pitch=35))
    result = align_audio(truth.audio_16k, text, engine)
    a, b = [p.name for p in result.phonemes], [p.name for p in truth.phonemes]
    matches = difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_matching_blocks()
    errors = [abs(result.phonemes[m.a + k].start_s - truth.phonemes[m.b + k].start_s)
              for m in matches for k in range(m.size)]
    assert len(errors) > 0.8 * len(b) and np.mean(errors) < 0.015 and result.accepted


def test_transcripts_are_read_as_spoken(tmp_path):
    prompt = Prompt("x", "Press * or # [beep] (quietly) now.", tmp_path / "x.g722")
    assert prompt.speakable == "Press star or pound now."


def test_missing_prompts_say_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(realspeech, "SOUNDS_DIRS", (tmp_path,))
    with pytest.raises(DataError, match="apt-get install asterisk-core-sounds-en-g722 asterisk-core-sound"):
        prompts()


def test_real_prompts_align_to_their_transcripts(engine, asterisk):
    assert len(asterisk) > 500
    sibilants: list[float] = []
    for name in ("agent-pass", "hello-world", "vm-password"):
        result = align(asterisk[name], engine)
        starts = [p.start_s for p in result.phonemes]
        assert starts == sorted(starts) and 0 <= starts[0] and starts[-1] <= result.seconds
        assert result.accepted and result.agreement > 0.85, name
        assert envelope_correlation(result) > 0.3
        sibilants += sibilant_onset_errors(result.phonemes, result.audio)
    found = np.abs(np.array(sibilants))[np.isfinite(sibilants)]
    assert len(found) >= 2 and np.median(found) < 0.04  # aligned /s/ land on the recording's frication
    audio = realspeech.load_prompt(asterisk["agent-pass"])
    wrong = align_audio(audio, asterisk["hello-world"].speakable, engine)
    assert wrong.cost > align(asterisk["agent-pass"], engine).cost + 0.05  # the cost knows the right text


def test_flite_phones_give_mouth_curves():
    if shutil.which("flite") is None:
        pytest.skip("flite is not installed: apt-get install flite")
    u = flite_synthesize("Hello world, the pound key.", "slt")
    starts = [p.start_s for p in u.phonemes]
    assert u.phoneset == "arpabet" and u.sample_rate == 16000 and len(u.audio_16k) == len(u.audio)
    assert starts == sorted(starts) and starts[-1] < u.seconds
    assert all(ARPABET.known(p.name) for p in u.phonemes)
    t = u.mouth(25)
    assert np.corrcoef(t.open, frame_rms(u.audio_16k, 16000, len(t)))[0, 1] > 0.4
    with pytest.raises(DataError, match="flite voice"):
        flite_synthesize("hi", "nobody")
