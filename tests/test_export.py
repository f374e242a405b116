"""ONNX export of the chunk step: the graph modules equal the engine's layouts and decoders, the exported
files pass onnx.checker, and ONNX Runtime matches torch over streams longer than the KV window."""
import atexit
import functools
import json
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.audio.features import AudioFeatureConfig
from engine.errors import ConfigError
from engine.models.attention import KVCache
from engine.models.dit import DiT, DiTConfig
from engine.models.tiny_vae import MemoryState, TinyVAE, TinyVAEConfig
from engine.models.vae import CausalVAE, FeatureCache, VAEConfig
from exporters.chunk_graph import ChunkShape, CommitGraph, PassGraph, SinkGraph, rope_tables
from exporters.decoder_graph import DecoderState, TinyDecodeGraph, VAEDecodeGraph
from exporters.errors import BackendError

AUDIO = AudioFeatureConfig()
TINY = DiTConfig("tiny", dim=32, ffn_dim=64, num_heads=2, num_layers=2, in_dim=16, out_dim=16, text_dim=0,
                 audio_dim=16, audio_tokens=2, audio_hidden=16,
                 audio_in_dim=AUDIO.window_mel_frames * AUDIO.n_mels)
SMALL_VAE = VAEConfig("small", base_dim=8, dim_mult=(1, 2, 2), num_res_blocks=1, temporal_down=(True, True))
SMALL_TINY = TinyVAEConfig("small", decoder_widths=(16, 8, 8), decoder_blocks=(1, 1), decoder_time_up=(2, 2),
                           encoder_time_pool=(2, 2), encoder_width=8, encoder_blocks=1)
SHAPE = ChunkShape(latent_hw=(4, 4), sink_frames=1, chunk_frames=1, window_frames=3)
CHUNKS = 8  # more than twice the window: the ring rolls over


def live(model):
    """Zero-initialised parts (head, audio output, VAE attention output) get values: every path carries signal."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.2)
    return model.eval().requires_grad_(False)


@functools.lru_cache(maxsize=1)
def models():
    torch.manual_seed(0)
    return live(DiT(TINY)), live(CausalVAE(SMALL_VAE)), live(TinyVAE(SMALL_TINY))


@functools.lru_cache(maxsize=1)
def reference_tiny() -> TinyVAE:
    """A tiny decoder that reads the stream's first latent frame beside each one (its state holds it)."""
    torch.manual_seed(1)
    return live(TinyVAE(replace(SMALL_TINY, name="small-ref", reference=True)))


