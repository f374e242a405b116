"""SynthTalk portraits and motion: identities, the drawn mouth and eyes, masks, pose, determinism, and the
picture against a committed reference."""
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from engine.data.motion import FaceState, blinks, face_state, sample_motion
from engine.data.portrait import IDENTITY_DIM, Identity, render

SIZE = 96
REFERENCE = Path(__file__).parent / "fixtures" / "portrait_reference.npz"


def still(n=2, **over):
    base = dict(mouth_open=np.zeros(n), mouth_width=np.full(n, 0.5), mouth_round=np.zeros(n), yaw=np.zeros(n),
                pitch=np.zeros(n), roll=np.zeros(n), tx=np.zeros(n), ty=np.zeros(n), blink=np.zeros(n),
                expression=np.zeros(n, np.int64), expression_strength=np.zeros(n))
    base.update({k: np.asarray(v, dtype=base[k].dtype) for k, v in over.items()})
    return FaceState(**base)


@pytest.fixture(scope="module")
def person():
    rng = np.random.default_rng(11)
    while True:  # a person without glasses, so the eyes are plainly visible
        ident = Identity.sample(rng)
        if ident.glasses == 0:
            return ident


def test_identity_vector_round_trip_and_count():
    rng = np.random.default_rng(0)
    ids = [Identity.sample(rng) for _ in range(20000)]
    assert all(Identity.from_vector(i.vector()) == i for i in ids[:200])
    assert ids[0].vector().shape == (IDENTITY_DIM,)
    assert Identity.distinct_count() >= 100_000
    discrete = {tuple(np.round(i.vector(), 2)) for i in ids}
    assert len(discrete) == len(ids)


def test_render_shapes_and_masks(person):
    out = render(person, still(3), SIZE)
    assert out.frames.shape == (3, SIZE, SIZE, 3) and out.frames.dtype == np.uint8
    assert out.face_mask.shape == (3, SIZE, SIZE) and out.face_mask.max() == 255
    face_share = (out.face_mask > 127).mean()
    assert 0.1 < face_share < 0.5
    assert ((out.mouth_mask > 127) & (out.face_mask < 127)).sum() == 0  # the mouth lies on the face


def test_open_mouth_shows_a_cavity_and_closed_does_not(person):
    closed = render(person, still(1, mouth_open=[0.0]), SIZE)
    wide = render(person, still(1, mouth_open=[1.0]), SIZE)
    assert closed.mouth_open_px[0] == 0
    assert wide.mouth_open_px[0] >= 4 and wide.mouth_open[0] > 0.05
    assert np.abs(wide.frames.astype(int) - closed.frames.astype(int)).sum() > 0


def test_blink_closes_the_eyes(person):
    size = 192
    open_, shut = render(person, still(1, blink=[0.0]), size), render(person, still(1, blink=[1.0]), size)
    eye_band = slice(int(size * 0.3), int(size * 0.5))
    centre = slice(int(size * 0.33), int(size * 0.67))
    white = lambda f: ((f[eye_band, centre] > 200).all(-1)).sum()  # noqa: E731  sclera pixels
    assert white(open_.frames[0]) > 4 and white(shut.frames[0]) < white(open_.frames[0]) / 3


def test_pose_moves_the_face(person):
    centre = lambda out: np.argwhere(out.face_mask[0] > 127).mean(0)  # noqa: E731
    c0 = centre(render(person, still(1), SIZE))
    right = centre(render(person, still(1, tx=[0.08]), SIZE))
    down = centre(render(person, still(1, ty=[0.08]), SIZE))
    assert right[1] - c0[1] > 3 and down[0] - c0[0] > 3


def test_identities_differ_and_rendering_is_deterministic():
    rng = np.random.default_rng(5)
    a, b = Identity.sample(rng), Identity.sample(rng)
    fa, fb = render(a, still(1), SIZE).frames, render(b, still(1), SIZE).frames
    assert np.abs(fa.astype(int) - fb.astype(int)).mean() > 5
    assert np.array_equal(fa, render(a, still(1), SIZE).frames)


def _iou(a, b):
    a, b = a > 127, b > 127
    union = (a | b).sum((-2, -1))
    return np.where(union > 0, (a & b).sum((-2, -1)) / np.maximum(union, 1), 1.0)


def test_render_matches_the_committed_reference():
    """The reference holds 5 identities (long hair, glasses, earrings, bokeh, a shirt collar) x 3 frames at
    128x128: still and closed; wide open, half blinking and turned; another expression, rolled, eyes shut, the
    mouth a thin slit. It was drawn by the whole-canvas renderer of commit 2279ec3, before parts were drawn in
    boxes and warped in patches, which must not change the picture."""
    ref = np.load(REFERENCE)
    size = ref["frames"].shape[2]
    for i, vector in enumerate(ref["identity"]):
        state = FaceState(**{f.name: ref[f"state_{f.name}"][i] for f in fields(FaceState)})
        out = render(Identity.from_vector(vector), state, size)
        diff = np.abs(out.frames.astype(int) - ref["frames"][i])
        assert diff.mean((1, 2, 3)).max() <= 1.0 and diff.max() <= 2, i  # the same picture, up to rounding
        assert _iou(out.face_mask, ref["face_mask"][i]).min() >= 0.98, i
        assert _iou(out.mouth_mask, ref["mouth_mask"][i]).min() >= 0.98, i
        assert np.abs(out.mouth_open_px - ref["mouth_open_px"][i]).max() <= 1, i


def test_batch_size_does_not_change_the_picture(person):
    rng = np.random.default_rng(3)
    motion = sample_motion(rng, 7, 25, np.ones(7, bool), 1)
    state = face_state(rng.random(7), rng.random(7), rng.random(7), motion)
    one, many = render(person, state, SIZE, batch=1), render(person, state, SIZE, batch=4)
    assert np.abs(one.frames.astype(int) - many.frames.astype(int)).max() <= 1
    assert (one.frames != many.frames).mean() < 1e-3
    assert np.array_equal(one.mouth_open_px, many.mouth_open_px)


def test_motion_blinks_and_speaking_moves_more():
    rng = np.random.default_rng(0)
    b = blinks(rng, 25 * 30, 25)
    starts = np.flatnonzero((b[1:] > 0.5) & (b[:-1] <= 0.5))
    assert 4 <= len(starts) <= 16 and np.diff(starts).min() >= 2 * 25 - 5
    quiet = sample_motion(np.random.default_rng(1), 500, 25, np.zeros(500, bool), 0)
    talking = sample_motion(np.random.default_rng(1), 500, 25, np.ones(500, bool), 0)
    assert np.abs(talking["yaw"]).mean() > 1.5 * np.abs(quiet["yaw"]).mean()
    state = face_state(np.zeros(500), np.zeros(500), np.zeros(500), quiet)
    assert len(state) == 500 and len(state.slice(10, 20)) == 10
