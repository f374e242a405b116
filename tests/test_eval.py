"""The metrics of `talkstream eval` on known curves, and the readers' ceiling and floor on SynthTalk clips."""
import json

import av
import numpy as np
import pytest
import torch

from engine.errors import DataError
from engine.eval.metrics import DriftMeter, drift_percent, lip_sync, roc_auc
from engine.eval.nets import IdentityEmbedder, MouthReader, margin_loss, reader_config
from engine.eval.readers import IDENTITY, MOUTH_READER, load_readers
from engine.eval.report import Report


def test_lip_sync_finds_the_lag():
    rng = np.random.default_rng(0)
    truth = np.convolve(rng.random(300), np.ones(5) / 5, "same")
    late = np.roll(truth, 2)  # the mouth moves two frames (80 ms) after the audio
    sync = lip_sync(late[5:-5], truth[5:-5])
    assert sync.lag_ms == 80.0 and sync.peak_correlation > 0.99 > sync.correlation
    same = lip_sync(truth, truth)
    assert same.lag_ms == 0 and same.correlation == pytest.approx(1.0)
    assert abs(lip_sync(rng.random(300), truth).correlation) < 0.2
    with pytest.raises(DataError):
        lip_sync(truth[:4], truth[:4])


def test_roc_auc():
    assert roc_auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert roc_auc(np.array([0.1]), np.array([0.9])) == 0.0
    assert roc_auc(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.5


def test_drift_meter_per_minute_in_constant_memory():
    meter = DriftMeter(fps=25, window_s=4, baseline_s=2)
    for i in range(10):  # 10 pushes of 25 frames: 10 s, colour rising 1 level a second
        meter.push(np.full((25, 8, 8, 3), 100 + i, np.uint8), np.full(25, 0.9))
    base, windows = meter.report()
    assert [w.start_s for w in windows] == [0, 4, 8]
    assert base.colour_mean[0] == pytest.approx(100.5)
    assert drift_percent(base, windows[-1])["colour_mean"] == pytest.approx(100 * 8.0 / 100.5)
    assert drift_percent(base, windows[0])["identity"] == pytest.approx(0.0)


def test_drift_meter_spans_show_the_baselines_own_noise():
    """Every stretch as long as the baseline is kept, so a report can say where the first one sits among them."""
    meter = DriftMeter(fps=25, window_s=4, baseline_s=2)
    for i in range(10):  # identity 0.95 in the first 2 s, then 0.85 / 0.90 alternating per 2 s
        meter.push(np.full((25, 8, 8, 3), 100, np.uint8), np.full(25, 0.95 if i < 2 else (0.85 if i % 4 < 2 else 0.9)))
    spans = meter.spans()
    assert [w.start_s for w in spans] == [0, 2, 4, 6, 8]
    assert [round(w.identity, 3) for w in spans] == [0.95, 0.9, 0.85, 0.9, 0.85]
    report = Report(250, 25.0, "test", None, 0.9, [], np.zeros(250), np.zeros(250),
                    np.array([w.identity for w in spans]))
    assert "the first 10 s read 0.950, 1 of 5 from the top" in report.baseline_noise()


def test_margin_loss_prefers_separated_identities():
    a = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    negatives = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    assert margin_loss(a, a, negatives) < margin_loss(a, a.roll(1, 0), negatives)


def test_readers_shapes():
    frames = torch.randint(0, 256, (3, 200, 200, 3), dtype=torch.uint8)
    assert MouthReader(reader_config("mouth")).read(frames).shape == (3, 3)
    emb = IdentityEmbedder(reader_config("identity")).embed(frames)
    assert emb.shape == (3, 128) and torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)


