"""The DiT recipe end to end on a few SynthTalk clips: teacher, causal student, distillation; resume; the
committed presets from the command line; DDP under torchrun (two CPU processes on gloo)."""
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from engine.checkpoints.vae import save_vae
from engine.checkpoints.wan import load_dit
from engine.data.synth import synthesize_dataset
from engine.errors import ConfigError
from engine.models.vae import CausalVAE, vae_config
from engine.train.dit import TRAIN_PRESETS, Phase, TrainDiTConfig, config_from_args, masked_mse, train

PHASES = (Phase("mouth", 0.5, 2, 8.0, 1.0), Phase("long", 1.0, 4, 4.0, 1.0))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dit")
    synthesize_dataset(root / "data", 3, 2.0, 128, seed=5, eval_fraction=0.0, fmt="raw")
    torch.manual_seed(0)
    save_vae(root / "vae.safetensors", CausalVAE(vae_config("demo")))
    common = dict(data=str(root / "data"), vae=str(root / "vae.safetensors"), steps=3, batch=2, log_every=1,
                  device="cpu", bf16=False, phases=PHASES, window=2, save_every=2)
    return root, common


def _log(path):
    return [json.loads(line) for line in (path / "log.jsonl").read_text().splitlines()]


def test_three_stages_train_save_and_resume(setup):
    root, common = setup
    teacher = replace(TRAIN_PRESETS["demo-teacher"], out=str(root / "teacher"), **common)
    train(teacher)
    assert [r["phase"] for r in _log(root / "teacher") if "loss" in r] == ["mouth", "mouth", "long"]
    train(replace(teacher, steps=5))  # resumes at step 3
    assert [r["step"] for r in _log(root / "teacher") if "loss" in r][-2:] == [4, 5]
    student = replace(TRAIN_PRESETS["demo-student"], out=str(root / "student"),
                      init=str(root / "teacher" / "final.safetensors"), **common)
    train(student)
    distill = replace(TRAIN_PRESETS["demo-distill"], out=str(root / "distill"), init=str(root / "student" / "final.safetensors"),
                      teacher=str(root / "teacher" / "final.safetensors"), ode_pairs=4, teacher_steps=4,
                      **{**common, "phases": (Phase("long", 1.0, 2, 4.0, 1.0),)})
    train(distill)
    model = load_dit(root / "distill" / "final.safetensors")
    assert model.cfg.name == "demo"
    losses = [r["loss"] for r in _log(root / "distill") if "loss" in r]
    assert len(losses) == 3 and all(l == l and l < 10 for l in losses)
    assert any("audio_gain" in r for r in _log(root / "teacher"))  # the audio probe is logged
    selfforce = replace(TRAIN_PRESETS["demo-selfforce"], out=str(root / "selfforce"),
                        init=str(root / "distill" / "final.safetensors"), teacher=str(root / "teacher" / "final.safetensors"),
                        **{**common, "steps": 2, "batch": 2, "phases": (Phase("long", 1.0, 2, 4.0, 1.0),)})
    train(selfforce)
    assert (root / "selfforce" / "fake.safetensors").exists()
    train(replace(selfforce, steps=3))  # resumes at step 2
    rows = [r for r in _log(root / "selfforce") if "loss" in r]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["loss"] == r["loss"] and r["fake_loss"] < 10 for r in rows)
    after = load_dit(root / "selfforce" / "final.safetensors").state_dict()
    before = load_dit(root / "distill" / "final.safetensors").state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in before)  # the rollouts moved the generator
    train(replace(selfforce, out=str(root / "anchored"), data_weight=1.0, dmd_region="mouth",
                  backdrop_weight=1.0, steps=1))  # DMD on the mouth, the real-clip anchor everywhere, the backdrop held
    anchored = [r for r in _log(root / "anchored") if "loss" in r]
    assert len(anchored) == 1 and 0 < anchored[0]["data_loss"] < 10 and 0 < anchored[0]["backdrop_loss"] < 10
    control = replace(selfforce, out=str(root / "control"), teacher="", dmd_weight=0.0, data_weight=1.0,
                      backdrop_weight=1.0, rollout_frames=4, steps=1)  # no DMD: no teacher, no fake score
    train(control)
    rows = [r for r in _log(root / "control") if "loss" in r]
    assert len(rows) == 1 and "fake_loss" not in rows[0] and 0 < rows[0]["backdrop_loss"] < 10
    assert not (root / "control" / "fake.safetensors").exists()
    mouth = replace(control, out=str(root / "mouth"), data_weight=0.0, backdrop_weight=0.0, mouth_truth_weight=1.0)
    train(mouth)  # the rollouts' mouth regressed on the truth, alone
    rows = [r for r in _log(root / "mouth") if "loss" in r]
    assert len(rows) == 1 and 0 < rows[0]["mouth_truth_loss"] == rows[0]["loss"] < 10
    after = load_dit(root / "mouth" / "final.safetensors").state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in before)
    silence = replace(mouth, out=str(root / "silence"), mouth_truth_weight=0.0, silence_weight=1.0)
    train(silence)  # the rollouts' mouth regressed on the truth in quiet frames alone
    rows = [r for r in _log(root / "silence") if "loss" in r]
    assert len(rows) == 1 and 0 <= rows[0]["silence_loss"] == rows[0]["loss"] < 10
    with pytest.raises(ConfigError, match="at most"):
        train(replace(control, out=str(root / "too-long"), rollout_frames=64))  # longer than the clips


