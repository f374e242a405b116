"""The causal VAE and the tiny decoder: public layouts on meta, streaming equals whole clips, constant memory,
checkpoints."""
from dataclasses import replace

import pytest
import torch
from safetensors.torch import save_file

from engine.checkpoints.vae import load_tiny_vae, load_vae, save_vae
from engine.errors import CheckpointError, ConfigError
from engine.generate.decoders import TinyDecoder, VAEDecoder
from engine.models.tiny_vae import MemoryState, TinyVAE, TinyVAEConfig, tiny_vae_config
from engine.models.vae import CausalVAE, FeatureCache, VAEConfig, vae_config

SMALL = VAEConfig("small", base_dim=8, dim_mult=(1, 2, 2), num_res_blocks=1, temporal_down=(True, True))
SMALL_TINY = TinyVAEConfig("small", decoder_widths=(16, 8, 8), decoder_blocks=(1, 1), decoder_time_up=(2, 2),
                           encoder_time_pool=(2, 2), encoder_width=8, encoder_blocks=1)


def live(model):
    """Zero-initialised output projections get values, so every path carries signal."""
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.1)
    return model.double().eval()


def test_wan_layout_on_meta_matches_the_public_checkpoint():
    with torch.device("meta"):
        model = CausalVAE(vae_config("wan"))
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(state) == 194
    assert sum(torch.Size(s).numel() for s in state.values()) == 126_892_531
    assert sum(torch.Size(s).numel() for k, s in state.items() if k.startswith("encoder.")) == 53_595_872
    assert sum(torch.Size(s).numel() for k, s in state.items() if k.startswith("decoder.")) == 73_295_331
    expected = {
        "encoder.conv1.weight": (96, 3, 3, 3, 3), "conv1.weight": (32, 32, 1, 1, 1), "conv2.weight": (16, 16, 1, 1, 1),
        "encoder.downsamples.2.resample.1.weight": (96, 96, 3, 3),
        "encoder.downsamples.3.shortcut.weight": (192, 96, 1, 1, 1),
        "encoder.downsamples.5.time_conv.weight": (192, 192, 3, 1, 1),
        "encoder.downsamples.8.time_conv.weight": (384, 384, 3, 1, 1),
        "encoder.downsamples.0.residual.0.gamma": (96, 1, 1, 1), "encoder.downsamples.0.residual.6.weight": (96, 96, 3, 3, 3),
        "encoder.middle.1.norm.gamma": (384, 1, 1), "encoder.middle.1.to_qkv.weight": (1152, 384, 1, 1),
        "encoder.head.2.weight": (32, 384, 3, 3, 3), "decoder.conv1.weight": (384, 16, 3, 3, 3),
        "decoder.upsamples.3.time_conv.weight": (768, 384, 3, 1, 1), "decoder.upsamples.3.resample.1.weight": (192, 384, 3, 3),
        "decoder.upsamples.4.shortcut.weight": (384, 192, 1, 1, 1), "decoder.upsamples.7.time_conv.weight": (768, 384, 3, 1, 1),
        "decoder.upsamples.11.resample.1.weight": (96, 192, 3, 3), "decoder.head.2.weight": (3, 96, 3, 3, 3),
    }
    for key, shape in expected.items():
        assert state[key] == shape, key
    assert max(int(k.split(".")[2]) for k in state if k.startswith("decoder.upsamples.")) == 14


def test_taew2_1_layout_on_meta():
    with torch.device("meta"):
        model = TinyVAE(tiny_vae_config("taew2_1"))
    state = model.state_dict()
    assert sum(v.numel() for v in state.values()) == 11_315_539
    assert sum(v.numel() for k, v in state.items() if k.startswith("encoder.")) == 1_470_928
    assert sum(v.numel() for k, v in state.items() if k.startswith("decoder.")) == 9_844_611


def test_strides_of_the_presets():
    for cfg in (vae_config("demo"), tiny_vae_config("demo")):
        assert (cfg.spatial_stride, cfg.temporal_stride) == (8, 4)
    assert (vae_config("wan").spatial_stride, vae_config("wan").temporal_stride) == (8, 4)


