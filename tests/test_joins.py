"""The join meter: Lab colour, steps at joins kept apart from steps inside windows, shots, and its state."""
import numpy as np
import pytest

from engine.eval.readers import load_readers
from engine.generate.avatar import load_portrait, shipped_portraits
from engine.generate.joins import JoinMeter, srgb_to_lab


def test_lab_of_known_colours():
    lab = srgb_to_lab(np.array([[255, 255, 255], [0, 0, 0], [255, 0, 0], [128, 128, 128]]))
    assert lab[0] == pytest.approx([100, 0, 0], abs=1e-3) and lab[1] == pytest.approx([0, 0, 0], abs=1e-6)
    assert lab[2] == pytest.approx([53.24, 80.09, 67.20], abs=0.01) and lab[3][0] == pytest.approx(53.59, abs=0.01)


def film(shift_at_joins: float, rng):
    """Windows of 4 frames of a portrait with a little noise; each window's colour moved by `shift_at_joins`."""
    base = load_portrait(next(iter(shipped_portraits().values()))).astype(np.float64)
    for w in range(6):
        frames = base[None] + rng.normal(0, 2, (4, *base.shape)) + shift_at_joins * (w % 2)
        yield np.clip(frames, 0, 255).astype(np.uint8)


def test_joins_that_jump_show_and_joins_that_do_not_do_not():
    _, embedder = load_readers()
    portrait = load_portrait(next(iter(shipped_portraits().values())))
    ratios = {}
    for shift in (0.0, 12.0):
        meter = JoinMeter(embedder, shots=1)
        meter.start_shot(portrait)
        for i, frames in enumerate(film(shift, np.random.default_rng(0))):
            meter.push(frames, 0, join=i > 0)
        s = meter.summary()
        assert s.joins == 5 and s.pairs_within == 6 * 3
        ratios[shift] = (s.ratio("lab"), s.ratio("rgb"))
        assert s.shots[0]["frames"] == 24 and s.shots[0]["identity_to_portrait"] > 0.9
    assert 0.5 < ratios[0.0][0] < 2 and ratios[12.0][0] > 5 and ratios[12.0][1] > 5


def test_the_meter_state_round_trips_and_cuts_are_not_joins():
    meter = JoinMeter(None, shots=2)
    frames = list(film(12.0, np.random.default_rng(1)))
    meter.start_shot(frames[0][0])
    meter.push(frames[0], 0, join=False)
    meter.push(frames[1], 0, join=True)
    copy = JoinMeter(None, shots=2)
    copy.load_state_dict({k: v.clone() for k, v in meter.state_dict().items()})
    for m in (meter, copy):
        m.push(frames[2], 0, join=True)
        m.start_shot(frames[0][0])  # a cut: the step into shot 1 is counted nowhere
        m.push(frames[3], 1, join=False)
    a, b = meter.summary(), copy.summary()
    assert a == b and a.joins == 2 and a.pairs_within == 4 * 3 and "identity" not in a.at_joins