def test_latent_cache_is_written_once_and_read_by_later_stages(setup, tmp_path):
    root, common = setup
    cache = tmp_path / "latents.safetensors"
    first = replace(TRAIN_PRESETS["demo-teacher"], out=str(tmp_path / "a"), latents=str(cache), **{**common, "steps": 1})
    train(first)
    assert cache.exists()
    from engine.train.dit import latent_clips

    cached = latent_clips(replace(first, vae=str(tmp_path / "no-such-vae.safetensors")), "cpu")  # not re-encoded
    encoded = latent_clips(replace(first, latents=""), "cpu")
    assert torch.allclose(cached.latents, encoded.latents, atol=1e-6) and torch.equal(cached.masks, encoded.masks)
    assert cached.latents.shape[0] == 3 and cached.audio.shape[:2] == cached.latents.shape[:1] + cached.latents.shape[2:3]
    assert torch.equal(cached.quiet, encoded.quiet) and cached.quiet.shape == cached.latents.shape[:1] + cached.latents.shape[2:3]


def test_quiet_labels_follow_the_speaking_frames():
    from engine.train.dit import quiet_latents

    speaking = np.zeros(1 + 4 * 10, bool)
    speaking[17:21] = True  # latent frame 5 (video frames 17-20) speaks; the 0.2 s margin (5 video frames: 12-25)
    quiet = quiet_latents(speaking, 4)  # reaches into latent frames 3 (9-12) and 7 (25-28)
    assert quiet.shape == (11,) and quiet.tolist() == [True] * 3 + [False] * 5 + [True] * 3


def test_a_cache_without_quiet_labels_is_refused_for_the_silence_term(setup, tmp_path):
    from safetensors.torch import load_file, save_file

    _, common = setup
    cache = tmp_path / "latents.safetensors"
    first = replace(TRAIN_PRESETS["demo-teacher"], out=str(tmp_path / "a"), latents=str(cache), **{**common, "steps": 1})
    train(first)
    old = {k: v for k, v in load_file(str(cache)).items() if k != "quiet"}  # as the caches written before the labels
    save_file(old, str(cache))
    silence = replace(TRAIN_PRESETS["demo-selfforce"], out=str(tmp_path / "s"), latents=str(cache),
                      init=str(tmp_path / "a" / "final.safetensors"), teacher="", dmd_weight=0.0, silence_weight=1.0,
                      **{**common, "steps": 1, "phases": (Phase("long", 1.0, 2, 4.0, 1.0),)})
    with pytest.raises(ConfigError, match="delete it"):
        train(silence)


def test_audio_probe_is_zero_when_the_audio_branch_is_silent(setup):
    root, common = setup
    from engine.models.dit import DiT, dit_config
    from engine.train.dit import audio_probe, latent_clips

    cfg = replace(TRAIN_PRESETS["demo-teacher"], out="o", **{**common, "phases": PHASES})
    data = latent_clips(cfg, "cpu")
    torch.manual_seed(0)
    model = DiT(dit_config("demo")).eval()  # the audio output projections start at zero
    torch.nn.init.normal_(model.head.head.weight, std=0.02)  # (and so does the head)
    grid = tuple(data.latents.shape[-2:])
    assert audio_probe(model, data, cfg, grid, False, torch.Generator().manual_seed(0), batch=2) == pytest.approx(0, abs=1e-6)
    for block in model.blocks:
        torch.nn.init.normal_(block.audio_cross_attn.proj.weight, std=0.5)
    assert abs(audio_probe(model, data, cfg, grid, False, torch.Generator().manual_seed(0), batch=2)) > 1e-3


def test_facial_mask_weighs_the_mouth():
    pred, target = torch.zeros(1, 4, 1, 4, 4), torch.zeros(1, 4, 1, 4, 4)
    masks = torch.zeros(1, 2, 1, 4, 4)
    masks[:, 1, :, 0, 0] = 1
    mouth, elsewhere = pred.clone(), pred.clone()
    mouth[..., 0, 0] = 1
    elsewhere[..., 3, 3] = 1
    assert masked_mse(mouth, target, masks, PHASES[0]) > 5 * masked_mse(elsewhere, target, masks, PHASES[0])


