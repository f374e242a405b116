"""The KV cache: constant memory for any length, the sink pinned, the ring holding the last W frames."""
import pytest
import torch

from engine.errors import ConfigError
from engine.models.attention import KVCache, KVCacheConfig


def _cache(window=4, sink=1):
    return KVCache(KVCacheConfig(num_layers=2, num_heads=2, head_dim=8, grid_hw=(2, 2), sink_frames=sink,
                                 window_frames=window), batch=1)


def test_five_thousand_chunks_constant_memory_and_sink_kept():
    cache = _cache(window=4)
    T = 4
    sink = cache.sink()
    for layer in range(2):
        sink(layer, *(torch.randn(1, T, 2, 8) for _ in range(3)))
    sink_k, sink_v = cache.sink_k.clone(), cache.sink_v.clone()
    sizes = cache.nbytes()
    ptrs = [t.data_ptr() for t in (cache.sink_k, cache.sink_v, cache.k, cache.v)]
    for i in range(5000):
        step = cache.chunk(1, write=True)
        for layer in range(2):
            q, k, v = (torch.full((1, T, 2, 8), float(i)) + torch.randn(1, T, 2, 8) * 0.01 for _ in range(3))
            out = step(layer, q, k, v)
            assert torch.isfinite(out).all()
        cache.advance(1)
    assert cache.nbytes() == sizes
    assert [t.data_ptr() for t in (cache.sink_k, cache.sink_v, cache.k, cache.v)] == ptrs
    assert torch.equal(cache.sink_k, sink_k) and torch.equal(cache.sink_v, sink_v)
    # the ring holds exactly the last 4 frames' values (4996..4999), one per slot
    held = sorted(round(x) for x in cache.v[0, 0, :, 0, 0].reshape(4, T)[:, 0].tolist())
    assert held == [4996, 4997, 4998, 4999]


def test_empty_ring_slots_are_masked_until_full():
    cache = _cache(window=3)
    assert cache.chunk(1).mask is not None
    for _ in range(3):
        cache.advance(1)
    assert cache.chunk(1).mask is None


def test_chunk_larger_than_window_is_refused():
    with pytest.raises(ConfigError, match="does not fit"):
        _cache(window=2).chunk(3)


def test_keys_and_values_of_another_dtype_are_stored_in_the_cache_dtype():
    """Under bf16 autocast the values come out of a linear layer in bf16 while the keys leave the float32
    RMSNorm: the clean pass still writes both into the float32 ring."""
    cache = _cache(window=2)
    q, k = torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8)
    v = torch.randn(1, 4, 2, 8).bfloat16()
    cache.chunk(1, write=True)(0, q, k, v)
    assert cache.v.dtype == torch.float32
    assert torch.equal(cache.v[0, :, :4], v.float())  # (keys are stored after RoPE)
    assert cache.k.dtype == torch.float32 and cache.k[0, :, :4].abs().sum() > 0
