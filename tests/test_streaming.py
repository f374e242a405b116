"""StreamingGenerator: timestamps, the audio timeline, silence, interrupt, determinism, constant memory."""
import numpy as np
import pytest
import torch

from engine.audio.features import AudioFeatureConfig
from engine.errors import AudioError, ConfigError
from engine.generate.streaming import StreamConfig, StreamingGenerator, sigma_list
from engine.models.dit import DiT, DiTConfig

AUDIO = AudioFeatureConfig()
TINY = DiTConfig("tiny", dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=0,
                 audio_dim=16, audio_tokens=2, audio_hidden=16,
                 audio_in_dim=AUDIO.window_mel_frames * AUDIO.n_mels)
SR = AUDIO.sample_rate


def make(steps=2, chunk=1, seed=0):
    torch.manual_seed(0)
    model = DiT(TINY)
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.1)
    gen = StreamingGenerator(model, StreamConfig(chunk_frames=chunk, window_frames=3, steps=steps))
    gen.reset(torch.randn(1, 4, 1, 4, 4, generator=torch.Generator().manual_seed(5)), seed=seed)
    return gen


def speech(seconds, rate=SR):
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def test_sigma_list_is_the_warped_few_step_list():
    assert sigma_list(4, 5.0) == pytest.approx([1.0, 0.9375, 0.8333333, 0.625], abs=1e-5)
    assert sigma_list(1, 5.0) == [1.0]


def test_timestamps_and_audio_follow_one_timeline():
    gen = make(chunk=2)
    audio = speech(2.0)
    gen.push_audio(audio, SR)
    chunks = list(gen.flush())
    # the opening: latent 0 is the portrait's own latent, one video frame; then chunks of 2 latents, 8 frames
    assert chunks[0].first_frame == 0 and chunks[0].num_frames == 1 and chunks[0].latents.shape == (1, 4, 1, 4, 4)
    for a, b in zip(chunks, chunks[1:]):
        assert b.first_frame == a.first_frame + a.num_frames and b.num_frames == 8
    for c in chunks:
        assert len(c.audio) == c.num_frames * SR // AUDIO.fps
    assert all(c.latents.shape == (1, 4, 2, 4, 4) for c in chunks[1:])
    played = np.concatenate([c.audio for c in chunks])
    assert np.allclose(played[: len(audio)], audio, atol=1e-4)  # same samples, same order
    assert not played[len(audio):].any()  # silence pads the tail
    assert all(c.voiced for c in chunks[:-1])


def test_missing_audio_waits_unless_silence_is_allowed():
    gen = make()
    assert gen.step() is None
    idle = gen.step(allow_silence=True)
    assert idle is not None and not idle.voiced and not idle.audio.any()


def test_interrupt_drops_buffered_audio_within_one_chunk():
    gen = make()
    gen.push_audio(speech(5.0), SR)
    assert gen.step().voiced
    gen.interrupt()
    assert gen.step() is None  # nothing buffered any more
    after = gen.step(allow_silence=True)
    assert not after.voiced and not after.audio.any()


def test_same_seed_same_latents_other_seed_differs():
    outs = []
    for seed in (0, 0, 1):
        gen = make(seed=seed)
        gen.push_audio(speech(1.0), SR)
        outs.append(torch.cat([c.latents for c in gen.flush()], 2))
    assert torch.equal(outs[0], outs[1])
    assert not torch.allclose(outs[0], outs[2])


def test_rates_and_formats_and_bad_input():
    gen = make()
    gen.push_audio((speech(0.5, 48000) * 32767).astype(np.int16), 48000)
    gen.push_audio(speech(0.5, 24000), 24000)
    assert gen.pushed == pytest.approx(SR, abs=64)
    with pytest.raises(AudioError):
        gen.push_audio(np.zeros((2, 100), np.float32), SR)
    with pytest.raises(ConfigError):
        gen.reset(torch.zeros(1, 3, 1, 4, 4))


def test_memory_is_constant_over_a_long_stream():
    gen = make(steps=1)
    sizes = set()
    for i in range(200):
        gen.push_audio(speech(0.16), SR)  # real time: one latent frame of audio per chunk
        chunk = gen.step(allow_silence=True)
        assert chunk is not None
        sizes.add(gen.cache.nbytes())
        assert len(gen.timeline) <= 2 * 2560 + SR // 10
    assert len(sizes) == 1


def test_frames_come_out_with_a_decoder_and_match_the_pts():
    from engine.generate.decoders import TinyDecoder
    from engine.models.tiny_vae import TinyVAE, TinyVAEConfig

    tiny = TinyVAE(TinyVAEConfig("s", decoder_widths=(8, 8, 8), decoder_blocks=(1, 1), decoder_time_up=(2, 2),
                                 encoder_time_pool=(2, 2), encoder_width=8, encoder_blocks=1, z_dim=4))
    gen = make(chunk=2)
    gen.decoder = TinyDecoder(tiny)
    gen.reset(torch.randn(1, 4, 1, 4, 4))
    gen.push_audio(speech(1.0), SR)
    for chunk in gen.flush():
        assert chunk.frames.shape == (chunk.num_frames, 16, 16, 3) and chunk.frames.dtype == torch.uint8


def test_a_stream_opens_on_the_portrait_and_generates_from_frame_one():
    """Latent frame 0 of a training clip is its reference and training windows start at frame 1: a stream
    opens on the reference latent (no DiT pass, no ring write), and the first generated chunk sees the sink
    alone -- what training's first chunk of a window sees."""
    gen = make(chunk=1)
    reference = torch.randn(1, 4, 1, 4, 4, generator=torch.Generator().manual_seed(5))
    gen.push_audio(speech(1.0), SR)
    opening = gen.step()
    assert torch.equal(opening.latents, reference) and opening.num_frames == 1 and opening.first_frame == 0
    assert gen.frames_written == 1 and gen.cache.frames_written == 0  # nothing in the ring yet
    first = gen.step()
    assert first.first_frame == 1 and first.num_frames == 4
    assert gen.cache.frames_written == 1 and not torch.equal(first.latents, reference)
    gen.reset(reference, seed=0)  # a new stream opens on the portrait again
    assert torch.equal(gen.step(allow_silence=True).latents, reference)


def test_a_chunk_writes_the_given_context_into_the_cache_in_place_of_its_own():
    """student_chunk(context=...) (the held-out eval's true-history row): the chunk's x̂0 is the same as
    without it, but the ring holds the keys and values of the given latents, exactly as a clean pass over
    them writes them."""
    from engine.generate.streaming import student_chunk

    gen, other = make(), make()
    audio = gen.model.encode_audio(torch.randn(1, 1, AUDIO.window_mel_frames, AUDIO.n_mels))
    truth = torch.randn(1, 4, 1, 4, 4, generator=torch.Generator().manual_seed(9))
    sigmas = sigma_list(2, 5.0)
    with torch.no_grad():
        own = student_chunk(gen.model, gen.cache, audio, None, sigmas, torch.Generator().manual_seed(1), (4, 4, 4))
        forced = student_chunk(other.model, other.cache, audio, None, sigmas, torch.Generator().manual_seed(1),
                               (4, 4, 4), context=truth)
        assert torch.equal(own, forced)
        assert not torch.allclose(gen.cache.k, other.cache.k)
        direct = make()
        direct.model(truth, torch.zeros(1, 1), direct.cache.chunk(1, write=True), audio=audio, text_kv=None)
        direct.cache.advance(1)
    assert torch.equal(direct.cache.k, other.cache.k) and torch.equal(direct.cache.v, other.cache.v)
