"""The VAE recipe end to end on tiny generated clips: trains, saves, resumes, distils the tiny decoder."""
import json
import math

import pytest
import torch

from engine.checkpoints.vae import decoder_only, load_tiny_vae, load_vae
from engine.data.synth import synthesize_dataset
from engine.data.synthtalk import SynthTalk
from engine.errors import ConfigError, DataError
from engine.train.vae import (
    TrainVAEConfig,
    mouth_l1,
    perturbed,
    pixel_weight,
    psnr,
    reconstruction_loss,
    ssim,
    train,
)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A few real SynthTalk clips, 64x64, both splits, in the raw format."""
    folder = tmp_path_factory.mktemp("synthtalk")
    synthesize_dataset(folder, 6, 1.0, 64, seed=3, eval_fraction=0.35, fmt="raw")
    return folder


def test_bank_windows_and_split(clips):
    train_set, eval_set = SynthTalk(clips, "train"), SynthTalk(clips, "eval")
    assert len(train_set) and len(eval_set) and len(train_set) + len(eval_set) == 6
    assert not {r["identity_id"] for _, r in train_set.rows} & {r["identity_id"] for _, r in eval_set.rows}
    bank = train_set.bank(32)
    x, masks = bank.windows(2, 5, torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 5, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert masks.shape == (2, 2, 5, 32, 32) and 0 < masks[:, 1].mean() < masks[:, 0].mean() < 1
    with pytest.raises(DataError, match="no SynthTalk shards"):
        SynthTalk(clips / "missing")


def test_mouth_pixels_weigh_more():
    x, target = torch.zeros(1, 3, 1, 16, 16), torch.zeros(1, 3, 1, 16, 16)
    masks = torch.zeros(1, 2, 1, 16, 16)
    masks[:, 1, :, :2, :2] = 1
    w = pixel_weight(masks, 1.0, 8.0)
    off, on = x.clone(), x.clone()
    off[..., 8:10, 8:10] = 1
    on[..., :2, :2] = 1
    assert reconstruction_loss(on, target, 0.0, w) > 5 * reconstruction_loss(off, target, 0.0, w)


def test_mouth_truth_term_counts_the_mouth_alone():
    masks = torch.zeros(1, 2, 1, 16, 16)
    masks[:, 1, :, :2, :2] = 1
    x = torch.zeros(1, 3, 1, 16, 16)
    off, on = x.clone(), x.clone()
    off[..., 8:, 8:] = 1  # an error away from the mouth costs nothing
    on[..., :2, :2] = 0.5  # one on the mouth costs its mean L1
    assert mouth_l1(off, x, masks) == 0 and mouth_l1(on, x, masks) == pytest.approx(0.5)
    assert mouth_l1(on, x, torch.zeros_like(masks)) == 0  # a frame without a mouth mask: nothing, not NaN
    with pytest.raises(ConfigError, match="mouth_truth_weight"):
        TrainVAEConfig(data="x", out="y", mouth_truth_weight=1.0)  # a VAE trains on the true frames already


def test_metrics():
    a = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    assert psnr(a, a) > 100 and abs(ssim(a[:, :, 0], a[:, :, 0]).item() - 1) < 1e-5
    assert ssim(a[:, :, 0], -a[:, :, 0]).item() < 0.5


def test_latent_noise_is_per_clip_and_bounded():
    z = torch.zeros(64, 4, 3, 8, 8)
    assert perturbed(z, 0.0, torch.Generator().manual_seed(0)) is z
    noisy = perturbed(z, 0.3, torch.Generator().manual_seed(0))
    stds = noisy.flatten(1).std(1)
    assert 0 < stds.min() and stds.max() < 0.3 * 1.1  # each clip its own std, in [0, 0.3]
    assert stds.max() - stds.min() > 0.1
    assert torch.equal(noisy, perturbed(z, 0.3, torch.Generator().manual_seed(0)))  # seeded


def test_train_resume_and_distil(clips, tmp_path):
    cfg = TrainVAEConfig(data=str(clips), out=str(tmp_path / "vae"), resolution=32, frames=5, batch=2, steps=4,
                         save_every=2, log_every=1, eval_clips=2, device="cpu", bf16=False)
    scores = train(cfg)
    assert {"psnr", "ssim", "mouth_psnr", "psnr_start", "psnr_late"} <= scores.keys()
    log = [json.loads(line) for line in (tmp_path / "vae" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    vae = load_vae(tmp_path / "vae" / "final.safetensors")
    assert vae.cfg.latent_std != (1.0,) * 16  # statistics measured on the data
    # resume: asking for more steps continues from step 4, not from scratch
    train(TrainVAEConfig(**{**cfg.__dict__, "steps": 6}))
    log = [json.loads(line) for line in (tmp_path / "vae" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r][-2:] == [5, 6]
    tiny_cfg = TrainVAEConfig(data=str(clips), out=str(tmp_path / "tiny"), model="tiny",
                              teacher=str(tmp_path / "vae" / "final.safetensors"), resolution=32, frames=5, batch=2,
                              steps=2, eval_clips=1, latent_noise=0.2, device="cpu", bf16=False)
    train(tiny_cfg)
    assert load_tiny_vae(tmp_path / "tiny" / "final.safetensors").cfg.name == "demo"
    # a new run may start from shipped weights: the tiny decoder ships without its encoder; a run cut short
    # before its final save ships its last checkpoint
    decoder_only(tmp_path / "tiny" / "last.safetensors", tmp_path / "shipped-tiny.safetensors")
    train(TrainVAEConfig(**{**tiny_cfg.__dict__, "out": str(tmp_path / "tiny2"), "steps": 1,
                            "init": str(tmp_path / "shipped-tiny.safetensors")}))
    assert (tmp_path / "tiny2" / "final.safetensors").exists()
    # the decoder that reads the portrait's latent starts from the plain one: its new inputs through zero weights
    train(TrainVAEConfig(**{**tiny_cfg.__dict__, "out": str(tmp_path / "tiny3"), "steps": 1, "preset": "demo-ref",
                            "init": str(tmp_path / "shipped-tiny.safetensors")}))
    assert load_tiny_vae(tmp_path / "tiny3" / "final.safetensors").cfg.reference
    # only its first convolution learns, the rest stays the shipped decoder's
    train(TrainVAEConfig(**{**tiny_cfg.__dict__, "out": str(tmp_path / "tiny4"), "steps": 2, "preset": "demo-ref",
                            "tiny_layers": "first", "init": str(tmp_path / "shipped-tiny.safetensors")}))
    before = load_tiny_vae(tmp_path / "shipped-tiny.safetensors").state_dict()
    after = load_tiny_vae(tmp_path / "tiny4" / "final.safetensors").state_dict()
    assert not torch.equal(after["decoder.1.weight"][:, :16], before["decoder.1.weight"].float())
    assert [k for k in before if not k.startswith("decoder.1.") and not torch.equal(after[k], before[k].float())] == []
    with pytest.raises(ConfigError, match="tiny_layers"):
        TrainVAEConfig(data="x", out="y", tiny_layers="first")
    with pytest.raises(ConfigError, match="teacher"):
        TrainVAEConfig(data="x", out="y", model="tiny")


def test_teacher_cache_holds_whole_clips_from_their_first_frame(clips, tmp_path):
    from engine.checkpoints.vae import save_vae
    from engine.models.vae import CausalVAE, vae_config
    from engine.train.vae import TeacherCache

    torch.manual_seed(0)
    teacher = CausalVAE(vae_config("demo")).eval()
    save_vae(tmp_path / "teacher.safetensors", teacher)
    bank = SynthTalk(clips, "train").bank(32)
    cache = TeacherCache.build(teacher, bank, 1, 5, "cpu")  # the fixture's train split holds one clip
    assert cache.frames.shape == (1, 3, 5, 32, 32) and cache.masks.shape == (1, 2, 5, 32, 32)
    assert torch.equal(cache.frames[0], bank.frames[0, :5].permute(3, 0, 1, 2))  # from frame 0, as a stream starts
    with torch.no_grad():
        z = teacher.encode(bank.frames[:1, :5].permute(0, 4, 1, 2, 3).float() / 127.5 - 1)
        y = teacher.decode(z).clamp(-1, 1)
    assert torch.allclose(cache.latents, z) and (cache.decodes.float() / 127.5 - 1 - y).abs().max() < 0.01
    x, target, masks, latents = cache.batch(3, torch.Generator().manual_seed(0), "cpu")
    assert x.shape == target.shape == (3, 3, 5, 32, 32) and masks.shape[1] == 2 and latents.shape[0] == 3
    # the trainer runs on the cache, and a run asking for more clips than the split holds is refused
    cfg = TrainVAEConfig(data=str(clips), out=str(tmp_path / "tiny"), model="tiny", teacher=str(tmp_path / "teacher.safetensors"),
                         resolution=32, frames=5, batch=2, steps=3, log_every=1, eval_clips=1, latent_noise=0.2,
                         teacher_clips=1, device="cpu", bf16=False)
    train(cfg)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "tiny" / "log.jsonl").read_text().splitlines()
              if "loss" in line]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    train(TrainVAEConfig(**{**cfg.__dict__, "out": str(tmp_path / "tiny-mouth"), "mouth_truth_weight": 4.0}))
    with_mouth = [json.loads(line)["loss"] for line in (tmp_path / "tiny-mouth" / "log.jsonl").read_text().splitlines()
                  if "loss" in line]
    assert len(with_mouth) == 3 and with_mouth[0] > losses[0]  # same seed and data: the mouth term adds to the loss
    with pytest.raises(ConfigError, match="teacher_clips"):
        train(TrainVAEConfig(**{**cfg.__dict__, "out": str(tmp_path / "tiny2"), "teacher_clips": 50}))
    with pytest.raises(ConfigError, match="teacher_clips"):
        TrainVAEConfig(data="x", out="y", teacher_clips=2)
