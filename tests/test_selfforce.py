"""Self-forcing rollouts through the KV cache: the same x̂0 as streaming each chunk over its whole history in one
block-causal sequence (the window rolls), and the gradient reaches the generator through the exit step."""
from dataclasses import replace

import pytest
import torch

from engine.diffusion.flow import add_noise, x0_from_velocity
from engine.generate.streaming import sigma_list
from engine.models.dit import DiT, DiTConfig, emotion_tokens
from engine.train.dit import TRAIN_PRESETS, LatentClips, Phase, layout_for, velocity
from engine.train.selfforce import rollout

TINY = DiTConfig("tiny", dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=8,
                 audio_dim=16, audio_tokens=2, audio_hidden=16, audio_in_dim=12)


def _setup(chunk: int, window: int, frames: int):
    torch.manual_seed(0)
    model = DiT(TINY).eval()
    with torch.no_grad():  # the zero-initialised outputs made non-zero, so every path carries signal
        for p in model.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.2)
    g = torch.Generator().manual_seed(1)
    data = LatentClips(torch.randn(3, 4, 12, 4, 4, generator=g), torch.randn(3, 12, 3, 4, generator=g),
                       (torch.rand(3, 2, 12, 4, 4, generator=g) > 0.5).float(), torch.tensor([0, 2, 1]))
    cfg = replace(TRAIN_PRESETS["demo-selfforce"], chunk=chunk, window=window, device="cpu", bf16=False,
                  phases=(Phase("long", 1.0, frames, 4.0, 1.0),))
    return model, data, cfg, torch.tensor([0, 2]), torch.tensor([1, 3])


def _recomputed(model, data, clips, starts, cfg, exit_step, g):
    """The rollout without a cache: each step of each chunk runs [sink | history | chunk] block-causally."""
    frames = cfg.phases[-1].frames
    _, ref, audio, _ = data.window(clips, starts, frames)
    sigmas = sigma_list(cfg.few_steps, cfg.few_shift)[: exit_step + 1]
    tokens = model.encode_audio(audio)
    text_kv = model.encode_text(emotion_tokens(data.expression[clips], TINY.text_dim))
    b, c = len(clips), cfg.chunk
    history = []
    for start in range(0, frames, c):
        x = torch.randn(b, 4, c, 4, 4, generator=g)
        layout = layout_for(model, start + c, (4, 4), cfg, causal=True)
        for i, sigma in enumerate(sigmas):
            seq = torch.cat(history + [x], 2)
            sig = torch.cat([torch.zeros(b, start), torch.full((b, c), sigma)], 1)
            v = velocity(model, seq, ref, sig, layout, tokens[:, : start + c], text_kv)
            x0 = x0_from_velocity(x, v[:, :, start:], sigma)
            if i + 1 < len(sigmas):
                x = add_noise(x0, torch.randn(x.shape, generator=g), sigmas[i + 1])
        history.append(x0)
    return torch.cat(history, 2)


@pytest.mark.parametrize("chunk,window,frames,exit_step", [(1, 2, 6, 3), (2, 4, 8, 1), (1, 8, 4, 0)])
def test_cached_rollout_equals_the_recomputed_one(chunk, window, frames, exit_step):
    model, data, cfg, clips, starts = _setup(chunk, window, frames)
    with torch.no_grad():
        cached = rollout(model, data, clips, starts, cfg, (4, 4), exit_step, torch.Generator().manual_seed(7))
        ref = _recomputed(model, data, clips, starts, cfg, exit_step, torch.Generator().manual_seed(7))
    assert cached.shape == (2, 4, frames, 4, 4)
    assert (cached - ref).abs().max().item() <= 1e-4


def test_gradient_reaches_the_generator_through_the_exit_step_only():
    model, data, cfg, clips, starts = _setup(1, 2, 4)
    x0 = rollout(model.train(), data, clips, starts, cfg, (4, 4), 2, torch.Generator().manual_seed(3))
    assert x0.requires_grad
    x0.square().mean().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["blocks.0.self_attn.q.weight"].abs().sum() > 0  # the chunk's own pass at the exit step
    assert grads["audio_proj.proj1.weight"].abs().sum() > 0  # the audio tokens of every chunk


def test_a_longer_rollout_extends_the_shorter_one():
    """`rollout_frames` streams past the last phase's frames; with the same noise, its first frames are the
    shorter rollout's (each chunk sees only its history)."""
    model, data, cfg, clips, starts = _setup(1, 2, 4)
    with torch.no_grad():
        short = rollout(model, data, clips, starts, cfg, (4, 4), 1, torch.Generator().manual_seed(5))
        long = rollout(model, data, clips, starts, replace(cfg, rollout_frames=6), (4, 4), 1,
                       torch.Generator().manual_seed(5))
    assert short.shape[2] == 4 and long.shape[2] == 6
    assert torch.allclose(long[:, :, :4], short, atol=1e-6)


def test_the_silence_term_counts_the_mouth_of_quiet_frames_alone():
    from engine.train.selfforce import silence_loss

    truth = torch.zeros(1, 4, 3, 4, 4)
    masks = torch.zeros(1, 2, 3, 4, 4)
    masks[:, 1, :, 1:3, 1:3] = 1  # the mouth
    quiet = torch.tensor([[1.0, 0.0, 1.0]])
    speaking_mouth = truth.clone()
    speaking_mouth[:, :, 1] = 1.0  # the speaking frame differs everywhere
    assert silence_loss(speaking_mouth, truth, masks, quiet) == 0
    quiet_backdrop = truth.clone()
    quiet_backdrop[:, :, 0, 0, 0] = 1.0  # a quiet frame differs off the mouth
    assert silence_loss(quiet_backdrop, truth, masks, quiet) == 0
    quiet_mouth = truth.clone()
    quiet_mouth[:, :, 2, 1:3, 1:3] = 2.0  # a quiet frame's mouth is open
    assert torch.isclose(silence_loss(quiet_mouth, truth, masks, quiet), torch.tensor(2.0))  # 4 ** 1 pixels of 8
    assert silence_loss(quiet_mouth, truth, masks, torch.zeros(1, 3)) == 0  # no quiet frame: 0, not NaN
