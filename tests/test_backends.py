"""Backends of the chunk step: the choice and its fall-backs, and every backend streams what the eager
StreamingGenerator streams for the same seed (latents and decoded frames), across a rolling window and a
change of step count. GPU backends are checked under the `gpu` marker."""
import copy
import logging
import tempfile

import numpy as np
import pytest
import torch

from engine.generate.decoders import TinyDecoder, VAEDecoder
from engine.generate.streaming import StreamConfig, StreamingGenerator, sigma_list
from engine.models.vae import CausalVAE
from exporters.backends import (
    BACKENDS,
    CudaGraphBackend,
    OrtBackend,
    TorchBackend,
    choose_backend,
    make_backend,
)
from exporters.chunk_graph import ChunkShape
from exporters.errors import BackendError
from exporters.stream import BackendGenerator
from tests.test_export import AUDIO, SHAPE, exported, models, rel_err

SR = AUDIO.sample_rate
CONFIG = StreamConfig(chunk_frames=SHAPE.chunk_frames, window_frames=SHAPE.window_frames, steps=2)


def speech(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def reference(device="cpu") -> torch.Tensor:
    return torch.randn(1, 16, 1, 4, 4, generator=torch.Generator().manual_seed(5)).to(device)


def run(gen: StreamingGenerator, seconds: float = 1.6, seed: int = 3):
    """Stream `seconds` of audio; the step count drops from 2 to 1 halfway (as an adaptive session would)."""
    gen.reset(reference(gen.device), seed=seed)
    gen.steps = CONFIG.steps  # reset() keeps the step count a session chose
    gen.push_audio(speech(seconds), SR)
    chunks = []
    while gen.played < gen.voiced_until:
        if len(chunks) == 6:
            gen.steps = 1
        chunks.append(gen.step(allow_silence=True))
    return chunks


def on_cuda():
    """Copies of the test models on the GPU (the cached CPU ones stay where they are)."""
    return tuple(copy.deepcopy(m).to("cuda") for m in models())


def eager_decoder(decoder):
    return VAEDecoder(decoder) if isinstance(decoder, CausalVAE) else TinyDecoder(decoder)


def assert_same_stream(want, got, frames_tolerance: int):
    assert len(want) == len(got) > 2 * SHAPE.window_frames  # the window rolls over twice
    for a, b in zip(want, got):
        assert (a.first_frame, a.num_frames, a.steps) == (b.first_frame, b.num_frames, b.steps)
        assert rel_err(b.latents, a.latents) <= 1e-3
        if a.frames is not None:
            assert a.frames.shape == b.frames.shape
            assert (a.frames.int() - b.frames.int()).abs().max() <= frames_tolerance


# ----------------------------------------------------------------------------- choosing

def test_unknown_backend_names_the_choices():
    model = models()[0]
    with pytest.raises(BackendError, match="choose one of") as e:
        choose_backend("cpu", model, SHAPE, name="tensorrt")
    assert all(name in str(e.value) for name in BACKENDS)


def test_gpu_backends_fall_back_to_torch_on_a_cpu_with_one_log_line(caplog):
    model = models()[0]
    for name in ("torch-cudagraph", "onnxruntime-cuda"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="exporters.backends"):
            backend = choose_backend("cpu", model, SHAPE, name=name)
        assert backend.name == "torch"
        assert len(caplog.records) == 1 and "CUDA" in caplog.records[0].getMessage()
    with pytest.raises(BackendError, match="cannot run here"):
        make_backend("torch-cudagraph", model, SHAPE)


def test_cpu_choice_is_onnxruntime_with_a_matching_bundle_and_torch_otherwise(caplog):
    model, vae, _ = models()
    assert choose_backend("cpu", model, SHAPE, vae, onnx_dir=exported()).name == "onnxruntime-cpu"
    with caplog.at_level(logging.WARNING, logger="exporters.backends"):
        assert choose_backend("cpu", model, SHAPE, vae).name == "torch"  # no bundle
        other = ChunkShape((4, 4), 1, 1, 4)  # a bundle exported for another window
        assert choose_backend("cpu", model, other, vae, onnx_dir=exported()).name == "torch"
    assert "exported for" in caplog.records[-1].getMessage()


def test_generator_refuses_guidance_and_other_chunk_shapes():
    model = models()[0]
    backend = TorchBackend(model, SHAPE)
    with pytest.raises(BackendError, match="audio_guidance"):
        BackendGenerator(model, backend, StreamConfig(window_frames=3, audio_guidance=2.0))
    with pytest.raises(BackendError, match="window of 3"):
        BackendGenerator(model, backend, StreamConfig(window_frames=8))


# ----------------------------------------------------------------------------- streams equal the eager generator

@pytest.mark.parametrize("kind", ["vae", "tiny"])
def test_every_cpu_backend_streams_what_the_eager_generator_streams(kind):
    """torch (the engine's layouts), the CUDA-graph backend's static-buffer chunk run eagerly, and ONNX Runtime
    on the CPU: same seed, same latents (1e-3 relative) and frames chunk by chunk (uint8: equal for torch, within
    1 level for the others, whose attention sums over the filled keys only or runs other kernels)."""
    model, vae, tiny = models()
    decoder = vae if kind == "vae" else tiny
    want = run(StreamingGenerator(model, CONFIG, decoder=eager_decoder(decoder)))
    backends = [TorchBackend(model, SHAPE, decoder), CudaGraphBackend(model, SHAPE, decoder, capture=False),
                OrtBackend(exported(), "cpu", kind, threads=2)]
    for backend in backends:
        got = run(BackendGenerator(model, backend, CONFIG))
        assert_same_stream(want, got, frames_tolerance=0 if backend.name == "torch" else 1)


def test_onnxruntime_latents_only_and_a_second_session_start_fresh():
    model = models()[0]
    backend = OrtBackend(exported(), "cpu", None, threads=2)
    gen = BackendGenerator(model, backend, CONFIG)
    first, again = run(gen), run(gen)  # reset() clears the ring: a second stream repeats the first
    want = run(StreamingGenerator(model, CONFIG))
    assert first[0].frames is None
    assert_same_stream(want, first, 0)
    assert_same_stream(first, again, 0)


def test_onnxruntime_runs_a_float16_bundle_as_the_eager_float16_generator():
    """A float16 bundle: the DiT's velocity comes out in float32 (its head's dtype, as in the engine) and the
    latents go back in float16; the stream follows the eager float16 generator (float16 rounding)."""
    from exporters.onnx_export import export_bundle

    model, _, tiny = (copy.deepcopy(m).half() for m in models())
    with tempfile.TemporaryDirectory() as out:
        export_bundle(model, SHAPE, out, tiny=tiny)
        backend = OrtBackend(out, "cpu", "tiny", threads=2)
        assert backend.velocity.dtype == torch.float32
        got = run(BackendGenerator(model, backend, CONFIG))
    want = run(StreamingGenerator(model, CONFIG, decoder=eager_decoder(tiny)))
    assert len(want) == len(got)
    for a, b in zip(want, got):
        assert rel_err(b.latents, a.latents) <= 2e-2
        assert (a.frames.int() - b.frames.int()).abs().float().mean() <= 1.0


# ----------------------------------------------------------------------------- GPU (python -m pytest -m gpu)

@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["vae", "tiny"])
def test_cuda_graph_backend_streams_what_eager_cuda_streams(kind):
    """The whole chunk captured once per step count and replayed equals the eager generator on the GPU."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, vae, tiny = on_cuda()
    decoder = vae if kind == "vae" else tiny
    want = run(StreamingGenerator(model, CONFIG, decoder=eager_decoder(decoder)))
    backend = choose_backend("cuda", model, SHAPE, decoder)
    assert backend.name == "torch-cudagraph"
    got = run(BackendGenerator(model, backend, CONFIG))
    two, one = (tuple(sigma_list(n, CONFIG.shift)) for n in (2, 1))
    # The DiT's graphs per step count and window state (2 steps for chunks 0-5: chunk 0 without a ring, chunks 1-2
    # with the filling ring masked, then the full window of 3 frames; 1 step from chunk 6); the decoder's once.
    assert set(backend.graphs) == {("dit", two, 0), ("dit", two, None), ("dit", two, 3), ("dit", one, 3), "decode"}
    assert_same_stream(want, got, frames_tolerance=1)


@pytest.mark.gpu
def test_onnxruntime_cuda_backend_streams_what_eager_cuda_streams():
    from exporters.ort import providers_available

    if "CUDAExecutionProvider" not in providers_available():
        pytest.skip("onnxruntime here has no CUDAExecutionProvider (onnxruntime-gpu is not installed)")
    bundle = exported()  # exported from the CPU models: the same weights
    model, vae, _ = on_cuda()
    want = run(StreamingGenerator(model, CONFIG, decoder=eager_decoder(vae)))
    backend = choose_backend("cuda", model, SHAPE, vae, name="onnxruntime-cuda", onnx_dir=bundle)
    assert backend.name == "onnxruntime-cuda"
    assert_same_stream(want, run(BackendGenerator(model, backend, CONFIG)), frames_tolerance=1)
