"""The DiT: public key names/shapes on the meta device, and the three attention drivers agreeing."""
import pytest
import torch

from engine.models.attention import KVCache, SequenceLayout
from engine.models.dit import DiT, DiTConfig, dit_config

TINY = DiTConfig("tiny", dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=4, out_dim=4, text_dim=8,
                 audio_dim=16, audio_tokens=2, audio_hidden=16, audio_in_dim=12)
AUDIO_EXTRAS = ("audio_proj.", ".norm_x.", ".audio_cross_attn.")


# ----------------------------------------------------------------------------- public layout (spec A.8)

def expected_wan_shapes(dim: int, ffn: int, layers: int) -> dict[str, tuple[int, ...]]:
    shapes = {
        "patch_embedding.weight": (dim, 16, 1, 2, 2), "patch_embedding.bias": (dim,),
        "text_embedding.0.weight": (dim, 4096), "text_embedding.0.bias": (dim,),
        "text_embedding.2.weight": (dim, dim), "text_embedding.2.bias": (dim,),
        "time_embedding.0.weight": (dim, 256), "time_embedding.0.bias": (dim,),
        "time_embedding.2.weight": (dim, dim), "time_embedding.2.bias": (dim,),
        "time_projection.1.weight": (6 * dim, dim), "time_projection.1.bias": (6 * dim,),
        "head.modulation": (1, 2, dim), "head.head.weight": (64, dim), "head.head.bias": (64,),
    }
    for i in range(layers):
        p = f"blocks.{i}."
        shapes[p + "modulation"] = (1, 6, dim)
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                shapes[f"{p}{attn}.{proj}.weight"] = (dim, dim)
                shapes[f"{p}{attn}.{proj}.bias"] = (dim,)
            shapes[f"{p}{attn}.norm_q.weight"] = (dim,)
            shapes[f"{p}{attn}.norm_k.weight"] = (dim,)
        shapes[p + "norm3.weight"] = (dim,)
        shapes[p + "norm3.bias"] = (dim,)
        shapes[p + "ffn.0.weight"] = (ffn, dim)
        shapes[p + "ffn.0.bias"] = (ffn,)
        shapes[p + "ffn.2.weight"] = (dim, ffn)
        shapes[p + "ffn.2.bias"] = (dim,)
    return shapes


@pytest.mark.parametrize("preset,dim,ffn,layers,keys,params", [
    ("wan-1.3b", 1536, 8960, 30, 825, 1_418_996_800),
    ("wan-14b", 5120, 13824, 40, 1095, 14_288_491_584),
])
def test_public_names_and_shapes_on_meta(preset, dim, ffn, layers, keys, params):
    with torch.device("meta"):
        model = DiT(dit_config(preset))
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    base = {k: s for k, s in state.items() if not any(x in k for x in AUDIO_EXTRAS)}
    assert base == expected_wan_shapes(dim, ffn, layers)
    assert len(base) == keys
    assert sum(torch.Size(s).numel() for s in base.values()) == params
    # the audio branch is InfiniteTalk-shaped: kv from 768-wide audio tokens, one set per block
    assert state["blocks.0.audio_cross_attn.kv_linear.weight"] == (2 * dim, 768)
    assert state["blocks.0.audio_cross_attn.proj.weight"] == (dim, dim)


def test_audio_output_starts_at_zero():
    """A fresh audio branch adds nothing: the model with audio equals the model without it."""
    model = DiT(TINY).eval()
    x = torch.randn(1, 4, 3, 4, 4)
    t = torch.full((1, 3), 500.0)
    layout = SequenceLayout(1, 2, (2, 2), 16)
    audio = model.encode_audio(torch.randn(1, 2, 3, 4))
    with torch.no_grad():
        a = model(x, t, layout, audio=audio, sink_frames=1)
        b = model(x, t, layout, audio=None, sink_frames=1)
    assert torch.equal(a, b)


def test_bad_configs_fail_loudly():
    with pytest.raises(ValueError, match="divisible"):
        DiTConfig("x", dim=30, ffn_dim=8, num_heads=4, num_layers=1, audio_dim=0)
    with pytest.raises(ValueError, match="unknown DiT preset"):
        dit_config("wan-2b")


# ----------------------------------------------------------------------------- drivers agree

def _randomised(cfg: DiTConfig) -> DiT:
    """A model whose zero-initialised parts are made non-zero, so every path carries signal."""
    model = DiT(cfg).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.abs().sum():
                p.normal_(0, 0.2)
    return model


def _inputs(model: DiT, frames: int):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(1, 4, frames, 4, 4, generator=g, dtype=torch.float64)
    sink = torch.randn(1, 4, 1, 4, 4, generator=g, dtype=torch.float64)
    audio = model.encode_audio(torch.randn(1, frames, 3, 4, generator=g, dtype=torch.float64))
    text = model.encode_text(torch.randn(1, 5, 8, generator=g, dtype=torch.float64))
    return g, x0, sink, audio, text