@functools.lru_cache(maxsize=1)
def exported() -> Path:
    """One bundle per test process (tests/test_backends.py uses it too): exporting takes most of the time."""
    from exporters.onnx_export import export_bundle

    model, vae, tiny = models()
    out = Path(tempfile.mkdtemp(prefix="talkstream-onnx-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    export_bundle(model, SHAPE, out, vae=vae, tiny=tiny)
    return out


def rel_err(a, b) -> float:
    """max |a − b| / max |b|; tensors may sit on any device."""
    a, b = (np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, np.float64) for x in (a, b))
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def stream_inputs(model: DiT, chunks: int, chunk: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    reference = torch.randn(1, 16, 1, 4, 4, generator=g)
    xs = [torch.randn(1, 16, chunk, 4, 4, generator=g) for _ in range(chunks)]
    audio = [model.encode_audio(torch.randn(1, chunk, AUDIO.window_mel_frames, AUDIO.n_mels, generator=g))
             for _ in range(chunks)]
    return reference, xs, audio


# ----------------------------------------------------------------------------- graph modules (torch)

@pytest.mark.parametrize("chunk,window", [(1, 3), (2, 3)])
def test_chunk_graphs_equal_the_engine_kv_cache(chunk, window):
    """PassGraph/CommitGraph with the cache as tensors equal KVCache.chunk() chunk after chunk, also when the
    ring wraps in the middle of a chunk (chunk 2, window 3); both the masked graphs (any position: ONNX) and
    the graphs built for the ring's filled frames (no mask: the CUDA-graph backend's)."""
    model = models()[0]
    shape = ChunkShape((4, 4), 1, chunk, window)
    cfg = shape.cache_config(model)
    reference, xs, audio = stream_inputs(model, 6, chunk)
    cache = KVCache(cfg, batch=1)
    with torch.no_grad():
        model(reference, torch.zeros(1, 1), cache.sink(), sink_frames=1)
        sink_k, sink_v = SinkGraph(model, shape)(reference)
        assert torch.equal(sink_k, cache.sink_k) and torch.equal(sink_v, cache.sink_v)
        ring_k, ring_v = torch.zeros_like(cache.k), torch.zeros_like(cache.v)
        for k, (x, a) in enumerate(zip(xs, audio)):
            position = torch.tensor(cache.frames_written)
            tables = rope_tables(cfg, chunk, cache.frames_written)
            t = torch.full((1, chunk), 700.0)
            want = model(x, t, cache.chunk(chunk), audio=a)
            filled = min(cache.frames_written, window)
            for graph in (PassGraph(model, shape), PassGraph(model, shape, filled_frames=filled)):
                got = graph(x, t, a, sink_k, sink_v, ring_k, ring_v, position, *tables)
                assert (got - want).abs().max() <= 1e-5, (k, graph.filled_frames)
            model(x, torch.zeros(1, chunk), cache.chunk(chunk, write=True), audio=a)
            cache.advance(chunk)
            masked = CommitGraph(model, shape)(x, a, sink_k, sink_v, ring_k, ring_v, position, *tables)
            ring_k, ring_v = CommitGraph(model, shape, filled_frames=filled)(x, a, sink_k, sink_v, ring_k, ring_v,
                                                                              position, *tables)
            for ring, want_ring in ((masked[0], cache.k), (masked[1], cache.v), (ring_k, cache.k), (ring_v, cache.v)):
                assert (ring - want_ring).abs().max() <= 1e-5, k
    with pytest.raises(ConfigError, match="filled_frames"):
        PassGraph(model, shape, filled_frames=window + 1)


@pytest.mark.parametrize("chunk", [1, 2])
def test_decoder_graphs_equal_streaming_decode(chunk):
    """Fixed-shape state (zero-padded history) decodes exactly like the engine's growing state lists."""
    _, vae, tiny = models()
    z = torch.randn(1, 16, 1 + 3 * chunk, 4, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for decoder in (vae, tiny, reference_tiny()):
            layout = DecoderState.discover(decoder, (1, 16, chunk, 4, 4))
            want = decoder.decode_chunk(z[:, :, :1], FeatureCache() if decoder is vae else MemoryState())
            if decoder is vae:
                video, *state = VAEDecodeGraph(vae, layout, first=True)(z[:, :, :1])
                step = VAEDecodeGraph(vae, layout, first=False)
            else:
                step = TinyDecodeGraph(decoder, layout)
                video, *state = step(z[:, :, :1], *layout.zeros())
                video = video[:, :, decoder.frames_to_trim:]
            assert (video - want).abs().max() <= 1e-5
            got, want = [], decoder.decode(z)[:, :, 1:]
            for s in range(1, z.shape[2], chunk):
                video, *state = step(z[:, :, s:s + chunk], *state)
                got.append(video)
            assert (torch.cat(got, 2) - want).abs().max() <= 1e-5, decoder.cfg.name


# ----------------------------------------------------------------------------- exported files

def test_bundle_files_pass_the_checker_and_the_manifest_names_them():
    import onnx

    root = exported()
    manifest = json.loads((root / "manifest.json").read_text())
    files = [*manifest["dit"]["graphs"].values(),
             *(f for d in manifest["decoders"].values() for f in d["graphs"].values())]
    assert sorted(files) == sorted(p.name for p in root.glob("*.onnx"))
    assert set(files) >= {"dit_sink.onnx", "dit_pass.onnx", "dit_commit.onnx", "vae_first.onnx", "vae_step_1.onnx",
                          "tiny_step_1.onnx"}
    for f in files:
        onnx.checker.check_model(str(root / f), full_check=True)
    inputs = [i.name for i in onnx.load(str(root / "dit_pass.onnx"), load_external_data=False).graph.input]
    assert inputs == manifest["dit"]["inputs"]["pass"]


def test_onnxruntime_chunk_step_matches_torch_over_a_rolling_window():
    """Sink, pass and commit graphs on ONNX Runtime drive their own ring for CHUNKS chunks (the window is 3):
    every pass's velocity and the ring stay within 1e-3 relative error of the engine's KVCache path."""
    from exporters.onnx_export import Bundle
    from exporters.ort import OrtGraph

    model = models()[0]
    bundle = Bundle.load(exported())
    cpu = torch.device("cpu")
    sink, step, commit = (OrtGraph(bundle.graph("dit", n), cpu, threads=2) for n in ("sink", "pass", "commit"))
    cfg = SHAPE.cache_config(model)
    reference, xs, audio = stream_inputs(model, CHUNKS, 1)
    cache = KVCache(cfg, batch=1)
    sink_k, sink_v = torch.empty_like(cache.sink_k), torch.empty_like(cache.sink_v)
    ring = [torch.zeros_like(cache.k), torch.zeros_like(cache.v)]
    worst = 0.0
    with torch.no_grad():
        model(reference, torch.zeros(1, 1), cache.sink(), sink_frames=1)
        sink.run({"reference": reference}, {"sink_k": sink_k, "sink_v": sink_v})
        worst = max(rel_err(sink_k, cache.sink_k), rel_err(sink_v, cache.sink_v))
        for k, (x, a) in enumerate(zip(xs, audio)):
            feeds = dict(zip(["cos_chunk", "sin_chunk", "cos_sink", "sin_sink"],
                             rope_tables(cfg, 1, cache.frames_written)))
            feeds.update(audio=a, sink_k=sink_k, sink_v=sink_v, ring_k=ring[0], ring_v=ring[1],
                         position=torch.tensor(cache.frames_written))
            for sigma in (1.0, 0.6):
                t = torch.full((1, 1), 1000 * sigma)
                velocity = torch.empty_like(x)
                step.run({"x": x, "t": t, **feeds}, {"velocity": velocity})
                worst = max(worst, rel_err(velocity, model(x, t, cache.chunk(1), audio=a)))
            new = [torch.empty_like(r) for r in ring]
            commit.run({"x0": x, **feeds}, {"new_ring_k": new[0], "new_ring_v": new[1]})
            model(x, torch.zeros(1, 1), cache.chunk(1, write=True), audio=a)
            cache.advance(1)
            ring = new
            worst = max(worst, rel_err(ring[0], cache.k), rel_err(ring[1], cache.v))
    assert cache.frames_written > 2 * cfg.window_frames
    assert worst <= 1e-3


def test_onnxruntime_decoders_match_torch_stream():
    """The VAE's first and step graphs and the tiny decoder's step graph, chained through their state on ONNX
    Runtime, decode a stream like the engine's decoders (1e-3 relative)."""
    from exporters.onnx_export import Bundle
    from exporters.ort import OrtGraph

    _, vae, tiny = models()
    bundle = Bundle.load(exported())
    cpu = torch.device("cpu")
    z = torch.randn(1, 16, CHUNKS, 4, 4, generator=torch.Generator().manual_seed(3))
    for kind, decoder in (("vae", vae), ("tiny", tiny)):
        layout = bundle.decoder_state(kind)
        graphs = {n: OrtGraph(bundle.graph(kind, n), cpu, threads=2) for n in bundle.decoder(kind)["graphs"]}
        state = layout.zeros()
        got = []
        for k in range(CHUNKS):
            name = "first" if kind == "vae" and k == 0 else "step_1"
            g = graphs[name]
            video = torch.empty(g.session.get_outputs()[0].shape)
            new = layout.zeros()
            inputs = {"z": z[:, :, k:k + 1].contiguous(), **dict(zip(layout.names, state))}
            g.run(inputs, {"video": video, **{o: s for o, s in zip(g.outputs[1:], new)}})
            got.append(video[:, :, bundle.frames_to_trim(kind):] if k == 0 else video)
            state = new
        with torch.no_grad():
            want = decoder.decode(z)
        assert rel_err(torch.cat(got, 2), want) <= 1e-3, kind


def test_onnxruntime_tiny_decoder_reading_the_portrait_matches_torch_stream(tmp_path):
    """The stream's first latent frame travels in the step graph's state (zeros, then held): chained on ONNX
    Runtime from the zero state, it decodes a stream like the engine's decoder."""
    from exporters.onnx_export import export_decoder
    from exporters.ort import OrtGraph

    model, _, _ = models()
    tiny = reference_tiny()
    entry = export_decoder(tiny, "tiny", model, SHAPE, tmp_path)
    layout = DecoderState("tiny", tuple(tuple(x) for x in entry["state"]["shapes"]))
    graph = OrtGraph(tmp_path / entry["graphs"]["step_1"], torch.device("cpu"), threads=2)
    z = torch.randn(1, 16, CHUNKS, 4, 4, generator=torch.Generator().manual_seed(4))
    state, got = layout.zeros(), []
    for k in range(CHUNKS):
        video, new = torch.empty(graph.session.get_outputs()[0].shape), layout.zeros()
        graph.run({"z": z[:, :, k:k + 1].contiguous(), **dict(zip(layout.names, state))},
                  {"video": video, **{o: s for o, s in zip(graph.outputs[1:], new)}})
        got.append(video[:, :, tiny.frames_to_trim:] if k == 0 else video)
        state = new
    with torch.no_grad():
        want = tiny.decode(z)
    assert rel_err(torch.cat(got, 2), want) <= 1e-3


def test_bundle_refuses_other_weights_and_other_shapes():
    from exporters.onnx_export import Bundle

    model, vae, _ = models()
    bundle = Bundle.load(exported())
    bundle.check_matches(model, SHAPE, vae, "vae")
    with pytest.raises(BackendError, match="exported for"):
        bundle.check_matches(model, ChunkShape((4, 4), 1, 1, 4))
    other = DiT(TINY)
    with pytest.raises(BackendError, match="other DiT weights"):
        bundle.check_matches(other, SHAPE)
    with pytest.raises(BackendError, match="no 'wan' decoder"):
        bundle.decoder("wan")
    with pytest.raises(BackendError, match="holds no manifest"):
        Bundle.load(Path(tempfile.mkdtemp()))


def test_cli_export_onnx_builds_the_chunk_shape_from_the_preset(monkeypatch, tmp_path, capsys):
    """`talkstream export onnx` derives the latent grid from the preset's VAE and passes the decoders asked
    for (the export itself is recorded, not run: a demo-size export takes a minute)."""
    from clients.cli import main
    from exporters import onnx_export
    from exporters.onnx_export import Bundle

    calls = []

    def record(model, shape, out, vae=None, tiny=None):
        calls.append((model.cfg.name, shape, vae, tiny))
        out.mkdir(parents=True)
        return Bundle(out, {})

    monkeypatch.setattr(onnx_export, "export_bundle", record)
    assert main(["export", "onnx", "--out", str(tmp_path / "b"), "--chunk", "2", "--window", "5",
                 "--decoders", "tiny", "--verify-chunks", "0"]) == 0
    [(name, shape, vae, tiny)] = calls
    assert name == "demo" and shape == ChunkShape((16, 16), 1, 2, 5)
    assert vae is None and isinstance(tiny, TinyVAE)
    assert "onnx.checker passed" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["export", "tensorrt", "--out", str(tmp_path)])
