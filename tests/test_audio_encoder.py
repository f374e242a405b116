"""The conv audio encoder: its layout, its pretraining on SynthTalk's mouth tracks, and a trained DiT switching to
it (every other weight kept, the trunk frozen while the DiT trains)."""
import json
from dataclasses import replace

import pytest
import torch

from engine.audio.features import AudioFeatureConfig, latent_audio_windows, log_mel
from engine.checkpoints.io import read_metadata, read_state
from engine.checkpoints.vae import save_vae
from engine.checkpoints.wan import load_dit, save_dit
from engine.data.synth import synthesize_dataset
from engine.errors import ConfigError
from engine.models.dit import ConvAudioEncoder, DiT, dit_config
from engine.models.vae import CausalVAE, vae_config
from engine.train.audio_encoder import (
    AudioEncoderConfig,
    pearson_per_clip,
    speech_tracks,
    train,
    windows_and_targets,
)
from engine.train.dit import TRAIN_PRESETS, Phase, with_audio_encoder
from engine.train.dit import train as train_dit

AUDIO = AudioFeatureConfig()


def test_one_token_per_video_frame_each_read_from_its_own_mel_frames():
    torch.manual_seed(0)
    enc = ConvAudioEncoder(AUDIO, channels=8, tokens=4, audio_dim=16)
    w = torch.randn(2, 3, AUDIO.window_mel_frames, AUDIO.n_mels)
    assert enc(w).shape == (2, 3, 4, 16)
    # a change in the last mel frames (look-ahead of the window) reaches the last token, not the first:
    # the receptive field of each token is centred on its own video frame
    w2 = w.clone()
    w2[:, :, -2:] += 5
    diff = (enc.features(w2) - enc.features(w)).abs().sum((0, 1, 3))
    assert diff[-1] > 0 and diff[0] == 0
    # silence sounds the same in every video frame, yet its tokens still say which frame they are
    silent = enc(torch.full((1, 1, AUDIO.window_mel_frames, AUDIO.n_mels), AUDIO.silence))[0, 0]
    assert torch.cdist(silent, silent).triu(1)[torch.ones(4, 4).triu(1).bool()].min() > 0.1
    # each latent frame's window is encoded on its own: frames never mix (streaming = whole clip)
    assert torch.allclose(enc(w[:, 1:2]), enc(w)[:, 1:2], atol=1e-6)


def test_token_count_must_match_the_video_frames_of_a_latent_frame():
    with pytest.raises(ConfigError, match="one token per video frame"):
        ConvAudioEncoder(AUDIO, channels=8, tokens=3, audio_dim=16)
    with pytest.raises(ConfigError, match="audio_encoder"):
        replace(dit_config("demo"), audio_encoder="wav2vec")


def test_speech_tracks_line_up_windows_and_mouth_curves():
    audio, curves = speech_tracks(2, seed=3, split="eval", seconds=2.0, workers=1)
    assert audio.shape == (2, 32000) and curves.shape == (2, 50, 3)
    assert curves[..., 0].max() > 0.2 and curves[..., 0].min() < 0.05  # speech and pauses
    w, y = windows_and_targets(audio, curves)
    latents = 1 + 49 // 4
    assert w.shape == (2 * (latents - 1), AUDIO.window_mel_frames, AUDIO.n_mels) and y.shape == (2 * (latents - 1), 4, 3)
    # the targets of latent frame 1 are video frames 1..4, and its window is latent_audio_windows' frame 1
    assert torch.equal(y[0], torch.from_numpy(curves[0, 1:5]))
    assert torch.equal(w[0], latent_audio_windows(log_mel(audio[0]), latents)[1])


def test_pearson_per_clip_skips_flat_clips():
    t = torch.tensor([[0.0, 1, 0, 1], [0, 0, 0, 0]])
    assert pearson_per_clip(t * 2 + 1, t).item() == pytest.approx(1.0)
    assert pearson_per_clip(-t, t).item() == pytest.approx(-1.0)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("audioenc")
    torch.manual_seed(0)
    dit = DiT(dit_config("demo"))
    for block in dit.blocks:  # as a trained DiT: the audio branch's output is not zero
        torch.nn.init.normal_(block.audio_cross_attn.proj.weight, std=0.05)
    save_dit(root / "dit.safetensors", dit)
    cfg = AudioEncoderConfig(out=str(root / "enc.safetensors"), clips=24, eval_clips=6, seconds=2.0, channels=16,
                             epochs=8, batch=16, match_dit=str(root / "dit.safetensors"), match_epochs=10, workers=1)
    return root, cfg, train(cfg)


