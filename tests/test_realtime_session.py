"""A session's generator as served: on an exporters backend it streams what the engine's generator streams
(without the text condition the backend's step lacks); a half-precision avatar serves JPEG frames end to
end; and the websocket server runs where neither aiortc nor PyAV is installed (JPEG and portraits through
Pillow), as on the GPU machine the serving benchmark runs on."""
import asyncio
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from clients.sdk import AvatarClient
from engine.generate.avatar import load_avatar, load_portrait, shipped_portraits
from engine.generate.streaming import StreamConfig, StreamingGenerator
from exporters.stream import BackendGenerator
from realtime.config import ServerConfig, SessionConfig
from realtime.errors import BadMessage, RealtimeError
from realtime.local import serve_local
from realtime.session import new_generator
from realtime.websocket import parse_start

ROOT = Path(__file__).resolve().parent.parent
SR = 16000


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def speech(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.4 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2 * 32767).astype(np.int16)


def stream(gen: StreamingGenerator, reference: torch.Tensor) -> list:
    gen.reset(reference, seed=1)
    gen.push_audio(speech(1.0), SR)
    return list(gen.flush())


def test_a_backend_session_streams_what_the_engine_streams_without_text():
    avatar = load_avatar(resolution=64)
    reference = avatar.reference(load_portrait(next(iter(shipped_portraits().values()))))
    config = SessionConfig(steps=2, window_frames=3, backend="torch")
    gen = new_generator(avatar, config)
    assert isinstance(gen, BackendGenerator) and gen.backend.name == "torch"
    engine = StreamingGenerator(avatar.model, StreamConfig(steps=2, window_frames=3), decoder=avatar.decoder("tiny"))
    want, got = stream(engine, reference), stream(gen, reference)
    assert len(want) == len(got) > 3  # the window rolls
    for a, b in zip(want, got):
        assert a.pts == b.pts and a.frames.shape == b.frames.shape
        assert torch.allclose(a.latents, b.latents, atol=1e-4)
        assert (a.frames.int() - b.frames.int()).abs().max() <= 1
    with pytest.raises(RealtimeError, match="backend must be"):
        SessionConfig(backend="tensorrt")


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_a_server_with_a_named_backend_warms_it_up_before_it_listens():
    """Every step level the adaptive rule may pick (2 and 1 below a start of 2), each past a full window of 2:
    four chunks a level (the opening frame, the first chunk, the filling ring, a full one), run before the port
    opens; /health reports it, and a session then streams."""
    avatar = load_avatar(resolution=64)
    config = ServerConfig(port=0, session=SessionConfig(steps=2, window_frames=2, backend="torch"))
    async with serve_local(avatar, config) as server:
        assert server.state.warm_up_chunks == 8 and server.state.warm_up_s > 0
        client = await AvatarClient.connect(server.ws_url, sample_rate=SR)
        await client.send_audio(speech(0.5))
        await client.end_of_utterance()
        frame = await asyncio.wait_for(anext(client.frames()), 60)
        await client.close()
        health = await asyncio.to_thread(_get_json, server.url + "/health")
    assert frame.width == 64 and health["warm_up"]["chunks"] == 8
    async with serve_local(avatar, ServerConfig(port=0)) as server:  # the eager engine: nothing to warm
        assert server.state.warm_up_chunks == 0


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_a_bfloat16_avatar_serves_jpeg_frames():
    """Reference encode, audio features, denoise, decode and JPEG with every weight in bfloat16."""
    avatar = load_avatar(dtype=torch.bfloat16, resolution=64)
    assert next(avatar.tiny.parameters()).dtype == torch.bfloat16
    config = ServerConfig(port=0, session=SessionConfig(steps=1, window_frames=2))
    async with serve_local(avatar, config) as server:
        client = await AvatarClient.connect(server.ws_url, sample_rate=SR)
        await client.send_audio(speech(1.0))
        await client.end_of_utterance()
        frames = []

        async def take() -> None:
            async for frame in client.frames():
                frames.append(frame)
                if len(frames) == 8:
                    return

        await asyncio.wait_for(take(), 60)
        await client.close()
    assert all(f.format == "jpeg" and f.data[:2] == b"\xff\xd8" and f.width == 64 for f in frames)


def test_h264_is_refused_at_start_without_pyav(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    with pytest.raises(BadMessage, match="PyAV"):
        parse_start('{"type": "start", "sample_rate": 16000, "video": "h264"}')
    assert parse_start('{"type": "start", "sample_rate": 16000, "video": "jpeg"}').video == "jpeg"


def test_the_websocket_server_runs_without_aiortc_and_pyav():
    """A fresh interpreter where av, aiortc and sounddevice cannot be imported serves one websocket session
    (Pillow decodes the portrait and encodes JPEG); the modules it loaded include none of them."""
    pytest.importorskip("PIL")
    script = """
import sys
for name in ("av", "aiortc", "sounddevice"):
    sys.modules[name] = None
import asyncio
import numpy as np
import torch
from clients.sdk import AvatarClient
from engine.generate.avatar import load_avatar
from realtime.config import ServerConfig, SessionConfig
from realtime.local import serve_local

async def main():
    torch.set_num_threads(1)
    avatar = load_avatar(resolution=64)
    config = ServerConfig(port=0, session=SessionConfig(steps=1, window_frames=2))
    async with serve_local(avatar, config) as server:
        client = await AvatarClient.connect(server.ws_url, sample_rate=16000)
        await client.send_audio((np.random.default_rng(0).standard_normal(16000) * 3000).astype(np.int16))
        await client.end_of_utterance()
        frame = await asyncio.wait_for(anext(client.frames()), 60)
        await client.close()
    assert frame.data[:2] == b"\\xff\\xd8", frame.data[:4]
    loaded = {m.split(".")[0] for m, mod in sys.modules.items() if mod is not None}
    assert not loaded & {"av", "aiortc", "aioice", "sounddevice"}, loaded
    print("OK")

asyncio.run(main())
"""
    out = subprocess.run([sys.executable, "-c", script], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
    assert "decoded with Pillow" in out.stderr and "encoded with Pillow" in out.stderr
