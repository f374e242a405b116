"""The VAE recipe end to end on tiny generated clips: trains, saves, resumes, distils the tiny decoder."""
import json

import av
import numpy as np
import pytest
import torch

from engine.checkpoints.vae import load_tiny_vae, load_vae
from engine.data.video_clips import VideoClips
from engine.errors import ConfigError, DataError
from engine.train.vae import TrainVAEConfig, psnr, ssim, train


def write_clip(path, seed, frames=12, size=32):
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        colour = rng.integers(0, 255, 3)
        for t in range(frames):
            img = np.full((size, size, 3), 40, np.uint8)
            x = (4 + 2 * t) % (size - 8)
            img[8:20, x:x + 8] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    for i in range(24):
        write_clip(folder / f"clip{i:03d}.mp4", i)
    return folder


def test_clips_split_and_shape(clips):
    train_set, eval_set = VideoClips(clips, 5, 32, "train"), VideoClips(clips, 5, 32, "eval", held_out_fraction=0.3)
    assert not set(train_set.files) & set(VideoClips(clips, 5, 32, "eval").files)
    x = train_set.sample(2, np.random.default_rng(0))
    assert x.shape == (2, 3, 5, 32, 32) and x.min() >= -1 and x.max() <= 1
    assert eval_set.files
    with pytest.raises(DataError):
        VideoClips(clips, 6, 32)


def test_metrics():
    a = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    assert psnr(a, a) > 100 and abs(ssim(a[:, :, 0], a[:, :, 0]).item() - 1) < 1e-5
    assert ssim(a[:, :, 0], -a[:, :, 0]).item() < 0.5


def test_train_resume_and_distil(clips, tmp_path):
    cfg = TrainVAEConfig(data=str(clips), out=str(tmp_path / "vae"), resolution=32, frames=5, batch=2, steps=4,
                         save_every=2, log_every=1, eval_clips=2, device="cpu", bf16=False)
    scores = train(cfg)
    assert {"psnr", "ssim"} <= scores.keys()
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
                              steps=2, eval_clips=1, device="cpu", bf16=False)
    train(tiny_cfg)
    assert load_tiny_vae(tmp_path / "tiny" / "final.safetensors").cfg.name == "demo"
    with pytest.raises(ConfigError, match="teacher"):
        TrainVAEConfig(data="x", out="y", model="tiny")