def test_streaming_encode_and_decode_equal_the_whole_clip():
    vae = live(CausalVAE(SMALL))
    video = torch.rand(1, 3, 17, 16, 16, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        z = vae.encode(video)
        assert z.shape == (1, 16, 5, 4, 4)
        cache = FeatureCache()
        parts = [vae.encode_chunk(video[:, :, :1], cache)]
        parts += [vae.encode_chunk(video[:, :, 1 + 4 * i:5 + 4 * i], cache) for i in range(4)]
        assert (torch.cat(parts, 2) - z).abs().max() <= 1e-4
        whole = vae.decode(z)
        assert whole.shape == (1, 3, 17, 16, 16)
        cache = FeatureCache()
        parts = [vae.decode_chunk(z[:, :, i:i + 1], cache) for i in range(5)]
        assert (torch.cat(parts, 2) - whole).abs().max() <= 1e-4


def test_stream_memory_is_constant_and_output_causal():
    vae = live(CausalVAE(SMALL))
    cache = FeatureCache()
    z = torch.randn(1, 16, 40, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        sizes = []
        for i in range(40):
            vae.decode_chunk(z[:, :, i:i + 1], cache)
            sizes.append((cache.nbytes(), len(cache.slots)))
        assert len(set(sizes[2:])) == 1
        a = vae.decode(z[:, :, :6])
        z2 = z[:, :, :6].clone()
        z2[:, :, 4:] += 1
        b = vae.decode(z2)
    assert torch.equal(a[:, :, :13], b[:, :, :13]) and not torch.allclose(a[:, :, 13:], b[:, :, 13:])


def test_tiny_decoder_streams_like_the_whole_clip():
    tiny = live(TinyVAE(SMALL_TINY))
    z = torch.randn(1, 16, 6, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        whole = tiny.decode(z)
        assert whole.shape == (1, 3, 21, 16, 16)
        state = MemoryState()
        parts = [tiny.decode_chunk(z[:, :, i:i + 1], state) for i in range(6)]
        assert (torch.cat(parts, 2) - whole).abs().max() <= 1e-6
        video = torch.rand(1, 3, 9, 16, 16, dtype=torch.float64) * 2 - 1
        assert tiny.encode(video).shape == (1, 16, 3, 4, 4)
    with pytest.raises(ConfigError):
        tiny.encode(torch.zeros(1, 3, 8, 16, 16, dtype=torch.float64))


def test_tiny_decoder_reading_the_portrait_streams_like_the_whole_clip():
    """With `reference`, every latent frame after the stream's first is decoded beside that first one (the
    portrait's), kept in the stream's state: chunk by chunk equals the whole clip, later frames follow the portrait's
    latent, and the opening frame does not read itself."""
    tiny = live(TinyVAE(replace(SMALL_TINY, reference=True)))
    z = torch.randn(1, 16, 6, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        whole = tiny.decode(z)
        for sizes in ((1, 1, 1, 1, 1, 1), (1, 2, 3), (3, 3)):
            state, parts, start = MemoryState(), [], 0
            for n in sizes:
                parts.append(tiny.decode_chunk(z[:, :, start:start + n], state))
                start += n
            assert (torch.cat(parts, 2) - whole).abs().max() <= 1e-6, sizes
        other = z.clone()
        other[:, :, :1] += 1  # another portrait: the frames after the opening change
        changed = tiny.decode(other)
        assert (changed[:, :, 1:] - whole[:, :, 1:]).abs().amax(dim=(0, 1, 3, 4)).min() > 1e-4
        without = live(TinyVAE(SMALL_TINY))
        first = tiny.decoder[1].weight[:, :16].clone()
        without.load_state_dict({k: (first if k == "decoder.1.weight" else v)
                                 for k, v in tiny.state_dict().items()})
        assert (without.decode(z[:, :, :1]) - whole[:, :, :1]).abs().max() <= 1e-6  # beside zeros, not itself


def test_session_decoders_give_frames_with_the_vae_timing():
    vae, tiny = CausalVAE(SMALL).eval(), TinyVAE(SMALL_TINY).eval()
    z = torch.randn(1, 16, 3, 4, 4)
    for decoder in (VAEDecoder(vae), TinyDecoder(tiny)):
        decoder.reset()
        first, rest = decoder.decode(z[:, :, :2]), decoder.decode(z[:, :, 2:])
        assert first.shape == (5, 16, 16, 3) and rest.shape == (4, 16, 16, 3) and first.dtype == torch.uint8


def test_vae_checkpoints_round_trip_and_refuse_bad_files(tmp_path):
    vae = live(CausalVAE(SMALL)).float()
    save_vae(tmp_path / "v.safetensors", vae)
    z = torch.randn(1, 16, 2, 4, 4)
    with torch.no_grad():
        assert torch.equal(load_vae(tmp_path / "v.safetensors").decode(z), vae.decode(z))
    tiny = TinyVAE(SMALL_TINY)
    save_vae(tmp_path / "t.safetensors", tiny)
    assert load_tiny_vae(tmp_path / "t.safetensors").cfg == SMALL_TINY
    state = vae.state_dict()
    state.pop("decoder.head.2.weight")
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match="decoder.head.2.weight"):
        load_vae(tmp_path / "bad.safetensors", SMALL)


def test_decoder_only_tiny_checkpoint(tmp_path):
    """The shipped tiny decoder carries no encoder: it loads, decodes, and refuses to encode with a reason."""
    from engine.checkpoints.vae import decoder_only, load_tiny_vae, save_vae
    from engine.errors import ConfigError
    from engine.models.tiny_vae import TinyVAE, tiny_vae_config

    torch.manual_seed(0)
    full = TinyVAE(tiny_vae_config("demo")).eval()
    save_vae(tmp_path / "full.safetensors", full)
    decoder_only(tmp_path / "full.safetensors", tmp_path / "dec.safetensors")
    dec = load_tiny_vae(tmp_path / "dec.safetensors")
    assert dec.encoder is None and load_tiny_vae(tmp_path / "full.safetensors").encoder is not None
    z = torch.randn(1, full.cfg.z_dim, 2, 4, 4)
    with torch.no_grad():
        assert torch.allclose(dec.decode(z), full.decode(z), atol=2e-2)  # fp16 weights
    with pytest.raises(ConfigError, match="decoder-only"):
        dec.encode(torch.zeros(1, 3, 5, 32, 32))
