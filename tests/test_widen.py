"""engine.train.widen: a wider latent space starts from trained weights and computes what they computed."""
from dataclasses import replace

import pytest
import torch

from engine.errors import ConfigError
from engine.models.attention import SequenceLayout
from engine.models.dit import DiT, dit_config
from engine.models.tiny_vae import MemoryState, TinyVAE, tiny_vae_config
from engine.models.vae import CausalVAE, vae_config
from engine.train.widen import widen_dit, widen_tiny, widen_vae


def _narrow_vae(z: int) -> CausalVAE:
    return CausalVAE(replace(vae_config("demo"), z_dim=z, latent_mean=(0.0,) * z, latent_std=(1.0,) * z))


def _randomise(model: torch.nn.Module, seed: int) -> None:
    """Trained-looking weights: the zero-initialised output projections too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


def test_a_widened_vae_encodes_and_decodes_its_old_channels_as_before():
    torch.manual_seed(0)
    old, new = _narrow_vae(16), _narrow_vae(32)
    _randomise(old, 1)
    widen_vae(old, new)
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    with torch.no_grad():
        z_old, z_new = old.encode(video), new.encode(video)
        assert torch.allclose(z_new[:, :16], z_old, atol=1e-5)
        assert z_new[:, 16:].abs().mean() > 1e-3  # the new channels carry something to learn from
        other = torch.cat([z_old, torch.randn_like(z_old)], 1)  # whatever the new channels hold
        assert torch.allclose(new.decode(other), old.decode(z_old), atol=1e-5)


def test_a_widened_tiny_decoder_ignores_the_new_channels_at_first():
    old = TinyVAE(replace(tiny_vae_config("demo"), z_dim=16)).eval()
    new = TinyVAE(replace(tiny_vae_config("demo"), z_dim=32)).eval()
    _randomise(old, 2)
    widen_tiny(old, new)
    z = torch.randn(1, 16, 3, 4, 4)
    with torch.no_grad():
        wide = new.decode_chunk(torch.cat([z, torch.randn_like(z)], 1), MemoryState())
        assert torch.allclose(wide, old.decode_chunk(z, MemoryState()), atol=1e-5)


def test_a_tiny_decoder_gaining_the_reference_input_decodes_as_before():
    old = TinyVAE(tiny_vae_config("demo")).eval()
    new = TinyVAE(tiny_vae_config("demo-ref")).eval()
    _randomise(old, 4)
    widen_tiny(old, new)
    z = torch.randn(1, 32, 4, 4, 4)
    with torch.no_grad():
        assert torch.allclose(new.decode(z), old.decode(z), atol=1e-5)
    wider = TinyVAE(replace(tiny_vae_config("demo-ref"), z_dim=48)).eval()  # and from there to more channels
    with torch.no_grad():
        new.decoder[1].weight[:, 32:].normal_()  # a trained reference input is carried over
        widen_tiny(new, wider)
        assert torch.allclose(wider.decode(torch.cat([z, torch.randn(1, 16, 4, 4, 4)], 1)), new.decode(z), atol=1e-5)
    with pytest.raises(ConfigError, match="reference"):
        widen_tiny(new, old)


def test_a_widened_dit_predicts_the_old_velocity_and_zero_for_new_channels():
    torch.manual_seed(0)
    old = DiT(replace(dit_config("demo"), in_dim=16, out_dim=16, num_layers=2)).eval()
    _randomise(old, 3)
    new = widen_dit(old, 32).eval()
    assert new.cfg.in_dim == new.cfg.out_dim == 32
    x = torch.randn(1, 16, 3, 8, 8)  # sink + 2 frames
    t = torch.full((1, 3), 500.0)
    layout = SequenceLayout(1, 2, old.token_grid((8, 8)), old.cfg.dim // old.cfg.num_heads)
    with torch.no_grad():
        v_old = old(x, t, layout, sink_frames=1)
        v_new = new(torch.cat([x, torch.randn_like(x)], 1), t, layout, sink_frames=1)
    assert torch.allclose(v_new[:, :16], v_old, atol=1e-4)
    assert v_new[:, 16:].abs().max() == 0


def test_widening_refuses_other_changes():
    with pytest.raises(ConfigError, match="more"):
        widen_vae(_narrow_vae(32), _narrow_vae(16))
    narrow, other = _narrow_vae(16), CausalVAE(replace(vae_config("demo"), base_dim=8))
    with pytest.raises(ConfigError, match="only the latent width"):
        widen_vae(narrow, other)
