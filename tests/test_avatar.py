"""The Avatar bundle: portraits in (with limits), a session's generator with either decoder out."""
import io
import sys

import av
import numpy as np
import pytest
import torch

from engine.errors import ConfigError, ImageError
from engine.generate.avatar import (
    TINY_FOR_VAE,
    AvatarFiles,
    ImageLimits,
    fit_square,
    load_avatar,
    load_portrait,
    shipped_portraits,
)
from engine.generate.streaming import StreamConfig
from engine.models.tiny_vae import tiny_vae_config
from engine.models.vae import VAE_PRESETS, vae_config


def _png(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="image2pipe") as out:
        stream = out.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = image.shape[1], image.shape[0], "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
            out.mux(packet)
    return buf.getvalue()


def test_shipped_portraits_load():
    portraits = shipped_portraits()
    assert len(portraits) >= 4
    for path in portraits.values():
        image = load_portrait(path)
        assert image.shape == (256, 256, 3) and image.dtype == np.uint8 and image.std() > 10


def test_portrait_round_trips_through_png_bytes():
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    assert np.array_equal(load_portrait(_png(image)), image)


@pytest.mark.parametrize("data, message", [
    (b"", "empty"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "decoded"),
    (b"GIF89a not really", "decoded"),
    (np.random.default_rng(1).bytes(5000), "decoded"),
])
def test_bad_portraits_get_a_clear_error(data, message):
    with pytest.raises(ImageError, match=message):
        load_portrait(data)


def test_portrait_limits_are_checked_before_decoding():
    image = np.zeros((300, 300, 3), np.uint8)
    with pytest.raises(ImageError, match="pixels"):
        load_portrait(_png(image), ImageLimits(max_pixels=200 * 200))
    with pytest.raises(ImageError, match="bytes"):
        load_portrait(_png(image), ImageLimits(max_bytes=100))
    with pytest.raises(ImageError, match="at least"):
        load_portrait(_png(np.zeros((32, 300, 3), np.uint8)))


def test_without_pyav_portraits_decode_through_pillow_alike(monkeypatch):
    pytest.importorskip("PIL")
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    png, big = _png(image), _png(np.zeros((300, 300, 3), np.uint8))
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    assert np.array_equal(load_portrait(png), image)
    assert load_portrait(next(iter(shipped_portraits().values()))).shape == (256, 256, 3)
    with pytest.raises(ImageError, match="pixels"):
        load_portrait(big, ImageLimits(max_pixels=200 * 200))
    for data in (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, np.random.default_rng(1).bytes(5000)):
        with pytest.raises(ImageError, match="decoded"):
            load_portrait(data)


def test_every_vae_has_a_tiny_decoder_of_its_latent_space():
    assert set(TINY_FOR_VAE) == set(VAE_PRESETS)
    for vae, tiny in TINY_FOR_VAE.items():
        v, t = vae_config(vae), tiny_vae_config(tiny)
        assert (v.z_dim, v.spatial_stride, v.temporal_stride) == (t.z_dim, t.spatial_stride, t.temporal_stride)


def test_fit_square_crops_the_centre():
    image = np.zeros((100, 300, 3), np.uint8)
    image[:, 100:200] = 255
    out = fit_square(image, 50)
    assert out.shape == (50, 50, 3) and out.min() == 255


def test_generator_gives_frames_with_either_decoder(tmp_path):
    missing = AvatarFiles(dit=tmp_path / "none", vae=tmp_path / "none", tiny=tmp_path / "none")
    avatar = load_avatar(missing)
    assert not avatar.trained
    reference = avatar.reference(load_portrait(next(iter(shipped_portraits().values()))))
    assert reference.shape == (1, avatar.model.cfg.in_dim, 1, 16, 16)
    for name in ("vae", "tiny"):
        gen = avatar.generator(StreamConfig(steps=1, window_frames=2), decoder=name)
        gen.reset(reference)
        gen.push_audio(np.zeros(8000, np.float32), 16000)
        chunks = list(gen.flush())
        assert [c.frames.shape[0] for c in chunks] == [c.num_frames for c in chunks]
        assert chunks[0].frames.shape[1:] == (avatar.resolution, avatar.resolution, 3) and chunks[0].frames.dtype == torch.uint8
    with pytest.raises(ConfigError, match="unknown decoder"):
        avatar.decoder("fast")


def test_faces_are_found_in_portraits_and_not_in_other_pictures():
    from engine.data.motion import FaceState
    from engine.data.portrait import Identity, render
    from engine.generate.avatar import FaceBox, check_face, find_face

    for path in shipped_portraits().values():
        box = find_face(load_portrait(path))
        assert box is not None and 0.1 < box.left < 0.5 < box.right < 0.95 and box.top < 0.5 < box.bottom
        lower = box.lower_face()
        assert lower.top > box.top and lower.bottom >= box.bottom and lower.pixels(256, 256)[2] <= 256
    rng = np.random.default_rng(3)
    zero = np.zeros(1, np.float32)
    state = FaceState(zero, zero + 0.5, zero, zero, zero, zero, zero, zero, zero, zero, zero)
    found = sum(find_face(render(Identity.sample(rng), state, 128).frames[0]) is not None for _ in range(12))
    assert found >= 11  # 294 of 300 in a longer run (the docstring's figure)
    yy, xx = np.mgrid[0:128, 0:128]
    others = [np.full((128, 128, 3), c, np.uint8) for c in ((0, 0, 255), (255, 255, 255), (200, 160, 120))]
    others += [rng.integers(0, 255, (128, 128, 3), dtype=np.uint8), np.stack([2 * xx, 2 * yy, xx + yy], -1).astype(np.uint8)]
    for image in others:
        assert find_face(image) is None
    with pytest.raises(ImageError, match="no face found in the portrait"):
        check_face(others[0])
    with pytest.raises(ConfigError):
        FaceBox(0.5, 0.2, 0.4, 0.9)


def test_a_preset_other_than_the_shipped_one_is_not_given_the_shipped_weights():
    """The shipped files hold the demo preset: asking for it loads them; naming them for another preset is an
    error that says what to do (bench.backends once timed the shipped demo DiT as `wan-1.3b`)."""
    assert load_avatar(preset="demo").trained
    with pytest.raises(ConfigError, match="holds the 'demo' preset, not 'wan-1.3b'"):
        load_avatar(AvatarFiles(), preset="wan-1.3b")