@pytest.mark.skipif(not (MOUTH_READER.exists() and IDENTITY.exists()), reason="no shipped readers yet")
def test_shipped_readers_ceiling_and_floor(tmp_path):
    """On held-out SynthTalk clips written as mp4: the true curve gives r >= 0.9 at lag 0 +- 1 frame, another
    clip's curve gives r near 0; the portrait's identity is closer than another clip's."""
    from engine.data.synth import synthesize_dataset
    from engine.data.synthtalk import SynthTalk
    from engine.eval.report import evaluate_video, plot_png
    from engine.data.docs import write_png

    synthesize_dataset(tmp_path, 2, 4.0, 256, seed=11, eval_fraction=1.0)
    data = SynthTalk(tmp_path, "eval")
    mouth, identity = load_readers()
    stems = [stem for stem, _ in data.rows]
    clips = [data.load(i) for i in range(2)]
    write_png(tmp_path / "portrait.png", clips[0].frames[0])
    write_png(tmp_path / "other.png", clips[1].frames[0])
    video, audio = str(stems[0].with_suffix(".mp4")), str(stems[0].with_suffix(".wav"))
    own = evaluate_video(video, str(tmp_path / "portrait.png"), audio, mouth, identity)
    assert own.truth_source.startswith("ground truth")
    assert own.lip_sync.correlation >= 0.9 and abs(own.lip_sync.lag_ms) <= 40
    plot_png(own, str(tmp_path / "plot.png"))
    with av.open(str(tmp_path / "plot.png")) as picture:
        assert next(picture.decode(video=0)).width == 900
    wrong = evaluate_video(video, str(tmp_path / "portrait.png"), audio, mouth, identity,
                           truth=str(stems[1].with_suffix(".npz")))
    assert abs(wrong.lip_sync.correlation) < 0.5
    other = evaluate_video(video, str(tmp_path / "other.png"), audio, mouth, identity)
    assert own.identity > other.identity + 0.2


@pytest.mark.skipif(not (MOUTH_READER.exists() and IDENTITY.exists()), reason="no shipped readers yet")
def test_heldout_rows_include_the_student_per_decoder(tmp_path):
    """engine.eval.heldout on one held-out clip: the ceiling and floor rows, and the student's row once per
    decoder asked for, with and without the true history."""
    from engine.data.synth import synthesize_dataset
    from engine.eval.heldout import Readers, evaluate
    from engine.generate.avatar import AvatarFiles

    synthesize_dataset(tmp_path, 2, 2.0, 128, seed=11, eval_fraction=1.0)
    scores = evaluate(str(tmp_path), AvatarFiles(), Readers(*load_readers()), clips=1, steps=(1,),
                      decoders=("vae", "tiny"), true_history=True, identity_halves=True)
    assert set(scores) == {"ground truth", "ground truth through the VAE", "ground truth through the tiny decoder",
                           "wrong audio", "student 1 steps",
                           "student 1 steps, tiny decoder", "student 1 steps, true history",
                           "student 1 steps, true history, tiny decoder"}
    assert scores["ground truth"]["lip_sync_r"] >= 0.9 > scores["wrong audio"]["lip_sync_r"]
    assert all(scores[row]["clips"] == 1 for row in scores)
    truth, student = scores["ground truth"], scores["student 1 steps, tiny decoder"]
    assert truth["identity_face"] == truth["identity_backdrop"] == pytest.approx(truth["identity"], abs=1e-6)
    # the student's identity in two halves: each half holds the true other half, so reads at least as high
    assert min(student["identity_face"], student["identity_backdrop"]) >= student["identity"] - 0.02


