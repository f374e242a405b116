"""GPU checks (skipped without CUDA): the streaming path equals the block-causal path on the device, and a
bf16 wan-shaped model runs a chunk."""
import pytest
import torch

from engine.models.attention import KVCache, SequenceLayout
from engine.models.dit import DiT, DiTConfig

pytestmark = pytest.mark.gpu
TINY = DiTConfig("tiny", dim=64, ffn_dim=128, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=8,
                 audio_dim=16, audio_tokens=2, audio_hidden=16, audio_in_dim=12)


def test_streaming_equals_block_causal_on_cuda():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = DiT(TINY).cuda().eval()
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.2)
    g = torch.Generator(device="cuda").manual_seed(0)
    x0 = torch.randn(1, 4, 5, 8, 8, device="cuda", generator=g)
    sink = torch.randn(1, 4, 1, 8, 8, device="cuda", generator=g)
    audio = model.encode_audio(torch.randn(1, 5, 3, 4, device="cuda", generator=g))
    cache = KVCache(model.cache_config((4, 4), 1, 3), batch=1, device="cuda")
    outs = []
    with torch.no_grad():
        model(sink, torch.zeros(1, 1, device="cuda"), cache.sink(), sink_frames=1)
        for k in range(5):
            outs.append(model(x0[:, :, k:k + 1], torch.zeros(1, 1, device="cuda"), cache.chunk(1, write=True),
                              audio=audio[:, k:k + 1]))
            cache.advance(1)
        layout = SequenceLayout(1, 5, (4, 4), 32, causal_chunk=1, window_frames=3)
        ref = model(torch.cat([sink, x0], 2), torch.zeros(1, 6, device="cuda"), layout, audio=audio,
                    sink_frames=1)[:, :, 1:]
    assert (torch.cat(outs, 2) - ref).abs().max().item() <= 1e-4


def test_bf16_chunk_runs_and_is_finite():
    model = DiT(TINY).cuda().to(torch.bfloat16).eval()
    cache = KVCache(model.cache_config((4, 4), 1, 4), batch=1, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        model(torch.randn(1, 4, 1, 8, 8, device="cuda"), torch.zeros(1, 1, device="cuda"), cache.sink(),
              sink_frames=1)
        v = model(torch.randn(1, 4, 1, 8, 8, device="cuda"), torch.full((1, 1), 900.0, device="cuda"),
                  cache.chunk(1))
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
