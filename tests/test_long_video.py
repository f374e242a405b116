"""The long-video methods on a tiny random DiT: extension equals the streaming generator, fused windows share
noise and blend their overlap, history is re-noised, memory is bounded, and state round-trips exactly."""
import numpy as np
import pytest
import torch

from engine.audio.features import AudioFeatureConfig, latent_audio_windows, log_mel, samples_needed
from engine.errors import ConfigError
from engine.generate.long_video import LongVideoConfig, build_long_video
from engine.generate.streaming import StreamConfig, StreamingGenerator
from engine.generate.windows import Known
from engine.models.dit import DiT, DiTConfig

AUDIO = AudioFeatureConfig()
TINY = DiTConfig("tiny", dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=0,
                 audio_dim=16, audio_tokens=2, audio_hidden=16,
                 audio_in_dim=AUDIO.window_mel_frames * AUDIO.n_mels)


def tiny_model():
    torch.manual_seed(0)
    model = DiT(TINY).eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.1)
    return model


def sink():
    return torch.randn(1, 4, 1, 4, 4, generator=torch.Generator().manual_seed(5))


def windows(latent_frames, seed=1):
    rng = np.random.default_rng(seed)
    samples = (0.3 * rng.standard_normal(16000 * 4)).astype(np.float32)
    return latent_audio_windows(log_mel(samples), latent_frames)[None]  # [1, F, window, mels]


def run(config, frames, model=None, stop_after=None, state=None, known=None):
    """Drive a method over `frames` latent frames; returns (latents, method, generator)."""
    model = model or tiny_model()
    g = torch.Generator().manual_seed(0)
    m = build_long_video(config, model, sink(), None, g)
    w = windows(frames + 16)
    done, out, calls = 0, [], 0
    if state is not None:
        m.load_state_dict(state["method"])
        g.set_state(state["rng"])
        done, out = state["done"], list(state["out"])
    with torch.no_grad():
        while done < frames:
            if stop_after is not None and calls == stop_after:
                return out, m, g, done
            n = m.next_frames
            k = None if known is None else known.frames(done, done + n)
            out.append(m.advance(w[:, done:done + n], k))
            done += n
            calls += 1
        tail = m.finish()
        if tail is not None:
            out.append(tail)
    return torch.cat(out, 2), m, g, done