@pytest.mark.skipif(not (MOUTH_READER.exists() and IDENTITY.exists()), reason="no shipped readers yet")
def test_heldout_scores_the_training_pool_when_asked(tmp_path):
    """`split="train"` scores clips of the training pool (the generalisation gap); a folder without held-out
    clips says so for the default split."""
    from engine.data.synth import synthesize_dataset
    from engine.errors import DataError
    from engine.eval.heldout import Readers, evaluate
    from engine.generate.avatar import AvatarFiles

    synthesize_dataset(tmp_path, 1, 2.0, 128, seed=3, eval_fraction=0.0)
    readers = Readers(*load_readers())
    scores = evaluate(str(tmp_path), AvatarFiles(), readers, clips=1, steps=(), split="train")
    assert scores["ground truth"]["clips"] == 1 and scores["ground truth"]["lip_sync_r"] >= 0.9
    assert "identity_face" not in scores["ground truth"]  # the halves only when asked for
    with pytest.raises(DataError, match="no eval clips"):
        evaluate(str(tmp_path), AvatarFiles(), readers, clips=1, steps=())


def test_heldout_student_rows_take_the_audio_guidance_and_window(tmp_path):
    """`audio_guidance` and `window` reach the student's sessions: the same seed gives the same frames at one scale
    and other frames at another (the audio-dropped pass changes each step); the default window is the sessions'
    (2), and a window of 8 gives other frames once the stream is longer than 2 latent frames."""
    from engine.data.synth import synthesize_dataset
    from engine.data.synthtalk import SynthTalk
    from engine.eval.heldout import student_frames
    from engine.generate.avatar import AvatarFiles, fit_square, load_avatar

    synthesize_dataset(tmp_path, 1, 1.0, 128, seed=5, eval_fraction=1.0)
    clip = SynthTalk([str(tmp_path)], "eval").load(0)
    avatar = load_avatar(AvatarFiles(), device="cpu")
    portrait = fit_square(clip.frames[0], avatar.resolution)
    plain = student_frames(avatar, portrait, clip, 1, seed=0, decoder="tiny")
    again = student_frames(avatar, portrait, clip, 1, seed=0, decoder="tiny", audio_guidance=1.0)
    guided = student_frames(avatar, portrait, clip, 1, seed=0, decoder="tiny", audio_guidance=2.0)
    assert torch.equal(plain, again)
    assert guided.shape == plain.shape and not torch.equal(guided, plain)
    assert torch.equal(student_frames(avatar, portrait, clip, 1, seed=0, decoder="tiny", window=2), plain)
    wide = student_frames(avatar, portrait, clip, 1, seed=0, decoder="tiny", window=8)
    assert wide.shape == plain.shape and not torch.equal(wide, plain)


def test_sheet_rows_show_truth_student_and_their_difference():
    from engine.errors import DataError
    from engine.eval.strips import sheet_rows

    truth = np.zeros((10, 8, 8, 3), np.uint8)
    student = truth.copy()
    student[:, :2, :2] = 50  # a blob in one corner of every student frame
    sheet = sheet_rows(truth, student[:9], frames=3)  # the shorter of the two sets the times
    assert sheet.shape == (24, 24, 3)
    assert not sheet[:8].any() and sheet[8:16].max() == 50
    diff = sheet[16:]
    assert (diff[:2, :2] == 150).all() and diff[2:, 2:8].max() == 0  # ×3, and nothing where they agree
    with pytest.raises(DataError):
        sheet_rows(truth[:0], student, frames=3)


def test_contact_sheet_of_a_held_out_clip(tmp_path):
    """`python -m engine.eval.strips` streams the shipped student over a held-out clip and writes the three rows;
    clips outside the split are refused with the split's size."""
    from engine.data.synth import synthesize_dataset
    from engine.data.synthtalk import SynthTalk
    from engine.errors import DataError
    from engine.eval.strips import contact_sheet, main
    from engine.generate.avatar import AvatarFiles, fit_square

    synthesize_dataset(tmp_path, 1, 1.0, 128, seed=5, eval_fraction=1.0)
    sheet = contact_sheet(str(tmp_path), AvatarFiles(), [0], steps=1, frames=4)
    clip = SynthTalk([str(tmp_path)], "eval").load(0)
    s = sheet.shape[0] // 3
    assert sheet.shape == (3 * s, 4 * s, 3)
    assert np.array_equal(sheet[:s, :s], fit_square(clip.frames[0], s))  # the truth row starts on the portrait
    assert sheet[s:2 * s].std() > 10  # the student drew a portrait, not a flat frame
    with pytest.raises(DataError, match="0 to 0"):
        contact_sheet(str(tmp_path), AvatarFiles(), [3], steps=1)
    out = tmp_path / "sheet.png"
    main(["--data", str(tmp_path), "--clips", "0", "--steps", "1", "--frames", "2", "--out", str(out)])
    with av.open(str(out)) as f:
        image = next(f.decode(video=0)).to_ndarray(format="rgb24")
    assert image.shape == (3 * s, 2 * s, 3)


