"""float8 linears (exporters/fp8.py): the quantisation is checked on the CPU; the matmul itself needs a GPU
of compute capability 8.9+ and is measured by bench/pass_profile.py (speed and error against bf16)."""
import pytest
import torch

from engine.models.dit import DiT, DiTConfig
from exporters.errors import BackendError
from exporters.fp8 import E4M3_MAX, _quantise_rows, fp8_linears


def test_rows_are_quantised_with_their_own_scale():
    torch.manual_seed(0)
    x = torch.randn(64, 256) * torch.logspace(-3, 3, 64)[:, None]  # rows six decades apart
    q, scale = _quantise_rows(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (64, 1)
    assert q.float().abs().amax(1).sub(E4M3_MAX).abs().max() < 1e-3  # every row uses the full range
    back = q.float() * scale
    rel = (back - x).norm(dim=1) / x.norm(dim=1)
    assert rel.max() < 0.05  # e4m3 keeps 3 mantissa bits: a few percent per row, whatever its magnitude


def test_fp8_refuses_a_model_on_the_cpu_with_what_it_needs():
    model = DiT(DiTConfig("t", dim=32, ffn_dim=64, num_heads=2, num_layers=1, text_dim=0, audio_dim=0))
    with pytest.raises(BackendError, match="compute capability 8.9"):
        fp8_linears(model)