def test_presets_from_the_command_line_and_bad_configs():
    cfg = config_from_args(["demo-student", "--data", "d", "--out", "o", "--lr", "1e-5", "--bf16", "false"])
    assert cfg.stage == "student" and cfg.lr == 1e-5 and cfg.bf16 is False and cfg.steps == TRAIN_PRESETS["demo-student"].steps
    with pytest.raises(ConfigError, match="stage"):
        TrainDiTConfig("pretrain")
    with pytest.raises(ConfigError, match="multiple of chunk"):
        TrainDiTConfig("student", chunk=3)
    with pytest.raises(ConfigError, match="teacher"):
        train(TrainDiTConfig("distill", data="d", out="o"))


@pytest.mark.slow
def test_ddp_under_torchrun_on_cpu(setup, tmp_path):
    root, common = setup
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "engine.train.dit", "demo-teacher", "--data", common["data"], "--vae", common["vae"], "--out",
           str(tmp_path / "ddp"), "--steps", "2", "--batch", "2", "--log-every", "1", "--device", "cpu",
           "--bf16", "false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["step"] for r in _log(tmp_path / "ddp") if "loss" in r] == [1, 2]  # rank 0 logs, once
    assert (tmp_path / "ddp" / "final.safetensors").exists()


@pytest.mark.slow
def test_fsdp_under_torchrun_on_cpu_resumes_on_another_process_count(setup, tmp_path):
    """FSDP2 over two CPU processes (gloo): sharded checkpoints, the full weights gathered at the end; the run
    then goes on in one process from the sharded checkpoint (resharded on load) to the same weights' shapes."""
    _, common = setup
    run = tmp_path / "fsdp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
           "engine.train.dit", "demo-teacher", "--data", common["data"], "--vae", common["vae"], "--out", str(run),
           "--steps", "4", "--batch", "2", "--log-every", "1", "--save-every", "2", "--device", "cpu",
           "--bf16", "false", "--fsdp", "true"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((run / "state.json").read_text())
    assert state["step"] == 4 and state["sharded"] == "sharded-00000004"
    assert [p.name for p in run.glob("sharded-*")] == ["sharded-00000004"]  # older ones removed
    logged = [r for r in _log(run) if "loss" in r]
    assert [r["step"] for r in logged] == [1, 2, 3, 4] and "audio_gain" in logged[-1]  # the probe ran sharded
    two = load_dit(run / "final.safetensors")
    # one process, no torchrun: resumes from the two processes' shards
    cfg = replace(TRAIN_PRESETS["demo-teacher"], out=str(run), **{**common, "steps": 5, "save_every": 10})
    train(cfg)
    assert [r["step"] for r in _log(run) if "loss" in r] == [1, 2, 3, 4, 5]
    one = load_dit(run / "final.safetensors")
    assert {k: v.shape for k, v in one.state_dict().items()} == {k: v.shape for k, v in two.state_dict().items()}
    assert any((a - b).abs().max() > 0 for a, b in zip(one.state_dict().values(), two.state_dict().values()))


def test_dmd_regions_leave_the_rest_of_the_frame_alone():
    from engine.train.selfforce import dmd_loss

    target, masks = torch.zeros(1, 4, 1, 4, 4), torch.zeros(1, 2, 1, 4, 4)
    masks[:, 0, :, :2, :2] = 1  # the face: the top-left quarter
    masks[:, 1, :, 0, 0] = 1  # the mouth: one latent pixel inside it
    at = {}
    for name, (i, j) in {"mouth": (0, 0), "face": (1, 1), "background": (3, 3)}.items():
        at[name] = target.clone()
        at[name][..., i, j] = 1
    phase = PHASES[0]
    assert dmd_loss(at["background"], target, masks, phase, "frame") == masked_mse(at["background"], target, masks, phase) > 0
    assert dmd_loss(at["background"], target, masks, phase, "face") == 0 < dmd_loss(at["face"], target, masks, phase, "face")
    assert dmd_loss(at["face"], target, masks, phase, "mouth") == 0 < dmd_loss(at["mouth"], target, masks, phase, "mouth")
    from engine.train.selfforce import backdrop_loss

    masks = torch.zeros(1, 2, 1, 6, 6)
    masks[:, 0, :, 2:4, 2:4] = 1  # the face in the middle; a pixel around it still counts as the face
    near, far = target.new_zeros(1, 4, 1, 6, 6), target.new_zeros(1, 4, 1, 6, 6)
    near[..., 1, 1] = 1
    far[..., 5, 5] = 1
    zero = torch.zeros(1, 4, 1, 6, 6)
    assert backdrop_loss(near, zero, masks) == 0 < backdrop_loss(far, zero, masks)
    with pytest.raises(ConfigError, match="dmd_region"):
        TrainDiTConfig("selfforce", dmd_region="lips")
    with pytest.raises(ConfigError, match="rollout_frames"):
        TrainDiTConfig("selfforce", chunk=2, rollout_frames=3)
    with pytest.raises(ConfigError, match="nothing trains"):
        TrainDiTConfig("selfforce", dmd_weight=0.0)
