"""`talkstream dub`: the mouth region regenerated for new audio, every pixel outside it kept."""
import av
import numpy as np
import pytest

from clients.cli import main
from engine.errors import ImageError, VideoError
from engine.generate.avatar import FaceBox, fit_square, load_portrait, shipped_portraits
from engine.generate.dub import DubConfig, SourceVideo, dub, latent_mask, measure_outside, pixel_alpha
from engine.generate.long_video import LongVideoConfig
from engine.generate.mp4 import Mp4Writer
from tests.test_render import FAST_METHODS, speech_file, tiny_avatar


def source_video(path, seconds, fps=25, size=(96, 80)):
    """A portrait on a wider canvas, moving a pixel now and then (a face the finder finds)."""
    face = fit_square(load_portrait(next(iter(shipped_portraits().values()))), size[1] - 2)
    frames = []
    for i in range(int(seconds * fps)):
        canvas = np.full((size[1], size[0], 3), (40, 90, 60), np.uint8)
        x = (size[0] - size[1]) // 2 + (i // 7) % 2
        canvas[1:-1, x:x + size[1] - 2] = face
        frames.append(canvas)
    with Mp4Writer(path, fps=fps, size=size) as out:
        out.write(np.stack(frames), np.zeros(len(frames) * 16000 // fps, np.float32))
    return np.stack(frames)


def reencoded(frames, path):
    """The same frames through h264 once more: what the codec alone changes."""
    with Mp4Writer(path, fps=25, size=(frames.shape[2], frames.shape[1])) as out:
        out.write(frames)
    return np.stack(list(SourceVideo(path)))


@pytest.mark.parametrize("video", [FAST_METHODS[0], LongVideoConfig(method="fuse", window_frames=4, overlap_frames=1)],
                         ids=["extend-student", "fuse-student"])
def test_dubbing_changes_the_mouth_box_and_keeps_every_other_pixel(tmp_path, video):
    source_video(tmp_path / "v.mp4", 1.6)
    audio = speech_file(tmp_path / "new.wav", 2.0)  # longer than the video: cut to it
    box = FaceBox(0.3, 0.55, 0.7, 0.95)
    result = dub(tiny_avatar(), tmp_path / "v.mp4", audio, tmp_path / "dub.mp4", DubConfig(video=video), box)
    assert result.frames == 40 and result.outside_identical_before_encoding == 1.0
    src, out = np.stack(list(SourceVideo(tmp_path / "v.mp4"))), np.stack(list(SourceVideo(tmp_path / "dub.mp4")))
    assert out.shape == src.shape == (40, 80, 96, 3)
    inside = pixel_alpha(box, 96, 80, 1)[..., 0] > 0
    codec = np.abs(reencoded(src, tmp_path / "again.mp4").astype(int) - src)[:, ~inside].mean()
    outside = np.abs(out.astype(int) - src)[:, ~inside].mean()
    changed = np.abs(out.astype(int) - src)[:, inside].mean()
    assert outside <= codec * 1.5 + 0.5 and changed > 10 * max(outside, 0.5)  # outside: only the codec's change
    m = measure_outside(tmp_path / "v.mp4", tmp_path / "dub.mp4", box)
    assert m["frames"] == 40 and m["outside_mean_abs"] == pytest.approx(outside / 1, rel=0.05, abs=0.05)
    with av.open(str(tmp_path / "dub.mp4")) as c:
        assert abs(sum(f.samples for f in c.decode(audio=0)) / 16000 - 1.6) < 0.1


def test_masks_cover_the_box_and_nothing_outside_it():
    box = FaceBox(0.25, 0.5, 0.75, 1.0)
    alpha = pixel_alpha(box, 64, 64, 3)
    assert alpha[:32].max() == 0 and alpha[:, :16].max() == 0 and alpha[48, 32, 0] == 1 and 0 < alpha[32, 32, 0] < 1
    mask = latent_mask(box, (0, 0, 64), 64, 64, 8)
    assert mask[0, 0, 0, 4:, 2:6].min() == 1 and mask[0, 0, 0, :3].max() == 0  # the box's cells, grown by one


def test_a_source_at_another_rate_is_resampled_and_bad_sources_are_refused(tmp_path):
    source_video(tmp_path / "v30.mp4", 1.2, fps=30)
    assert SourceVideo(tmp_path / "v30.mp4").frames == 30 and len(list(SourceVideo(tmp_path / "v30.mp4"))) == 30
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    audio = speech_file(tmp_path / "a.wav", 1.0)
    with pytest.raises(VideoError, match="cannot read video"):
        dub(tiny_avatar(), tmp_path / "bad.mp4", audio, tmp_path / "o.mp4")
    blank = np.full((20, 64, 64, 3), (30, 60, 200), np.uint8)
    with Mp4Writer(tmp_path / "blank.mp4", fps=25, size=64) as out:
        out.write(blank)
    with pytest.raises(ImageError, match="no face found in the first frame.*--mask-box"):
        dub(tiny_avatar(), tmp_path / "blank.mp4", audio, tmp_path / "o.mp4")
    assert not (tmp_path / "o.mp4").exists() and not list(tmp_path.glob("o.mp4*"))
    assert main(["dub", "--video", str(tmp_path / "bad.mp4"), "--audio", str(audio), "--out",
                 str(tmp_path / "o.mp4")]) == 2


def test_talkstream_dub_finds_the_face_and_scores_the_result(tmp_path, capsys):
    source_video(tmp_path / "v.mp4", 0.8, size=(128, 128))
    audio = speech_file(tmp_path / "new.wav", 0.8)
    assert main(["dub", "--video", str(tmp_path / "v.mp4"), "--audio", str(audio), "--out", str(tmp_path / "d.mp4"),
                 "--decoder", "tiny", "--steps", "1", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "identical to the source before encoding: 100.00%" in printed and "outside the box mean |d|" in printed
    assert printed.count("lip sync: r =") == 2  # the dubbed video and, for comparison, the source