@pytest.mark.parametrize("chunk,window,chunks", [(1, 3, 7), (3, 6, 4), (3, 3, 3)])
def test_streaming_equals_block_causal_sequence(chunk, window, chunks):
    """Chunk by chunk through the KV cache (denoise pass, then the clean pass that writes the cache)
    equals one block-causal forward over [sink | clean history | noisy chunk], also after the window rolls."""
    model = _randomised(TINY)
    frames = chunk * chunks
    g, x0, sink, audio, text = _inputs(model, frames)
    cache = KVCache(model.cache_config((2, 2), 1, window), batch=1, dtype=torch.float64)
    worst = 0.0
    with torch.no_grad():
        model(sink, torch.zeros(1, 1), cache.sink(), text_kv=text, sink_frames=1)
        for k in range(chunks):
            s, e = k * chunk, (k + 1) * chunk
            noisy = torch.randn(1, 4, chunk, 4, 4, generator=g, dtype=torch.float64)
            t = torch.rand(1, chunk, generator=g, dtype=torch.float64) * 1000
            out = model(noisy, t, cache.chunk(chunk), audio=audio[:, s:e], text_kv=text)
            model(x0[:, :, s:e], torch.zeros(1, chunk), cache.chunk(chunk, write=True), audio=audio[:, s:e],
                  text_kv=text)
            cache.advance(chunk)

            seq = torch.cat([sink, x0[:, :, :s], noisy], 2)
            ts = torch.cat([torch.zeros(1, 1 + s, dtype=torch.float64), t], 1)
            layout = SequenceLayout(1, e, (2, 2), TINY.dim // TINY.num_heads, causal_chunk=chunk,
                                    window_frames=window)
            ref = model(seq, ts, layout, audio=audio[:, :e], text_kv=text, sink_frames=1)[:, :, 1 + s:]
            worst = max(worst, (out - ref).abs().max().item())
    assert worst <= 1e-4


@pytest.mark.parametrize("chunk,window", [(1, 4), (3, 6)])
def test_streaming_equals_block_causal_in_float32(chunk, window):
    """The issue's bar: fp32, max abs error <= 1e-4, over 12 frames (the window rolls)."""
    model = _randomised(TINY).float()
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(1, 4, 12, 4, 4, generator=g)
    sink = torch.randn(1, 4, 1, 4, 4, generator=g)
    audio = model.encode_audio(torch.randn(1, 12, 3, 4, generator=g))
    text = model.encode_text(torch.randn(1, 5, 8, generator=g))
    cache = KVCache(model.cache_config((2, 2), 1, window), batch=1)
    with torch.no_grad():
        model(sink, torch.zeros(1, 1), cache.sink(), text_kv=text, sink_frames=1)
        outs = []
        for s in range(0, 12, chunk):
            outs.append(model(x0[:, :, s:s + chunk], torch.zeros(1, chunk), cache.chunk(chunk, write=True),
                              audio=audio[:, s:s + chunk], text_kv=text))
            cache.advance(chunk)
        layout = SequenceLayout(1, 12, (2, 2), 16, causal_chunk=chunk, window_frames=window)
        ref = model(torch.cat([sink, x0], 2), torch.zeros(1, 13), layout, audio=audio, text_kv=text,
                    sink_frames=1)[:, :, 1:]
    assert (torch.cat(outs, 2) - ref).abs().max().item() <= 1e-4


def test_one_block_is_bidirectional():
    model = _randomised(TINY)
    _, x0, sink, audio, text = _inputs(model, 4)
    seq, t = torch.cat([sink, x0], 2), torch.rand(1, 5, dtype=torch.float64) * 1000
    with torch.no_grad():
        bi = model(seq, t, SequenceLayout(1, 4, (2, 2), 16), audio=audio, text_kv=text, sink_frames=1)
        blk = model(seq, t, SequenceLayout(1, 4, (2, 2), 16, causal_chunk=4), audio=audio, text_kv=text,
                    sink_frames=1)
        causal = model(seq, t, SequenceLayout(1, 4, (2, 2), 16, causal_chunk=1), audio=audio, text_kv=text,
                       sink_frames=1)
    assert torch.allclose(bi, blk, atol=1e-10)
    assert not torch.allclose(bi, causal, atol=1e-3)  # causality changes the earlier frames


def test_future_frames_do_not_change_the_past():
    model = _randomised(TINY)
    _, x0, sink, audio, text = _inputs(model, 4)
    t = torch.rand(1, 5, dtype=torch.float64) * 1000
    layout = SequenceLayout(1, 4, (2, 2), 16, causal_chunk=2)
    with torch.no_grad():
        a = model(torch.cat([sink, x0], 2), t, layout, audio=audio, text_kv=text, sink_frames=1)
        x1 = x0.clone()
        x1[:, :, 2:] += 1.0
        b = model(torch.cat([sink, x1], 2), t, layout, audio=audio, text_kv=text, sink_frames=1)
    assert torch.allclose(a[:, :, :3], b[:, :, :3], atol=1e-12)
    assert not torch.allclose(a[:, :, 3:], b[:, :, 3:], atol=1e-3)


def test_bf16_weights_run_with_a_float32_residual_stream():
    model = DiT(TINY).to(torch.bfloat16).eval()
    x = torch.randn(1, 4, 3, 4, 4)
    audio = model.encode_audio(torch.randn(1, 2, 3, 4))
    text = model.encode_text(torch.randn(1, 5, 8))
    with torch.no_grad():
        v = model(x, torch.full((1, 3), 500.0), SequenceLayout(1, 2, (2, 2), 16), audio=audio, text_kv=text,
                  sink_frames=1)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