def test_pretraining_learns_the_mouth_from_audio_and_records_its_figures(pretrained):
    _, cfg, metrics = pretrained
    # 24 clips and 8 epochs already read the held-out mouth opening (a random trunk reads ~0)
    assert metrics["espeak_r_open"] > 0.3, metrics
    meta = read_metadata(cfg.out)
    assert json.loads(meta["metrics"]) == metrics and json.loads(meta["recipe"])["channels"] == 16
    state = read_state(cfg.out)
    assert state["token.weight"].shape == (128, 16) and "trunk.0.weight" in state
    assert metrics["token_r2"] > metrics["token_r2_start"] + 0.1  # the token map moved towards the DiT's tokens


def test_a_trained_dit_switches_encoder_and_keeps_every_other_weight(pretrained, tmp_path):
    root, cfg, _ = pretrained
    dit = load_dit(root / "dit.safetensors")
    swapped = with_audio_encoder(dit, cfg.out)
    assert swapped.cfg.audio_encoder == "conv" and swapped.cfg.audio_hidden == 16
    old, new = dit.state_dict(), swapped.state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old if not k.startswith("audio_proj."))
    assert all(torch.equal(new["audio_proj." + k], v) for k, v in read_state(cfg.out).items())
    save_dit(tmp_path / "swapped.safetensors", swapped)
    assert load_dit(tmp_path / "swapped.safetensors").cfg.audio_encoder == "conv"  # the config travels
    with pytest.raises(ConfigError, match="not an audio encoder"):
        with_audio_encoder(dit, root / "dit.safetensors")


def test_the_student_trains_with_the_pretrained_trunk_frozen(pretrained, tmp_path):
    root, cfg, _ = pretrained
    synthesize_dataset(tmp_path / "data", 2, 2.0, 128, seed=5, eval_fraction=0.0, fmt="raw")
    save_vae(tmp_path / "vae.safetensors", CausalVAE(vae_config("demo")))
    run = replace(TRAIN_PRESETS["demo-student"], data=str(tmp_path / "data"), vae=str(tmp_path / "vae.safetensors"),
                  out=str(tmp_path / "student"), init=str(root / "dit.safetensors"), audio_encoder=cfg.out, steps=2,
                  batch=2, log_every=1, device="cpu", bf16=False, window=2, audio_drop=0.0,
                  phases=(Phase("long", 1.0, 2, 4.0, 1.0),))
    train_dit(run)
    out = load_dit(tmp_path / "student" / "final.safetensors").state_dict()
    enc = read_state(cfg.out)
    assert all(torch.equal(out[f"audio_proj.{k}"], enc[k]) for k in enc if k.startswith("trunk."))
    assert not torch.equal(out["audio_proj.token.weight"], enc["token.weight"])  # the token map trains
    # a later stage from conv weights keeps their own token map, even when the recipe names the encoder again
    student = load_dit(tmp_path / "student" / "final.safetensors")
    with torch.no_grad():
        student.audio_proj.token.weight += 1.0  # tell its map from the pretrained one
    save_dit(tmp_path / "moved.safetensors", student)
    train_dit(replace(run, out=str(tmp_path / "again"), init=str(tmp_path / "moved.safetensors"), steps=1))
    again = load_dit(tmp_path / "again" / "final.safetensors").state_dict()["audio_proj.token.weight"]
    assert (again - student.audio_proj.token.weight).abs().max() < 1e-3
    assert (again - enc["token.weight"]).abs().min() > 0.5


def test_the_mlp_front_end_trains_alike_for_comparison(tmp_path):
    cfg = AudioEncoderConfig(out=str(tmp_path / "mlp.safetensors"), clips=8, eval_clips=3, seconds=3.0, epochs=2,
                             batch=16, encoder="mlp", sources="espeak,flite,real", eval_sources="espeak,real",
                             workers=1)
    metrics = train(cfg)
    assert {f"{s}_r_{c}" for s in ("espeak", "real") for c in ("open", "width", "round")} <= set(metrics)
    assert "proj1.weight" in read_state(cfg.out)
    with pytest.raises(ConfigError, match="unknown speech sources"):
        replace(cfg, eval_sources="espeak,opera")
    with pytest.raises(ConfigError, match="match-dit"):
        replace(cfg, match_dit="x.safetensors")