def test_student_extension_equals_the_streaming_generator():
    model = tiny_model()
    gen = StreamingGenerator(model, StreamConfig(window_frames=3, steps=2))
    gen.reset(sink(), seed=0)
    t = np.arange(16000 * 2) / 16000
    gen.push_audio((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
    with torch.no_grad():
        streamed = torch.cat([c.latents for c in gen.flush()], 2)
    w = latent_audio_windows(log_mel((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)), streamed.shape[2])
    m = build_long_video(LongVideoConfig(steps=2, window_frames=3), model, sink(), None,
                         torch.Generator().manual_seed(0))
    with torch.no_grad():
        extended = torch.cat([m.advance(w[None, j:j + 1]) for j in range(streamed.shape[2])], 2)
    # frames whose audio windows lie inside the audio (the streamer pads the end with silence, the whole-clip
    # log-mel stops at the last full mel frame)
    inside = sum(samples_needed(j + 1) <= len(t) for j in range(streamed.shape[2]))
    assert inside > 10 and torch.allclose(extended[:, :, :inside], streamed[:, :, :inside], atol=1e-5)


@pytest.mark.parametrize("config", [
    LongVideoConfig(steps=2, window_frames=3),
    LongVideoConfig(steps=2, window_frames=3, history_sigma=0.1),
    LongVideoConfig(model="teacher", steps=3, guidance=2.0, window_frames=4, overlap_frames=1),
    LongVideoConfig(model="teacher", steps=3, window_frames=4, overlap_frames=1, history_sigma=0.1),
    LongVideoConfig(method="fuse", model="teacher", steps=3, guidance=2.0, window_frames=4, overlap_frames=2),
    LongVideoConfig(method="fuse", model="student", steps=2, window_frames=4, overlap_frames=1, chunk_frames=2),
])
def test_every_method_makes_each_frame_once_in_bounded_memory_and_resumes_exactly(config):
    frames = 13
    whole, m, _, _ = run(config, frames)
    assert whole.shape[:3] == (1, 4, whole.shape[2]) and whole.shape[2] >= frames and torch.isfinite(whole).all()
    held = []
    out, m2, g2, done = run(config, frames, stop_after=2)
    held.append(m2.held_latent_frames)
    bound = m2.held_latent_frames
    state = {"method": {k: v.clone() for k, v in m2.state_dict().items()}, "rng": g2.get_state(), "done": done,
             "out": out}
    resumed, m3, _, _ = run(config, frames, state=state)
    assert torch.equal(resumed, whole)  # identical latents after a restore into a fresh method
    longer, m4, _, _ = run(config, 3 * frames)
    assert m4.held_latent_frames <= max(bound, config.window_frames + 1) + 3 * config.overlap_frames * (config.steps + 1)
    assert torch.equal(longer[:, :, :frames - config.window_frames], whole[:, :, :frames - config.window_frames])


def test_history_noise_changes_the_film_but_not_its_start():
    plain, *_ = run(LongVideoConfig(steps=2, window_frames=3), 6)
    noisy, *_ = run(LongVideoConfig(steps=2, window_frames=3, history_sigma=0.2), 6)
    assert torch.equal(plain[:, :, 0], noisy[:, :, 0])  # the first chunk has no history yet
    assert not torch.allclose(plain[:, :, 2:], noisy[:, :, 2:])


def test_fused_windows_share_the_overlap_noise_and_blend_it_linearly_at_every_step():
    config = LongVideoConfig(method="fuse", model="teacher", steps=3, window_frames=4, overlap_frames=2)
    m = build_long_video(config, tiny_model(), sink(), None, torch.Generator().manual_seed(0))
    calls, model = [], m.window

    def recording(x, sigmas, audio):
        v = model(x, sigmas, audio)
        calls.append((x.clone(), v.clone()))
        return v

    m.window = recording
    w = windows(12)
    with torch.no_grad():
        first = m.advance(w[:, :4])
        tail = m.tail.clone()  # the tail's trajectory: N + 1 states of its 2 frames
        calls.clear()
        second = m.advance(w[:, 4:6])
    assert first.shape[2] == 2 and second.shape[2] == 2 and tail.shape[:4] == (4, 1, 4, 2)
    weight = torch.tensor([2 / 3, 1 / 3]).view(1, 1, 2, 1, 1)
    sigmas = list(m.sampler.sigmas) + [0.0]
    assert torch.allclose(calls[0][0][:, :, :2], tail[0])  # the overlap starts from the same noise
    for i in range(1, len(calls) + 1):  # each step: Euler on window 2, then its overlap blended into window 1's
        x, v = calls[i - 1]
        own = (x + (sigmas[i] - sigmas[i - 1]) * v)[:, :, :2]
        blended = calls[i][0][:, :, :2] if i < len(calls) else second
        assert torch.allclose(blended, weight * tail[i] + (1 - weight) * own, atol=1e-6)


def test_inpainting_keeps_the_source_outside_the_mask():
    frames, source = 6, torch.randn(1, 4, 12, 4, 4, generator=torch.Generator().manual_seed(9))
    mask = torch.zeros(1, 1, 1, 4, 4)
    mask[..., 2:, 1:3] = 1
    for config in (LongVideoConfig(steps=2, window_frames=3),
                   LongVideoConfig(method="fuse", model="teacher", steps=3, window_frames=4, overlap_frames=1)):
        out, *_ = run(config, frames, known=Known(source, mask))
        n = out.shape[2]
        assert torch.allclose(out * (1 - mask), source[:, :, :n] * (1 - mask))
        assert not torch.allclose(out * mask, source[:, :, :n] * mask)


def test_bad_long_video_configs_say_what_is_wrong():
    with pytest.raises(ConfigError, match="choose one of"):
        LongVideoConfig(method="slide")
    with pytest.raises(ConfigError, match="overlap"):
        LongVideoConfig(method="fuse", window_frames=4, overlap_frames=3)
    with pytest.raises(ConfigError, match="history"):
        LongVideoConfig(model="teacher", window_frames=4, overlap_frames=4)
    assert LongVideoConfig.for_model("teacher").steps == 24


def test_the_student_window_is_one_default_everywhere():
    """Streams, sessions, the student's extension and export shapes share STUDENT_WINDOW; a teacher's or a fused
    window keeps its own length (2 could not hold their overlaps)."""
    from engine.generate.streaming import STUDENT_WINDOW
    from exporters.chunk_graph import ChunkShape
    from realtime.config import SessionConfig

    assert STUDENT_WINDOW == StreamConfig().window_frames == SessionConfig().window_frames == 2
    assert ChunkShape((4, 4)).window_frames == LongVideoConfig().window_frames == STUDENT_WINDOW
    assert LongVideoConfig.for_model("student").window_frames == STUDENT_WINDOW
    assert LongVideoConfig(method="fuse").window_frames == LongVideoConfig.for_model("teacher").window_frames == 8
    assert LongVideoConfig(window_frames=5).window_frames == 5