def _probe_clips(n: int, per_frame: bool, seed: int) -> list:
    """Latents [8, 9, 8, 8] with the mouth at the frame's centre: channels 0-3 of the latent pixels there carry
    the opening of the latent's 4 frames (per_frame) or their mean 4 times (one mouth state per latent)."""
    from engine.eval.mouth_probe import ProbeClip

    rng = np.random.default_rng(seed)
    clips = []
    for _ in range(n):
        opening = np.clip(np.convolve(rng.random(40), np.ones(2) / 2, "same")[:33], 0, 1)
        z = 0.1 * rng.standard_normal((8, 9, 8, 8)).astype(np.float32)
        for j in range(1, 9):
            group = opening[4 * j - 3:4 * j + 1]
            z[:4, j, 3:5, 3:5] += (group if per_frame else np.full(4, group.mean()))[:, None, None]
        clips.append(ProbeClip(z, opening, np.full((33, 2), 0.5, np.float32)))
    return clips


def test_mouth_probe_tells_latents_that_hold_each_frame_from_latents_that_hold_one_state():
    from engine.eval.mouth_probe import mouth_centre, probe

    frame_by_frame = probe(_probe_clips(40, True, 0), _probe_clips(8, True, 1), stride=4, steps=400)
    one_state = probe(_probe_clips(40, False, 0), _probe_clips(8, False, 1), stride=4, steps=400)
    assert frame_by_frame["r_within_latent"] > 0.8 and frame_by_frame["r_per_frame"] > frame_by_frame["r_held"] + 0.05
    assert abs(one_state["r_within_latent"]) < 0.3 and one_state["r_per_frame"] < frame_by_frame["r_per_frame"] - 0.05
    mask = np.zeros((2, 10, 10), np.uint8)
    mask[0, 2:4, 6:8] = 255
    mask[1, 5, 5] = 1
    assert np.allclose(mouth_centre(mask), [[0.25, 0.65], [0.5, 0.5]])
    with pytest.raises(DataError, match="clips"):
        probe([], _probe_clips(1, True, 2), stride=4)


def test_mouth_probe_cli_encodes_both_splits_and_writes_its_scores(tmp_path):
    from engine.checkpoints.vae import save_vae
    from engine.data.synth import synthesize_dataset
    from engine.eval import mouth_probe
    from engine.models.vae import CausalVAE, VAEConfig

    synthesize_dataset(tmp_path / "clips", 6, 2.0, 64, seed=3, eval_fraction=0.35, fmt="raw")
    vae = CausalVAE(VAEConfig("small", base_dim=8, dim_mult=(1, 2, 2), num_res_blocks=1, temporal_down=(True, True)))
    save_vae(tmp_path / "vae.safetensors", vae)
    mouth_probe.main(["--data", str(tmp_path / "clips"), "--vae", str(tmp_path / "vae.safetensors"), "--train-clips", "4",
                      "--resolution", "32", "--steps", "20", "--out", str(tmp_path / "probe.json")])
    scores = json.loads((tmp_path / "probe.json").read_text())
    assert scores["probe"]["clips"] >= 1 and -1 <= scores["probe"]["r_per_frame"] <= 1
    assert 0 < scores["truth held per latent"]["r_held"] <= 1
